"""``python -m quantize.sweep``: report files, agreement with ``python -m quantize`` + ``quantize.evaluate``,
resume after SIGKILL, ``--jobs 2``, bad input, and the report's Pareto/summary helpers.

The checkpoint is an untrained LeNet-5 (seed 0): errors are near chance, but the mechanics are what
is tested. Grids are tiny and limited to 200 test images. The expensive sweep processes run once, in a
module fixture the tests share: grid A started by ``python -m quantize.sweep`` and SIGKILLed,
resumed to completion (``run_sweep``, ``--jobs 1``, in-process to save a torch import), then grown to
grid B by ``python -m quantize.sweep --jobs 2`` (its two new points come from worker processes).

``--model``: a tiny untrained ONNX CNN (1 x 14 x 14 digits) swept twice in-process (the second run
all cached), one point checked against ``python -m quantize --model``, a sweep on ``--images`` with
points that cannot be built (failed rows), and the refusals (one error line each).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from quantize.report import pareto, summarize

REPO = Path(__file__).resolve().parents[1]
IMAGES = 200
POINT_FILE = re.compile(r"[0-9a-f]{16}\.json")
SUMMARY_LINE = re.compile(r"^sweep: (\d+) points, (\d+) cached, (\d+) to run, (\d+) (?:job\(s\)|Dask worker\(s\) at \S+), (\d+) test images$", re.M)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ["heatmap.png", "sensitivity.png", "pareto_memory.png", "pareto_luts.png"]
REPORT_FILES = ["results.json", "results.csv", "report.md", *PLOTS]

# 2 grid points + 6 sensitivity points (one per layer but the RBF output) = 8 points
GRID_A = {"weight_bits": [4, 8], "act_bits": [8], "rounding": ["TRN"], "acc_bits": [], "sensitivity_bits": [4],
          "anna": False, "images": IMAGES}
# the same plus RND_CONV: 2 more points (10), run with --jobs 2
GRID_B = {**GRID_A, "rounding": ["TRN", "RND_CONV"]}
NEW_IN_B = ["w4 a8 RND_CONV", "w8 a8 RND_CONV"]


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _sweep_args(ckpt, grid, out, mnist_dir, jobs=1):
    return ["--checkpoint", ckpt, "--grid", grid, "--out", out, "--jobs", str(jobs), "--no-progress",
            "--data", mnist_dir]


def _summary(stderr: str) -> tuple[int, ...]:
    m = SUMMARY_LINE.findall(stderr)
    assert len(m) == 1, f"expected one 'sweep: N points, K cached, M to run' line in stderr:\n{stderr}"
    return tuple(map(int, m[0]))


def _snapshot(points_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Finished point files (not atomic-write temporaries): name -> (mtime_ns, content)."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in points_dir.iterdir() if POINT_FILE.fullmatch(p.name)}


@pytest.fixture(scope="session")
def sweep_checkpoint(tmp_path_factory) -> Path:
    """An untrained LeNet-5 checkpoint (seed 0), no training."""
    import torch

    import model.checkpoint
    import model.lenet

    torch.manual_seed(0)
    net = model.lenet.LeNet("lenet5")
    path = tmp_path_factory.mktemp("sweep_ckpt") / "l5.pt"
    model.checkpoint.save(path, net, seed=0, test_error=None)
    return path


@pytest.fixture(scope="module")
def grown_sweep(sweep_checkpoint, mnist_dir, run_module, tmp_path_factory):
    """Grid A started and SIGKILLed after >= 2 points, resumed to completion, then grown to grid B (--jobs 2).

    Returns what each stage saw; the out directory ends up holding grid B's complete report.
    """
    tmp = tmp_path_factory.mktemp("sweep")
    out = tmp / "out"
    grid_a = _write_json(tmp / "grid_a.json", GRID_A)
    grid_b = _write_json(tmp / "grid_b.json", GRID_B)
    points = out / "points"

    env = {k: v for k, v in os.environ.items() if k not in ("LENET_DATA", "LENET_MNIST_MIRROR")}
    with open(tmp / "killed.stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "quantize.sweep",
                                 *map(str, _sweep_args(sweep_checkpoint, grid_a, out, mnist_dir))],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            while proc.poll() is None and time.monotonic() < deadline:
                if points.is_dir() and len(_snapshot(points)) >= 2:
                    break
                time.sleep(0.02)
            running = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    killed_stderr = (tmp / "killed.stderr").read_text()
    assert running, f"the sweep ended (rc {proc.returncode}) before it could be killed:\n{killed_stderr}"
    assert proc.returncode == -signal.SIGKILL
    assert _summary(killed_stderr) == (8, 0, 8, 1, IMAGES)
    after_kill = _snapshot(points)

    # the rerun to completion: the sweep itself (run_sweep, what ``python -m quantize.sweep --jobs 1`` runs
    # before its report), in this process to save an interpreter and a torch import; the grown run below
    # is the whole CLI
    import torch

    from quantize.sweep import load_grid, run_sweep

    threads, err = torch.get_num_threads(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rows_a = run_sweep(load_grid(str(grid_a)), str(sweep_checkpoint), out, jobs=1, data_dir=str(mnist_dir),
                               progress=False)
    finally:
        torch.set_num_threads(threads)
    resumed = SimpleNamespace(stderr=err.getvalue())
    after_resume = _snapshot(points)

    grown = run_module("quantize.sweep", *_sweep_args(sweep_checkpoint, grid_b, out, mnist_dir, jobs=2), timeout=180)
    assert grown.returncode == 0, grown.stderr
    after_grow = _snapshot(points)
    return {"out": out, "killed_stderr": killed_stderr, "after_kill": after_kill, "resumed": resumed,
            "after_resume": after_resume, "rows_a": rows_a, "grown": grown, "after_grow": after_grow}


# ------------------------------------------------------------------------------------------ 1. report
def test_sweep_writes_report_plots_and_tables(grown_sweep):
    out = grown_sweep["out"]
    for name in REPORT_FILES:
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, f"{name} is not a PNG file"

    res = json.loads((out / "results.json").read_text())
    rows = res["points"]
    assert len(rows) == 10
    assert sorted(r["label"] for r in rows if r["kind"] == "grid") == sorted(
        f"w{w} a8 {r}" for w in (4, 8) for r in ("TRN", "RND_CONV"))
    assert sorted(r["layer"] for r in rows if r["kind"] == "sensitivity") == ["C1", "C3", "C5", "F6", "S2", "S4"]
    for r in rows:
        assert r["images"] == IMAGES
        assert 0 <= r["errors"] <= IMAGES and r["error_rate"] == r["errors"] / IMAGES
        assert POINT_FILE.fullmatch(r["key"] + ".json") and (out / "points" / f"{r['key']}.json").is_file()

    with open(out / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    assert [c["label"] for c in csv_rows] == [r["label"] for r in rows]
    assert [int(c["errors"]) for c in csv_rows] == [r["errors"] for r in rows]

    md = (out / "report.md").read_text()
    for name in PLOTS:
        assert f"]({name})" in md, f"report.md does not embed {name}"
    s = res["summary"]["smallest_within_0.2pt"]
    if s is None:
        assert "No grid point came within 0.2 points of the float error." in md
    else:
        assert (f"Smallest widths within 0.2 points of float: **{s['weight_bits']}-bit weights, "
                f"{s['act_bits']}-bit states** ({s['label']}:") in md
        # and it really is the smallest of the qualifying grid points
        within = [r for r in rows if r["kind"] == "grid" and r["error_rate"] - res["summary"]["float_error"] <= 0.002 + 1e-9]
        assert s["weight_bits"] + s["act_bits"] == min(r["weight_bits"] + r["act_bits"] for r in within)


# ------------------------------------------------------------------------------------------ 3. resume
def test_sweep_resumes_after_sigkill_without_recomputing(grown_sweep):
    after_kill, after_resume = grown_sweep["after_kill"], grown_sweep["after_resume"]
    k = len(after_kill)
    assert 2 <= k < 8
    assert _summary(grown_sweep["resumed"].stderr) == (8, k, 8 - k, 1, IMAGES)
    # the points finished before the kill are reused as they are: not rewritten
    for name, (mtime, content) in after_kill.items():
        assert after_resume[name] == (mtime, content), f"{name} was rewritten by the resumed sweep"
    assert len(after_resume) == 8 and set(after_kill) <= set(after_resume)
    # every point of grid A is in the result exactly once, each with its cached row
    rows = grown_sweep["rows_a"]
    assert sorted(r["key"] + ".json" for r in rows) == sorted(after_resume)
    for r in rows:
        cached = json.loads(after_resume[r["key"] + ".json"][1])
        assert cached["errors"] == r["errors"] and cached["label"] == r["label"]


def test_sweep_larger_grid_reuses_every_previous_point(grown_sweep):
    after_resume, after_grow = grown_sweep["after_resume"], grown_sweep["after_grow"]
    assert _summary(grown_sweep["grown"].stderr) == (10, 8, 2, 2, IMAGES)
    for name, snap in after_resume.items():
        assert after_grow[name] == snap, f"{name} was rewritten by the larger sweep"
    new = set(after_grow) - set(after_resume)
    assert len(new) == 2
    assert sorted(json.loads(after_grow[n][1])["label"] for n in new) == NEW_IN_B


# ------------------------------------------------------------------- 2. agrees with the quantize CLI
@pytest.fixture
def torch_globals():
    """``python -m quantize`` (run in-process here) sets torch's thread count and determinism: restore them."""
    import torch

    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


