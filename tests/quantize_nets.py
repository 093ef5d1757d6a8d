"""Small hand-built QuantSpecs over every layer kind and option of schema 2, for the quantize tests
(``from quantize_nets import build, NETS``): random weights, valid by construction."""
from __future__ import annotations

import numpy as np

from quantize import ops
from quantize.qformat import QFormat
from quantize.spec import LUT_FUNCTIONS, LayerSpec, QuantSpec, out_extent
from quantize.spec_check import validate

MODES = ("RND_CONV", "TRN", "RND", "RND_ZERO", "TRN_ZERO", "RND_INF")


def _codes(rng, fmt_or_bits, shape):
    if isinstance(fmt_or_bits, QFormat):
        lo, hi = fmt_or_bits.code_min, fmt_or_bits.code_max
    else:
        lo, hi = -(1 << (fmt_or_bits - 1)), (1 << (fmt_or_bits - 1)) - 1
    return rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64)


def build(rng, input_shape, plan, xb=8, wb=8, bb=12, ib=7, narrow=(), rounding=None, network="t") -> QuantSpec:
    """A valid spec from a plan: one dict per layer (kind, out_maps, kernel, stride, pad, pad_code
    ("rand"), table, source, untied, activation); random weights; exact accumulators except for the
    layers named in ``narrow`` (as narrow as their frac allows: they wrap)."""
    c, h, w = input_shape
    rnd = lambda: rounding or str(rng.choice(MODES))  # noqa: E731
    fin = QFormat(xb, xb - 2, True, rnd(), "SAT")
    input_lut = _codes(rng, fin, (c, 256))
    prev, shape, layers = fin, (c, h, w), []
    for n, p in enumerate(plan):
        kind, last = p["kind"], n == len(plan) - 1
        spatial = kind not in ("dense", "rbf")
        in_maps = shape[0] if spatial else int(np.prod(shape))
        k = p.get("kernel", 1)
        geo = dict(name=f"L{n}", kind=kind, in_maps=in_maps, out_maps=p.get("out_maps", in_maps),
                   in_h=shape[1] if spatial else 1, in_w=shape[2] if spatial else 1, kernel=k,
                   stride=p.get("stride", k if kind in ("subsample", "avgpool", "maxpool") else 1),
                   pad=p.get("pad", 0), table=p.get("table"), source=p.get("source"))
        if geo["pad"]:
            geo["pad_code"] = int(_codes(rng, prev, 1)[0]) if p.get("pad_code") == "rand" else int(input_lut[0, 0])
        if kind == "maxpool":
            l = LayerSpec(**geo, formats={"input": prev}, weight=None, bias=None)
            layers.append(l)
            shape = l.out_shape
            continue
        oh = out_extent(geo["in_h"], k, geo["stride"], geo["pad"]) if spatial else 1
        ow = out_extent(geo["in_w"], k, geo["stride"], geo["pad"]) if spatial else 1
        o = geo["out_maps"]
        wf = QFormat(2, 0, True, rnd(), "SAT") if kind == "rbf" else QFormat(wb, wb - 1, True, rnd(), "SAT")
        wshape = {"conv": (o, in_maps, k, k), "local": (o, oh, ow, in_maps, k, k), "dense": (o, in_maps),
                  "rbf": (o, in_maps)}.get(kind, (o,))
        weight = rng.choice(np.array([-1, 1]), wshape) if kind == "rbf" else _codes(rng, wf, wshape)
        if kind == "conv" and geo["table"] is not None:
            mask = np.zeros((o, in_maps), bool)
            for m, t in enumerate(geo["table"]):
                mask[m, t] = True
            weight[~mask] = 0
        acc_frac = prev.frac + wf.frac
        formats = {"input": prev, "weight": wf}
        bias = None
        if kind not in ("avgpool", "rbf"):
            bf = QFormat(bb, min(bb - 2, acc_frac), True, rnd(), "SAT")
            formats["bias"] = bf
            bias = _codes(rng, bf, (o, oh, ow) if p.get("untied") else (o,))
        x_max = max(-prev.code_min, prev.code_max)
        tmp = LayerSpec(**geo, formats={**formats, "acc": QFormat(64, acc_frac)}, weight=weight, bias=bias)
        if kind in ("subsample", "avgpool"):
            bound = ops.subsample_bound(weight, tmp.bias_acc(), x_max, k)
        elif kind == "rbf":
            bound = int(np.abs(weight).sum(1).max()) * x_max
        else:
            bound = ops.conv_bound(weight, tmp.bias_acc(), x_max)
        width = acc_frac + 2 if geo["name"] in narrow else max(bound.bit_length() + 1, acc_frac + 2)
        formats["acc"] = QFormat(width, acc_frac, True, "TRN", "WRAP")
        act, lut = p.get("activation"), None
        if not last:
            formats["act"] = QFormat(xb, xb - 2, bool(rng.random() < 0.8) or act != "relu", rnd(),
                                     str(rng.choice(["SAT", "WRAP"])))
            if act in LUT_FUNCTIONS:
                formats["index"] = QFormat(ib, ib - 3, True, rnd(), "SAT")
                lut = _codes(rng, formats["act"], (1 << ib,))
        l = LayerSpec(**geo, formats=formats, weight=weight, bias=bias, lut=lut, activation=None if last else act)
        layers.append(l)
        prev, shape = l.out_format, l.out_shape
    spec = QuantSpec(network=network, input_format=fin, input_lut=input_lut, input_shape=input_shape, layers=layers)
    validate(spec)
    return spec


