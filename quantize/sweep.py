"""``python -m quantize.sweep``: accuracy x bit widths x hardware cost, bit-exact on MNIST.

Each point of the grid is a quantization config: the float checkpoint (``--checkpoint``, a LeNet)
or an imported ONNX model (``--model``, :mod:`quantize.sweep_model`) is calibrated with it and
the emulator evaluates it on the test set (10,000 images by default). A point whose config cannot
be built for the model is a failed row with the reason (the report lists it). Points are cached
one JSON file each under ``OUT/points/``, so an interrupted sweep resumes where it stopped and a
larger grid reuses what is done. ``--jobs N`` evaluates points in N processes. The report (``report.md``,
``results.json``, ``results.csv`` and PNG plots) is written by :mod:`quantize.report` at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path


from model.progress import Progress
from tasks import executor
from model.util import UserError, load_json_object, atomic_write_text, cli, sha256_file

from .calibrate import PRESETS, check_config

DEFAULT_GRID = {
    "base": "q8",  # every point starts from this preset
    "weight_bits": [2, 3, 4, 5, 6, 7, 8, 10],
    "act_bits": [2, 3, 4, 5, 6, 8, 10],
    "rounding": ["TRN", "RND_CONV"],
    "acc_bits": [16, 18, 20, 22],  # narrow accumulators at the base point (they may wrap)
    "sensitivity_bits": [2, 3, 4, 6],  # one layer at a time, the rest at the base widths
    "anna": True,  # the ANNA point (6-bit weights, 3-bit states) with and without QAT
}
GRID_KEYS = set(DEFAULT_GRID) | {"images", "qat_epochs"}


def load_grid(path: str | None) -> dict:
    grid = dict(DEFAULT_GRID)
    if path:
        user = load_json_object(path, "--grid")
        unknown = set(user) - GRID_KEYS
        if unknown:
            raise UserError(f"--grid {path}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(GRID_KEYS))})")
        grid.update(user)
    if not isinstance(grid["base"], str) or grid["base"] not in PRESETS:
        raise UserError(f"grid: unknown base preset {grid['base']!r}")
    for key in ("weight_bits", "act_bits", "rounding", "acc_bits", "sensitivity_bits"):
        if not isinstance(grid[key], list):
            raise UserError(f"grid: {key} must be a list")
    if not isinstance(grid["anna"], bool):
        raise UserError(f"grid: anna must be true or false, not {grid['anna']!r}")
    for key in ("images", "qat_epochs"):
        v = grid.get(key, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UserError(f"grid: {key} = {v!r} must be a positive integer")
    return grid


def _point(kind: str, label: str, cfg: dict, **tags) -> dict:
    cfg = check_config(cfg)
    return {"kind": kind, "label": label, "config": cfg, **tags}


def make_points(grid: dict, layer_names: list[str], qat: bool = False, anna_qat: bool = True) -> list[dict]:
    """Every point of the grid, validated before anything runs (``anna_qat``: with the QAT ANNA point)."""
    base = {**PRESETS[grid["base"]], "preset": grid["base"], "qat_epochs": 0}
    pts = []
    for w, a, r in itertools.product(grid["weight_bits"], grid["act_bits"], grid["rounding"]):
        cfg = {**base, "weight_bits": w, "act_bits": a, "rounding": r}
        if qat:
            cfg["qat_epochs"] = grid.get("qat_epochs", 1)
        pts.append(_point("grid", f"w{w} a{a} {r}" + (" QAT" if qat else ""), cfg,
                          weight_bits=w, act_bits=a, rounding=r, qat=qat))
    for acc in grid["acc_bits"]:
        pts.append(_point("acc", f"acc {acc}", {**base, "acc_bits": acc}, acc_bits=acc))
    for name, b in itertools.product(layer_names, grid["sensitivity_bits"]):
        if name == layer_names[-1]:
            continue  # the RBF output has fixed +-1 weights and no state
        cfg = {**base, "layers": {name: {"weight_bits": b, "act_bits": b}}}
        pts.append(_point("sensitivity", f"{name} at {b} bits", cfg, layer=name, bits=b))
    if grid["anna"]:
        anna = {**PRESETS["anna"], "preset": "anna"}
        pts.append(_point("anna", "ANNA (6-bit w, 3-bit states), no QAT", {**anna, "qat_epochs": 0}, qat=False))
        if anna_qat:
            pts.append(_point("anna", f"ANNA (6-bit w, 3-bit states), QAT {anna['qat_epochs']} epochs", anna, qat=True))
    if not pts:
        raise UserError("grid: no points (every list is empty)")
    return pts


def point_key(point: dict, source, images: int) -> str:
    """``source``: the checkpoint's sha256, or an imported model's identity (a dict: file sha256,
    input scaling, test and calibration images)."""
    ident = {"checkpoint": source} if isinstance(source, str) else {"model": source}
    blob = json.dumps({"config": point["config"], **ident, "images": images}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- worker ------------------------------------------------------------------------------------------
#: per worker process: the state built from a context (its token -> the loaded model, images...)
_STATE: dict = {}


def lenet_context(ckpt: str, images: int, data_dir=None) -> dict:
    """What every task of a checkpoint's sweep reads: the checkpoint's bytes, the test and calibration
    images (so a cluster worker needs neither the file nor MNIST; QAT points read MNIST training
    digits there: ``LENET_DATA``)."""
    from model import data

    from .calibrate import calibration_images

    raw = Path(ckpt).read_bytes()
    test = data.load("test", data_dir)
    return {"token": hashlib.sha256(raw).hexdigest() + f"-{images}", "checkpoint": raw, "name": Path(ckpt).name,
            "cal": calibration_images({"seed": 0}, data_dir), "images": test.images[:images],
            "labels": test.labels[:images], "data_dir": None if data_dir is None else str(data_dir)}


def _state(ctx: dict) -> dict:
    """The worker's state for ``ctx`` (built once per process and context)."""
    if _STATE.get("token") == ctx["token"]:
        return _STATE
    _STATE.clear()
    _STATE["token"] = ctx["token"]
    if "checkpoint" not in ctx:  # an imported model: sweep_model.ImportedModel.context()
        from .sweep_model import builder

        _STATE.update(images=ctx["images"], labels=ctx["labels"], build=builder(ctx))
        return _STATE
    import tempfile

    from model import checkpoint

    from .calibrate import pre_activations

    d = Path(tempfile.mkdtemp(prefix="lenet-hw-sweep-"))
    path = d / ctx["name"]
    path.write_bytes(ctx["checkpoint"])
    net, meta = checkpoint.load(path)
    _STATE.update(model=net, meta=meta, cal=ctx["cal"], pre=pre_activations(net, ctx["cal"]), build=_build_lenet,
                  images=ctx["images"], labels=ctx["labels"], ckpt=str(path), data_dir=ctx["data_dir"])
    return _STATE


