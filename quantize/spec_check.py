"""Validation of a :class:`~quantize.spec.QuantSpec`: shapes, format relations, codes that fit their
formats and the limits of what the flow builds. Every failure is one :class:`UserError` line that
names the layer and the field."""
from __future__ import annotations

import numpy as np

from model.util import UserError

from .qformat import QFormat

MAX_CHANNELS, MAX_SIDE, MAX_KERNEL = 4, 64, 7
MAX_PAD = 8  # LeNet-1 centres its 16x16 digit in a 28x28 field: pad 6 around a 5x5 kernel
CLASSES = (2, 64)
POOL_KERNELS = (2, 3)
MAX_INDEX_BITS = 16


def _fits(where: str, codes, fmt: QFormat) -> None:
    codes = np.asarray(codes)
    if codes.size and not fmt.contains(codes):
        bad = codes[(codes < fmt.code_min) | (codes > fmt.code_max)].flat[0]
        raise UserError(f"{where}: code {bad} does not fit {fmt}")


def _input(spec) -> None:
    c, h, w = spec.input_shape
    if not 1 <= c <= MAX_CHANNELS:
        raise UserError(f"input.channels: {c}, expected 1..{MAX_CHANNELS}")
    for k, v in (("height", h), ("width", w)):
        if not 1 <= v <= MAX_SIDE:
            raise UserError(f"input.{k}: {v}, expected 1..{MAX_SIDE}")
    if spec.input_lut.shape != (c, 256):
        raise UserError(f"input.lut: shape {spec.input_lut.shape}, expected ({c}, 256): one table per channel")
    _fits("input.lut", spec.input_lut, spec.input_format)


def _shape(l, w: str, prev_shape) -> None:
    pm, ph, pw = prev_shape
    for key in ("in_maps", "out_maps", "in_h", "in_w", "kernel", "stride"):
        if getattr(l, key) < 1:
            raise UserError(f"{w}.{key}: must be positive, got {getattr(l, key)}")
    if l.spatial:
        if (l.in_maps, l.in_h, l.in_w) != (pm, ph, pw):
            raise UserError(f"{w}: input {l.in_maps}@{l.in_h}x{l.in_w} does not match the previous output {pm}@{ph}x{pw}")
    elif l.in_maps != pm * ph * pw:
        raise UserError(f"{w}.in_maps: {l.in_maps}, but the previous layer gives {pm * ph * pw} values")
    if l.kind in ("conv", "local"):
        if not 1 <= l.kernel <= MAX_KERNEL:
            raise UserError(f"{w}.kernel: {l.kernel}, expected 1..{MAX_KERNEL}")
        if l.stride not in (1, 2):
            raise UserError(f"{w}.stride: {l.stride}, expected 1 or 2")
        if not 0 <= l.pad <= MAX_PAD:
            raise UserError(f"{w}.pad: {l.pad}, expected 0..{MAX_PAD}")
        _fits(f"{w}.pad_code", [l.pad_code], l.formats["input"])
    elif l.spatial:
        if l.kernel not in POOL_KERNELS:
            raise UserError(f"{w}.kernel: {l.kind} is k x k for k in {POOL_KERNELS}, got {l.kernel}")
        if l.stride != l.kernel:
            raise UserError(f"{w}.stride: {l.kind} has stride = kernel = {l.kernel}, got {l.stride}")
        if l.pad:
            raise UserError(f"{w}.pad: {l.kind} takes no padding, got {l.pad}")
        src = l.sources()
        if len(src) != l.out_maps or any(not isinstance(s, int) or not 0 <= s < l.in_maps for s in src):
            raise UserError(f"{w}.source: expected {l.out_maps} input map numbers in 0..{l.in_maps - 1}")
        if l.source is None and l.in_maps != l.out_maps:
            raise UserError(f"{w}.source: needed when in_maps != out_maps")
    elif l.pad or l.stride != 1:
        raise UserError(f"{w}: a {l.kind} layer has no stride or padding")
    if l.spatial and (l.out_h < 1 or l.out_w < 1):
        raise UserError(f"{w}.kernel: {l.kernel} (pad {l.pad}) larger than the input {l.in_h}x{l.in_w}")
    if l.table is not None:
        if l.kind != "conv":
            raise UserError(f"{w}.table: only a conv layer has a connection table")
        if (not isinstance(l.table, list) or len(l.table) != l.out_maps
                or any(not isinstance(t, list) or not t or any(not isinstance(m, int) or isinstance(m, bool)
                                                               or not 0 <= m < l.in_maps for m in t) for t in l.table)):
            raise UserError(f"{w}.table: expected {l.out_maps} non-empty lists of input maps in 0..{l.in_maps - 1}")
    if l.source is not None and l.kind not in ("subsample", "avgpool", "maxpool"):
        raise UserError(f"{w}.source: only a pooling layer has a source map list")


