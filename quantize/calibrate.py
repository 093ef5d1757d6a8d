"""Calibration: choose every format of a QuantSpec from the float model and activation statistics.

A *config* (a preset name or a JSON file) fixes the bit widths; calibration fixes the binary points:

- input/activation states: frac = width - 2 (the squashed range is +-1.7159, the input -0.1..1.175);
- weights, coefficients, biases: the most fraction bits that still hold the largest magnitude;
- LUT address (``index``): enough integer bits for the 99.99th percentile of |pre-activation| seen
  on training images, capped at +-4 where 1.7159 tanh(2a/3) is flat to within 2%;
- accumulator: frac = input.frac + weight.frac, width from the analytic bound so it never wraps.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from model import data
from model.lenet import LeNet, input_geometry, preprocess, rbf_centres, A as TANH_A, S as TANH_S
from model.util import UserError, load_json_object

from .ops import conv_bound
from .qformat import ROUNDING, QFormat, bits_for
from .spec import LayerSpec, QuantSpec, validate

PRESETS = {
    # 8-bit weights and activations, 16-bit biases, 10-bit LUT addresses, exact accumulators
    "q8": {"input_bits": 8, "weight_bits": 8, "bias_bits": 16, "act_bits": 8, "index_bits": 10,
           "rounding": "RND_CONV", "qat_epochs": 0},
    # the ANNA chip: 6-bit weights, 3-bit neuron states (input included), fine-tuned with QAT
    "anna": {"input_bits": 3, "weight_bits": 6, "bias_bits": 12, "act_bits": 3, "index_bits": 8,
             "rounding": "RND_CONV", "qat_epochs": 2},
}
CONFIG_KEYS = {"input_bits", "weight_bits", "bias_bits", "act_bits", "index_bits", "rounding", "acc_bits",
               "qat_epochs", "qat_lr", "layers", "calibration_images", "seed", "preset"}
LAYER_KEYS = {"weight_bits", "act_bits", "index_bits", "bias_bits", "acc_bits"}
INDEX_CAP = 3.99
CALIBRATION_IMAGES = 2000


def load_config(preset: str | None = None, path: str | None = None) -> dict:
    """A preset, or a JSON config file (which may name a ``preset`` to start from), validated."""
    if path:
        user = load_json_object(path, "--config")
        base = dict(PRESETS[user.get("preset", "q8")]) if user.get("preset", "q8") in PRESETS else None
        if base is None:
            raise UserError(f"--config {path}: unknown preset {user['preset']!r}")
        base.update(user)
        base.setdefault("preset", f"custom:{Path(path).name}")
        return check_config(base)
    if preset not in PRESETS:
        raise UserError(f"unknown --preset {preset!r} (one of {', '.join(PRESETS)})")
    return check_config({**PRESETS[preset], "preset": preset})


def check_config(cfg: dict) -> dict:
    unknown = set(cfg) - CONFIG_KEYS
    if unknown:
        raise UserError(f"config: unknown key {sorted(unknown)[0]!r}")
    for key in ("input_bits", "weight_bits", "bias_bits", "act_bits", "index_bits"):
        v = cfg.get(key)
        lo, hi = (2, 16) if key == "index_bits" else (2, 32)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise UserError(f"config: {key} = {v!r} outside {lo}..{hi}")
    acc = cfg.get("acc_bits")
    if acc is not None and (not isinstance(acc, int) or isinstance(acc, bool) or not 2 <= acc <= 64):
        raise UserError(f"config: acc_bits = {acc!r} outside 2..64 (or null for the exact bound)")
    if cfg.get("rounding") not in ROUNDING:
        raise UserError(f"config: unknown rounding {cfg.get('rounding')!r} (one of {', '.join(ROUNDING)})")
    for name, over in (cfg.get("layers") or {}).items():
        if not isinstance(over, dict) or set(over) - LAYER_KEYS:
            raise UserError(f"config: layers.{name}: only {', '.join(sorted(LAYER_KEYS))} may be overridden")
        for key, v in over.items():
            lo, hi = {"index_bits": (2, 16), "acc_bits": (2, 64)}.get(key, (2, 32))
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise UserError(f"config: layers.{name}.{key} = {v!r} outside {lo}..{hi}")
    return cfg


def _layer_cfg(cfg: dict, name: str) -> dict:
    return {**cfg, **(cfg.get("layers") or {}).get(name, {})}


def fit_format(max_abs: float, width: int, rounding: str, max_frac: int | None = None,
               signed: bool = True) -> QFormat:
    """SAT format of ``width`` bits (signed unless told) with the most fraction bits that still
    hold ``max_abs`` (at most ``max_frac``; always 0..width)."""
    frac = width - bits_for(max_abs, signed)
    if max_frac is not None:
        frac = min(frac, max_frac)
    return QFormat(width, max(0, min(width, frac)), signed, rounding, "SAT")


def acc_format(bound: int, frac: int, width: int | None = None) -> QFormat:
    """Accumulator wide enough for +-bound (integer codes), never narrower than its frac + 2.

    ``width`` forces a width (a sweep of narrow accumulators): sums beyond it wrap.
    """
    if width is not None:
        if width < frac + 2 or width > 64:
            raise UserError(f"config: acc_bits {width} cannot hold {frac} fraction bits (needs {frac + 2}..64)")
        return QFormat(width, frac, True, "TRN", "WRAP")
    width = max(int(bound).bit_length() + 1, frac + 2, 2)
    if width > 64:
        raise UserError(f"accumulator would need {width} bits (more than 64): reduce the widths")
    return QFormat(width, frac, True, "TRN", "WRAP")


def function_table(index: QFormat, act: QFormat, f) -> np.ndarray:
    """An activation LUT: entry i holds ``f(v)`` for the i-th index code's value v, rounded into ``act``.

    ``f`` maps a float64 array to a float64 array (tanh, sigmoid, a clip...)."""
    codes = np.arange(index.code_min, index.code_max + 1, dtype=np.int64)
    return act.from_float(f(index.to_float(codes)))


def scaled_tanh(v: np.ndarray) -> np.ndarray:
    """LeNet's squash, f(v) = 1.7159 tanh(2v/3)."""
    return TANH_A * np.tanh(TANH_S * v)