def _build_lenet(cfg: dict):
    """Calibrate the checkpoint (and QAT if the config asks)."""
    from .__main__ import quantize
    from .calibrate import build_spec

    s = _STATE
    if cfg.get("qat_epochs", 0) > 0:
        return quantize(s["ckpt"], cfg, s["data_dir"], progress=False, log=lambda m: None)
    return build_spec(s["model"], cfg, s["cal"], pre=s["pre"])


def evaluate_point(ctx: dict, point: dict) -> dict:
    """Quantize (and QAT if the config asks), evaluate bit-exactly; return the result row.

    A config the model cannot take (a UserError: e.g. an accumulator past 64 bits) gives a failed
    row with the reason (``failed``); anything else too, marked ``failed_internal`` (not cached)."""
    from .emulator import Emulator
    from .hwcost import estimate

    s = _state(ctx)
    t0 = time.perf_counter()
    cfg = point["config"]
    n = len(s["labels"])
    tags = {k: v for k, v in point.items() if k != "config"}
    try:
        spec = s["build"](cfg)
        t1 = time.perf_counter()
        r = Emulator(spec).run(s["images"], keep=False)
    except Exception as e:  # noqa: BLE001 - one point's failure must not lose the sweep
        internal = not isinstance(e, UserError)
        reason = f"internal error, please report: {type(e).__name__}: {e}" if internal else str(e)
        return {**tags, "config": cfg, "images": n, "errors": None, "error_rate": None,
                "failed": reason.splitlines()[0] if reason else type(e).__name__, "failed_internal": internal,
                "seconds": round(time.perf_counter() - t0, 2)}
    t2 = time.perf_counter()
    errors = int((r.predictions != s["labels"]).sum())
    sat = r.saturations()
    return {**tags, "config": cfg,
            "formats": {l.name: {k: str(f) for k, f in l.formats.items()} for l in spec.layers},
            "images": n, "errors": errors, "error_rate": errors / n,
            "saturations": sat, "total_saturations": sum(v["saturations"] for v in sat.values()),
            "acc_overflows": sum(v["acc_overflows"] for v in sat.values()),
            "weight_memory_bits": spec.weight_bits(), **estimate(spec),
            "emulator_images_per_s": round(n / (t2 - t1), 1),
            "seconds": round(t2 - t0, 2)}


