"""MAC lanes: ``lanes`` neurons accumulating in parallel, one multiply-accumulate per lane per cycle."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.wiring import In, Out


def _check_int(name, v, lo, hi):
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")


class MACLanes(wiring.Component):
    """``lanes`` parallel multiply-accumulate units.

    Each cycle with ``valid`` high, lane q computes ``w[q] * x[q]`` and adds it to its accumulator;
    with ``first`` high the accumulator restarts from ``bias[q]`` instead of its old value, so
    back-to-back dot products need no idle cycle. The product is registered (a DSP block's
    multiplier output register: SB_MAC16 on iCE40, MULT18X18D on ECP5) before the adder.

    Latency: inputs in cycle t are in ``acc`` from cycle t + 2. Throughput: one MAC per lane per
    cycle. Accumulators wrap at ``acc_width`` bits (two's complement), as the spec's acc format.

    Parameters
    ----------
    lanes : int
    weight_width, data_width, acc_width : int
        Signed operand and accumulator widths (from the QuantSpec).
    """

    def __init__(self, lanes: int, weight_width: int, data_width: int, acc_width: int):
        _check_int("lanes", lanes, 1, 256)
        _check_int("weight_width", weight_width, 2, 32)
        _check_int("data_width", data_width, 2, 32)
        _check_int("acc_width", acc_width, 2, 64)
        self.lanes, self.weight_width, self.data_width, self.acc_width = lanes, weight_width, data_width, acc_width
        super().__init__({
            "valid": In(1),
            "first": In(1),
            "w": In(ArrayLayout(signed(weight_width), lanes)),
            "x": In(ArrayLayout(signed(data_width), lanes)),
            "bias": In(ArrayLayout(signed(acc_width), lanes)),
            "acc": Out(ArrayLayout(signed(acc_width), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        valid = Signal()
        first = Signal()
        m.d.sync += [valid.eq(self.valid), first.eq(self.first)]
        for q in range(self.lanes):
            prod = Signal(signed(self.weight_width + self.data_width), name=f"prod{q}")
            bias = Signal(signed(self.acc_width), name=f"bias{q}")
            m.d.sync += [prod.eq(self.w[q] * self.x[q]), bias.eq(self.bias[q])]
            with m.If(valid):
                m.d.sync += self.acc[q].eq(Mux(first, bias, self.acc[q]) + prod)
        return m
