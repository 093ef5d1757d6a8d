"""``python -m sim --executor dask``: a regression's image shards as tasks of :mod:`tasks.executor`.

Each task is one shard of consecutive images: the worker writes the spec (sent in the task's
context, so it needs no shared disk), builds the simulator once per worker process and spec (kept
in a temporary directory named by the content key), runs :func:`sim.runner.run` on the shard,
which scores it against the emulator there, and sends back its verdict and every image's class.
The client adds the shards up: images, mismatches, the first mismatch (re-run here with the
tracer), cycles per image against the model. A shard that fails is named with its images; the
shards that finished are kept in ``partial.json``.

The local executor does not come here: ``python -m sim --jobs J`` already shares one simulator
build between J processes on this machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from model.data import fit_images
from model.progress import Progress
from model.util import UserError, atomic_write_text

SPEC_FILES = ("spec.json", "weights.npz")


def run_shard(ctx: dict, item) -> dict:
    """On a worker: simulate one shard (``item`` = (shard number, first image index, uint8 images))."""
    from .runner import run, work_name

    k, start, images = item
    root = Path(tempfile.gettempdir()) / f"lenet-hw-sim-{os.getpid()}" / ctx["token"]
    spec_dir = root / "spec"
    for name, data in ctx["spec"].items():
        p = spec_dir / name
        if not p.is_file():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    fuse, batch, dsp = ctx.get("fuse_pools", False), ctx.get("batch", 1), ctx.get("dsp", "auto")
    overlap = ctx.get("overlap_load", False)
    r = run(spec_dir, images, ctx["simulator"], ctx["lanes"], out=root / "out", trace_on_mismatch=False, jobs=1,
            duts=ctx["duts"], fuse_pools=fuse, batch=batch, dsp=dsp, overlap_load=overlap)
    work = root / "out" / work_name(spec_dir, ctx["lanes"], fuse, batch, dsp, overlap) / ctx["simulator"]
    r["classes"] = json.loads((work / "result.json").read_text())["classes"]
    r.update(shard=k, start=start, worker_pid=os.getpid())
    return r


def run_distributed(spec_dir, images: np.ndarray, simulator: str, lanes: int, executor, out="build/sim",
                    duts: int | None = None, shards: int | None = None, progress: bool = False,
                    fuse_pools: bool = False, batch: int = 1, dsp: str = "auto", overlap_load: bool = False) -> dict:
    """Simulate ``images`` as shards on ``executor``; the same result dict as :func:`sim.runner.run`.
    With an accelerator ``batch`` B every shard but the last holds whole groups of B images."""
    from quantize import spec as qspec
    from tasks.executor import code_digest

    from .build import check_simulator
    from .runner import run

    check_simulator(simulator)
    spec_dir = Path(spec_dir)
    spec = qspec.load(spec_dir)
    images = fit_images(np.asarray(images), spec.input_shape)
    files = {name: (spec_dir / name).read_bytes() for name in SPEC_FILES}
    h = hashlib.sha256(f"{simulator} {lanes} {duts} {code_digest()}{' fused' if fuse_pools else ''}"
                       f"{' overlap' if overlap_load else ''}".encode()
                       + (f" batch {batch} dsp {dsp}".encode() if batch != 1 or dsp != "auto" else b""))
    for name in SPEC_FILES:
        h.update(files[name])
    ctx = {"token": h.hexdigest()[:16], "spec": files, "simulator": simulator, "lanes": lanes, "duts": duts,
           "fuse_pools": fuse_pools, "batch": batch, "dsp": dsp, "overlap_load": overlap_load}
    n_groups = -(-len(images) // batch)
    n = min(shards or max(2 * executor.workers, -(-len(images) // 2000)), n_groups)
    bounds = [np.arange(g[0] * batch, min((g[-1] + 1) * batch, len(images)))
              for g in np.array_split(np.arange(n_groups), n) if len(g)]
    items = [(f"{ctx['token']}-{k}", (k, int(sel[0]), images[sel])) for k, sel in enumerate(bounds) if len(sel)]
    bar = Progress(len(images), "image", f"sim {spec_dir.name} {simulator} on {executor.describe()}", enabled=progress)
    done, errors = {}, []
    t0 = time.perf_counter()
    for key, r in executor.run(run_shard, ctx, items, name="sim"):
        k = int(key.rsplit("-", 1)[1])
        if isinstance(r, BaseException):
            sel = bounds[k]
            errors.append(f"shard {k} (images {int(sel[0])}..{int(sel[-1])}): {type(r).__name__}: "
                          + (str(r).splitlines()[0] if str(r) else ""))
            continue
        done[k] = r
        bar.update(r["images"], mismatches=sum(d["mismatches"] for d in done.values()))
    bar.close()
    wall = time.perf_counter() - t0
    result = combine(spec_dir, simulator, lanes, [done[k] for k in sorted(done)], wall)
    result.update(executor=executor.kind, shards=len(items), workers=executor.workers)
    if batch != 1 or dsp != "auto":
        parts = [done[k] for k in sorted(done)]
        runs = sum(p.get("runs", 0) for p in parts)
        result.update(batch=batch, dsp=dsp, runs=runs, cycles_per_batch=result["cycles_per_image"],
                      cycles_per_batch_model=result["cycles_per_image_model"],
                      cycles_per_s=round(runs * result["cycles_per_image"] / wall)
                      if wall and isinstance(result["cycles_per_image"], int) else None)
    from .runner import work_name

    work = Path(out) / work_name(spec_dir, lanes, fuse_pools, batch, dsp, overlap_load) / f"{simulator}-{executor.kind}"
    if errors:
        partial = work / "partial.json"
        atomic_write_text(partial, json.dumps({**result, "images_requested": len(images)}))
        raise UserError(f"{errors[0]}" + (f" (and {len(errors) - 1} more shard(s))" if len(errors) > 1 else "")
                        + f"; the {result['images']} of {len(images)} images scored so far "
                          f"({result['mismatches']} mismatches) are in {partial}")
    first = result["first_mismatch"]
    if first is not None:  # the tracer, here: one image
        n_img = first["image"]
        local = run(spec_dir, images[[n_img]], simulator, lanes, out=out, trace_on_mismatch=True, jobs=1,
                    fuse_pools=fuse_pools, batch=batch, dsp=dsp, overlap_load=overlap_load)
        if local["first_mismatch"]:
            first["trace"] = local["first_mismatch"].get("trace")
    atomic_write_text(work / "result.json", json.dumps(result))
    result.pop("classes", None)
    return result


def combine(spec_dir, simulator: str, lanes: int, parts: list[dict], wall: float) -> dict:
    """The shards' verdicts (in image order) as one result."""
    images = sum(p["images"] for p in parts)
    cycles = sorted({c for p in parts for c in (p["cycles_per_image"] if isinstance(p["cycles_per_image"], list)
                                                 else [p["cycles_per_image"]])})
    firsts = [dict(p["first_mismatch"], image=p["first_mismatch"]["image"] + p["start"])
              for p in parts if p["first_mismatch"] is not None]
    model = parts[0]["cycles_per_image_model"] if parts else None
    return {"spec": str(spec_dir), "simulator": simulator, "lanes": lanes, "images": images,
            "mismatches": sum(p["mismatches"] for p in parts), "first_mismatch": firsts[0] if firsts else None,
            "cycles_per_image": cycles[0] if len(cycles) == 1 else cycles, "cycles_per_image_model": model,
            "cycles_match_model": bool(parts) and all(p["cycles_match_model"] for p in parts),
            "sim_seconds": round(wall, 2), "build_seconds": max((p["build_seconds"] for p in parts), default=0),
            "images_per_s": round(images / wall, 2) if wall else None,
            "cycles_per_s": round(images * cycles[0] / wall) if wall and len(cycles) == 1 else None,
            "jobs": len({p["worker_pid"] for p in parts}), "duts": parts[0]["duts"] if parts else None,
            "classes": [c for p in parts for c in p["classes"]]}