def _check_acc_points(points, model, data_dir) -> None:
    """An accumulator narrower than its fraction bits + 2 is impossible: say so before running."""
    from .calibrate import build_spec, calibration_images

    accs = [p for p in points if p["kind"] == "acc"]
    if not accs:
        return
    spec = build_spec(model, {k: v for k, v in accs[0]["config"].items() if k != "acc_bits"},
                      calibration_images({"seed": 0, "calibration_images": 64}, data_dir))
    need = max(l.formats["acc"].frac for l in spec.layers if l.kind != "rbf") + 2
    for p in accs:
        if p["acc_bits"] < need:
            raise UserError(f"grid: acc_bits {p['acc_bits']} is narrower than the {need} bits the base point's "
                            f"accumulator fraction needs")


# -- driver ------------------------------------------------------------------------------------------
def check_out(out: Path, jobs: int) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if jobs < 1:
        raise UserError("--jobs must be at least 1")


def run_sweep(grid: dict, ckpt: str | None, out: Path, jobs: int = 1, qat: bool = False, data_dir=None,
              progress: bool = True, model=None, executor=None) -> list[dict]:
    """The sweep of a LeNet checkpoint ``ckpt``, or of ``model`` (a :class:`quantize.sweep_model.ImportedModel`),
    each point a task of ``executor`` (:mod:`tasks.executor`; default ``jobs`` local processes)."""
    from tasks.executor import LocalExecutor

    check_out(out, jobs)
    images = int(grid.get("images", 10000))
    ctx = None
    if model is not None:
        from .sweep_model import QAT_REFUSED

        if qat:
            raise UserError(QAT_REFUSED)
        points = make_points(grid, model.layer_names(), anna_qat=False)  # too narrow acc_bits: failed rows
        source, ctx, images = model.identity(), model.context(), len(model.labels)
        ctx["token"] = json.dumps(source, sort_keys=True)
    else:
        from model.lenet import LeNetConfig
        from model import checkpoint

        net, meta = checkpoint.load(ckpt)
        names = [d.name for d in LeNetConfig(net.config.arch).layers]
        points = make_points(grid, names)
        if qat:
            points += make_points({**grid, "acc_bits": [], "sensitivity_bits": [], "anna": False}, names, qat=True)
        _check_acc_points(points, net, data_dir)
        source = sha256_file(ckpt)
    cache = out / "points"
    cache.mkdir(parents=True, exist_ok=True)
    results, todo = {}, []
    for p in points:
        key = point_key(p, source, images)
        if key in results or any(k == key for k, _ in todo):
            continue  # the same config listed twice is computed once
        f = cache / f"{key}.json"
        if f.is_file():
            try:
                results[key] = json.loads(f.read_text())
                continue
            except json.JSONDecodeError:
                pass  # a damaged cache entry is recomputed
        todo.append((key, p))
    done = len(results)
    executor = executor or LocalExecutor(jobs)
    print(f"sweep: {done + len(todo)} points, {done} cached, {len(todo)} to run, {executor.describe()}, "
          f"{images} test images", file=sys.stderr)
    # slow (QAT) points first so the parallel tail stays short
    todo.sort(key=lambda kp: -kp[1]["config"].get("qat_epochs", 0))
    bar = Progress(len(todo), "point", "sweep", enabled=progress)
    failed = 0

    def finish(key, row):
        nonlocal failed
        row["key"] = key
        if not row.get("failed_internal"):  # a bug's failure is retried by the next run
            atomic_write_text(cache / f"{key}.json", json.dumps(row, indent=1))
        results[key] = row
        failed += bool(row.get("failed"))
        bar.update(1, running=min(executor.workers, len(todo) - bar.done - 1), failed=failed,
                   last=f"{row['label']}: " + ("failed" if row.get("failed") else f"{100 * row['error_rate']:.2f}%"))

    if todo:
        if ctx is None:
            ctx = lenet_context(ckpt, images, data_dir)
        labels = {key: p for key, p in todo}
        for key, row in executor.run(evaluate_point, ctx, todo, name="sweep"):
            if isinstance(row, BaseException):  # the task itself could not run (a lost worker, a bug)
                p = labels[key]
                row = {**{k: v for k, v in p.items() if k != "config"}, "config": p["config"], "images": images,
                       "errors": None, "error_rate": None, "failed_internal": True,
                       "failed": f"task error, please report: {type(row).__name__}: {str(row).splitlines()[0] if str(row) else ''}"}
            finish(key, row)
    bar.close()
    rows = [results[point_key(p, source, images)] for p in points]
    failed = list({r["key"]: r for r in rows if r.get("failed")}.values())
    if failed:
        print(f"sweep: {len(failed)} point(s) failed: " + "; ".join(f"{r['label']}: {r['failed']}" for r in failed[:5])
              + (" ..." if len(failed) > 5 else ""), file=sys.stderr)
    return rows


