"""Random valid QuantSpecs for differential tests: emulator against hardware, bit for bit.

``random_spec(seed)`` draws a small network (numpy ``default_rng(seed)``: the same seed gives the
same spec) over every layer kind, shape and format feature of schema 2 that the hardware builds:
conv/local/subsample/avgpool/maxpool/dense/rbf, 1..4 input channels, non-square maps, stride 2,
padding with any pad code, connection tables, pool sources, untied biases, LUT/relu/no activation,
every rounding mode, SAT and WRAP, accumulators narrow enough to wrap. Networks stay small (each
is simulated cycle by cycle); ``feature_tags`` names what a spec covers, ``extreme_images``
drives it into saturation. ``python -m quantize.randspec --seed N --out DIR`` writes one.

Hardware rules kept: the last layer is dense, rbf or a conv/local with a 1x1 output; after a
"dense-mode" layer (dense, rbf, or conv/local whose kernel covers its whole unpadded input) only
dense/rbf follow; every format is at most 16 bits.

Formats are not drawn blindly: each layer's sums are measured with the emulator on 16 images
(extreme and random) and the binary points put so that the bias, the LUT address or the output
code sees them, give or take a few bits; a network whose scores are the same for every one of
those images is drawn again. So a seed's spec depends on the emulator too (it is exact: only a
change of the spec's arithmetic changes it).
"""
from __future__ import annotations

import argparse

import numpy as np

from model.util import cli

from .qformat import ROUNDING, QFormat
from .spec import KINDS, LUT_FUNCTIONS, LayerSpec, QuantSpec, out_extent
from .spec_check import validate

MODES = tuple(ROUNDING)
MAX_BITS = 16  # every format (the hardware takes 48; small widths keep tables and sims small)
FUNCTIONS = {
    "scaled_tanh": lambda v: 1.7159 * np.tanh(2 * v / 3),
    "tanh": np.tanh,
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "hard_tanh": lambda v: np.clip(v, -1, 1),
}
#: what :func:`feature_tags` can name: kinds, ``last:<kind>``, LUT functions and how their tables
#: were filled (``lut_exact|monotone|random``), ``round:<mode>`` of a rounding requantize (LUT
#: address or relu/none output), ``sat``/``wrap_act``/``unsigned`` of those targets,
#: ``index_left_shift`` (address with more fraction bits than the sum), ``narrow`` (a narrow-range
#: target), ``frac_outside`` (a binary point outside the word), ``wrap_acc`` (an
#: accumulator narrower than its bound), ``flatten_conv`` (a conv/local in dense mode)...
ALL_TAGS = frozenset(
    KINDS + LUT_FUNCTIONS + tuple(f"round:{m}" for m in MODES)
    + tuple(f"last:{k}" for k in ("conv", "local", "dense", "rbf"))
    + ("stride2", "pad", "pad_code_nonzero", "table", "source", "untied", "relu", "none", "lut", "channels>1",
       "nonsquare", "wrap_acc", "sat", "wrap_act", "unsigned", "flatten_conv", "lut_exact", "lut_monotone",
       "lut_random", "index_left_shift", "narrow", "frac_outside"))


def _pick(rng, options, p=None):
    p = None if p is None else np.asarray(p, float) / np.sum(p)
    return options[int(rng.choice(len(options), p=p))]


def _fmt(rng, lo: int, hi: int, signed=None, frac_max=None) -> QFormat:
    """A random format of lo..hi bits, any rounding, SAT or WRAP."""
    signed = bool(rng.random() < 0.7) if signed is None else signed
    width = int(rng.integers(max(lo, 2 if signed else 1), hi + 1))
    frac = int(rng.integers(0, min(width, width if frac_max is None else frac_max) + 1))
    return QFormat(width, frac, signed, _pick(rng, MODES), _pick(rng, ("SAT", "WRAP")))


def _codes(rng, fmt: QFormat, shape) -> np.ndarray:
    return rng.integers(fmt.code_min, fmt.code_max + 1, size=shape, dtype=np.int64)


