"""Import a user's float CNN (ONNX, or a torch module through ONNX) into a QuantSpec.

``from_onnx(path, preset="q8")`` reads the graph (:mod:`.onnxgraph`: a chain of Conv, pools,
Gemm/MatMul and activations; BatchNorm folded; anything else refused in one line), checks the
float re-implementation against onnxruntime on a few images, calibrates it (:mod:`.calibrate`)
and returns the spec. ``from_torch(module, example_input)`` exports to ONNX first.
``python -m quantize --model FILE.onnx --preset q8 --out DIR`` is the command-line form.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from model.util import UserError

from model import data

from ..calibrate import CALIBRATION_IMAGES, PRESETS, calibration_images, check_config, load_config
from ..floatnet import FloatNet
from ..spec import QuantSpec
from . import onnxgraph
from .calibrate import build_spec
from .reference import OnnxModel, mnist_fits

#: float re-implementation vs onnxruntime: largest |difference| allowed, relative to max |logit|
CHECK_TOLERANCE = 1e-3
CHECK_IMAGES = 16


def config(preset: str | None = "q8", config=None) -> dict:
    """A preset name, or a config: a JSON file path or a dict (which may name a ``preset``)."""
    if config is None:
        return load_config(preset or "q8")
    if isinstance(config, (str, os.PathLike)):
        return load_config(None, str(config))
    if not isinstance(config, dict):
        raise UserError(f"config: expected a preset name, a JSON file or a dict, got {type(config).__name__}")
    base = config.get("preset", preset or "q8")
    if base not in PRESETS:
        raise UserError(f"config: unknown preset {base!r} (one of {', '.join(PRESETS)})")
    return check_config({**PRESETS[base], **config, "preset": config.get("preset", base)})


def read(path, input_mean=None, input_std=None, name: str | None = None, where: str | None = None) -> FloatNet:
    """Load and parse an ONNX file into a :class:`~quantize.floatnet.FloatNet`, checked against
    onnxruntime (:func:`check`) on random images."""
    where = where or str(path)
    m = onnxgraph.load(path)
    net, logits = onnxgraph.parse(m, where, input_mean, input_std, name=name)
    net.source.update(model=where, model_sha256=onnxgraph.sha256(path))
    rng = np.random.default_rng(0)
    check(net, OnnxModel(m, where, net.feed_mean, net.feed_std, outputs=[logits]),
          rng.integers(0, 256, (CHECK_IMAGES,) + tuple(net.input_shape), dtype=np.uint8))
    return net


def check(net: FloatNet, ref: OnnxModel, images_u8: np.ndarray) -> float:
    """Largest |float logit - onnxruntime logit| on ``images_u8``; a UserError past the tolerance
    (the import misread the graph: a bug to report)."""
    ours = net.forward(images_u8)
    theirs = ref.run(images_u8)[-1]
    if theirs.shape != ours.shape:
        raise UserError(f"{ref.where}: import check: logits of shape {ours.shape}, onnxruntime gives {theirs.shape}")
    err = float(np.abs(ours - theirs).max()) if ours.size else 0.0
    scale = max(1.0, float(np.abs(theirs).max()) if theirs.size else 0.0)
    if not np.isfinite(err) or err > CHECK_TOLERANCE * scale:
        raise UserError(f"{ref.where}: import check failed: the imported layers differ from onnxruntime by {err:.3g} "
                        f"(logits up to {scale:.3g}); please report this model")
    return err


def calibration_set(net: FloatNet, cfg: dict, images=None, n: int | None = None, data_dir=None):
    """(uint8 N x C x H x W calibration images, where they came from): ``n`` of the user's images
    (a seeded random subset), else of MNIST's training set when the input takes digits."""
    n = n or cfg.get("calibration_images", CALIBRATION_IMAGES)
    if not isinstance(n, int) or n < 1:
        raise UserError(f"--calibration-images {n}: must be a positive integer")
    if images is None:
        if not mnist_fits(net.input_shape):
            c, h, w = net.input_shape
            raise UserError(f"{net.source.get('model', net.name)}: takes {c} x {h} x {w} images, not MNIST digits: "
                            f"give calibration images with --images X.npy (uint8 N x {c} x {h} x {w})")
        # the same digits LeNet calibration takes (seeded subset of the training set), resampled
        x = calibration_images({**cfg, "calibration_images": n}, data_dir)
        return data.fit_images(x, net.input_shape), "mnist-train"
    x = data.fit_images(np.asarray(images), net.input_shape, what="calibration images")
    if len(x) == 0:
        raise UserError("calibration images: the array is empty")
    if len(x) > n:
        rng = np.random.default_rng(cfg.get("seed", 0))
        x = x[np.sort(rng.choice(len(x), size=n, replace=False))]
    return x, "images"


def from_onnx(path, *, preset: str | None = "q8", config=None, input_mean=None, input_std=None, images=None,
              calibration_images: int | None = None, data_dir=None, name: str | None = None, where: str | None = None,
              log=None) -> QuantSpec:
    """Quantize an ONNX model (opset >= 13) into a QuantSpec (calibrated; no QAT).

    Parameters
    ----------
    path : str or PathLike
        The ``.onnx`` file.
    preset, config
        ``"q8"`` or ``"anna"``, or a config (JSON path or dict, see docs/quantspec.md).
    input_mean, input_std : float or sequence, optional
        Per-channel scaling: pixel p enters as ``(p / 255 - mean) / std`` (default 0 and 1).
    images : ndarray, optional
        uint8 calibration images (N x C x H x W, or N x H x W for one channel); default MNIST's
        training set when the model takes 1 x H x W digits (H, W <= 28).
    calibration_images : int, optional
        How many to use (default the config's, 2,000).
    name, where : str, optional
        The spec's network name (default the file's stem); what messages call the model.
    log : callable, optional
        Gets notes (e.g. that a QAT preset is calibrated only).
    """
    cfg = _import_config(preset, config, log)
    net = read(path, input_mean, input_std, name=name, where=where)
    x, source = calibration_set(net, cfg, images, calibration_images, data_dir)
    return quantize_net(net, cfg, x, source)


