"""Evaluate a checkpoint: ``python -m model.evaluate --arch lenet5 [--split own|mnist] [--json]``.

Each network is measured on its own test split by default: the LeNets on the 10,000 MNIST test
digits, ``zip1989`` on the 2,007 test digits of the USPS stand-in, ``net1`` .. ``net5`` on the 160
of the 480-digit stand-in (:mod:`model.usps`); ``--split mnist`` takes the full MNIST test set
(resampled to 16x16 for the 16x16 networks). The result says which (``split``, ``images``).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from . import checkpoint, data, lineage, usps
from .lenet import LeNet, input_geometry, preprocess
from .util import UserError, cli


@torch.no_grad()
def predict(model: LeNet, images_u8: np.ndarray, batch: int = 1000) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(images_u8), batch):
        x = preprocess(images_u8[i:i + batch], model.config.arch)
        out.append(model(x).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


#: --split choices: the network's own test split, MNIST's, or a named stand-in (model.usps)
SPLITS = ("own", "mnist") + tuple(usps.SIZES)


def check_split(split: str) -> None:
    """One line for a ``--split`` that is not one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise UserError(f"unknown --split {split!r} (choose {', '.join(SPLITS)})")


def own_split(arch: str) -> str:
    """The test split ``arch`` is measured on by default."""
    return lineage.SPLIT.get(arch, "mnist")


def test_split(arch: str, split: str = "own", data_dir=None, side: int | None = None) -> tuple[str, data.Split]:
    """``(name, digits)`` of the test split ``split`` (``own``: the network's, see the module doc).

    ``side``: the side of the digit the network reads (default: ``arch``'s); the stand-ins are
    16x16 digits and are refused for any other side. A name that is not one of this package's
    networks (an imported model's) has MNIST as its own split."""
    check_split(split)
    name = own_split(arch) if split == "own" else split
    if name == "mnist":
        return name, data.load("test", data_dir)
    side = input_geometry(arch)[0] if side is None else side
    if side != usps.SIDE:
        raise UserError(f"--split {name}: {usps.SIDE}x{usps.SIDE} digits, but {arch} reads {side}x{side} (use --split mnist)")
    return name, usps.load(name, "test", data_dir)


def evaluate(model: LeNet, data_dir=None, limit: int | None = None, split: str = "own") -> dict:
    name, test = test_split(model.config.arch, split, data_dir)
    images, labels = test.images[:limit], test.labels[:limit]
    t0 = time.perf_counter()
    pred = predict(model, images)
    dt = time.perf_counter() - t0
    errors = int((pred != labels).sum())
    return {"arch": model.config.arch, "split": name, "images": len(labels), "errors": errors,
            "error_rate": errors / len(labels), "images_per_s": round(len(labels) / dt, 1)}


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.evaluate", description="Test error of a checkpoint on its "
                                "own test split (default) or on MNIST's.")
    p.add_argument("--arch", default=None, help="lenet1, lenet4, lenet5, boosted-lenet4, zip1989, net1 .. net5 (checked against "
                                                "the checkpoint)")
    p.add_argument("--split", default="own", help="own (default: MNIST for the LeNets, the 2,007-digit USPS "
                                                  "stand-in for zip1989, the 160-digit set for net1..net5), mnist "
                                                  "(all 10,000 MNIST test digits), usps or digits480")
    p.add_argument("--checkpoint", default=None, help="default: the committed model/checkpoints/ARCH.pt")
    p.add_argument("--data", default=None, help="MNIST directory")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be a positive number of images")
    torch.set_num_threads(2)
    check_split(args.split)  # before the checkpoint is read
    model, meta = checkpoint.load(args.checkpoint, args.arch)
    result = {**evaluate(model, args.data, args.limit, args.split), "checkpoint": meta["path"]}
    if args.json:
        print(json.dumps(result))
    else:
        where = "" if result["split"] == own_split(result["arch"]) == "mnist" else f", {result['split']} split"
        print(f"{result['arch']} ({result['checkpoint']}): test error {100 * result['error_rate']:.2f}% "
              f"({result['errors']}/{result['images']}{where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