def _table(rng, fmt: QFormat, n: int, monotone: bool) -> np.ndarray:
    c = _codes(rng, fmt, n)
    return np.sort(c) if monotone else c


def _lut(rng, func: str, index: QFormat, act: QFormat) -> tuple[np.ndarray, str]:
    """The table of ``func`` at every address (rounded into ``act``), or random monotone/any codes."""
    n = 1 << index.width
    how = _pick(rng, ("exact", "monotone", "random"), (0.5, 0.3, 0.2))
    if how == "exact":
        v = index.to_float(np.arange(index.code_min, index.code_min + n))
        table = act.from_float(FUNCTIONS[func](v))
        if len(np.unique(table)) > 1:
            return table, how
        how = "monotone"  # the function is flat at this resolution: a constant table tests little
    return _table(rng, act, n, how == "monotone"), how


def in_mag(fmt: QFormat) -> int:
    return max(-fmt.code_min, fmt.code_max)


def acc_bound(l: LayerSpec) -> int:
    """Largest |accumulator| the layer can reach: sum |w| * max |x| + |bias| (maxpool: 0)."""
    x = in_mag(l.formats["input"])
    if l.kind == "maxpool":
        return 0
    w = np.abs(l.weight)
    if l.kind in ("subsample", "avgpool"):
        s = w * l.kernel**2
    elif l.kind == "local":
        s = w.reshape(*w.shape[:3], -1).sum(-1)
    else:
        s = w.reshape(len(w), -1).sum(1)
    return int(s.max()) * x + int(np.abs(l.bias_acc()).max(initial=0))


def dense_mode(l: LayerSpec) -> bool:
    """Computed by the hardware as a matrix-vector product: only dense/rbf may follow."""
    return l.kind in ("dense", "rbf") or (l.kind in ("conv", "local") and l.pad == 0
                                          and l.kernel == l.in_h == l.in_w)


def _ones(h: int, w: int, lenet: bool) -> list[tuple[int, int, int]]:
    """Every (kernel, stride, pad) that makes an h x w input a 1x1 output."""
    return [(k, s, p) for k in range(1, 8) for s in (1, 2) for p in range(k)
            if out_extent(h, k, s, p) == 1 == out_extent(w, k, s, p) and not (lenet and (s, p) != (1, 0))]


def _geometry(rng, h: int, w: int, last: bool, lenet: bool):
    """(kernel, stride, pad) of a conv/local layer on h x w; a 1x1 output if ``last``."""
    if last:
        ones = _ones(h, w, lenet)
        full = [g for g in ones if g[2] == 0 and g[0] == h == w]
        return _pick(rng, full) if full and rng.random() < 0.5 else _pick(rng, ones)
    if h == w <= 7 and not lenet and rng.random() < 0.15:
        return h, 1, 0  # a flattening conv (dense mode) in the middle of the network
    while True:
        k = int(rng.integers(1, 8))
        s = 1 if lenet or rng.random() < 0.65 else 2
        p = int(rng.integers(0, k)) if not lenet and k > 1 and rng.random() < 0.4 else 0
        if h + 2 * p >= k and w + 2 * p >= k:
            return k, s, p


