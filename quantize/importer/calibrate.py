"""Generic calibration: a :class:`~quantize.floatnet.FloatNet` + a config -> a QuantSpec.

The same rules as LeNet's :func:`quantize.calibrate.build_spec`, for any imported chain. The
config fixes the widths; a float forward pass on the calibration images fixes the binary points:

- input: ``input_bits``, signed when some channel's ``(p/255 - mean)/std`` is negative; of the two
  binary points around the one that holds the largest value, the one with the smaller RMS error
  over the 256 grey levels (an 8-bit [0, 1] input takes 1.0 -> 255/256 rather than lose a bit);
- weights, biases: the most fraction bits that hold the largest magnitude (``fit_format``); the
  bias at most ``acc.frac``; an average pool's coefficient 1/k**2 as a weight code;
- accumulator: frac = input.frac + weight.frac, width from the analytic bound (never wraps);
- ``relu``: unsigned ``act_bits`` holding the 99.99th percentile of the layer's outputs;
- no activation (not the last layer): signed, holding the 99.99th percentile of |output|; an
  average pool without activation keeps its input format (a mean stays in its inputs' range);
- tables (``tanh``, ``sigmoid``, ``hard_tanh``): the ``index`` like LeNet's squash (the 99.99th
  percentile of |pre-activation|, capped where the function is flat: tanh 4, sigmoid 8, a clip
  its bounds); ``act`` the function's range: tanh signed [-1, 1), sigmoid unsigned [0, 1), a clip
  [lo, hi]; the table is f sampled at every address (:func:`quantize.calibrate.function_table`);
- max-pools keep their input format; the last layer's accumulators are the scores.

A quantized model (QONNX) fixes formats itself (``FloatNet.input_format``, ``FloatLayer.formats``):
those are taken as they are, and only the rest is calibrated (a table's index, a float bias:
rounded to the accumulator's lsb). A given bias format is narrowed to the bits its codes use.
"""
from __future__ import annotations

import numpy as np

from model.util import UserError

from .. import ops
from ..calibrate import _layer_cfg, acc_format, fit_format, function_table
from ..floatnet import FUNCTIONS, FloatNet
from ..qformat import QFormat, bits_for
from ..spec import LayerSpec, QuantSpec, validate

PERCENTILE = 99.99
#: |pre-activation| beyond which the table function is flat (the index saturates there)
INDEX_CAPS = {"tanh": 3.99, "sigmoid": 7.99}


def input_format(values: np.ndarray, width: int, rounding: str) -> QFormat:
    """The input format for the C x 256 float input values (see the module docstring)."""
    signed = bool(values.min() < 0)
    base = fit_format(float(np.abs(values).max()), width, rounding, signed=signed)
    best, best_err = None, None
    for frac in (base.frac, base.frac + 1):
        if frac > width:
            continue
        f = base.with_(frac=frac)
        err = float(np.sqrt(np.mean((f.to_float(f.from_float(values)) - values) ** 2)))
        if best is None or err < best_err:
            best, best_err = f, err
    return best


def _pct(a: np.ndarray) -> float:
    return float(np.percentile(a, PERCENTILE)) if a is not None and a.size else 0.0


def table_formats(act: str, clip, pre: np.ndarray, idx_bits: int, act_bits: int, rnd: str) -> tuple[QFormat, QFormat]:
    """(index, act) of a table activation from the layer's float pre-activations."""
    lo, hi = clip if clip else (-1.0, 1.0)
    cap = INDEX_CAPS.get(act, max(abs(lo), abs(hi)))
    r = _pct(np.abs(pre))
    ib = bits_for(min(max(r, 2.0 ** -8), cap))
    index = QFormat(idx_bits, max(0, min(idx_bits, idx_bits - ib)), True, rnd, "SAT")
    if act == "tanh":
        out = QFormat(act_bits, act_bits - 1, True, rnd, "SAT")
    elif act == "sigmoid":
        out = QFormat(act_bits, act_bits, False, rnd, "SAT")
    else:
        out = fit_format(max(abs(lo), abs(hi)), act_bits, rnd, signed=lo < 0)
    return index, out


def _given_bias(bf: QFormat, codes: np.ndarray, acc_frac: int, l) -> QFormat:
    """A bias format from the model: at most the accumulator's fraction bits; as narrow as its codes."""
    if bf.frac > acc_frac:
        raise UserError(f"layer {l.name} ({l.nodes[0]!r}): its bias quantizer has a finer lsb (2**-{bf.frac}) than "
                        f"the products (2**-{acc_frac}); a bias scale of input scale x weight scale is supported "
                        "(Brevitas Int32Bias / Int16Bias)")
    need = max(2, int(np.abs(codes).max(initial=0)).bit_length() + 1)
    return bf.with_(width=min(bf.width, need), narrow=False) if need < bf.width else bf


