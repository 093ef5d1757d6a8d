"""MAC lanes: ``lanes`` neurons accumulating in parallel, one multiply-accumulate per lane per cycle."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


def _check_int(name, v, lo, hi):
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")


class MACLanes(wiring.Component):
    """``lanes`` parallel multiply-accumulate units.

    Each cycle with ``valid`` high, lane q computes ``w[q] * x[q]`` and adds it to its accumulator;
    with ``first`` high the accumulator restarts from ``bias[q]`` (0 without a bias port) instead
    of its old value, so back-to-back dot products need no idle cycle. With ``max`` high (a
    max-pool: the weights are 1) the lane keeps the larger of its accumulator and the product
    instead of the sum (``first`` still restarts: from the product alone). The product is
    registered (a DSP block's multiplier output register: SB_MAC16 on iCE40, MULT18X18D on ECP5)
    before the adder.

    Latency: inputs in cycle t are in ``acc`` from cycle t + 2. Throughput: one MAC per lane per
    cycle. Accumulators wrap at ``acc_width`` bits (two's complement), as the spec's acc format.

    Parameters
    ----------
    lanes : int
    weight_width, data_width, acc_width : int
        Signed operand and accumulator widths (from the QuantSpec).
    bias : bool
        With False there is no ``bias`` port: ``first`` restarts the accumulators from 0 (the
        accelerator adds the bias in the drain), and no bias registers are built.
    max_op : bool
        Build the comparators of the ``max`` mode (a network without max-pooling needs none; the
        ``max`` port is then ignored).
    """

    def __init__(self, lanes: int, weight_width: int, data_width: int, acc_width: int, bias: bool = True,
                 max_op: bool = True):
        _check_int("lanes", lanes, 1, 256)
        _check_int("weight_width", weight_width, 2, 32)
        _check_int("data_width", data_width, 2, 32)
        _check_int("acc_width", acc_width, 2, 64)
        self.lanes, self.weight_width, self.data_width, self.acc_width = lanes, weight_width, data_width, acc_width
        self.has_bias, self.max_op = bias, max_op
        ports = {
            "valid": In(1),
            "first": In(1),
            "max": In(1),
            "w": In(signed(weight_width)).array(lanes),
            "x": In(signed(data_width)).array(lanes),
            "acc": Out(signed(acc_width)).array(lanes),
        }
        if bias:
            ports["bias"] = In(signed(acc_width)).array(lanes)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        valid, first, keep_max = Signal(), Signal(), Signal()
        m.d.sync += [valid.eq(self.valid), first.eq(self.first), keep_max.eq(self.max)]
        # data registers have no reset (only the control bits do): fewer gates on the FPGA, and in
        # an event-driven simulator no reset multiplexer to re-evaluate whenever the data change
        for q in range(self.lanes):
            prod = Signal(signed(self.weight_width + self.data_width), name=f"prod{q}", reset_less=True)
            acc = Signal(signed(self.acc_width), name=f"acc{q}", reset_less=True)
            m.d.sync += prod.eq(self.w[q] * self.x[q])
            bias = 0
            if self.has_bias:
                bias = Signal(signed(self.acc_width), name=f"bias{q}", reset_less=True)
                m.d.sync += bias.eq(self.bias[q])
            # one expression rather than an If: an event-driven simulator evaluates an expression as a
            # net (cheap) and an If as a process woken at every change of its inputs (costly)
            summed = Mux(first, bias, acc) + prod
            larger = Mux(first | (prod > acc), prod, acc)
            m.d.sync += acc.eq(Mux(valid, Mux(keep_max, larger, summed) if self.max_op else summed, acc))
            m.d.comb += self.acc[q].eq(acc)
        return m
