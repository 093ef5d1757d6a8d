"""``python -m quantize``: checkpoint + preset/config -> QuantSpec directory (calibrated, optional QAT)."""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from model import checkpoint
from model.util import cli

from .calibrate import build_spec, calibration_images, checkpoint_sha, load_config
from .qat import finetune


def quantize(ckpt_path, cfg: dict, data_dir=None, progress: bool = True, log=print):
    """Load a checkpoint and return the calibrated (and, if the config asks, QAT-tuned) spec."""
    model, meta = checkpoint.load(ckpt_path)
    images = calibration_images(cfg, data_dir)
    prov = {"checkpoint": str(ckpt_path), "checkpoint_sha256": checkpoint_sha(ckpt_path),
            "checkpoint_test_error": meta.get("test_error"), "preset": cfg.get("preset"),
            "seed": cfg.get("seed", 0), "calibration_images": len(images), "qat_epochs": cfg.get("qat_epochs", 0)}
    spec = build_spec(model, cfg, images, prov)
    if cfg.get("qat_epochs", 0) > 0:
        log(f"QAT: {cfg['qat_epochs']} epoch(s) from {ckpt_path}")
        tuned = finetune(copy.deepcopy(model), spec, cfg["qat_epochs"], cfg.get("qat_lr", 3e-4),
                         cfg.get("seed", 0), data_dir=data_dir, progress=progress)
        spec = build_spec(tuned, cfg, images, prov, formats_from=spec)
    return spec


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m quantize", description="Quantize a LeNet checkpoint into a QuantSpec directory.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint from python -m model.train (or model/checkpoints/*.pt)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="q8 (8-bit) or anna (6-bit weights, 3-bit states, QAT)")
    g.add_argument("--config", help="JSON config: widths, rounding, per-layer overrides (see docs/quantspec.md)")
    p.add_argument("--out", required=True, help="spec directory to write (spec.json + weights.npz)")
    p.add_argument("--data", default=None, help="MNIST directory")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    cfg = load_config(args.preset, args.config)
    t0 = time.perf_counter()
    spec = quantize(args.checkpoint, cfg, args.data, progress=not args.no_progress,
                    log=lambda m: print(m, file=sys.stderr))
    out = spec.save(args.out)
    print(f"wrote {out}/ ({spec.network}, preset {cfg.get('preset')}, {spec.weight_bits():,} weight bits, "
          f"{time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
