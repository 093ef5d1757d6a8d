# amaranth: UnusedElaboratable=no
# (tops are built to read their ports and stimulus too, not only to be emitted)
"""Arithmetic layer tops: ``requantize`` (``hw.fixed.requantize``), ``mac`` (``hw.mac.MACLanes``)
and ``activation_lut`` (requantize to a table address + ROM), against ``quantize`` code."""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from quantize.qformat import QFormat

from .core import LayerTop, Schedule, extremes_and_random, register

# --------------------------------------------------------------------------- 1. requantize

class RequantizeTop(wiring.Component):
    """Several ``hw.fixed.requantize`` instances side by side, one per (source, target) case:
    ``o{k}, c{k} = requantize(i{k})`` (code and clipped flag). Latency 0 (combinational)."""

    def __init__(self, cases: list[tuple[QFormat, QFormat]]):
        from hw.fixed import shape_of

        self.cases = list(cases)
        members = {}
        for k, (src, dst) in enumerate(self.cases):
            members |= {f"i{k}": In(signed(src.width)), f"o{k}": Out(shape_of(dst)), f"c{k}": Out(1)}
        super().__init__(members)

    def elaborate(self, platform):
        from hw.fixed import requantize

        m = Module()
        for k, (src, dst) in enumerate(self.cases):
            code, clipped = requantize(getattr(self, f"i{k}"), src.frac, dst)
            m.d.comb += [getattr(self, f"o{k}").eq(code), getattr(self, f"c{k}").eq(clipped)]
        return m


#: (source, target): every rounding mode, SAT and WRAP, right and left shifts, an unsigned target;
#: only the source's width and frac matter
REQUANTIZE_CASES = (
    (QFormat(20, 12, True, "TRN", "WRAP"), QFormat(8, 6, True, "RND_CONV", "SAT")),  # q8 acc -> state
    (QFormat(16, 8), QFormat(8, 4, True, "TRN", "WRAP")),
    (QFormat(12, 4), QFormat(6, 1, True, "RND_INF", "SAT")),
    (QFormat(12, 6), QFormat(6, 2, True, "TRN_ZERO", "WRAP")),
    (QFormat(14, 3), QFormat(10, 5, True, "RND", "SAT")),  # left shift
    (QFormat(16, 10), QFormat(8, 4, False, "RND_MIN_INF", "SAT")),  # unsigned target
    (QFormat(12, 5), QFormat(5, 0, True, "RND_CONV_ODD", "WRAP")),
    (QFormat(12, 8), QFormat(6, 3, True, "TRN_INF", "SAT")),
    (QFormat(12, 8), QFormat(6, 3, True, "TRN_AWAY", "WRAP")),
    (QFormat(24, 16), QFormat(10, 7, True, "RND_ZERO", "SAT")),
)


