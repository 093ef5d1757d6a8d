"""``python -m quantize``: a LeNet checkpoint or an ONNX model + preset/config -> QuantSpec directory.

``--checkpoint P``: calibrate a LeNet (optional QAT, as the preset says). ``--model FILE.onnx``:
import the user's float CNN (quantize/importer/), calibrate it on MNIST training digits or on
``--images``, and, given ``--labels``, report the float (onnxruntime) and quantized errors.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import torch

from model import checkpoint
from model.util import UserError, cli

from .calibrate import build_spec, calibration_images, checkpoint_sha, load_config
from .qat import finetune


def quantize(ckpt_path, cfg: dict, data_dir=None, progress: bool = True, log=print):
    """Load a checkpoint and return the calibrated (and, if the config asks, QAT-tuned) spec."""
    model, meta = checkpoint.load(ckpt_path)
    if cfg.get("qat_epochs", 0) > 0:  # quantize.qat's forward pass has no local layers or per-unit biases yet
        odd = [d.name for d in model.defs if d.kind == "local" or d.per_unit_bias]
        if odd:
            raise UserError(f"{model.config.arch}: QAT ({cfg.get('preset')}) does not handle locally connected "
                            f"layers or per-unit biases yet ({', '.join(odd)}): use a config with qat_epochs 0")
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


def import_model(args, cfg: dict, log) -> tuple:
    """``--model``: (spec, summary lines) for the ONNX import path."""
    from . import importer
    from .importer.reference import OnnxModel, load_images, parse_floats

    cfg = importer.config_for_import(cfg, log)
    mean, std = parse_floats(args.input_mean, "--input-mean"), parse_floats(args.input_std, "--input-std")
    net = importer.read(args.model, mean, std)
    images = labels = None
    if args.images:
        images, labels = load_images(args.images, args.labels, net.input_shape)
    x, source = importer.calibration_set(net, cfg, images, args.calibration_images, args.data)
    spec = importer.quantize_net(net, cfg, x, source if source != "images" else f"images:{args.images}")
    lines = []
    if labels is not None:
        from .emulator import Emulator

        ref = OnnxModel(args.model, args.model, net.feed_mean, net.feed_std)
        fl = float(np.mean(ref.predict(images) != labels))
        q = float(np.mean(Emulator(spec).run(images, keep=False).predictions != labels))
        lines.append(f"{args.images}: {len(labels)} images: float error {100 * fl:.2f}% (onnxruntime), "
                     f"quantized {100 * q:.2f}% (bit-exact emulator)")
    return spec, lines


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m quantize",
                                description="Quantize a LeNet checkpoint or an ONNX model into a QuantSpec directory.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint from python -m model.train (or model/checkpoints/*.pt)")
    src.add_argument("--model", help="an ONNX model (opset >= 13): a chain of Conv, pools, Gemm/MatMul and "
                                     "ReLU/Tanh/Sigmoid/Clip activations (see docs/import.md)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", help="q8 (8-bit) or anna (6-bit weights, 3-bit states; QAT for checkpoints only); "
                                    "required with --checkpoint; --model defaults to q8 (a QONNX model's own "
                                    "Quant formats win over it)")
    g.add_argument("--config", help="JSON config: widths, rounding, per-layer overrides (see docs/quantspec.md)")
    p.add_argument("--out", required=True, help="spec directory to write (spec.json + weights.npz)")
    p.add_argument("--data", default=None, help="MNIST directory")
    p.add_argument("--no-progress", action="store_true")
    from .importer.reference import add_model_arguments

    add_model_arguments(p, "uint8 images .npy (N x C x H x W): calibration set (default: MNIST training digits "
                           "when the model takes 1 x H x W, H, W <= 28)",
                        "integer labels .npy for --images: report float and quantized errors on them")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    if args.checkpoint:
        used = [f for f, v in (("--input-mean", args.input_mean), ("--input-std", args.input_std),
                               ("--images", args.images), ("--labels", args.labels),
                               ("--calibration-images", args.calibration_images)) if v is not None]
        if used:
            raise UserError(f"{used[0]} is for --model (an imported ONNX model), not --checkpoint")
    if args.labels and not args.images:
        raise UserError("--labels needs --images")
    if args.checkpoint and not (args.preset or args.config):
        raise UserError("--checkpoint needs --preset q8|anna or --config FILE")
    cfg = load_config(args.preset or (None if args.config else "q8"), args.config)
    t0 = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    lines = []
    if args.model:
        spec, lines = import_model(args, cfg, log)
    else:
        spec = quantize(args.checkpoint, cfg, args.data, progress=not args.no_progress, log=log)
    out = spec.save(args.out)
    print(f"wrote {out}/ ({spec.network}, preset {cfg.get('preset')}, {spec.weight_bits():,} weight bits, "
          f"{time.perf_counter() - t0:.1f} s)")
    if args.model:
        print("  " + " -> ".join(f"{l.name} {l.kind}{'/' + l.activation if l.activation else ''}" for l in spec.layers)
              + f"; input {'x'.join(map(str, spec.input_shape))}, {spec.classes} classes")
    if "formats_from_model" in spec.provenance:
        cal = spec.provenance["formats_calibrated"]
        print(f"  formats: {len(spec.provenance['formats_from_model'])} from the model's Quant nodes; "
              + (f"calibrated ({cfg.get('preset')}): {', '.join(cal)}" if cal else "none calibrated"))
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