def _layer(rng, name: str, kind: str, fmt: QFormat, shape, last: bool, lenet: bool, max_maps: int,
           classes: int | None, pad0: int, pools: bool = False) -> LayerSpec:
    """A layer's shape and integer weights; formats are provisional until :func:`_calibrate`."""
    c, h, w = shape
    spatial = kind not in ("dense", "rbf")
    k, s, p, table, source, pad_code = 1, 1, 0, None, None, 0
    if kind in ("conv", "local"):
        k, s, p = (h, 1, 0) if lenet and not last and kind == "conv" and h <= 5 and rng.random() < 0.5 \
            else _geometry(rng, h, w, last, lenet)
        if lenet and name == "L0":  # LeNet-5's border: 2 pixels of grey level 0
            p = 2 if k >= 3 else 0
        pad_code = 0 if p == 0 or rng.random() < 0.4 else int(_codes(rng, fmt, 1)[0])
        pad_code = pad0 if lenet and p else pad_code
    elif spatial:
        k = 2 if lenet or pools and rng.random() < 0.6 else int(rng.integers(2, min(3, h, w) + 1))
        s = k
    if spatial:
        out_maps = int(rng.integers(1, max_maps + 1))
        if kind in ("subsample", "avgpool", "maxpool"):
            if not (pools and rng.random() < 0.85) and rng.random() < 0.5:
                source = [int(v) for v in rng.integers(0, c, out_maps)]
            else:
                out_maps = c
    else:
        out_maps = int(rng.integers(1, 11))
    if last:
        out_maps = classes or int(rng.integers(2, 13))
    in_maps = c if spatial else c * h * w
    l = LayerSpec(name=name, kind=kind, in_maps=in_maps, out_maps=out_maps, in_h=h if spatial else 1,
                  in_w=w if spatial else 1, kernel=k, formats={"input": fmt}, weight=None, bias=None,
                  stride=s, pad=p, pad_code=pad_code, source=source)
    if kind == "maxpool":
        return l
    oh, ow = l.out_h, l.out_w
    if kind == "conv" and c > 1 and rng.random() < 0.5:
        table = [sorted(int(v) for v in rng.choice(c, int(rng.integers(1, c + 1)), replace=False))
                 for _ in range(out_maps)]
    taps = {"conv": max(len(t) for t in table) * k * k if table else c * k * k, "local": c * k * k,
            "subsample": k * k, "avgpool": k * k, "dense": in_maps, "rbf": in_maps}[kind]
    room = MAX_BITS - 1 - int(taps).bit_length() - in_mag(fmt).bit_length()
    if kind == "rbf":
        wfmt = QFormat(int(rng.integers(2, 5)), 0, True, _pick(rng, MODES), "SAT")
    else:
        wfmt = _fmt(rng, 2, int(np.clip(room, 2, 8)), signed=rng.random() < 0.85, frac_max=0)
    wshape = {"conv": (out_maps, c, k, k), "local": (out_maps, oh, ow, c, k, k), "subsample": (out_maps,),
              "avgpool": (out_maps,), "dense": (out_maps, in_maps), "rbf": (out_maps, in_maps)}[kind]
    if kind == "rbf":
        weight = rng.choice(np.array([-1, 1], np.int64), wshape)
    else:
        weight = _codes(rng, wfmt, wshape)
        if kind in ("subsample", "avgpool"):  # a zero coefficient makes a constant map
            weight[weight == 0] = wfmt.code_max
        elif rng.random() < 0.3:  # some zero weights (sparse rows)
            weight[rng.random(wshape) < 0.4] = 0
    if table is not None:
        mask = np.zeros((out_maps, c), bool)
        for o, t in enumerate(table):
            mask[o, t] = True
        weight[~mask] = 0
    l.weight, l.table = weight, table
    l.formats.update(weight=wfmt, acc=QFormat(62, fmt.frac, True, "TRN", "WRAP"))  # wide: the sums, unwrapped
    if kind in ("conv", "local", "subsample", "dense"):
        l.formats["bias"] = QFormat(2, 0)
        untied = kind in ("conv", "local") and not lenet and rng.random() < 0.3
        l.bias = np.zeros((out_maps, oh, ow) if untied else (out_maps,), np.int64)
    return l