def _arrays(l, w: str) -> None:
    f = l.formats
    oh, ow = l.out_h, l.out_w
    shapes = {"conv": (l.out_maps, l.in_maps, l.kernel, l.kernel),
              "local": (l.out_maps, oh, ow, l.in_maps, l.kernel, l.kernel),
              "subsample": (l.out_maps,), "avgpool": (l.out_maps,),
              "dense": (l.out_maps, l.in_maps), "rbf": (l.out_maps, l.in_maps)}
    if l.kind == "maxpool":
        if l.weight is not None or l.bias is not None:
            raise UserError(f"{w}: a maxpool layer has no weights or biases")
        return
    shape = shapes[l.kind]
    if l.weight is None or l.weight.shape != shape:
        what = " (one weight set per output position)" if l.kind == "local" else ""
        raise UserError(f"{w}.weight: shape {None if l.weight is None else l.weight.shape}, expected {shape}{what}")
    _fits(f"{w}.weight", l.weight, f["weight"])
    if l.kind == "conv" and l.table is not None:
        mask = np.zeros((l.out_maps, l.in_maps), bool)
        for o, t in enumerate(l.table):
            mask[o, t] = True
        if np.any(l.weight[~mask] != 0):
            raise UserError(f"{w}.weight: non-zero weights outside the connection table")
    if l.kind == "rbf" and not np.all(np.abs(l.weight) == 1):
        raise UserError(f"{w}.weight: RBF centres must be +-1")
    if "bias" in f:
        ok = [(l.out_maps,)] + ([(l.out_maps, oh, ow)] if l.kind in ("conv", "local") else [])
        if l.bias is None or l.bias.shape not in ok:
            raise UserError(f"{w}.bias: shape {None if l.bias is None else l.bias.shape}, expected "
                            + " or ".join(map(str, ok)))
        _fits(f"{w}.bias", l.bias, f["bias"])
    elif l.bias is not None:
        raise UserError(f"{w}.bias: a {l.kind} layer has no bias")


def _activation(l, w: str, last: bool) -> None:
    f = l.formats
    if l.kind == "maxpool":
        if l.activation is not None or set(f) != {"input"}:
            raise UserError(f"{w}: a maxpool layer passes its input codes on: only an input format, no activation")
        if last:
            raise UserError(f"{w}: the last layer must produce scores (dense or rbf), not maxpool")
        return
    if f["acc"].frac != f["input"].frac + f["weight"].frac:
        raise UserError(f"{w}.formats.acc: frac {f['acc'].frac} must equal input.frac + weight.frac = {f['input'].frac + f['weight'].frac}")
    if "bias" in f and f["bias"].frac > f["acc"].frac:
        raise UserError(f"{w}.formats.bias: frac {f['bias'].frac} exceeds acc.frac {f['acc'].frac}")
    if f["acc"].overflow != "WRAP" or not f["acc"].signed:
        raise UserError(f"{w}.formats.acc: the accumulator must be signed with WRAP overflow")
    if last:
        if l.activation is not None or "act" in f:
            raise UserError(f"{w}.activation: the last layer's accumulators are the scores: no activation, no act format")
        return
    if "act" not in f:
        raise UserError(f"{w}.formats: missing format 'act' (every layer but the last writes a feature map)")
    if l.activation in (None, "relu"):
        if "index" in f or l.lut is not None:
            raise UserError(f"{w}: activation {l.activation or 'none'} takes no lookup table (no index format, no lut)")
        return
    if "index" not in f:
        raise UserError(f"{w}.formats: missing format 'index' (the address of the {l.activation} table)")
    n = 1 << f["index"].width
    if f["index"].width > MAX_INDEX_BITS:
        raise UserError(f"{w}.formats.index: {f['index'].width}-bit lookup table is too large (at most {MAX_INDEX_BITS} bits)")
    if l.lut is None or l.lut.shape != (n,):
        raise UserError(f"{w}.lut: shape {None if l.lut is None else l.lut.shape}, expected ({n},) for a {f['index'].width}-bit index")
    _fits(f"{w}.lut", l.lut, f["act"])


def validate(spec) -> None:
    """Check shapes, format relations and that every integer fits its format; name the first bad field."""
    _input(spec)
    prev_fmt, prev_shape = spec.input_format, spec.input_shape
    names = set()
    for i, l in enumerate(spec.layers):
        w = f"layer {l.name}"
        if l.name in names:
            raise UserError(f"{w}: duplicate layer name")
        names.add(l.name)
        if l.formats["input"] != prev_fmt:
            raise UserError(f"{w}.formats.input: {l.formats['input']} differs from the previous layer's output {prev_fmt}")
        _shape(l, w, prev_shape)
        _arrays(l, w)
        _activation(l, w, i == len(spec.layers) - 1)
        prev_fmt, prev_shape = l.out_format, l.out_shape
    last = spec.layers[-1]
    if last.kind not in ("dense", "rbf") and (last.out_h, last.out_w) != (1, 1):
        raise UserError(f"layer {last.name}: the last layer gives the scores: dense, rbf, or a conv/local layer with a 1x1 output")
    if not CLASSES[0] <= spec.classes <= CLASSES[1]:
        raise UserError(f"layer {last.name}.out_maps: {spec.classes} classes, expected {CLASSES[0]}..{CLASSES[1]}")
