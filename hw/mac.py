"""MAC lanes: ``lanes`` neurons accumulating in parallel, one multiply-accumulate per lane per cycle."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .dsp import IMPLS, MAX_WIDTH, ProductPair, impl_for, pair_budget


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
    images : int
        B images in lockstep sharing the weights: ``x`` and ``acc`` become B x lanes arrays
        (``x[b][q]``), and lane q of images 2j and 2j + 1 share one :class:`~hw.dsp.ProductPair`
        (one SB_MAC16 in its dual 8x8 mode on iCE40: two products per DSP) when both operands are
        at most 8 bits wide, as many as the platform has DSPs for (:func:`hw.dsp.pair_budget`; the
        rest are plain products: LUT multipliers for narrow operands). Same latency.
    dsp : str
        The ProductPair implementation: ``"auto"`` (the platform's, :func:`hw.dsp.impl_for`),
        ``"sb_mac16"`` or ``"rtl"``.
    w_early : bool
        ``w`` comes one cycle before its ``x`` (same latency from ``x``): the lanes delay it
        themselves, in a ProductPair's weight input register (the SB_MAC16's A_REG: no fabric
        flip-flops) or in a register of their own for a plain product.
    """

    def __init__(self, lanes: int, weight_width: int, data_width: int, acc_width: int, bias: bool = True,
                 max_op: bool = True, images: int = 1, dsp: str = "auto", w_early: bool = False):
        _check_int("lanes", lanes, 1, 256)
        _check_int("weight_width", weight_width, 2, 32)
        _check_int("data_width", data_width, 2, 32)
        _check_int("acc_width", acc_width, 2, 64)
        self.lanes, self.weight_width, self.data_width, self.acc_width = lanes, weight_width, data_width, acc_width
        _check_int("images", images, 1, 64)
        if dsp not in ("auto", *IMPLS):
            raise ValueError(f"dsp must be 'auto' or one of {', '.join(IMPLS)}, got {dsp!r}")
        self.has_bias, self.max_op, self.images, self.dsp, self.w_early = bias, max_op, images, dsp, w_early
        dims = (lanes,) if images == 1 else (images, lanes)
        ports = {
            "valid": In(1),
            "first": In(1),
            "max": In(1),
            "w": In(signed(weight_width)).array(lanes),
            "x": In(signed(data_width)).array(*dims),
            "acc": Out(signed(acc_width)).array(*dims),
        }
        if bias:
            ports["bias"] = In(signed(acc_width)).array(*dims)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        valid, first, keep_max = Signal(), Signal(), Signal()
        m.d.sync += [valid.eq(self.valid), first.eq(self.first), keep_max.eq(self.max)]
        B, ww, dw = self.images, self.weight_width, self.data_width
        port = (lambda p, b, q: p[q]) if B == 1 else (lambda p, b, q: p[b][q])
        pairs = B > 1 and ww <= MAX_WIDTH and dw <= MAX_WIDTH
        impl = impl_for(platform) if self.dsp == "auto" else self.dsp
        budget = pair_budget(platform) if self.dsp == "auto" else None  # pairs beyond it: plain products
        n_pairs = 0
        w_late = self.w  # the weights in the cycle of their data, for plain products
        if self.w_early:
            # (where every lane is a pair these registers drive nothing, and synthesis drops them)
            w_late = [Signal(signed(ww), name=f"w{q}_r", reset_less=True) for q in range(self.lanes)]
            m.d.sync += [w_late[q].eq(self.w[q]) for q in range(self.lanes)]
        # data registers have no reset (only the control bits do): fewer gates on the FPGA, and in
        # an event-driven simulator no reset multiplexer to re-evaluate whenever the data change
        prods = [[Signal(signed(ww + dw), name=f"prod{q}" if B == 1 else f"prod{b}_{q}", reset_less=True)
                  for q in range(self.lanes)] for b in range(B)]
        for b in range(0, B, 2):  # images 0 and 1 of every lane first, then 2 and 3...
            for q in range(self.lanes):
                if pairs and b + 1 < B and (budget is None or n_pairs < budget):
                    n_pairs += 1  # images b and b + 1: one DSP, the product registers inside it
                    pp = ProductPair(ww, dw, impl, input_registers=False, weight_register=self.w_early)
                    m.submodules[f"pair{b // 2}_{q}"] = pp
                    m.d.comb += [pp.w.eq(self.w[q]), pp.x0.eq(port(self.x, b, q)), pp.x1.eq(port(self.x, b + 1, q)),
                                 prods[b][q].eq(pp.p0), prods[b + 1][q].eq(pp.p1)]
                else:
                    for bb in range(b, min(b + 2, B)):
                        m.d.sync += prods[bb][q].eq(w_late[q] * port(self.x, bb, q))
        for q in range(self.lanes):
            for b in range(B):
                self._accumulate(m, prods[b][q], port(self.acc, b, q), port(self.bias, b, q) if self.has_bias else 0,
                                 valid, first, keep_max, f"{q}" if B == 1 else f"{b}_{q}")
        return m

    def _accumulate(self, m, prod, out, bias_in, valid, first, keep_max, tag):
        acc = Signal(signed(self.acc_width), name=f"acc{tag}", reset_less=True)
        bias = 0
        if self.has_bias:
            bias = Signal(signed(self.acc_width), name=f"bias{tag}", reset_less=True)
            m.d.sync += bias.eq(bias_in)
        # one expression rather than an If: an event-driven simulator evaluates an expression as a
        # net (cheap) and an If as a process woken at every change of its inputs (costly)
        summed = Mux(first, bias, acc) + prod
        larger = Mux(first | (prod > acc), prod, acc)
        m.d.sync += acc.eq(Mux(valid, Mux(keep_max, larger, summed) if self.max_op else summed, acc))
        m.d.comb += out.eq(acc)
