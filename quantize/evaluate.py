"""``python -m quantize.evaluate``: the bit-exact test error of a QuantSpec, or the float error of
an ONNX model (onnxruntime), on MNIST's test set or the user's ``--images``/``--labels``.

``--spec DIR``: the emulator (bit-exact with the hardware). ``--model FILE.onnx``: the float
reference, with the same input scaling (``--input-mean``/``--input-std``) and the same images
(MNIST digits area-resampled to the input as the spec takes them). ``--spec DIR --against
FILE.onnx``: how often the emulator and the model (a QONNX model: its Quant nodes executed by
onnxruntime as qonnx defines them) give the same class, and the same scores exactly.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from model import data
from model.util import UserError, cli

from . import spec as qspec
from .emulator import Emulator


def test_images(spec, split: str = "own", data_dir=None) -> tuple[str, "data.Split"]:
    """``(name, digits)``: the test split ``split`` of the network the spec was made from
    (:func:`model.evaluate.test_split`; ``own``: 2,007 digits for ``zip1989``, 160 for ``net1`` ..
    ``net5``, MNIST's 10,000 for the LeNets and imported models)."""
    from model.evaluate import test_split

    c, h, w = spec.input_shape
    return test_split(spec.network, split, data_dir, side=h if c == 1 and h == w else 0)


def evaluate(spec, data_dir=None, limit: int | None = None, images=None, labels=None, split: str = "own") -> dict:
    """Emulator error on the spec's test split (:func:`test_images`) or on uint8 ``images`` with ``labels``."""
    where = "images"
    if images is None:
        where, test = test_images(spec, split, data_dir)
        images, labels = test.images, test.labels
    images, labels = images[:limit], labels[:limit]
    emu = Emulator(spec)
    emu.run(images[:100], keep=False)  # warm-up (tables, allocator)
    t0 = time.perf_counter()
    r = emu.run(images, keep=False)
    dt = time.perf_counter() - t0
    errors = int((r.predictions != labels).sum())
    return {"network": spec.network, "preset": spec.provenance.get("preset"), "split": where, "images": int(len(labels)),
            "errors": errors, "error_rate": errors / len(labels), "images_per_s": round(len(labels) / max(dt, 1e-9), 1),
            "seconds": round(dt, 3), "weight_bits": spec.weight_bits(), "saturations": r.saturations()}


def evaluate_model(path, mean=None, std=None, data_dir=None, limit: int | None = None, images=None,
                   labels=None) -> dict:
    """Float (onnxruntime) error of an ONNX model on MNIST's test set (or ``images``/``labels``)."""
    from .importer.reference import OnnxModel, dataset

    ref = OnnxModel(path, str(path), mean, std)
    x, y = dataset(ref.shape, images, labels, "test", data_dir, where=str(path))
    x, y = x[:limit], y[:limit]
    t0 = time.perf_counter()
    pred = ref.predict(x)
    dt = time.perf_counter() - t0
    errors = int((pred != y).sum())
    return {"model": str(path), "images": int(len(y)), "errors": errors, "error_rate": errors / len(y),
            "images_per_s": round(len(y) / max(dt, 1e-9), 1), "seconds": round(dt, 3),
            "input_mean": [float(v) for v in ref.mean], "input_std": [float(v) for v in ref.std]}


def agreement(spec, path, data_dir=None, limit: int | None = None, images=None, labels=None) -> dict:
    """Emulator vs the ONNX model on the same images: classes that agree, and images whose scores
    (codes x the accumulator's lsb) equal the model's outputs exactly (a quantized model's)."""
    import numpy as np

    from .importer.reference import OnnxModel, dataset

    prov = spec.provenance
    ref = OnnxModel(path, str(path), prov.get("input_mean"), prov.get("input_std"))
    if tuple(ref.shape) != tuple(spec.input_shape):
        raise UserError(f"--against {path}: takes {'x'.join(map(str, ref.shape))} images, the spec "
                        f"{'x'.join(map(str, spec.input_shape))}")
    x, y = dataset(ref.shape, images, labels, "test", data_dir, where=str(path))
    x = x[:limit]
    t0 = time.perf_counter()
    theirs = ref.run(x)[0]
    r = Emulator(spec).run(x, keep=False)
    ours = r.scores * spec.layers[-1].formats["acc"].lsb
    same = np.all(ours == theirs, axis=1) if ours.shape == theirs.shape else np.zeros(len(x), bool)
    agree = int((r.predictions == theirs.argmax(1)).sum())
    out = {"spec": spec.network, "model": str(path), "images": int(len(x)), "classes_agree": agree,
           "agreement": agree / max(len(x), 1), "scores_equal": int(same.sum()),
           "max_abs_difference": float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape and len(x) else None,
           "seconds": round(time.perf_counter() - t0, 2)}
    if y is not None:
        y = y[:limit]
        out.update(emulator_errors=int((r.predictions != y).sum()), model_errors=int((theirs.argmax(1) != y).sum()))
    return out


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m quantize.evaluate",
                                description="Bit-exact test error of a QuantSpec, or float error of an ONNX model.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", help="spec directory (the bit-exact emulator)")
    src.add_argument("--model", help="an ONNX model (float reference, onnxruntime)")
    p.add_argument("--against", help="--spec: compare the emulator with this ONNX model (the one imported) "
                                     "image by image")
    p.add_argument("--data", default=None, help="MNIST directory")
    p.add_argument("--split", default="own", help="--spec: the test digits: own (default: the network's, the "
                                                  "2,007-digit USPS stand-in for zip1989, the 160-digit set for "
                                                  "net1..net5, MNIST's 10,000 otherwise), mnist, usps or digits480")
    p.add_argument("--images", help="uint8 images .npy (N x C x H x W) instead of MNIST's test set")
    p.add_argument("--labels", help="integer labels .npy for --images")
    p.add_argument("--input-mean", help="--model: pixel p enters as (p/255 - mean)/std; one value or one per channel")
    p.add_argument("--input-std", help="--model: see --input-mean")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:  # 0 divided by zero; a negative one sliced from the end
        raise UserError(f"--limit {args.limit}: must be at least 1")
    if bool(args.images) != bool(args.labels):
        raise UserError("--images and --labels go together")
    if args.spec and (args.input_mean or args.input_std):
        raise UserError("--input-mean/--input-std are for --model: a spec carries its input scaling")
    torch.set_num_threads(2)
    images = labels = None
    if args.images:
        from .importer.reference import load_images

        images, labels = load_images(args.images, args.labels)
    if args.model:
        from .importer.reference import parse_floats

        res = evaluate_model(args.model, parse_floats(args.input_mean, "--input-mean"),
                             parse_floats(args.input_std, "--input-std"), args.data, args.limit, images, labels)
        if args.json:
            print(json.dumps(res))
        else:
            where = args.images or "MNIST test"
            print(f"{args.model}: float error {100 * res['error_rate']:.2f}% ({res['errors']}/{res['images']}, "
                  f"{where}; onnxruntime), {res['images_per_s']:,.0f} images/s")
        return 0
    spec = qspec.load(args.spec)
    if images is not None:
        images = data.fit_images(images, spec.input_shape, what=f"--images {args.images}")
    if args.against:
        res = agreement(spec, args.against, args.data, args.limit, images, labels)
        if args.json:
            print(json.dumps(res))
        else:
            n = res["images"]
            print(f"{args.spec} vs {args.against}: classes agree on {res['classes_agree']:,}/{n:,} images "
                  f"({100 * res['agreement']:.2f}%); scores equal exactly on {res['scores_equal']:,}/{n:,}"
                  + (f"; errors: emulator {res['emulator_errors']}, model {res['model_errors']}"
                     if "model_errors" in res else ""))
        return 0
    res = {"spec": args.spec, **evaluate(spec, args.data, args.limit, images, labels, args.split)}
    if args.json:
        print(json.dumps(res))
    else:
        flagged = {k: v for k, v in res["saturations"].items() if v["acc_overflows"] or v["saturations"]}
        where = f" on {args.images}" if args.images else "" if res["split"] == "mnist" else f" on the {res['split']} split"
        print(f"{args.spec}: test error{where} {100 * res['error_rate']:.2f}% ({res['errors']}/{res['images']}), "
              f"{res['images_per_s']:,.0f} images/s" + ("; clipped LUT addresses/states: " + ", ".join(
                  f"{k} {v['saturations']}" + (f" (acc overflow {v['acc_overflows']}!)" if v['acc_overflows'] else "")
                  for k, v in flagged.items()) if flagged else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