@pytest.mark.parametrize("label", ["w4 a8 TRN", "C3 at 4 bits"])
def test_sweep_point_matches_quantize_and_evaluate_cli(label, grown_sweep, sweep_checkpoint, mnist_dir, tmp_path,
                                                       capsys, torch_globals):
    """The same config through ``python -m quantize --config`` + ``python -m quantize.evaluate --json --limit``
    gives the same formats and exactly the same errors as the sweep (both run the CLIs' ``main``)."""
    import quantize.__main__
    import quantize.evaluate
    from quantize import spec as qspec

    row = next(r for r in json.loads((grown_sweep["out"] / "results.json").read_text())["points"] if r["label"] == label)
    if row["kind"] == "grid":
        cfg = {"preset": "q8", "weight_bits": row["weight_bits"], "act_bits": row["act_bits"],
               "rounding": row["rounding"], "qat_epochs": 0}
    else:
        cfg = {"preset": "q8", "qat_epochs": 0, "layers": {row["layer"]: {"weight_bits": row["bits"], "act_bits": row["bits"]}}}
    config = _write_json(tmp_path / "config.json", cfg)
    spec_dir = tmp_path / "spec"
    assert quantize.__main__.main(["--checkpoint", str(sweep_checkpoint), "--config", str(config), "--out", str(spec_dir),
                                   "--data", str(mnist_dir), "--no-progress"]) == 0
    capsys.readouterr()
    spec = qspec.load(spec_dir)
    assert {l.name: {k: str(f) for k, f in l.formats.items()} for l in spec.layers} == row["formats"]
    assert quantize.evaluate.main(["--spec", str(spec_dir), "--json", "--limit", str(IMAGES), "--data", str(mnist_dir)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == row["images"] == IMAGES
    assert res["errors"] == row["errors"]
    assert res["weight_bits"] == row["weight_memory_bits"]


# ------------------------------------------------------------------------------------------ 4. --jobs 2
def test_sweep_jobs2_matches_jobs1(grown_sweep, sweep_checkpoint, mnist_dir, tmp_path, capsys, torch_globals):
    """Grid B's new points came from 2 worker processes; the --jobs 1 path (``run_sweep`` in this process,
    as ``python -m quantize.sweep --jobs 1`` runs it) gives the same rows. The grid lists w4 twice: the
    same config is one point, computed once."""
    from quantize.sweep import load_grid, run_sweep

    grid = load_grid(str(_write_json(tmp_path / "grid.json", {**GRID_A, "weight_bits": [4, 8, 4],
                                                                "rounding": ["RND_CONV"], "sensitivity_bits": []})))
    out = tmp_path / "out"
    rows = run_sweep(grid, str(sweep_checkpoint), out, jobs=1, data_dir=str(mnist_dir), progress=False)
    assert _summary(capsys.readouterr().err) == (2, 0, 2, 1, IMAGES)
    assert len(_snapshot(out / "points")) == 2
    assert [row["label"] for row in rows] == ["w4 a8 RND_CONV", "w8 a8 RND_CONV", "w4 a8 RND_CONV"]
    jobs2 = {row["key"]: row for row in json.loads((grown_sweep["out"] / "results.json").read_text())["points"]}
    for row in rows:
        ref = jobs2[row["key"]]
        for field in ("label", "errors", "error_rate", "formats", "saturations", "acc_overflows", "weight_memory_bits",
                      "est_luts", "est_brams"):
            assert row[field] == ref[field], f"{row['label']}: {field} differs between --jobs 2 and --jobs 1"


# ------------------------------------------------------------------------------------------ 5. bad input
BAD_GRIDS = {
    "weight_bits 0": ({**GRID_A, "weight_bits": [0]}, "weight_bits"),
    "weight_bits 40": ({**GRID_A, "weight_bits": [4, 40]}, "weight_bits"),
    "rounding NOPE": ({**GRID_A, "rounding": ["NOPE"]}, "NOPE"),
    "empty grid": ({"weight_bits": [], "act_bits": [], "rounding": [], "acc_bits": [], "sensitivity_bits": [],
                    "anna": False}, "no points"),
    "unknown key": ({**GRID_A, "weigth_bits": [4]}, "weigth_bits"),
    "sensitivity_bits 1": ({**GRID_A, "sensitivity_bits": [1]}, "1"),
    "acc narrower than its fraction": ({**GRID_A, "acc_bits": [4]}, "acc_bits"),
    "images 0": ({**GRID_A, "images": 0}, "images"),
    "images not a number": ({**GRID_A, "images": "abc"}, "images"),
    "base not a preset name": ({**GRID_A, "base": ["q8"]}, "base"),
    "anna not a boolean": ({**GRID_A, "anna": "yes"}, "anna"),
    "weight_bits not a list": ({**GRID_A, "weight_bits": 4}, "weight_bits"),
    "grid is a JSON list": ([1, 2], "JSON object"),
}


def _assert_one_error(rc, err, out: Path, mention: str):
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), f"expected one 'error:' line, got:\n{err}"
    assert mention in lines[0]
    for name in REPORT_FILES:
        assert not (out / name).exists(), f"{name} written despite the error"


@pytest.mark.parametrize("case", list(BAD_GRIDS))
def test_sweep_bad_grid_is_one_error_line(case, sweep_checkpoint, mnist_dir, tmp_path, capsys):
    from quantize.sweep import main

    grid, mention = BAD_GRIDS[case]
    path = _write_json(tmp_path / "grid.json", grid)
    out = tmp_path / "out"
    rc = main(list(map(str, _sweep_args(sweep_checkpoint, path, out, mnist_dir))))
    _assert_one_error(rc, capsys.readouterr().err, out, mention)
    assert not (out / "points").exists() or not any((out / "points").iterdir())


def test_sweep_out_is_a_file(sweep_checkpoint, mnist_dir, tmp_path, capsys):
    from quantize.sweep import main

    path = _write_json(tmp_path / "grid.json", GRID_A)
    out = tmp_path / "out"
    out.write_text("not a directory\n")
    rc = main(list(map(str, _sweep_args(sweep_checkpoint, path, out, mnist_dir))))
    _assert_one_error(rc, capsys.readouterr().err, tmp_path, "not a directory")
    assert out.read_text() == "not a directory\n"


def test_sweep_missing_grid_file(sweep_checkpoint, mnist_dir, tmp_path, capsys):
    from quantize.sweep import main

    out = tmp_path / "out"
    rc = main(list(map(str, _sweep_args(sweep_checkpoint, tmp_path / "nope.json", out, mnist_dir))))
    _assert_one_error(rc, capsys.readouterr().err, out, "no such file")
    assert not out.exists()


def test_sweep_grid_not_json(sweep_checkpoint, mnist_dir, tmp_path, capsys):
    from quantize.sweep import main

    grid = tmp_path / "grid.json"
    grid.write_text('{"weight_bits": [4, 8],\n')
    out = tmp_path / "out"
    rc = main(list(map(str, _sweep_args(sweep_checkpoint, grid, out, mnist_dir))))
    captured = capsys.readouterr()
    _assert_one_error(rc, captured.err, out, "not valid JSON")
    assert captured.out == ""
    assert not out.exists()


# ------------------------------------------------------------------------------------- 6. report units
def test_pareto_known_front():
    pts = [(1, 5), (2, 3), (2, 4), (3, 3), (4, 1), (0.5, 9), (5, 1), (4, 2)]
    # (2, 4) and (4, 2) lose at equal cost, (3, 3) ties (2, 3)'s error at a higher cost, (5, 1) ties (4, 1)
    assert pareto(pts) == [5, 0, 1, 4]
    assert pareto([]) == []
    assert pareto([(3, 0.5)]) == [0]
    assert pareto([(1, 1), (1, 1)]) == [0]  # a duplicate is listed once


def _grid_row(w, a, errors, mem=None, qat=False, images=10000, kind="grid"):
    return {"kind": kind, "label": f"w{w} a{a}" + (" QAT" if qat else ""), "weight_bits": w, "act_bits": a,
            "qat": qat, "errors": errors, "error_rate": errors / images, "weight_memory_bits": mem or 1000 * w}


def test_summarize_smallest_within_02_points():
    float_err = 62 / 10000
    rows = [
        _grid_row(8, 8, 60),
        _grid_row(6, 8, 70),
        _grid_row(4, 8, 83),            # 0.21 points above float: out
        _grid_row(8, 4, 80, mem=9000),  # 12 bits, within
        _grid_row(6, 6, 82, mem=5000),  # 12 bits, exactly 0.2 points above (float rounding!): within, less memory
        _grid_row(5, 6, 95),            # 11 bits but 0.33 points above: out
        _grid_row(3, 3, 50, qat=True),  # QAT points do not count
        {**_grid_row(2, 2, 10), "kind": "sensitivity"},  # nor do sensitivity points
        {**_grid_row(6, 3, 70), "kind": "anna", "qat": False},
        {**_grid_row(6, 3, 65), "kind": "anna", "qat": True},
    ]
    s = summarize(rows, float_err)
    assert s["float_error"] == float_err
    assert s["smallest_within_0.2pt"] == {"label": "w6 a6", "weight_bits": 6, "act_bits": 6, "error_rate": 82 / 10000}
    assert s["min_weight_bits_within_0.2pt"] == 6
    assert s["min_act_bits_within_0.2pt"] == 4
    assert s["anna_ptq_error"] == 70 / 10000 and s["anna_qat_error"] == 65 / 10000


def test_summarize_nothing_within():
    s = summarize([_grid_row(8, 8, 900), _grid_row(4, 4, 5000), _grid_row(2, 2, 10, qat=True)], 0.01)
    assert s["smallest_within_0.2pt"] is None
    assert s["min_weight_bits_within_0.2pt"] is None and s["min_act_bits_within_0.2pt"] is None
    assert s["anna_ptq_error"] is None and s["anna_qat_error"] is None


def test_report_takes_measured_hardware_from_synthesis(tmp_path):
    """A synthesized spec (matched by every layer's formats) turns its point's cost columns into
    measured figures; other points keep the estimates."""
    import json

    from quantize.report import attach_synthesis

    fa = {"C1": {"weight": "Q0.7 (8b RND_CONV/SAT)"}}
    fb = {"C1": {"weight": "Q0.5 (6b RND_CONV/SAT)"}}
    rows = [{"label": "a", "formats": fa}, {"label": "b", "formats": fb}]
    for target, luts in (("ecp5-85k", 9000), ("ice40-up5k", 2800)):
        d = tmp_path / target / "x"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({
            "target": target, "lanes": 8, "batch": 1, "luts": luts, "ffs": 1, "dsps": 8, "brams": 22, "sprams": 4,
            "clock_mhz": 27, "fmax_mhz": 27.6, "images_per_s": 563.2, "spec_formats": fa}))
    res = attach_synthesis(rows, tmp_path)
    assert len(res) == 2
    assert rows[0]["luts"] == 2800 and rows[0]["brams"] == 22  # the iCE40 build fills the columns
    assert {h["target"] for h in rows[0]["synthesis"]} == {"ecp5-85k", "ice40-up5k"}
    assert "luts" not in rows[1] and "synthesis" not in rows[1]
    assert attach_synthesis([{"label": "c", "formats": fa}], tmp_path / "missing") == []