def _calibrate(rng, spec: QuantSpec, images: np.ndarray, lenet: bool, last: bool) -> str | None:
    """Formats of the last layer of ``spec`` from its sums on ``images`` (bias still zero): the
    bias, LUT address or output code sees the sums, give or take a few bits (some layers
    saturate, some lose their low bits, some accumulators wrap). Fractions are labels: the
    weight's is chosen to put the binary points where they are wanted. Returns how a LUT was
    filled (``_lut``), if the layer has one."""
    from .emulator import Emulator

    l = spec.layers[-1]
    f = l.formats
    fmt, wfmt = f["input"], f["weight"]
    sums = np.abs(Emulator(spec).run(images).tensors[l.name])
    mag = int(np.percentile(sums, 95)).bit_length()  # bits of a large sum (codes)
    act = None if last else "lut" if lenet else _pick(rng, ("lut", "relu", "none"), (0.5, 0.25, 0.25))
    if act is None:
        target, t_frac, shift = None, 0, 0
    else:
        target = _fmt(rng, 2 if rng.random() < 0.9 else 1, 8, signed=rng.random() < (0.8 if act == "lut" else 0.6))
        # a LUT's addresses span about +-4 (its functions' interesting range); other codes any
        t_frac = int(np.clip(target.width - 3 + rng.integers(-1, 2), 0, target.width)) if act == "lut" \
            else target.frac
        shift = mag - (target.width - target.signed) + int(rng.integers(-2, 2))
    wf_max = min(wfmt.width, MAX_BITS - 2 - fmt.frac)
    w_frac = int(np.clip(shift + t_frac - fmt.frac, 0, wf_max)) if target and rng.random() < 0.85 \
        else int(rng.integers(0, wf_max + 1))
    f["weight"] = wfmt.with_(frac=w_frac)
    acc_frac = fmt.frac + w_frac
    if l.bias is not None:
        bw = int(rng.integers(2, 13))
        top = min(bw, acc_frac)
        bfrac = int(rng.integers(min(max(0, top - 3), top), top + 1))
        f["bias"] = QFormat(bw, bfrac, bool(rng.random() < 0.8), _pick(rng, MODES), _pick(rng, ("SAT", "WRAP")))
        big = max(1, (1 << max(mag - int(rng.integers(0, 4)), 0)) >> (acc_frac - bfrac))  # about the sums' size
        lo, hi = max(f["bias"].code_min, -big), min(f["bias"].code_max, big)
        l.bias = rng.integers(lo, hi + 1, size=l.bias.shape, dtype=np.int64)
    need = acc_bound(l).bit_length() + 1
    lo = max(2, acc_frac, min(need - 1, mag))
    width = int(rng.integers(lo, max(lo, need - 1) + 1)) if rng.random() < 0.25 else need + int(rng.integers(0, 2))
    f["acc"] = QFormat(int(np.clip(width, max(2, acc_frac), MAX_BITS)), acc_frac, True, _pick(rng, MODES), "WRAP")
    if act is None:
        return None
    # relu/none targets as a QONNX model gives them: the binary point may lie outside the word,
    # and a saturating one may be narrow (no most negative / largest code)
    lo_frac, hi_frac = (0, target.width) if act == "lut" else (-2, target.width + 2)
    target = target.with_(frac=int(np.clip(acc_frac - shift, lo_frac, hi_frac)))
    if act != "lut" and target.overflow == "SAT" and target.width >= 2 and rng.random() < 0.3:
        target = target.with_(narrow=True)
    if act == "lut":
        l.activation = _pick(rng, LUT_FUNCTIONS)
        f["index"] = target
        w_act = int(rng.integers(2, 9))
        a = _fmt(rng, w_act, w_act)
        f["act"] = a.with_(frac=int(np.clip(w_act - 2 - (not a.signed) + rng.integers(-1, 2), 0, w_act)))
        l.lut, how = _lut(rng, l.activation, f["index"], f["act"])
        return how
    l.activation = None if act == "none" else act
    f["act"] = target
    return None


def _images(rng, shape, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n,) + tuple(shape), dtype=np.uint8)


