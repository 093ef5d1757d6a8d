"""A quantization-aware CNN in Brevitas, exported to QONNX: the importer's fixed-point input.

::

    python examples/brevitas_cnn.py --bits 8 --out examples/qonnx/cnn_w8a8.onnx   # about 2 minutes
    python examples/brevitas_cnn.py --bits 4 --out examples/qonnx/cnn_w4a4.onnx
    make qonnx-models                                                               # both

The network is ``examples/small_cnn.py``'s, with every tensor quantized the way a fixed-point
accelerator computes it (all scales powers of two, zero points 0)::

    image p/255 -> Quant unsigned 8 bits           (QuantIdentity, Uint8ActPerTensorFixedPoint)
    Conv 1 -> 8, 5x5, weights --bits, bias Int32    -> ReLU -> Quant unsigned --bits
    MaxPool 2
    Conv 8 -> 16, 5x5, weights --bits, bias Int32   -> ReLU -> Quant unsigned --bits
    MaxPool 2
    Linear 256 -> 10, weights --bits, bias Int32    (the class scores, not quantized)

Brevitas learns the power-of-two scales during training (``*FixedPoint`` quantizers); the QONNX
export writes each as a ``Quant`` node, which ``python -m quantize --model`` turns into the spec's
formats without calibrating. Training is seeded and deterministic (one torch thread); the
committed models under ``examples/qonnx/`` come from the commands above.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # small_cnn

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import small_cnn  # noqa: E402
from model.util import UserError, atomic_path, cli  # noqa: E402


def _brevitas():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "fast_hadamard_transform package not found"
            import brevitas.nn as qnn
            from brevitas.export import export_qonnx
            from brevitas.quant import (Int8WeightPerTensorFixedPoint, Int32Bias, Uint8ActPerTensorFixedPoint)
    except ImportError:
        raise UserError("brevitas is not installed (make install installs it with the dev tools)") from None
    return qnn, export_qonnx, Int8WeightPerTensorFixedPoint, Int32Bias, Uint8ActPerTensorFixedPoint


def quant_cnn(bits: int = 8, c1: int = 8, c2: int = 16, classes: int = 10, input_bits: int = 8) -> nn.Module:
    """SmallCNN with ``bits``-bit weights and activations, an ``input_bits`` input, int32 biases."""
    qnn, _, WQ, BQ, AQ = _brevitas()
    if not 2 <= bits <= 8:
        raise UserError(f"--bits {bits}: 2..8 are supported")
    w = dict(weight_quant=WQ, weight_bit_width=bits, bias=True, bias_quant=BQ, return_quant_tensor=False)
    relu = dict(act_quant=AQ, bit_width=bits, return_quant_tensor=True)
    return nn.Sequential(
        qnn.QuantIdentity(act_quant=AQ, bit_width=input_bits, return_quant_tensor=True),
        qnn.QuantConv2d(1, c1, 5, **w), qnn.QuantReLU(**relu), nn.MaxPool2d(2),
        qnn.QuantConv2d(c1, c2, 5, **w), qnn.QuantReLU(**relu), nn.MaxPool2d(2),
        nn.Flatten(), qnn.QuantLinear(c2 * 4 * 4, classes, **w),
    )


def scale(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float32 N x 1 x 28 x 28, p/255 (``ToTensor()``: --input-mean 0, --input-std 1)."""
    return (torch.from_numpy(np.array(images_u8, dtype=np.float32)) / 255.0)[:, None]


def train(model: nn.Module, images_u8, labels, epochs: int = 2, seed: int = 0, log=print) -> float:
    """Quantization-aware training from scratch: small_cnn's loop (Adam, one-cycle); the seconds it took."""
    return small_cnn.fit(model, scale(images_u8), torch.from_numpy(labels.astype(np.int64)), epochs, seed, log=log)


def export(model: nn.Module, path) -> None:
    """QONNX export (Brevitas' exporter; its console chatter silenced), written atomically as one
    file (the exporter may put the weights in a side file: they are folded back in)."""
    import onnx

    _, export_qonnx, *_ = _brevitas()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="lenet-hw-qonnx-") as d:
        raw = Path(d) / "model.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            export_qonnx(model.eval(), torch.zeros(1, 1, 28, 28), str(raw))
        m = onnx.load(str(raw))  # external data, if any, read back in
    with atomic_path(path) as tmp:
        onnx.save(m, str(tmp), save_as_external_data=False)


def build(bits: int, out, epochs: int = 2, train_images: int | None = None, seed: int = 0, data_dir=None,
          log=print) -> dict:
    """Train a ``bits``-bit model on MNIST and export it to ``out``; returns what happened."""
    from model import data

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    tr, te = data.load("train", data_dir), data.load("test", data_dir)
    n = train_images or len(tr.images)
    model = quant_cnn(bits)
    log(f"training a {bits}-bit Brevitas CNN on {n:,} digits, {epochs} epoch(s)")
    seconds = train(model, tr.images[:n], tr.labels[:n], epochs, seed, log=log)
    err = small_cnn.test_error(model, te.images, te.labels, inputs=scale)
    export(model, out)
    log(f"{out}: Brevitas test error {100 * err:.2f}% (torch, 10,000 images); {seconds:.0f} s training")
    return {"bits": bits, "error": err, "seconds": seconds}


@cli
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python examples/brevitas_cnn.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, default=8, help="weight and activation bits (2..8; default 8)")
    p.add_argument("--out", required=True, help="the .onnx file to write (QONNX)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=None, help="default: all 60,000")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="MNIST directory")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: bit-identical runs)")
    a = p.parse_args(argv)
    if a.epochs < 1 or (a.train_images is not None and a.train_images < 1):
        raise UserError("--epochs and --train-images must be positive")
    torch.set_num_threads(a.threads)
    os.makedirs(Path(a.out).parent, exist_ok=True)
    build(a.bits, a.out, a.epochs, a.train_images, a.seed, a.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
