"""``python -m quantize.sweep --model FILE.onnx``: the sweep of an imported float CNN.

The grid is the LeNet checkpoint's (weight x state widths x rounding, narrow accumulators, one
layer at a time: here the imported conv/dense layers but the last, pools have no weights; the
ANNA widths calibrated only: an imported model gets no QAT). Each point is calibrated by the
importer (:func:`quantize.importer.quantize_net`) and evaluated bit-exactly by the emulator.

Test images: MNIST's test set fitted to the model's input, or the user's ``--images``/``--labels``,
which are then also the calibration set (a seeded subset of ``--calibration-images``), as for
``python -m quantize --model``. The float error is :func:`quantize.evaluate.evaluate_model`
(onnxruntime) on the same images. Cached points are keyed by the model file's sha256, the input
scaling and the sha256 of the test and calibration arrays, so models and image sets never mix.

The accumulator fraction an imported model needs depends on the model, so an ``acc_bits`` point
narrower than it (the default grid's 16 bits, for some) is not refused up front as for LeNet: it
is a failed row with the reason, like any config the model cannot take.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from model.util import UserError

from .calibrate import PRESETS

QAT_REFUSED = "--qat applies to LeNet checkpoints only: an imported model is calibrated, not fine-tuned"


def array_sha256(*arrays: np.ndarray) -> str:
    """sha256 over the shapes, dtypes and bytes of ``arrays`` (an image set's identity)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class ImportedModel:
    """An imported model with its test and calibration images, ready to sweep."""

    path: str
    net: object  # quantize.floatnet.FloatNet
    images: np.ndarray  # uint8 N x C x H x W test images (the first ``grid images``)
    labels: np.ndarray
    cal: np.ndarray  # uint8 calibration images
    cal_source: str
    input_mean: list | None  # as given (None: the default), for the float reference
    input_std: list | None
    images_path: str | None = None
    data_dir: str | None = None

    def layer_names(self) -> list[str]:
        """Layers with weights (conv, dense): the sensitivity points; the last one gives the scores."""
        return [l.name for l in self.net.layers if l.kind in ("conv", "dense")]

    def identity(self) -> dict:
        """What the cache key holds instead of the checkpoint's sha256."""
        return {"sha256": self.net.source["model_sha256"],
                "input_mean": [float(v) for v in self.net.feed_mean],
                "input_std": [float(v) for v in self.net.feed_std],
                "test_images": array_sha256(self.images, self.labels),
                "calibration_images": array_sha256(self.cal)}

    def context(self) -> dict:
        """What a worker needs (picklable: it goes to spawned processes)."""
        return {"net": self.net, "cal": self.cal, "cal_source": self.cal_source, "images": self.images,
                "labels": self.labels}

    def describe(self) -> dict:
        """The report's description of the model and its images."""
        return {"model": self.path, "network": self.net.name, "model_sha256": self.net.source["model_sha256"],
                "input_shape": list(self.net.input_shape), "input_mean": [float(v) for v in self.net.feed_mean],
                "input_std": [float(v) for v in self.net.feed_std],
                "test_images": self.images_path or "MNIST test set", "images": int(len(self.labels)),
                "calibration": f"{len(self.cal):,} " + (f"images of {self.images_path}" if self.images_path
                                                        else "MNIST training digits"),
                "test_images_sha256": array_sha256(self.images, self.labels)}

    def float_error(self) -> float:
        """onnxruntime's error on the same test images (quantize.evaluate --model)."""
        from .evaluate import evaluate_model

        return evaluate_model(self.path, self.input_mean, self.input_std, self.data_dir, len(self.labels),
                              self.images, self.labels)["error_rate"]


def prepare(path: str, input_mean=None, input_std=None, images_path=None, labels_path=None,
            calibration_images: int | None = None, data_dir=None, n_images: int = 10000,
            base: str = "q8") -> ImportedModel:
    """Read ``path`` (checked against onnxruntime), its test set (the first ``n_images``) and its
    calibration set; one UserError line for anything the user can fix."""
    from . import importer
    from .importer.reference import dataset, load_images, parse_floats

    if bool(images_path) != bool(labels_path):
        raise UserError("--images and --labels go together: the sweep measures errors on them")
    if calibration_images is not None and (isinstance(calibration_images, bool) or calibration_images < 1):
        raise UserError(f"--calibration-images {calibration_images}: must be at least 1")
    mean, std = parse_floats(input_mean, "--input-mean"), parse_floats(input_std, "--input-std")
    net = importer.read(path, mean, std)
    if net.quantized:
        raise UserError(f"{path}: a quantized (QONNX) model fixes its own formats in its Quant nodes, so every "
                        "grid point would be the same spec; sweep the float model, or retrain at other bit widths")
    images = labels = None
    if images_path:
        images, labels = load_images(images_path, labels_path, net.input_shape)
    cfg = {**PRESETS[base], "preset": base}
    test_x, test_y = dataset(net.input_shape, images, labels, "test", data_dir, where=str(path))
    # the calibration set as python -m quantize --model takes it: all of --images, or MNIST training digits
    cal, source = importer.calibration_set(net, cfg, images, calibration_images, data_dir)
    if images_path:
        source = f"images:{images_path}"
    test_x, test_y = test_x[:n_images], np.asarray(test_y[:n_images]).astype(np.int64)
    return ImportedModel(str(path), net, test_x, test_y, cal, source, mean, std, images_path,
                         None if data_dir is None else str(data_dir))


def build(ctx: dict, cfg: dict):
    """One point's spec: the importer's calibration with ``cfg`` (no QAT)."""
    from .importer import quantize_net

    return quantize_net(ctx["net"], {**cfg, "qat_epochs": 0}, ctx["cal"], ctx["cal_source"])


def builder(ctx: dict):
    return functools.partial(build, ctx)
