"""``python -m sim`` on bad input: exit code 2 and one ``error:`` line on stderr that says what to do.

None of these reaches a simulator: each fails before any build.
"""
from __future__ import annotations

import json
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
    ("shape.npy", np.zeros((2, 27, 27), np.uint8), "shape (2, 27, 27), the spec takes 1 x 28 x 28"),
    ("channels.npy", np.zeros((2, 3, 28, 28), np.uint8), "the spec takes 1 x 28 x 28"),
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
    """A LeNet-5 spec takes 28 x 28 (the first conv pads it); a 32 x 32 image whose border is not grey
    level 0 cannot be simulated as given (it used to be cropped silently and compared as "bit-exact")."""
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


def test_simulator_dying_midway_names_the_images_done_and_keeps_them(q8_spec_dir, sim_verilog, sim_out, mnist_dir,
                                                                     tmp_path):
    """A simulator that stops in the middle of the second of three images: one error naming the
    images and how many finished; the first image's result is scored and kept in partial.json."""
    from model import data
    from model.util import UserError
    from sim import runner

    text = sim_verilog.read_text()
    top = text.index("endmodule")  # the first module is the accelerator's top
    cut = 700_000  # ns: after image 0 (about 480,000 ns with reset and loading), inside image 1
    dying = tmp_path / sim_verilog.name
    dying.write_text(text[:top] + f"  initial #{cut} $finish;\n" + text[top:])
    images = data.load("test", data=mnist_dir).images[:3]
    with pytest.raises(UserError) as e:
        runner.run(q8_spec_dir, images, "icarus", out=sim_out, verilog=dying, jobs=1)
    msg = str(e.value)
    assert "\n" not in msg
    assert "ended after 1 of 3 images" in msg and "images 0..2" in msg and "partial.json" in msg
    partial = json.loads((sim_out / f"{q8_spec_dir.resolve().name}-L8" / "icarus" / "partial.json").read_text())
    assert partial["images"] == 1 and partial["images_requested"] == 3 and partial["mismatches"] == 0
    assert partial["classes"][0] >= 0 and partial["classes"][1:] == [-1, -1]
