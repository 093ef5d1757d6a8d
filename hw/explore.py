"""``python -m hw.explore``: hardware design-space exploration, spec x target x lanes x batch x clock.

Each point (one spec, target, lanes, batch, clock, fused pools or not, overlapped load or not) is
one synthesis task (:func:`hw.synth.synthesize`: Yosys, nextpnr, the bitstream) on the executor layer
(:mod:`tasks.executor`: local processes or a Dask cluster); with ``--sim-images N`` every design
that built (spec, lanes, batch, fused pools, overlapped load) is then run in Verilator on the first
N MNIST test images (:func:`sim.runner.run`), bit for bit against the emulator. The tasks carry
the spec's files (a cluster worker needs no spec directory, nor MNIST). A point that does not fit
its device or misses its clock is a result (``failed``: the reason in one line), not a crash. Every
result is cached as one JSON file under ``OUT/points/`` (and ``OUT/sims/``), keyed by a
hash of the spec's bytes, the point, the nextpnr seed, the YoWASP tool versions and the project's
code digest: a second run computes nothing and an interrupted run keeps what finished. The report
(``report.md``, ``results.json``, ``results.csv``, PNG plots, the Pareto fronts, the task times) is
written by :mod:`hw.explore_report`.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from model.progress import Progress
from model.util import UserError, atomic_write_text, cli, load_json_object
from tasks import executor as executors

from .explore_points import SpecInput, content_hash, make_points, sim_design, sim_key, synth_tools, tool_versions
from .explore_report import (GRID_KEYS, POINT_KEYS, check_group, check_lanes,
                             estimate, load_grid, parse_freqs, parse_ints, design_tag)

# -- tasks (run on a worker) -------------------------------------------------------------------------
_SPEC_DIRS: dict[str, Path] = {}


def _spec_dir(ctx: dict, sha: str) -> Path:
    """The spec's files written once per worker process into a temporary directory."""
    if sha not in _SPEC_DIRS or not _SPEC_DIRS[sha].is_dir():
        entry = ctx["specs"][sha]
        root = Path(tempfile.mkdtemp(prefix="lenet-hw-explore-spec-"))
        atexit.register(shutil.rmtree, root, True)
        d = root / entry["name"]
        d.mkdir()
        for f, data in entry["files"].items():
            (d / f).write_bytes(data)
        _SPEC_DIRS[sha] = d
    return _SPEC_DIRS[sha]


def _work_dir(ctx: dict, name: str) -> tuple[Path, bool]:
    """(directory, kept): ``OUT/builds/NAME`` when the context names a builds directory, else a temp dir."""
    if ctx.get("builds"):
        d = Path(ctx["builds"]) / name
        shutil.rmtree(d, ignore_errors=True)  # what an interrupted run left
        d.mkdir(parents=True)
        return d, True
    return Path(tempfile.mkdtemp(prefix=f"lenet-hw-explore-{name}-")), False


_LOG = re.compile(r"\s*\((?:ask for a lower --freq; )?log: [^)]*\)")
_FIT = re.compile(r"does not fit (\S+): it needs ([\d,]+) (.+), the device has ([\d,]+) \(([\d,]+) over\)")
_TIMING = re.compile(r"timing not met at ([\d.]+) MHz: .*?: ([\d.]+) MHz \(FAIL")


def failure(e: BaseException) -> dict:
    """The failed-row fields of a task's exception: ``failed`` (one line, no paths) and ``failure``
    (fit, timing, design, tool, environment, internal); ``retry``: not cached (the next run tries again)."""
    if not isinstance(e, UserError):
        text = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return {"failed": f"internal error, please report: {text}", "failure": "internal", "retry": True}
    msg = _LOG.sub("", str(e).splitlines()[0] if str(e) else "UserError").strip()
    m = _FIT.search(msg)
    if m:
        need, has = int(m[2].replace(",", "")), int(m[4].replace(",", ""))
        return {"failed": f"does not fit: {need:,}/{has:,} {m[3]}", "failure": "fit",
                "fit": {"resource": m[3], "needs": need, "has": has}}
    m = _TIMING.search(msg)
    if m:
        return {"failed": f"timing not met: Fmax {float(m[2]):g} MHz < {float(m[1]):g} MHz asked", "failure": "timing"}
    if "not found; install" in msg:
        return {"failed": msg, "failure": "environment", "retry": True}
    kind = "tool" if msg.startswith(("yosys failed", "nextpnr failed", "bitstream packing")) else "design"
    return {"failed": msg, "failure": kind}


