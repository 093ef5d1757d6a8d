"""Activation drain: requantize each lane's accumulator, look the squash up in ROM, write it back."""
from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .fixed import requantize
from .program import Program


class Activation(wiring.Component):
    """Drains the ``lanes`` accumulators of a finished group, one per cycle.

    On ``capture`` it takes a copy of every lane's accumulator (so the MAC lanes can start the next
    group at once), then for lane k = 0..lanes-1, one per cycle: wraps the value to the layer's
    accumulator width, requantizes it to the layer's LUT address format (``hw/fixed.py``, the
    format's rounding and saturation), reads the activation ROM (every layer's table from the spec,
    concatenated) and writes the state to feature-memory address ``out_addr + k`` if ``mask[k]``.
    For the last layer (no activation) it writes ``score[out_addr + k]`` instead.

    Latency: lane k's turn is cycle ``capture + 1 + k`` (address computed, ROM read); its write
    is presented the cycle after, so a group's last write is presented ``lanes + 1`` cycles after
    ``capture``. Throughput: one value per
    cycle; ``capture`` may be high again in the cycle of the last lane's turn.
    """

    def __init__(self, program: Program, addr_width: int):
        self.program = program
        P = program.lanes
        self.lanes = P
        n = len(program.layers)
        super().__init__({
            "capture": In(1),
            "acc": In(ArrayLayout(signed(program.acc_width), P)),
            "layer": In(range(n)),
            "out_addr": In(unsigned(addr_width)),
            "mask": In(P),
            "we": Out(1),
            "waddr": Out(unsigned(addr_width)),
            "wdata": Out(signed(program.fm_width)),
            "score_we": Out(1),
            "score_idx": Out(range(max(program.scores, 2))),
            "score": Out(signed(program.score_width)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        prog, P = self.program, self.lanes
        accs = [Signal(signed(prog.acc_width), name=f"acc{q}") for q in range(P)]
        mask = Signal(P)
        layer = Signal.like(self.layer)
        base = Signal.like(self.out_addr)
        k = Signal(range(P + 1))
        active = Signal()
        m.d.comb += self.busy.eq(active)

        # stage d0: lane k's value is at the head of the shift register accs[0]
        with m.If(self.capture):
            m.d.sync += [accs[q].eq(self.acc[q]) for q in range(P)]
            m.d.sync += [mask.eq(self.mask), layer.eq(self.layer), base.eq(self.out_addr), k.eq(0), active.eq(1)]
        with m.Elif(active):
            m.d.sync += [accs[q].eq(accs[q + 1]) for q in range(P - 1)]
            m.d.sync += [mask.eq(mask >> 1), k.eq(k + 1)]
            with m.If(k == P - 1):
                m.d.sync += active.eq(0)

        rom = Memory(shape=signed(prog.fm_width), depth=max(len(prog.lut_rom), 1), init=prog.lut_rom or [0])
        m.submodules.rom = rom
        rp = rom.read_port()
        we1 = Signal()
        waddr1 = Signal.like(self.waddr)
        has_act = Signal()
        with m.Switch(layer):
            for i, lp in enumerate(prog.layers):
                with m.Case(i):
                    f = lp.spec.formats
                    wrapped = accs[0][:f["acc"].width].as_signed()
                    if lp.has_activation:
                        idx, _ = requantize(wrapped, f["acc"].frac, f["index"])
                        m.d.comb += [has_act.eq(1),
                                     rp.addr.eq(lp.lut_base + (idx - f["index"].code_min).as_unsigned())]
                    else:
                        m.d.comb += self.score.eq(wrapped)
        # stage d1: the ROM's data arrives with the registered write address
        m.d.sync += [we1.eq(active & mask[0] & has_act), waddr1.eq(base + k)]
        m.d.comb += [self.we.eq(we1), self.waddr.eq(waddr1), self.wdata.eq(rp.data),
                     self.score_we.eq(active & mask[0] & ~has_act), self.score_idx.eq(base + k)]
        return m