# ------------------------------------------------------------------- 7. an imported ONNX model (--model)
# 2 grid points + 2 sensitivity points (conv1, fc1: the pool has no weights, fc2 gives the scores)
# + the ANNA point calibrated only = 5 points
MODEL_GRID = {"weight_bits": [4, 8], "act_bits": [8], "rounding": ["RND_CONV"], "acc_bits": [], "sensitivity_bits": [4],
              "anna": True, "images": IMAGES}
MODEL_CAL = "200"  # calibration images (the default is 2,000)


def _export(module, shape, path: Path) -> Path:
    import torch

    from quantize.importer import export_onnx

    export_onnx(module, torch.zeros((1,) + shape), path)
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """An untrained Conv-ReLU-MaxPool-Linear-ReLU-Linear on 1 x 14 x 14 digits (seed 0), as ONNX."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(144, 16), nn.ReLU(),
                        nn.Linear(16, 10))
    return _export(net, (1, 14, 14), tmp_path_factory.mktemp("sweep_model") / "tiny.onnx")


def _model_args(path, grid, out, mnist_dir, *extra):
    return ["--model", str(path), "--input-mean", "0.1307", "--input-std", "0.3081", "--grid", str(grid),
            "--out", str(out), "--jobs", "1", "--no-progress", "--data", str(mnist_dir),
            "--calibration-images", MODEL_CAL, *map(str, extra)]


def _run_main(argv) -> tuple[int, str]:
    """``python -m quantize.sweep``'s main in this process: (exit code, stderr); torch's threads restored."""
    import torch

    from quantize.sweep import main

    threads, err = torch.get_num_threads(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(list(map(str, argv)))
    finally:
        torch.set_num_threads(threads)
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def model_sweep(tiny_onnx, mnist_dir, tmp_path_factory):
    """The tiny model swept twice into the same directory (the second run finds every point cached)."""
    tmp = tmp_path_factory.mktemp("model_sweep")
    grid, out = _write_json(tmp / "grid.json", MODEL_GRID), tmp / "out"
    rc, first = _run_main(_model_args(tiny_onnx, grid, out, mnist_dir))
    assert rc == 0, first
    after_first = _snapshot(out / "points")
    rc, second = _run_main(_model_args(tiny_onnx, grid, out, mnist_dir))
    assert rc == 0, second
    return {"out": out, "grid": grid, "first": first, "second": second, "after_first": after_first,
            "after_second": _snapshot(out / "points")}


def test_model_sweep_rows_report_and_float_error(model_sweep, tiny_onnx, mnist_dir, capsys):
    import quantize.evaluate

    out = model_sweep["out"]
    res = json.loads((out / "results.json").read_text())
    rows = res["points"]
    assert sorted(r["label"] for r in rows if r["kind"] == "grid") == ["w4 a8 RND_CONV", "w8 a8 RND_CONV"]
    assert [r["layer"] for r in rows if r["kind"] == "sensitivity"] == ["conv1", "fc1"]
    anna = [(r["label"], r["qat"]) for r in rows if r["kind"] == "anna"]
    assert anna == [("ANNA (6-bit w, 3-bit states), no QAT", False)]  # calibrated only: no QAT point
    for r in rows:
        assert "failed" not in r and r["images"] == IMAGES and 0 <= r["error_rate"] <= 1
        assert r["error_rate"] == r["errors"] / IMAGES
        assert list(r["formats"]) == ["conv1", "pool1", "fc1", "fc2"]
    assert "checkpoint" not in res
    assert res["model"]["model"] == str(tiny_onnx) and res["model"]["input_mean"] == [0.1307]
    # the float error is quantize.evaluate --model's (onnxruntime) on the same images
    assert quantize.evaluate.main(["--model", str(tiny_onnx), "--input-mean", "0.1307", "--input-std", "0.3081",
                                   "--limit", str(IMAGES), "--data", str(mnist_dir), "--json"]) == 0
    assert res["summary"]["float_error"] == json.loads(capsys.readouterr().out)["error_rate"]
    md = (out / "report.md").read_text()
    assert md.splitlines()[0] == f"# Quantization sweep: tiny ({tiny_onnx})"
    assert "LeNet" not in md and "checkpoint" not in md
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_model_sweep_second_run_is_cached(model_sweep):
    assert _summary(model_sweep["first"]) == (5, 0, 5, 1, IMAGES)
    assert _summary(model_sweep["second"]) == (5, 5, 0, 1, IMAGES)
    assert len(model_sweep["after_first"]) == 5
    assert model_sweep["after_second"] == model_sweep["after_first"]  # nothing recomputed or rewritten


def test_model_sweep_point_matches_quantize_cli(model_sweep, tiny_onnx, mnist_dir, tmp_path, capsys, torch_globals):
    """A sensitivity point through ``python -m quantize --model --config`` + ``quantize.evaluate --spec``."""
    import quantize.__main__
    import quantize.evaluate
    from quantize import spec as qspec

    row = next(r for r in json.loads((model_sweep["out"] / "results.json").read_text())["points"]
               if r["label"] == "conv1 at 4 bits")
    config = _write_json(tmp_path / "config.json", row["config"])
    spec_dir = tmp_path / "spec"
    assert quantize.__main__.main(["--model", str(tiny_onnx), "--input-mean", "0.1307", "--input-std", "0.3081",
                                   "--config", str(config), "--calibration-images", MODEL_CAL, "--out", str(spec_dir),
                                   "--data", str(mnist_dir)]) == 0
    spec = qspec.load(spec_dir)
    assert {l.name: {k: str(f) for k, f in l.formats.items()} for l in spec.layers} == row["formats"]
    capsys.readouterr()
    assert quantize.evaluate.main(["--spec", str(spec_dir), "--json", "--limit", str(IMAGES),
                                   "--data", str(mnist_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["errors"] == row["errors"]


def test_model_sweep_user_images_and_failed_point(model_sweep, tiny_onnx, mnist_dir, tmp_path):
    """--images/--labels are the test (and calibration) set: a point the MNIST sweep cached is computed
    again. w32 a32 needs an accumulator past 64 bits, acc 4 cannot hold the accumulator's fraction:
    failed rows with the reason, in the report."""
    import shutil

    import numpy as np

    import model.data

    test = model.data.load("test", mnist_dir)
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, model.data.fit_images(test.images[:150], (1, 14, 14))[:, 0])  # N x H x W
    np.save(y, test.labels[:150].astype(np.int64))
    out = tmp_path / "out"
    shutil.copytree(model_sweep["out"] / "points", out / "points")
    grid = _write_json(tmp_path / "grid.json", {**MODEL_GRID, "weight_bits": [8, 32], "act_bits": [8, 32],
                                                "acc_bits": [4], "sensitivity_bits": [], "anna": False})
    rc, err = _run_main(_model_args(tiny_onnx, grid, out, mnist_dir, "--images", x, "--labels", y))
    assert rc == 0, err
    assert _summary(err) == (5, 0, 5, 1, 150)
    res = json.loads((out / "results.json").read_text())
    assert res["model"]["test_images"] == str(x) and res["model"]["images"] == 150
    bad = [r for r in res["points"] if r.get("failed")]
    assert [r["label"] for r in bad] == ["w32 a32 RND_CONV", "acc 4"]
    assert "accumulator" in bad[0]["failed"] and "acc_bits 4" in bad[1]["failed"]
    assert all(0 <= r["error_rate"] <= 1 for r in res["points"] if not r.get("failed"))
    md = (out / "report.md").read_text()
    assert "## Failed points" in md and "| w32 a32 RND_CONV | " in md
    assert (out / "points" / f"{bad[0]['key']}.json").is_file()  # a config failure is cached too


@pytest.fixture(scope="module")
def rgb_onnx(tmp_path_factory) -> Path:
    """A 3 x 8 x 8 input: not MNIST digits."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 10))
    return _export(net, (3, 8, 8), tmp_path_factory.mktemp("sweep_rgb") / "rgb.onnx")