def _timing_details(work: Path, spec, p: dict) -> dict:
    """What a build that missed its clock still tells: nextpnr's report (resources, Fmax) and the cycles."""
    from .perf import cycles_per_image
    from .targets import TARGETS, cell_counts, parse_report

    reports = sorted(work.rglob("report.json"))
    if not reports:
        return {}
    t = TARGETS[p["target"]]
    res = parse_report(json.loads(reports[0].read_text()), t)
    out = {k: res.get(k) for k in ("dsps", "brams", "sprams", "logic_cells", "fmax_mhz")}
    if t.family == "ecp5":
        out["luts"] = res["luts"]
    else:
        stats = sorted(work.rglob("*.stat.json"))
        if stats:
            cells = cell_counts(json.loads(stats[0].read_text()), stats[0].name[:-len(".stat.json")])
            out["luts"] = cells.get("SB_LUT4", 0)
    cyc = cycles_per_image(spec, p["lanes"], fuse_pools=p["fuse_pools"], overlap_load=p["overlap_load"])
    out["cycles_per_image"] = round(cyc / p["batch"], 1)
    if out.get("fmax_mhz"):
        out["images_per_s_at_fmax"] = round(p["batch"] * out["fmax_mhz"] * 1e6 / cyc, 1)
    return out


SYNTH_FIELDS = ("design", "design_kind", "board", "weights", "luts", "ffs", "carries", "logic_cells", "dsps", "brams",
                "sprams", "io_pins", "cells", "utilization", "clock_mhz", "fmax_mhz", "timing_met", "cycles_per_image",
                "cycles_per_batch", "macs", "images_per_s", "images_per_s_at_fmax", "synth_seconds", "pnr_seconds")


def synth_point(ctx: dict, p: dict) -> dict:
    """Build one point; the result row (``failed`` with the reason if it does not build)."""
    from .synth import synthesize

    t0 = time.perf_counter()
    tools = synth_tools(p["target"], tool_versions())
    row = {k: p[k] for k in ("key", "label", "spec_name", "spec_path", "spec_sha", "target", "lanes", "batch", "freq",
                             "fuse_pools", "overlap_load", "seed")}
    row["tools"] = tools
    spec_dir = _spec_dir(ctx, p["spec_sha"])
    work, kept = _work_dir(ctx, p["key"])
    try:
        r = synthesize(str(spec_dir), p["target"], p["lanes"], None, p["freq"], work, p["seed"], True,
                       progress=lambda *_: None, batch=p["batch"], fuse_pools=p["fuse_pools"],
                       overlap_load=p["overlap_load"])
        row.update({k: r.get(k) for k in SYNTH_FIELDS}, failed=None)
        row["bitstream"] = str(Path(r["bitstream"]).relative_to(Path(ctx["builds"]).parent)) \
            if kept and r.get("bitstream") else None
    except Exception as e:  # noqa: BLE001 - a point that does not build is a result
        row.update(failure(e))
        if row["failure"] == "timing":
            from quantize import spec as qspec

            row.update(_timing_details(work, qspec.load(spec_dir), p),
                       timing_met=False, clock_mhz=p["freq"])
    finally:
        if not kept:
            shutil.rmtree(work, ignore_errors=True)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def sim_point(ctx: dict, item: dict) -> dict:
    """Verilator against the emulator on the context's images: one built design (:func:`sim_design`)."""
    from sim.runner import run

    t0 = time.perf_counter()
    row = {k: item[k] for k in ("key", "spec_name", "spec_sha", "lanes", "batch", "fuse_pools", "overlap_load", "dsp")}
    row.update(images=len(ctx["images"]), verilator=tool_versions()["verilator"])
    work = Path(tempfile.mkdtemp(prefix="lenet-hw-explore-sim-"))  # a Verilator build is ~170 MB: never kept
    try:
        r = run(_spec_dir(ctx, item["spec_sha"]), ctx["images"], "verilator", lanes=item["lanes"], out=work, jobs=1,
                batch=item["batch"], fuse_pools=item["fuse_pools"], overlap_load=item["overlap_load"],
                dsp=item["dsp"])
        first = r.get("first_mismatch")
        row.update(bit_exact=r["images"] - r["mismatches"], mismatches=r["mismatches"],
                   first_mismatch=None if first is None else first.get("image"),
                   cycles_per_image=r["cycles_per_image"], cycles_per_batch=r.get("cycles_per_batch"),
                   cycles_match_model=r["cycles_match_model"],
                   build_seconds=r["build_seconds"], sim_seconds=r["sim_seconds"], failed=None)
    except Exception as e:  # noqa: BLE001
        row.update(failure(e))
        if row.get("failure") == "design":  # e.g. a spec whose input MNIST digits cannot be adapted to
            row["failure"] = "sim"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _sim_label(row: dict) -> str:
    return (f"{row['spec_name']} L{row['lanes']}" + (f" B{row['batch']}" if row.get("batch", 1) > 1 else "")
            + design_tag(row) + (" on SB_MAC16" if row.get("dsp") == "sb_mac16" else ""))


