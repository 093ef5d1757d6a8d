"""``python -m sim`` on bad input: exit code 2 and one ``error:`` line on stderr that says what to do.

None of these reaches a simulator: each fails before any build.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import sim.__main__ as sim_main


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def _npy(tmp_path, name, arr):
    f = tmp_path / name
    np.save(f, arr)
    return f


@pytest.mark.parametrize("name, arr, hint", [
    ("shape.npy", np.zeros((2, 27, 27), np.uint8), "expected N x 28 x 28 or N x 32 x 32"),
    ("dtype.npy", np.zeros((2, 28, 28), np.float32), "expected uint8"),
])
def test_bad_image_file(run_module, q8_spec_dir, sim_out, tmp_path, name, arr, hint):
    f = _npy(tmp_path, name, arr)
    p = run_module("sim", "--spec", q8_spec_dir, "--images", f, "--out", sim_out)
    assert p.returncode == 2, (p.stdout, p.stderr)
    line = _one_error_line(p.stderr)
    assert str(f) in line and hint in line
    assert p.stdout == ""


def test_padded_image_with_ink_in_the_border(run_module, q8_spec_dir, sim_out, tmp_path):
    """The accelerator pads the 28 x 28 centre itself; a 32 x 32 image whose border is not grey level 0
    cannot be simulated as given (it used to be cropped silently and compared as "bit-exact")."""
    img = np.zeros((1, 32, 32), np.uint8)
    img[0, 0, 5] = 200
    f = _npy(tmp_path, "border.npy", img)
    p = run_module("sim", "--spec", q8_spec_dir, "--images", f, "--out", sim_out)
    assert p.returncode == 2, (p.stdout, p.stderr)
    line = _one_error_line(p.stderr)
    assert "border" in line and "28 x 28" in line


def test_missing_spec_dir(run_module, tmp_path, sim_out):
    missing = tmp_path / "no-such-spec"
    p = run_module("sim", "--spec", missing, "--images", 1, "--out", sim_out)
    assert p.returncode == 2, (p.stdout, p.stderr)
    line = _one_error_line(p.stderr)
    assert str(missing) in line and "no such directory" in line and "make quantize" in line


def test_unknown_simulator(run_module, q8_spec_dir, sim_out):
    p = run_module("sim", "--spec", q8_spec_dir, "--images", 1, "--simulator", "modelsim", "--out", sim_out)
    assert p.returncode == 2, (p.stdout, p.stderr)
    line = _one_error_line(p.stderr)
    assert "modelsim" in line and "icarus" in line and "verilator" in line


def test_zero_images(run_module, q8_spec_dir, sim_out):
    p = run_module("sim", "--spec", q8_spec_dir, "--images", 0, "--out", sim_out)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "at least 1" in _one_error_line(p.stderr)


@pytest.mark.parametrize("simulator, missing, install", [
    ("icarus", {"iverilog", "vvp"}, "apt-get install iverilog"),
    ("verilator", {"verilator"}, "make install"),
])
def test_simulator_not_installed(monkeypatch, capsys, q8_spec_dir, mnist_dir, tmp_path, simulator, missing, install):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **kw: None if cmd in missing else real_which(cmd, *a, **kw))
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))  # the runner prepends the venv's bin
    rc = sim_main.main(["--spec", str(q8_spec_dir), "--images", "1", "--simulator", simulator,
                        "--data", str(mnist_dir), "--out", str(tmp_path / "out")])
    assert rc == 2
    out, err = capsys.readouterr()
    line = _one_error_line(err)
    assert simulator in line and "not found" in line and install in line
    assert any(f"'{tool}'" in line for tool in missing)
    assert out == ""
    assert not (tmp_path / "out").exists()  # failed before generating or building anything
