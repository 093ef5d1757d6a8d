"""The pool stage of the drain: a pool fused into its conv layer's drain (``compile_spec(...,
fuse_pools=True)``) keeps one register per k x k window of the tile instead of writing the conv's
states to the feature memory."""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
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
    (``max``: the larger of the two is kept, as a max-pool does).

    Read side: while ``run`` is high (the drain's window turns, consecutive cycles) the windows
    0, 1, ... are multiplied in turn by the map's coefficient (``Program.coef_words[coef_addr]``,
    read one cycle after ``coef_addr``; 1 for a max-pool); in the cycle where ``valid`` is high,
    ``value`` is ``window[rd] * coef``, the exact product wrapped to ``acc_width`` (the drain
    wraps the sum with the bias to the pool's narrower accumulator: the wrap here changes nothing).
    With ``Program.pool_mul_cycles`` m = 1 that is every cycle of ``run`` (one multiplier of
    window_width x weight_width bits, combinational from the registers: a DSP block where Yosys
    finds one); with m > 1 a radix-4 Booth multiplier in LUTs takes two coefficient bits per cycle,
    most significant first, and presents window j's product in the m-th cycle of its turns
    (``value`` = the partial product times 4 plus the last digit's multiple, combinational).

    Latency: a state written in cycle t can be read from cycle t + 1; a window's product m cycles
    after its first turn. Throughput: one write per cycle; one product per m cycles.
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
            "coef_addr": In(range(max(len(program.coef_words), 2))), "run": In(1),
            "rd": Out(range(max(self.windows, 2))), "valid": Out(1), "value": Out(signed(program.acc_width)),
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
        steps = prog.pool_mul_cycles
        with m.If(~self.run):
            m.d.sync += self.rd.eq(0)
        if steps == 1:
            m.d.comb += [self.value.eq(sel * rp.data), self.valid.eq(self.run)]
            with m.If(self.run):
                m.d.sync += self.rd.eq(self.rd + 1)
            return m
        # radix-4 Booth, most significant digit first: digit i of the coefficient (sign-extended
        # to 2 * steps bits) is -2 b[2i+1] + b[2i] + b[2i-1], b[-1] = 0
        step = Signal(range(steps))
        partial = Signal(signed(prog.acc_width), reset_less=True)
        coef = rp.data
        bits = Cat(Const(0, 1), coef, *([coef[-1]] * (2 * steps - len(coef))))
        trip = Signal(3)
        with m.Switch(step):
            for s in range(steps):
                with m.Case(s):
                    i = steps - 1 - s
                    m.d.comb += trip.eq(bits[2 * i:2 * i + 3])
        b0, b1, b2 = trip[0], trip[1], trip[2]
        one = b0 ^ b1
        two = (b2 & ~b1 & ~b0) | (~b2 & b1 & b0)
        mag = Signal(signed(self.width + 1))
        m.d.comb += mag.eq(Mux(one, sel, Mux(two, sel << 1, 0)))
        digit = Mux(b2, -mag, mag)  # b2 with b1 = b0 = 1 is digit 0: mag is 0 then
        m.d.comb += self.value.eq(Mux(step == 0, 0, partial << 2) + digit)
        m.d.comb += self.valid.eq(self.run & (step == steps - 1))
        with m.If(self.run):
            m.d.sync += [partial.eq(self.value), step.eq(Mux(step == steps - 1, 0, step + 1))]
            with m.If(step == steps - 1):
                m.d.sync += self.rd.eq(self.rd + 1)
        with m.Else():
            m.d.sync += step.eq(0)
        return m