def _attempt(rng, max_side: int, max_maps: int, max_layers: int, max_macs: int, lenet: bool,
             classes: int | None, pools: bool = False) -> QuantSpec | None:
    c = 1 if lenet or rng.random() < 0.4 else int(rng.integers(2, 5))
    h = int(rng.integers(4, max_side + 1))
    w = h if lenet or rng.random() < 0.6 else int(rng.integers(4, max_side + 1))
    fmt = _fmt(rng, 2, 8)
    input_lut = np.stack([_table(rng, fmt, 256, rng.random() < 0.7) for _ in range(c)])
    spec = QuantSpec(network=f"random{'-lenet' if lenet else ''}", input_format=fmt, input_lut=input_lut,
                     input_shape=(c, h, w), layers=[], provenance={"lut_fill": {}})
    images = None
    n = int(rng.integers(2, max_layers + 1))
    shape, dense = (c, h, w), False
    for i in range(n):
        last = i == n - 1
        if dense or shape[1:] == (1, 1) and not last:
            kind = "rbf" if last and rng.random() < 0.35 else "dense"
        elif last:
            n_kinds = (2 if not _ones(*shape[1:], lenet) else 3 if lenet else 4)
            kind = _pick(rng, ("dense", "rbf", "conv", "local")[:n_kinds], (0.25, 0.2, 0.3, 0.25)[:n_kinds])
        else:
            kinds = ("conv", "local", "subsample", "avgpool", "maxpool", "dense")
            p = (0.34, 0.13, 0.15, 0.13, 0.13, 0.12)
            if lenet:
                kinds, p = ("conv", "subsample", "dense"), ((1, 0, 0) if i == 0 else (0.5, 0.4, 0.1))
            elif pools:
                p = (0.5, 0.3, 0.04, 0.03, 0.03, 0.1)
            kind = _pick(rng, kinds, p)
            prev = spec.layers[-1] if spec.layers else None
            if pools and prev is not None and prev.kind in ("conv", "local") and not dense_mode(prev) \
                    and rng.random() < 0.75:  # a pool after a conv: one that hw.program can fuse, or k = 3
                kind = _pick(rng, ("subsample", "avgpool", "maxpool"))
            if kind in ("subsample", "avgpool", "maxpool") and min(shape[1:]) < 2:
                kind = "dense"
        l = _layer(rng, f"L{i}", kind, fmt, shape, last, lenet, max_maps, classes, int(input_lut[0, 0]), pools)
        spec.layers.append(l)
        if spec.macs() > max_macs:
            return None
        if kind != "maxpool":
            if images is None:
                images = np.concatenate([extreme_images(spec, rng, 6), _images(rng, (c, h, w), 10)])
            fill = _calibrate(rng, spec, images, lenet, last)
            if fill:
                spec.provenance["lut_fill"][l.name] = fill
        fmt, shape, dense = l.out_format, l.out_shape, dense or dense_mode(l)
    from .emulator import Emulator

    scores = Emulator(spec).run(images, keep=False).scores
    return spec if np.any(scores != scores[:1]) else None  # not the same scores for every image


def random_spec(seed: int, *, max_side: int = 12, max_maps: int = 4, max_layers: int = 5, max_macs: int = 2500,
                lenet: bool = False, classes: int | None = None, pools: bool = False) -> QuantSpec:
    """A random valid spec, a pure function of the arguments.

    Parameters
    ----------
    seed : int
        Seed of ``numpy.random.default_rng``.
    max_side, max_maps, max_layers : int
        Input side (4..max_side), maps per spatial layer, layers (2..max_layers).
    max_macs : int
        Networks with more multiply-accumulates per image are drawn again (simulation cost), and
        so are networks whose scores are the same for every calibration image (they test little).
    lenet : bool
        Only the classic subset: one square channel, conv (stride 1; the first padded with the
        code of grey level 0), 2x2 subsampling, dense/rbf, table activations everywhere.
    classes : int, optional
        Force the number of outputs of the last layer.
    pools : bool
        Mostly a pool (k = 2 or 3, mostly map o from map o) after each spatial conv/local: the
        pairs that ``hw.program.compile_spec(..., fuse_pools=True)`` fuses, and some it cannot.
    """
    import torch

    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the calibration runs are tiny: threads cost ~100x here
    try:
        for _ in range(1000):
            spec = _attempt(rng, max_side, max_maps, max_layers, max_macs, lenet, classes, pools)
            if spec is not None:
                break
        else:  # pragma: no cover
            raise RuntimeError(f"seed {seed}: no network within {max_macs} MACs")
    finally:
        torch.set_num_threads(threads)
    spec.provenance = {"generator": "quantize.randspec", "seed": int(seed), "lenet": lenet,
                       "max_macs": max_macs, **({"pools": True} if pools else {}), **spec.provenance}
    validate(spec)
    return spec