# -- driver ------------------------------------------------------------------------------------------
def _cached(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):  # missing, or damaged: computed again
        return None


def _run_phase(ex, fn, ctx, todo: list[tuple[str, dict]], cache: Path, name: str, progress: bool, check, describe):
    """Run ``todo`` on ``ex``; cache each row as it arrives (failures too, except ``retry`` ones)."""
    bar = Progress(len(todo), "task", f"explore {name}", enabled=progress)
    failed, rows = 0, {}
    items = dict(todo)
    for key, row in ex.run(fn, ctx, todo, name=f"explore-{name}"):
        if isinstance(row, BaseException):  # the task itself could not run (a lost worker, a bug)
            row = {**{k: v for k, v in items[key].items()}, **failure(row), "seconds": None}
            row["failed"] = "task error: " + row["failed"]
        else:
            check(row)
        if not row.get("retry"):
            atomic_write_text(cache / f"{key}.json", json.dumps(row, indent=1))
        rows[key] = row
        failed += bool(row.get("failed"))
        bar.update(1, running=min(ex.workers, len(todo) - bar.done - 1), failed=failed, last=describe(row))
    bar.close()
    return rows


def run_explore(points: list[dict], specs: dict[str, SpecInput], out: Path, ex, sim_images: int = 0,
                data_dir=None, progress: bool = True, versions: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Every point built (or taken from the cache), then the simulations; (rows, tasks) for the report."""
    versions = versions or tool_versions()
    by_sha = {s.sha: s for s in specs.values()}
    ctx_specs = {sha: {"name": s.name, "files": s.files} for sha, s in by_sha.items()}
    token = content_hash(sorted(by_sha))
    builds = str((out / "builds").resolve()) if ex.kind == "local" else None
    cache, sim_cache = out / "points", out / "sims"
    cache.mkdir(parents=True, exist_ok=True)
    results, todo = {}, []
    for p in points:
        row = _cached(cache / f"{p['key']}.json")
        if row is not None and not row.get("retry"):
            results[p["key"]] = {**row, "cached": True}
        else:
            todo.append((p["key"], p))
    print(f"explore: {len(points)} points, {len(results)} cached, {len(todo)} to build, {ex.describe()}",
          file=sys.stderr)
    if todo and ex.kind == "local":
        _check_tools({p["target"] for _, p in todo})
    # the long builds first (batch cores, then the big devices) so that the parallel tail stays short
    todo.sort(key=lambda kp: (kp[1]["batch"] == 1, kp[1]["target"] != "ecp5-85k", kp[1]["target"] == "ice40-up5k",
                              -kp[1]["lanes"] * kp[1]["batch"]))

    def check_synth(row):
        if row.get("tools") != synth_tools(row["target"], versions):  # a worker with other YoWASP tools
            row.update(failed=f"the worker ran {row.get('tools')}, this machine has {synth_tools(row['target'], versions)}: "
                              "install the same tool versions everywhere", failure="environment", retry=True)

    def say(row):
        return f"{row['label']}: " + (row["failed"] if row.get("failed") else f"{row['images_per_s']:,} images/s")

    if todo:
        results.update(_run_phase(ex, synth_point, {"token": token, "specs": ctx_specs, "builds": builds}, todo,
                                  cache, "synth", progress, check_synth, say))
    rows = [results[p["key"]] for p in points]
    tasks = [{"task": "synth", "label": r["label"], "seconds": r.get("seconds"), "cached": bool(r.get("cached")),
              "failed": r.get("failed")} for r in rows]
    if sim_images:
        sims, todo = {}, []
        for r in rows:
            if r.get("failed"):
                continue
            design = sim_design(r)
            key = sim_key(design, sim_images, versions)
            r["sim_key"] = key
            if key in sims or any(k == key for k, _ in todo):
                continue
            c = _cached(sim_cache / f"{key}.json")
            if c is not None and not c.get("retry"):
                sims[key] = {**c, "cached": True}
            else:
                todo.append((key, {"key": key, "spec_name": r["spec_name"], **design}))
        print(f"explore: {len(sims) + len(todo)} Verilator runs of {sim_images} images, {len(sims)} cached, "
              f"{len(todo)} to run", file=sys.stderr)
        if todo:
            from model import data
            from sim.build import check_simulator

            if ex.kind == "local":
                check_simulator("verilator")
            images = data.load("test", data_dir).images[:sim_images]
            sim_cache.mkdir(parents=True, exist_ok=True)
            ctx = {"token": token + f"-sim{sim_images}", "specs": ctx_specs, "images": images}
            sims.update(_run_phase(ex, sim_point, ctx, todo, sim_cache, "sim", progress, lambda row: None,
                                   lambda row: f"{_sim_label(row)}: " + (
                                       row["failed"] if row.get("failed") else
                                       f"{row['bit_exact']}/{row['images']} bit-exact")))
        for key, s in sims.items():
            tasks.append({"task": "sim", "label": f"{_sim_label(s)} {s.get('images', sim_images)} images",
                          "seconds": s.get("seconds"), "cached": bool(s.get("cached")), "failed": s.get("failed")})
        for r in rows:
            if r.get("sim_key"):
                r["sim"] = {k: v for k, v in sims[r["sim_key"]].items() if k not in ("spec_name", "spec_sha", "cached")}
    return rows, tasks


def _check_tools(targets) -> None:
    from .synth import tool_argv
    from .targets import TARGETS

    for fam in sorted({TARGETS[t].family for t in targets}):
        for tool in ("yosys", f"nextpnr-{fam}", "icepack" if fam == "ice40" else "ecppack"):
            tool_argv(tool)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hw.explore", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", action="append", help="QuantSpec directory (repeat for several)")
    p.add_argument("--target", action="append", help="FPGA target (repeat for several; default ice40-up5k)")
    p.add_argument("--lanes", help="lane counts, e.g. 1,2,4,8 (default 8)")
    p.add_argument("--batch", help="images in lockstep, e.g. 1,2 (default 1; the board top takes B images per command)")
    p.add_argument("--freq", help="clocks in MHz, e.g. 27,50, or 'board' (the board's oscillator; default)")
    p.add_argument("--fuse-pools", action=argparse.BooleanOptionalAction, default=None,
                   help="run each pool that can fuse in its conv layer's drain (default: no; a grid takes [false, true])")
    p.add_argument("--overlap-load", action=argparse.BooleanOptionalAction, default=None,
                   help="load each image while the one before runs (default: no)")
    p.add_argument("--grid", help="JSON grid instead of --spec/--target/...: keys " + ", ".join(sorted(GRID_KEYS))
                                  + " (without --grid and --spec: the default grid, make explore)")
    p.add_argument("--seed", type=int, default=None, help="nextpnr placement seed (default 1, or the grid's)")
    p.add_argument("--sim-images", type=int, default=None,
                   help="also run Verilator on the first N MNIST test images for each design that built "
                        "(default: the grid's; 0: none)")
    p.add_argument("--data", default=None, help="MNIST directory (for --sim-images)")
    p.add_argument("--out", default="build/reports/explore")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel builds (--executor local)")
    executors.add_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="list the points (and which are cached); build nothing")
    p.add_argument("--report-only", action="store_true",
                   help="write the report again from OUT/results.json (after a change of the report's code)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from .explore_report import print_tasks, write_report

    t0 = time.perf_counter()
    if args.report_only:
        doc = load_json_object(Path(args.out) / "results.json", "--report-only: --out")
        rows, tasks = doc.pop("points"), doc.pop("tasks")
        meta = {k: v for k, v in doc.items() if k not in ("pareto", "plots")}
        paths = write_report(rows, tasks, Path(args.out), meta)
        print(f"explore: report {paths['report']} from {len(rows)} points")
        return 0
    flags = [f for f in POINT_KEYS if getattr(args, f) is not None]
    if args.grid and flags:
        raise UserError(f"--{flags[0].replace('_', '-')}: give the points either with --grid or with "
                        "--spec/--target/--lanes/--batch/--freq/--fuse-pools/--overlap-load")
    if args.grid or not flags:
        grid = load_grid(args.grid)
    else:
        if not args.spec:
            raise UserError(f"--{flags[0].replace('_', '-')} needs --spec (or use --grid)")
        grid = load_grid(None) | {"sim_images": 0, "groups": [check_group({
            "spec": args.spec, "target": args.target or ["ice40-up5k"],
            "lanes": check_lanes(parse_ints(args.lanes, "--lanes"), "--lanes") if args.lanes else [8],
            "batch": parse_ints(args.batch, "--batch") if args.batch else [1],
            "freq": parse_freqs(args.freq) if args.freq else [None],
            "fuse_pools": [bool(args.fuse_pools)], "overlap_load": [bool(args.overlap_load)]}, "command line")]}
    if args.seed is not None:
        grid["seed"] = args.seed
    if args.sim_images is not None:
        if args.sim_images < 0:
            raise UserError(f"--sim-images {args.sim_images}: must be 0 or more")
        grid["sim_images"] = args.sim_images
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    specs = {s: SpecInput(s) for g in grid["groups"] for s in g["spec"]}
    versions = tool_versions()
    points = make_points(grid, specs, versions)
    if args.dry_run:
        for pt in points:
            cached = (out / "points" / f"{pt['key']}.json").is_file()
            print(f"{pt['key']}  {pt['label']}" + ("  (cached)" if cached else ""))
        print(f"explore: {len(points)} points", file=sys.stderr)
        return 0
    with executors.make(args.executor, args.scheduler, args.jobs) as ex:
        rows, tasks = run_explore(points, specs, out, ex, grid["sim_images"], args.data, not args.no_progress,
                                  versions)
        where = ex.describe()
    wall = time.perf_counter() - t0
    est = estimate(tasks)
    meta = {"n_points": len(points), "executor": where, "wall_seconds": round(wall, 1), "grid": grid,
            "tools": versions, "code": executors.code_digest(), "seed": grid["seed"],
            "sim_images": grid["sim_images"], "estimate_16_workers": est,
            "computed": sum(not t["cached"] for t in tasks)}
    paths = write_report(rows, tasks, out, meta)
    print_tasks(tasks, est, wall, where)
    failed = [r for r in rows if r.get("failed")]
    print(f"explore: {len(rows)} points ({len(failed)} failed) in {wall:.0f} s; report {paths['report']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
