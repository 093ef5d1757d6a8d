"""Evaluate a checkpoint on the MNIST test set: ``python -m model.evaluate --arch lenet5 [--json]``."""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from . import checkpoint, data
from .lenet import LeNet, preprocess
from .util import UserError, cli


@torch.no_grad()
def predict(model: LeNet, images_u8: np.ndarray, batch: int = 1000) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(images_u8), batch):
        x = preprocess(images_u8[i:i + batch], model.config.arch)
        out.append(model(x).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def evaluate(model: LeNet, data_dir=None, limit: int | None = None) -> dict:
    test = data.load("test", data_dir)
    images, labels = test.images[:limit], test.labels[:limit]
    t0 = time.perf_counter()
    pred = predict(model, images)
    dt = time.perf_counter() - t0
    errors = int((pred != labels).sum())
    return {"arch": model.config.arch, "images": len(labels), "errors": errors,
            "error_rate": errors / len(labels), "images_per_s": round(len(labels) / dt, 1)}


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.evaluate", description="Test error of a LeNet checkpoint on MNIST.")
    p.add_argument("--arch", default=None, help="lenet1, lenet4 or lenet5 (checked against the checkpoint)")
    p.add_argument("--checkpoint", default=None, help="default: the committed model/checkpoints/ARCH.pt")
    p.add_argument("--data", default=None, help="MNIST directory")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be a positive number of images")
    torch.set_num_threads(2)
    model, meta = checkpoint.load(args.checkpoint, args.arch)
    result = {**evaluate(model, args.data, args.limit), "checkpoint": meta["path"]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['arch']} ({result['checkpoint']}): test error {100 * result['error_rate']:.2f}% "
              f"({result['errors']}/{result['images']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