# A: 3 channels, non-square; conv stride 2 + pad with a random code + table + untied bias + relu;
# maxpool with sources; local with padding; subsample without activation; dense (LUT); rbf scores.
NET_A = ((3, 11, 9), [
    dict(kind="conv", out_maps=4, kernel=3, stride=2, pad=1, pad_code="rand", table=[[0], [1, 2], [0, 1, 2], [2]],
         untied=True, activation="relu"),
    dict(kind="maxpool", out_maps=5, kernel=2, source=[0, 1, 1, 3, 2]),
    dict(kind="local", out_maps=3, kernel=2, pad=1, pad_code="rand", activation="tanh"),
    dict(kind="subsample", kernel=2, activation=None),
    dict(kind="dense", out_maps=7, activation="sigmoid"),
    dict(kind="rbf", out_maps=4),
])
# B: LeNet-like, 2 channels: 5x5 conv padded with the background code, avgpool 3x3, a stride-2
# conv to 1x1 without activation (flattened), dense scores.
NET_B = ((2, 12, 12), [
    dict(kind="conv", out_maps=5, kernel=5, pad=2, activation="scaled_tanh"),
    dict(kind="avgpool", kernel=3, activation="hard_tanh"),
    dict(kind="conv", out_maps=6, kernel=3, stride=2, activation=None),
    dict(kind="dense", out_maps=3),
])
# C: the scores from a local layer with a 1x1 output; maxpool 3x3; untied local biases; 4 channels.
NET_C = ((4, 10, 7), [
    dict(kind="maxpool", kernel=3),
    dict(kind="subsample", kernel=2, out_maps=6, source=[0, 0, 1, 2, 3, 3], activation="relu"),
    dict(kind="local", out_maps=2, kernel=1, untied=True),
])
# D: a conv last layer (1x1 output, 64 classes) after a stride-2 local layer with untied biases.
NET_D = ((1, 9, 9), [
    dict(kind="local", out_maps=2, kernel=3, stride=2, pad=2, pad_code="rand", untied=True, activation="relu"),
    dict(kind="conv", out_maps=64, kernel=6),
])
NETS = {"A": NET_A, "B": NET_B, "C": NET_C, "D": NET_D}
# (x, w, b bits): float32 path, float64 path, int64 path
BITS = {"f32": (8, 8, 12), "f64": (14, 16, 24), "i64": (24, 30, 40)}


def images_for(rng, shape, n=6):
    c, h, w = shape
    imgs = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    imgs[0] = 255
    imgs[1] = 0
    imgs[2] = rng.choice(np.array([0, 255], np.uint8), (c, h, w))
    return imgs