def squash_table(index: QFormat, act: QFormat) -> np.ndarray:
    """The activation LUT: entry i holds f(v) = 1.7159 tanh(2v/3) for the i-th index code, in ``act``."""
    return function_table(index, act, scaled_tanh)


@torch.no_grad()
def pre_activations(model: LeNet, images_u8: np.ndarray) -> list[np.ndarray]:
    """Every layer's float pre-activation (before the squash) on the given images."""
    x = preprocess(images_u8, model.config.arch)
    pres = []
    for d, m in zip(model.defs, model.layers):
        if d.kind in ("dense", "rbf") and x.ndim > 2:
            x = x.flatten(1)
        a = m(x)
        pres.append(a.numpy())
        x = TANH_A * torch.tanh(TANH_S * a) if d.squash else a
    return pres


def calibration_images(cfg: dict, data_dir=None) -> np.ndarray:
    n = cfg.get("calibration_images", CALIBRATION_IMAGES)
    train = data.load("train", data_dir)
    rng = np.random.default_rng(cfg.get("seed", 0))
    return train.images[np.sort(rng.choice(len(train.images), size=min(n, len(train.images)), replace=False))]


def checkpoint_sha(path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except (OSError, TypeError):
        return None


def build_spec(model: LeNet, cfg: dict, images_u8: np.ndarray, provenance: dict | None = None,
               pre: list[np.ndarray] | None = None, formats_from: QuantSpec | None = None) -> QuantSpec:
    """Quantize ``model`` with the widths of ``cfg``, binary points calibrated on ``images_u8``.

    Shapes come from the model's layer definitions and :func:`model.lenet.input_geometry`: the
    spec takes the digit the network reads (1 x 28 x 28; LeNet-1 and the 1989 networks of
    :mod:`model.lineage`: 1 x 16 x 16) and its first layer pads it with the code of the
    background (grey level 0) to the model's input field, plus the layer's own padding. A later
    layer's padding (``zip1989``'s H2, ``net3``..``net5``'s H2) is code 0, the float model's 0.
    Strides, connection tables, ``local`` layers (O x OH x OW x C x K x K weights) and per-unit
    biases (O x OH x OW) carry over as the spec describes them (docs/quantspec.md).

    ``formats_from``: keep that spec's weight/bias/index/state formats (after QAT, which trained
    against them) and only re-derive the integer weights and accumulators.
    """
    rnd = cfg["rounding"]
    if pre is None:
        pre = pre_activations(model, images_u8)
    side, in_pad = input_geometry(model.config)
    in_fmt = QFormat(cfg["input_bits"], cfg["input_bits"] - 2, True, rnd, "SAT")
    input_lut = in_fmt.from_float(data.scale(np.arange(256, dtype=np.uint8)))[None]
    background = int(input_lut[0, 0])
    prev = in_fmt
    layers = []
    for i, (d, m, a) in enumerate(zip(model.defs, model.layers, pre)):
        lc = _layer_cfg(cfg, d.name)
        in_max = max(-prev.code_min, prev.code_max)
        spatial = d.kind in ("conv", "local", "subsample")
        field = in_pad if i == 0 else 0  # the background around the digit (LeNet-1/4/5's input field)
        if field and d.kind not in ("conv", "local"):
            raise UserError(f"{model.config.arch}: the input is padded but the first layer is a {d.kind}")
        pad = field + (d.pad if d.kind in ("conv", "local") else 0)
        geometry = dict(name=d.name, kind=d.kind, in_maps=d.in_maps, out_maps=d.out_maps,
                        in_h=d.in_size - 2 * field if spatial else 1, in_w=d.in_size - 2 * field if spatial else 1,
                        kernel=d.kernel, stride=d.kernel if d.kind == "subsample" else d.stride,
                        pad=pad, pad_code=background if pad and i == 0 else 0)
        if d.kind == "rbf":
            w = rbf_centres().astype(np.int64)
            wf = QFormat(2, 0, True, rnd, "SAT")
            af = acc_format(in_max * d.in_maps, prev.frac)
            layers.append(LayerSpec(**geometry, formats={"input": prev, "weight": wf, "acc": af}, weight=w,
                                    bias=None, activation=None))
            prev = af
            continue
        if d.kind == "conv":
            wt = m.masked_weight().detach().double().numpy()
            bt = m.bias.detach().double().numpy()
        elif d.kind == "local":
            wt = m.weight.detach().double().numpy()
            bt = m.bias.detach().double().numpy()
        elif d.kind == "subsample":
            wt = m.coef.detach().double().numpy()
            bt = m.bias.detach().double().numpy()
        else:
            wt = m.weight.detach().double().numpy()
            bt = m.bias.detach().double().numpy()
        fixed = formats_from.layer(d.name).formats if formats_from is not None else None
        wf = fixed["weight"] if fixed else fit_format(np.abs(wt).max(), lc["weight_bits"], rnd)
        acc_frac = prev.frac + wf.frac
        bf = fixed["bias"] if fixed else fit_format(np.abs(bt).max(), lc["bias_bits"], rnd, max_frac=acc_frac)
        w = wf.from_float(wt)
        b = bf.from_float(bt)
        b_acc = b << (acc_frac - bf.frac)
        if d.kind == "subsample":
            bound = int((np.abs(w) * d.kernel**2 * in_max + np.abs(b_acc)).max())
        elif d.kind == "local" or b_acc.ndim > 1:  # the worst output position, per-unit biases
            bound = conv_bound(w, b_acc, in_max)
        else:
            bound = int((np.abs(w).reshape(len(w), -1).sum(1) * in_max + np.abs(b_acc)).max())
        af = acc_format(bound, acc_frac, lc.get("acc_bits"))
        formats = {"input": prev, "weight": wf, "bias": bf, "acc": af}
        lut = None
        if d.squash:
            idx_bits = lc["index_bits"]
            r = float(np.percentile(np.abs(a), 99.99)) if a.size else 1.0
            ib = bits_for(min(max(r, 2.0 ** -8), INDEX_CAP))
            index = QFormat(idx_bits, max(0, min(idx_bits, idx_bits - ib)), True, rnd, "SAT")
            act = QFormat(lc["act_bits"], lc["act_bits"] - 2, True, rnd, "SAT")
            if fixed:
                index, act = fixed["index"], fixed["act"]
            formats.update(index=index, act=act)
            lut = squash_table(index, act)
        table = [list(t) for t in d.table] if d.table is not None else None
        source = None
        if d.kind == "subsample" and d.out_maps != d.in_maps:
            source = [int(s) for s in m.source]
        layers.append(LayerSpec(**geometry, formats=formats, weight=w, bias=b, lut=lut, table=table, source=source,
                                activation="scaled_tanh" if d.squash else None))
        prev = formats["act"] if d.squash else af
    spec = QuantSpec(network=model.config.arch, input_format=in_fmt, input_lut=input_lut,
                     input_shape=(1, side, side), layers=layers,
                     provenance={**(provenance or {}), "config": {k: v for k, v in cfg.items()}})
    validate(spec)
    return spec