def build_spec(net: FloatNet, cfg: dict, images_u8: np.ndarray, provenance: dict | None = None) -> QuantSpec:
    """Quantize ``net`` with the widths of ``cfg``; binary points from a float pass over ``images_u8``
    (uint8 N x C x H x W, the spec's input shape)."""
    rnd = cfg["rounding"]
    _, pres = net.forward(images_u8, collect=True)
    values = net.input_values()
    in_fmt = net.input_format or input_format(values, cfg["input_bits"], rnd)
    input_lut = in_fmt.from_float(values)
    prev = in_fmt
    layers = []
    n = len(net.layers)
    for i, (l, pre) in enumerate(zip(net.layers, pres)):
        lc = _layer_cfg(cfg, l.name)
        last = i == n - 1
        in_max = max(-prev.code_min, prev.code_max)
        spatial = l.kind != "dense"
        c_in = l.in_shape[0]
        geometry = dict(name=l.name, kind=l.kind, in_maps=c_in, out_maps=l.out_shape[0],
                        in_h=l.in_shape[1] if spatial else 1, in_w=l.in_shape[2] if spatial else 1,
                        kernel=l.kernel, stride=l.stride, pad=l.pad,
                        pad_code=int(prev.from_float(0.0)) if l.pad else 0)
        if l.kind == "maxpool":
            layers.append(LayerSpec(**geometry, formats={"input": prev}, weight=None, bias=None))
            continue
        if l.kind == "avgpool":
            coef = 1.0 / l.kernel ** 2
            wf = fit_format(coef, lc["weight_bits"], rnd)
            w = np.full(c_in, int(wf.from_float(coef)), np.int64)
            acc_frac = prev.frac + wf.frac
            bound = ops.subsample_bound(w, np.zeros(c_in, np.int64), in_max, l.kernel)
            formats, b = {"input": prev, "weight": wf}, None
        else:
            given = l.formats
            wf = given.get("weight") or fit_format(float(np.abs(l.weight).max()), lc["weight_bits"], rnd)
            acc_frac = prev.frac + wf.frac
            bf = given.get("bias") or fit_format(float(np.abs(l.bias).max()), lc["bias_bits"], rnd, max_frac=acc_frac)
            w, b = wf.from_float(l.weight), bf.from_float(l.bias)
            if "bias" in given:
                bf = _given_bias(bf, b, acc_frac, l)
            bound = ops.conv_bound(w, b << (acc_frac - bf.frac), in_max)
            formats = {"input": prev, "weight": wf, "bias": bf}
        formats["acc"] = acc_format(bound, acc_frac, lc.get("acc_bits"))
        lut = None
        if not last:
            act = l.activation
            if "act" in l.formats:  # the model's own output quantizer
                formats["act"] = l.formats["act"]
                if act not in (None, "relu"):
                    formats["index"] = table_formats(act, l.clip, pre, lc["index_bits"], lc["act_bits"], rnd)[0]
                    lo, hi = l.clip if l.clip else (-1.0, 1.0)
                    lut = function_table(formats["index"], formats["act"], lambda v: FUNCTIONS[act](v, lo, hi))
            elif act == "relu":
                formats["act"] = fit_format(_pct(np.maximum(pre, 0)), lc["act_bits"], rnd, signed=False)
            elif act is None and l.kind == "avgpool":
                formats["act"] = prev
            elif act is None:
                formats["act"] = fit_format(_pct(np.abs(pre)), lc["act_bits"], rnd)
            else:
                index, out = table_formats(act, l.clip, pre, lc["index_bits"], lc["act_bits"], rnd)
                formats.update(index=index, act=out)
                lo, hi = l.clip if l.clip else (-1.0, 1.0)
                lut = function_table(index, out, lambda v: FUNCTIONS[act](v, lo, hi))
        elif l.activation:  # the importer drops it; a hand-built FloatNet must too
            raise UserError(f"layer {l.name}: the last layer gives the scores and takes no activation")
        layers.append(LayerSpec(**geometry, formats=formats, weight=w, bias=b, lut=lut,
                                activation=None if last else l.activation))
        prev = formats.get("act", formats["acc"])
    spec = QuantSpec(network=net.name, input_format=in_fmt, input_lut=input_lut, input_shape=tuple(net.input_shape),
                     layers=layers, provenance={**(provenance or {}), "config": dict(cfg)})
    validate(spec)
    return spec
