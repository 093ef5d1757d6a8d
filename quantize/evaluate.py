"""``python -m quantize.evaluate --spec DIR``: bit-exact test error of a QuantSpec on MNIST."""
from __future__ import annotations

import argparse
import json
import time

import torch

from model import data
from model.util import UserError, cli

from . import spec as qspec
from .emulator import Emulator


def evaluate(spec, data_dir=None, limit: int | None = None) -> dict:
    test = data.load("test", data_dir)
    images, labels = test.images[:limit], test.labels[:limit]
    emu = Emulator(spec)
    emu.run(images[:100], keep=False)  # warm-up (tables, allocator)
    t0 = time.perf_counter()
    r = emu.run(images, keep=False)
    dt = time.perf_counter() - t0
    errors = int((r.predictions != labels).sum())
    return {"network": spec.network, "preset": spec.provenance.get("preset"), "images": int(len(labels)),
            "errors": errors, "error_rate": errors / len(labels), "images_per_s": round(len(labels) / dt, 1),
            "seconds": round(dt, 3), "weight_bits": spec.weight_bits(), "saturations": r.saturations()}


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m quantize.evaluate", description="Bit-exact test error of a QuantSpec.")
    p.add_argument("--spec", required=True, help="spec directory")
    p.add_argument("--data", default=None, help="MNIST directory")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:  # 0 divided by zero; a negative one sliced from the end
        raise UserError(f"--limit {args.limit}: must be at least 1")
    torch.set_num_threads(2)
    spec = qspec.load(args.spec)
    res = {"spec": args.spec, **evaluate(spec, args.data, args.limit)}
    if args.json:
        print(json.dumps(res))
    else:
        flagged = {k: v for k, v in res["saturations"].items() if v["acc_overflows"] or v["saturations"]}
        print(f"{args.spec}: test error {100 * res['error_rate']:.2f}% ({res['errors']}/{res['images']}), "
              f"{res['images_per_s']:,.0f} images/s" + ("; clipped LUT addresses: " + ", ".join(
                  f"{k} {v['saturations']}" + (f" (acc overflow {v['acc_overflows']}!)" if v['acc_overflows'] else "")
                  for k, v in flagged.items()) if flagged else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