def _requantize_stimulus(rng, src: QFormat, dst: QFormat, n: int) -> np.ndarray:
    """Source codes: extremes, ties and their neighbours, the edges of the target range (where
    saturation or wrapping starts), then random."""
    s = src.frac - dst.frac
    extra = []
    if s > 0:
        for k in rng.integers(src.code_min >> s, src.code_max >> s, size=6):
            extra += [(int(k) << s) + (1 << (s - 1)) + d for d in (-1, 0, 1)]  # ties of both parities
    def at_src(code):
        return code << s if s >= 0 else code >> -s

    for edge in (dst.code_min, dst.code_max, dst.code_max + 1, dst.code_min - 1):
        extra += [at_src(edge) + d for d in (-2, -1, 0, 1, 2)]
    # half the random codes around the target's range (a margin of a quarter of it each side)
    span = at_src(dst.code_max - dst.code_min + 1)
    return extremes_and_random(rng, src, n, extra, focus=(at_src(dst.code_min) - span // 4, at_src(dst.code_max) + span // 4))


def _requantize_vectors(dut, p, rng, n):
    from quantize.qformat import shift_round

    s = Schedule(dut)
    cases = p["cases"]
    x = [_requantize_stimulus(rng, src, dst, n) for src, dst in cases]
    gold = []
    for (src, dst), xs in zip(cases, x):
        code, _ = dst.requantize(xs, src.frac)
        r = shift_round(xs, src.frac - dst.frac, dst.rounding)
        gold.append((code, ((r < dst.code_min) | (r > dst.code_max)).astype(np.int64)))
    for v in range(n):
        c = s.cycle({f"i{k}": x[k][v] for k in range(len(cases))})
        s.expect(c, v, {f"o{k}": gold[k][0][v] for k in range(len(cases))}
                 | {f"c{k}": gold[k][1][v] for k in range(len(cases))})
    return s


register(LayerTop("requantize", "hw.fixed.requantize, 10 (source, target) format cases, latency 0",
                  lambda p: RequantizeTop(p["cases"]), _requantize_vectors, {"cases": REQUANTIZE_CASES}, n=200))


# --------------------------------------------------------------------------- 2. MAC lanes

MAC_LATENCY = 2  # inputs in cycle t are in acc from cycle t + 2 (hw/mac.py)


def _build_mac(p):
    from hw.mac import MACLanes

    return MACLanes(p["lanes"], p["weight_width"], p["data_width"], p["acc_width"])


def _mac_vectors(dut, p, rng, n):
    """``n`` dot products of 1..8 taps per lane, mostly back to back (``first`` on the first tap,
    no idle cycle), sometimes after idle cycles with garbage on the data inputs. A third of the
    groups use only the extreme codes (products and biases at the limits: the accumulator wraps),
    a third small biases (the products decide), a third uniform codes.
    Golden: int64 dot product + bias, wrapped to ``acc_width`` by ``quantize.qformat.wrap``."""
    from quantize.qformat import wrap

    s = Schedule(dut)
    P = p["lanes"]
    wf, xf, af = (QFormat(p[k], 0) for k in ("weight_width", "data_width", "acc_width"))

    def draw(fmt, size, mode="random"):
        if mode == "extreme":
            return rng.choice([fmt.code_min, fmt.code_max, fmt.code_min + 1, fmt.code_max - 1, 0], size=size)
        if mode == "small":  # a bias well inside the range: the products decide the result
            return rng.integers(-(1 << (fmt.width // 2)), 1 << (fmt.width // 2), size=size, endpoint=True)
        return rng.integers(fmt.code_min, fmt.code_max, size=size, endpoint=True)

    for v in range(n):
        if v and rng.random() < 0.25:  # idle cycles: valid low, whatever else on the inputs
            for _ in range(int(rng.integers(1, 3))):
                s.cycle(valid=0, first=int(rng.integers(0, 2)), w=draw(wf, P), x=draw(xf, P), bias=draw(af, P))
        taps = 1 if v % 7 == 3 else int(rng.integers(1, 9))
        mode = "extreme" if v < 2 else ("random", "extreme", "small")[v % 3]
        w, x = draw(wf, (taps, P), "random" if mode == "small" else mode), draw(xf, (taps, P), "random" if mode == "small" else mode)
        b = draw(af, P, mode)
        gold = wrap((w.astype(np.int64) * x).sum(0) + b, af.width, True)
        for t in range(taps):  # the bias input only counts with ``first``: garbage on the other taps
            c = s.cycle(valid=1, first=int(t == 0), w=w[t], x=x[t], bias=b if t == 0 else draw(af, P))
        s.expect(c + MAC_LATENCY, v, {"acc": gold})
    return s


register(LayerTop("mac", "hw.mac.MACLanes, 4 lanes, 8-bit weights and data, 24-bit wrapping accumulators",
                  _build_mac, _mac_vectors, {"lanes": 4, "weight_width": 8, "data_width": 8, "acc_width": 24}, n=150))


# --------------------------------------------------------------------------- 3. activation LUT

class ActivationLUT(wiring.Component):
    """``y = lut[requantize(acc -> index) - index.code_min]``: the address from ``hw.fixed``, the
    table in a ROM (``amaranth.lib.memory.Memory``, synchronous read). Latency 1, one value per cycle."""

    def __init__(self, acc: QFormat, index: QFormat, act: QFormat, lut):
        from hw.fixed import shape_of

        lut = [int(v) for v in np.asarray(lut).reshape(-1)]
        if len(lut) != 1 << index.width:
            raise ValueError(f"lut: {len(lut)} entries, expected {1 << index.width} for a {index.width}-bit index")
        if not act.contains(lut):
            raise ValueError(f"lut: entries do not fit {act}")
        self.acc_fmt, self.index, self.act, self.lut = acc, index, act, lut
        super().__init__({"acc": In(signed(acc.width)), "y": Out(shape_of(act))})

    def elaborate(self, platform):
        from hw.fixed import requantize, shape_of

        m = Module()
        m.submodules.rom = rom = Memory(shape=shape_of(self.act), depth=len(self.lut), init=self.lut)
        rp = rom.read_port()
        idx, _ = requantize(self.acc, self.acc_fmt.frac, self.index)
        addr = Signal(self.index.width)
        m.d.comb += [addr.eq((idx - self.index.code_min).as_unsigned()), rp.addr.eq(addr), self.y.eq(rp.data)]
        return m


def activation_params(layer) -> dict:
    """Params of the ``activation_lut`` top from a QuantSpec layer (its acc/index/act formats and LUT)."""
    f = layer.formats
    return {"acc": f["acc"], "index": f["index"], "act": f["act"], "lut": layer.lut}


def _activation_lut(p) -> np.ndarray:
    if p.get("lut") is not None:
        return np.asarray(p["lut"], np.int64)
    from quantize.calibrate import squash_table

    return squash_table(p["index"], p["act"])


def _activation_vectors(dut, p, rng, n):
    """Accumulators: the acc extremes (saturated addresses), the edges of the LUT address range
    and just past them, ties, random. Golden: ``quantize.ops.activation``; latency 1, back to back."""
    from quantize import ops

    s = Schedule(dut)
    a, ix = p["acc"], p["index"]
    sh = a.frac - ix.frac
    extra = []
    for edge in (ix.code_min, ix.code_max, 0):
        e = edge << sh if sh >= 0 else edge >> -sh
        extra += [e + d for d in range(-3, 4)]
    if sh > 0:
        extra += [(int(k) << sh) + (1 << (sh - 1)) for k in rng.integers(ix.code_min, ix.code_max, size=6)]
    span = (ix.code_max - ix.code_min + 1) << sh if sh >= 0 else (ix.code_max - ix.code_min + 1) >> -sh
    lo = ix.code_min << sh if sh >= 0 else ix.code_min >> -sh
    acc = extremes_and_random(rng, a, n, extra, focus=(lo - span // 8, lo + span + span // 8))
    y = ops.activation(acc, a.frac, ix, _activation_lut(p))[0].numpy()
    for v in range(n):
        c = s.cycle(acc=acc[v])
        s.expect(c + 1, v, {"y": y[v]})
    return s


register(LayerTop(
    "activation_lut", "hw.fixed.requantize to a 10-bit LUT address + ROM (1.7159 tanh(2a/3)), latency 1",
    lambda p: ActivationLUT(p["acc"], p["index"], p["act"], _activation_lut(p)), _activation_vectors,
    {"acc": QFormat(20, 12, True, "TRN", "WRAP"), "index": QFormat(10, 7, True, "RND_CONV", "SAT"),
     "act": QFormat(8, 6, True, "RND_CONV", "SAT"), "lut": None}, n=200))