MODEL_REFUSALS = {  # which model, extra arguments -> what the one error line mentions
    "--qat": ("tiny", ["--qat"], "--qat applies to LeNet checkpoints only"),
    "--images of the wrong shape": ("tiny", ["--images", "bad.npy", "--labels", "labels.npy"], "--images"),
    "--images without --labels": ("tiny", ["--images", "bad.npy"], "--labels"),
    "a model that does not take digits": ("rgb", [], "--images"),
    "--input-mean with --checkpoint": ("checkpoint", [], "--input-mean"),
}


@pytest.mark.parametrize("case", list(MODEL_REFUSALS))
def test_model_sweep_refusal_is_one_line(case, tiny_onnx, rgb_onnx, sweep_checkpoint, mnist_dir, tmp_path):
    import numpy as np

    which, extra, mention = MODEL_REFUSALS[case]
    np.save(tmp_path / "bad.npy", np.zeros((10, 3, 9, 9), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(10, np.int64))
    grid, out = _write_json(tmp_path / "grid.json", MODEL_GRID), tmp_path / "out"
    extra = [tmp_path / a if a.endswith(".npy") else a for a in extra]
    args = _model_args(rgb_onnx if which == "rgb" else tiny_onnx, grid, out, mnist_dir, *extra)
    if which == "checkpoint":
        args[:2] = ["--checkpoint", str(sweep_checkpoint)]
    rc, err = _run_main(args)
    _assert_one_error(rc, err, out, mention)
    assert not (out / "points").exists()
