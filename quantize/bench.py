"""``python -m quantize.bench --spec DIR``: emulator vs torch float32 throughput on the MNIST test set.

Both run the same 10,000 images in the same batches after a warm-up, on the same threads; the
float model is the checkpoint the spec was made from. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from model import checkpoint, data
from model.lenet import preprocess
from model.util import UserError, cli

from . import spec as qspec
from .emulator import Emulator


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(spec, model, images, batch: int = 2000, repeats: int = 3) -> dict:
    emu = Emulator(spec)

    @torch.inference_mode()
    def run_torch():
        for i in range(0, len(images), batch):
            model(preprocess(images[i:i + batch], model.config.arch)).argmax(1)

    def run_emu():
        emu.run(images, keep=False, batch=batch)

    t_torch = _best(run_torch, repeats)
    t_emu = _best(run_emu, repeats)
    n = len(images)
    return {"images": n, "batch": batch, "threads": torch.get_num_threads(),
            "torch_float32_seconds": round(t_torch, 3), "emulator_seconds": round(t_emu, 3),
            "torch_float32_images_per_s": round(n / t_torch, 1), "emulator_images_per_s": round(n / t_emu, 1),
            "ratio": round(t_torch / t_emu, 3)}


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m quantize.bench", description="Emulator vs torch float32 throughput.")
    p.add_argument("--spec", required=True)
    p.add_argument("--checkpoint", default=None, help="float model (default: the spec's provenance checkpoint)")
    p.add_argument("--data", default=None)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    spec = qspec.load(args.spec)
    ckpt = args.checkpoint or spec.provenance.get("checkpoint")
    if not ckpt:
        raise UserError("the spec names no checkpoint; pass --checkpoint")
    model, _ = checkpoint.load(ckpt, spec.network)
    images = data.load("test", args.data).images
    print(json.dumps({"spec": args.spec, "checkpoint": str(ckpt), **bench(spec, model, images, repeats=args.repeats)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
