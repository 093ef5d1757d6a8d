"""``python -m quantize.run --spec DIR --images FILE.npy --out FILE.npz``: golden vectors.

Writes every layer's integer tensor (keys ``input``, layer names), ``scores`` and ``predictions``.
"""
from __future__ import annotations

import argparse
import io

import numpy as np

from model.data import fit_images
from model.util import UserError, atomic_write_bytes, cli

from . import spec as qspec
from .emulator import Emulator


def load_images(path, shape) -> np.ndarray:
    """A .npy of uint8 images, as a spec of ``input_shape`` ``shape`` takes them (see
    :func:`model.data.fit_images`)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"--images {path}: no such file") from None
    except (ValueError, OSError) as e:
        raise UserError(f"--images {path}: not a .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise UserError(f"--images {path}: expected one array, found an archive")
    return fit_images(arr, shape, f"--images {path}")


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m quantize.run", description="Run a QuantSpec on images; save every layer's integers.")
    p.add_argument("--spec", required=True)
    p.add_argument("--images", required=True, help="uint8 .npy: N x C x H x W as the spec takes (N x H x W for one channel; MNIST N x 28 x 28 digits are resampled for smaller inputs)")
    p.add_argument("--out", required=True, help=".npz to write")
    args = p.parse_args(argv)
    spec = qspec.load(args.spec)
    images = load_images(args.images, spec.input_shape)
    r = Emulator(spec).run(images)
    buf = io.BytesIO()
    np.savez_compressed(buf, **r.tensors, scores=r.scores, predictions=r.predictions)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out}: {len(images)} images, layers {', '.join(r.tensors)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