def feature_tags(spec: QuantSpec) -> set[str]:
    """What ``spec`` exercises (a subset of :data:`ALL_TAGS`)."""
    c, h, w = spec.input_shape
    tags = {"channels>1"} if c > 1 else set()
    if h != w or any(l.spatial and l.in_h != l.in_w for l in spec.layers):
        tags.add("nonsquare")
    for i, l in enumerate(spec.layers):
        f = l.formats
        tags.add(l.kind)
        tags |= {t for t, on in (("stride2", l.kind in ("conv", "local") and l.stride == 2), ("pad", l.pad > 0),
                                 ("pad_code_nonzero", l.pad > 0 and l.pad_code != 0), ("table", l.table is not None),
                                 ("source", l.source is not None), ("untied", l.untied),
                                 ("flatten_conv", l.kind in ("conv", "local") and dense_mode(l))) if on}
        if l.kind != "maxpool" and acc_bound(l) > f["acc"].code_max:
            tags.add("wrap_acc")
        if i == len(spec.layers) - 1:
            tags.add(f"last:{l.kind}")
            continue
        if l.kind == "maxpool":
            continue
        target = f["index"] if l.has_lut else f["act"]
        tags.add("lut" if l.has_lut else l.activation or "none")
        if l.has_lut:
            tags.add(l.activation)
            fill = spec.provenance.get("lut_fill", {}).get(l.name)
            if fill:
                tags.add(f"lut_{fill}")
        tags.add("sat" if target.overflow == "SAT" else "wrap_act")
        if target.narrow:
            tags.add("narrow")
        if not 0 <= target.frac <= target.width:
            tags.add("frac_outside")
        if not target.signed:
            tags.add("unsigned")
        if f["acc"].frac > target.frac:
            tags.add(f"round:{target.rounding}")
        elif f["acc"].frac < target.frac and l.has_lut:
            tags.add("index_left_shift")
    return tags


def extreme_images(spec: QuantSpec, rng, n: int) -> np.ndarray:
    """``n`` uint8 images N x C x H x W: all 0, all 255, checkerboards, random binary and random
    grey levels in turn (from a random start): the inputs that saturate a layer."""
    c, h, w = spec.input_shape
    par = np.indices((c, h, w)).sum(0) % 2
    patterns = [lambda: np.zeros((c, h, w)), lambda: np.full((c, h, w), 255), lambda: par * 255,
                lambda: (1 - par) * 255, lambda: rng.integers(0, 2, (c, h, w)) * 255,
                lambda: rng.integers(0, 256, (c, h, w))]
    start = int(rng.integers(len(patterns)))
    return np.stack([patterns[(start + i) % len(patterns)]() for i in range(n)]).astype(np.uint8).reshape(n, c, h, w)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m quantize.randspec",
                                description="Write a random valid QuantSpec (small; for differential tests).")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="spec directory to write")
    p.add_argument("--lenet", action="store_true", help="only conv/subsample/dense with table activations")
    p.add_argument("--max-macs", type=int, default=2500)
    args = p.parse_args(argv)
    spec = random_spec(args.seed, lenet=args.lenet, max_macs=args.max_macs)
    out = spec.save(args.out)
    shape = " -> ".join(f"{l.kind}{'x'.join(map(str, l.out_shape))}" for l in spec.layers)
    print(f"{out}: input {'x'.join(map(str, spec.input_shape))} -> {shape}; {spec.macs()} MACs; "
          f"tags: {' '.join(sorted(feature_tags(spec)))}")


if __name__ == "__main__":
    raise SystemExit(main())