def quantize_net(net: FloatNet, cfg: dict, images_u8: np.ndarray, source: str = "images") -> QuantSpec:
    """Calibrate a FloatNet (see :mod:`.calibrate`); provenance records the model and the scaling."""
    prov = {"model": net.source.get("model", net.name), "model_sha256": net.source.get("model_sha256"),
            "format": "onnx", "opset": net.source.get("opset"), "producer": net.source.get("producer"),
            "preset": cfg.get("preset"), "seed": cfg.get("seed", 0), "calibration_images": int(len(images_u8)),
            "calibration_source": source, "qat_epochs": 0,
            "input_mean": [float(v) for v in _feed(net, "mean")], "input_std": [float(v) for v in _feed(net, "std")],
            "onnx_nodes": {l.name: list(l.nodes) for l in net.layers},
            "dropped_nodes": list(net.source.get("dropped", []))}
    if net.source.get("input_nodes"):  # scaling inside the graph: the table does both
        prov["input_nodes"] = list(net.source["input_nodes"])
        prov["input_table"] = {"mean": [float(v) for v in net.mean], "std": [float(v) for v in net.std]}
    clips = {l.name: list(l.clip) for l in net.layers if l.activation == "hard_tanh"}
    if clips:
        prov["clip"] = clips
    if net.quantized:
        prov["format"] = "qonnx"
        prov["formats_from_model"], prov["formats_calibrated"] = _format_sources(net)
    return build_spec(net, cfg, images_u8, prov)


def _format_sources(net: FloatNet) -> tuple[list[str], list[str]]:
    """Which formats a QONNX model fixed ("conv1.weight"...) and which were calibrated."""
    given, calibrated = [], []
    (given if net.input_format is not None else calibrated).append("input")
    for i, l in enumerate(net.layers):
        if l.kind == "maxpool":
            continue
        keys = ["weight"] if l.kind == "avgpool" else ["weight", "bias"]
        if i < len(net.layers) - 1:
            keys += ["act"] + (["index"] if l.activation not in (None, "relu") else [])
        for k in keys:
            (given if k in l.formats else calibrated).append(f"{l.name}.{k}")
    return given, calibrated


def _feed(net: FloatNet, which: str) -> np.ndarray:
    v = getattr(net, f"feed_{which}")
    return getattr(net, which) if v is None else v


def _import_config(preset, cfg_in, log) -> dict:
    return config_for_import(config(preset, cfg_in), log)


def config_for_import(cfg: dict, log=None) -> dict:
    """``cfg`` without QAT (an imported model is calibrated only), saying so through ``log``."""
    if cfg.get("qat_epochs", 0):
        if log:
            log(f"note: preset {cfg.get('preset')}: an imported model is calibrated only (no QAT; "
                f"qat_epochs {cfg['qat_epochs']} ignored)")
        cfg = {**cfg, "qat_epochs": 0}
    return cfg


def export_onnx(module, example_input, path) -> str:
    """Export a torch module (eval mode) to ONNX at ``path``: the TorchScript exporter (batch axis
    dynamic, opset 17), else the dynamo exporter. Returns which one ran."""
    import torch

    module = copy.deepcopy(module).eval()
    x = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(np.asarray(example_input))
    x = x.to(torch.float32)
    args = (x,)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["scores"], dynamic_axes={"input": {0: "N"}, "scores": {0: "N"}})
        return "torchscript"
    except Exception as first:
        try:  # the batch axis stays 1 here (OnnxModel runs a fixed batch image by image)
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(path), dynamo=True, opset_version=18, input_names=["input"],
                                  output_names=["scores"], verbose=False, external_data=False)
            return "dynamo"
        except Exception as e:
            raise UserError(f"torch.onnx.export failed: {type(first).__name__}: {str(first).strip()[:200]}; "
                            f"dynamo: {type(e).__name__}: {str(e).strip()[:200]}") from None


def from_torch(module, example_input, **options) -> QuantSpec:
    """Quantize a torch module: :func:`export_onnx` to a temporary file, then :func:`from_onnx`.

    ``example_input``: one batch of the model's input (e.g. ``torch.zeros(1, 1, 28, 28)``).
    ``options``: those of :func:`from_onnx`. The provenance names the module's class."""
    options.setdefault("name", type(module).__name__.lower())
    options.setdefault("where", f"torch module {type(module).__name__} (exported to ONNX)")
    with tempfile.TemporaryDirectory(prefix="lenet-hw-export-") as tmp:
        path = Path(tmp) / f"{options['name']}.onnx"
        exporter = export_onnx(module, example_input, path)
        spec = from_onnx(path, **options)
    spec.provenance["model"] = f"torch:{type(module).__module__}.{type(module).__qualname__}"
    spec.provenance["exporter"] = exporter
    return spec


__all__ = ["from_onnx", "from_torch", "read", "quantize_net", "config", "export_onnx", "check", "calibration_set"]
