"""The pool stage of the drain: a pool fused into its conv layer's drain (``compile_spec(...,
fuse_pools=True)``) keeps one register per k x k window of the tile instead of writing the conv's
states to the feature memory."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .program import Program, tile_shape


def window_width(program: Program) -> int:
    """Bits of a window register: a state (``fm_width``) plus log2(k * k) for the sum of k * k."""
    ks = [lp.pool.spec.kernel for lp in program.fused] or [1]
    return program.fm_width + 2 * (max(ks).bit_length() - 1)


class PoolStage(wiring.Component):
    """The window registers of one tile and the pool's coefficient multiply.

    Write side (the conv's states, one per cycle): when ``we``, ``state`` goes into window
    ``win``: it replaces the register if ``first`` (the window's first lane), else it is added
    (``max``: the larger of the two is kept, as a max-pool does). Read side: ``value`` is
    ``window[rd] * coef`` (the pool's coefficient of the map: ``Program.coef_words[coef_addr]``;
    1 for a max-pool), the exact product wrapped to ``acc_width`` (the drain wraps the sum with the
    bias to the pool's narrower accumulator, so the wrap here changes nothing).

    Latency: a state written in cycle t is in ``value`` from cycle t + 1 (``value`` is
    combinational from the registers: one multiplier of window_width x weight_width bits before
    the drain's next register); the coefficient is read one cycle after ``coef_addr``.
    Throughput: one write and one read per cycle.
    """

    def __init__(self, program: Program):
        self.program = program
        R, C = tile_shape(program.lanes)
        ks = [lp.pool.spec.kernel for lp in program.fused]
        if not ks:
            raise ValueError("the program fuses no pool")
        self.windows = max((R // k) * (C // k) for k in ks)
        self.width = window_width(program)
        super().__init__({
            "we": In(1), "first": In(1), "max": In(1), "win": In(range(max(self.windows, 2))),
            "state": In(signed(program.fm_width)),
            "coef_addr": In(range(max(len(program.coef_words), 2))), "rd": In(range(max(self.windows, 2))),
            "value": Out(signed(program.acc_width)),
        })

    def elaborate(self, platform):
        m = Module()
        prog = self.program
        regs = [Signal(signed(self.width), name=f"win{j}", reset_less=True) for j in range(self.windows)]
        for j, r in enumerate(regs):
            take = self.first | (self.max & (self.state > r))
            with m.If(self.we & (self.win == j)):
                m.d.sync += r.eq(Mux(take, self.state, Mux(self.max, r, r + self.state)))
        m.submodules.coef = coef_mem = Memory(shape=signed(prog.weight_width), depth=max(len(prog.coef_words), 2),
                                              init=prog.coef_words or [0])
        rp = coef_mem.read_port()
        m.d.comb += rp.addr.eq(self.coef_addr)
        sel = Signal(signed(self.width))
        with m.Switch(self.rd):
            for j, r in enumerate(regs):
                with m.Case(j):
                    m.d.comb += sel.eq(r)
        m.d.comb += self.value.eq(sel * rp.data)
        return m
