"""Stand-ins for the 1989 digit sets, drawn from MNIST (USPS itself cannot be fetched here).

Two splits, each a training part drawn from the 60,000 MNIST training digits and a test part drawn
from the 10,000 MNIST test digits (so no test digit was ever a training digit):

- ``usps``: 7,291 training and 2,007 test digits, the sizes of the USPS set of "Backpropagation
  applied to handwritten zip code recognition" (1989); for ``zip1989``. Drawn without regard to
  class, as USPS was not balanced.
- ``digits480``: 320 training and 160 test digits, the sizes of the 480-digit set of
  "Generalization and network design strategies" (1989); for ``net1`` .. ``net5``. Balanced:
  32 training and 16 test digits of each class.

The recipe (no random number generator, so every numpy version and language gives the same
digits): give MNIST image ``i`` of part ``p`` (``train`` or ``test``) of split ``s`` the key
``sha256(f"{s}/{p}/{i}")`` (UTF-8, the digest's bytes compared as a big-endian number) and take
the digits with the smallest keys: the ``n`` smallest for ``usps``, the ``n / 10`` smallest of each
class for ``digits480``. The chosen digits are listed in increasing MNIST index, then
area-resampled from 28 x 28 to 16 x 16 by :func:`model.data.resample` (the integer rule of the
hardware host: each output pixel the rounded mean of the input pixels under it), giving uint8
N x 16 x 16 images; the labels are MNIST's. Paper-scale scaling (-0.1..1.175) happens later, in
:func:`model.lenet.preprocess`, as for every network.

``python -m model.usps`` prints each part's size, class counts and a digest of its images and
labels.
"""
from __future__ import annotations

import argparse
import hashlib
import os

import numpy as np

from . import data
from .util import UserError, cli

SIDE = 16
#: split -> part -> number of digits
SIZES = {"usps": {"train": 7291, "test": 2007}, "digits480": {"train": 320, "test": 160}}
BALANCED = {"usps": False, "digits480": True}
PARTS = ("train", "test")

_CACHE: dict[tuple, data.Split] = {}


def keys(split: str, part: str, n: int) -> np.ndarray:
    """The selection key of MNIST images 0 .. n-1 (first 8 bytes of the sha256: ties would need
    2**64 images)."""
    return np.array([int.from_bytes(hashlib.sha256(f"{split}/{part}/{i}".encode()).digest()[:8], "big")
                     for i in range(n)], dtype=np.uint64)


def select(split: str, part: str, labels: np.ndarray) -> np.ndarray:
    """Indices into MNIST ``part`` of the digits of ``split``, increasing (see the module doc)."""
    check(split, part)
    n = SIZES[split][part]
    k = keys(split, part, len(labels))
    if not BALANCED[split]:
        chosen = np.argsort(k, kind="stable")[:n]
    else:
        per_class = n // 10
        chosen = np.concatenate([
            np.flatnonzero(labels == c)[np.argsort(k[labels == c], kind="stable")[:per_class]] for c in range(10)])
    return np.sort(chosen)


def check(split: str, part: str) -> None:
    if split not in SIZES:
        raise UserError(f"unknown split {split!r} (choose {', '.join(SIZES)})")
    if part not in PARTS:
        raise UserError(f"unknown part {part!r} of split {split} (train or test)")


def load(split: str, part: str, data_dir: str | os.PathLike | None = None) -> data.Split:
    """The digits of ``part`` of ``split``: uint8 N x 16 x 16 images and their labels."""
    check(split, part)
    mnist = data.load(part, data_dir)
    key = (split, part, id(mnist.images))
    if key not in _CACHE:
        idx = select(split, part, mnist.labels)
        _CACHE[key] = data.Split(data.resample(mnist.images[idx], SIDE, SIDE), mnist.labels[idx].copy())
    return _CACHE[key]


def digest(split: data.Split) -> str:
    """sha256 of the images' and labels' bytes (first 16 hex digits), to compare two machines."""
    h = hashlib.sha256(np.ascontiguousarray(split.images).tobytes())
    h.update(np.ascontiguousarray(split.labels).tobytes())
    return h.hexdigest()[:16]


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.usps", description="The MNIST-drawn stand-ins of the 1989 "
                                "digit sets: sizes, class counts, digests.")
    p.add_argument("--data", default=None, help="MNIST directory")
    args = p.parse_args(argv)
    for split in SIZES:
        for part in PARTS:
            s = load(split, part, args.data)
            counts = np.bincount(s.labels, minlength=10)
            print(f"{split:9} {part:5} {len(s.labels):5,} digits {s.images.shape[1]}x{s.images.shape[2]}, "
                  f"classes {' '.join(map(str, counts))}, sha256 {digest(s)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