MODEL_FLAGS = ("--input-mean", "--input-std", "--images", "--labels", "--calibration-images")


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m quantize.sweep", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", default="model/checkpoints/lenet5.pt",
                     help="a LeNet checkpoint (the default: %(default)s)")
    src.add_argument("--model", help="an ONNX model instead: imported as python -m quantize --model does "
                                     "(see docs/import.md)")
    p.add_argument("--grid", default=None, help="JSON grid file (keys: " + ", ".join(sorted(GRID_KEYS)) + ")")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes (--executor local)")
    executor.add_arguments(p)
    p.add_argument("--qat", action="store_true", help="also run every grid point with QAT (slow; checkpoints only)")
    p.add_argument("--out", default="build/reports/sweep")
    p.add_argument("--data", default=None, help="MNIST directory")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--synth", default="build/synth",
                   help="python -m hw.synth results to take measured hardware columns from (if present)")
    from .importer.reference import add_model_arguments

    add_model_arguments(p, "uint8 images .npy (N x C x H x W, or N x H x W): the test set and the calibration set "
                           "(default: MNIST, when the model takes 1 x H x W, H, W <= 28)",
                        "integer labels .npy for --images")
    args = p.parse_args(argv)
    from .report import attach_synthesis, write_report

    if not args.model:
        used = [f for f in MODEL_FLAGS if getattr(args, f[2:].replace("-", "_")) is not None]
        if used:
            raise UserError(f"{used[0]} is for --model (an imported ONNX model), not --checkpoint")
    elif args.qat:
        from .sweep_model import QAT_REFUSED

        raise UserError(QAT_REFUSED)
    out = Path(args.out)
    grid = load_grid(args.grid)
    t0 = time.perf_counter()
    model = None
    if args.model:
        from .sweep_model import prepare

        check_out(out, args.jobs)
        model = prepare(args.model, args.input_mean, args.input_std, args.images, args.labels,
                        args.calibration_images, args.data, int(grid.get("images", 10000)), grid["base"])
    ckpt = None if model else args.checkpoint
    if ckpt and not Path(ckpt).is_file():
        raise UserError(f"--checkpoint {ckpt}: no such file")
    with executor.make(args.executor, args.scheduler, args.jobs) as ex:
        rows = run_sweep(grid, ckpt, out, args.jobs, args.qat, args.data, not args.no_progress, model=model,
                         executor=ex)
    if model:
        float_err = model.float_error()
    else:
        float_err = _float_error(ckpt, int(grid.get("images", 10000)), args.data)
    attach_synthesis(rows, args.synth)
    paths = write_report(rows, out, float_err, ckpt, time.perf_counter() - t0, synth_dir=args.synth,
                         model=model.describe() if model else None)
    print(f"sweep: {len(rows)} points in {time.perf_counter() - t0:.0f} s; report {paths['report']}")
    return 0


def _float_error(ckpt, images, data_dir) -> float:
    from model import checkpoint
    from model.evaluate import evaluate

    net, _ = checkpoint.load(ckpt)
    return evaluate(net, data_dir, images)["error_rate"]


if __name__ == "__main__":
    raise SystemExit(main())
