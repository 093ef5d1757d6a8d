"""``python -m hw.generate``: Verilog + manifest, deterministic, accepted by Icarus and Verilator."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hw.perf import schedule
from hw.generate import top_name

REPO = Path(__file__).resolve().parents[1]
PORTS = {"i__payload", "i__valid", "i__ready", "o__payload", "o__valid", "o__ready", "busy", "done", "clk", "rst"}
# the README's list (make lint): CMPCONST flags compares a narrow format or the window's last bank
# row/column makes constant (``3 < mx`` with a 2-bit mx)
VERILATOR_WAIVERS = ["-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE", "-Wno-CMPCONST"]


@pytest.fixture(scope="module")
def generated(run_module, q8_spec_dir, tmp_path_factory):
    """Generate twice into two directories: (first dir, second dir, stdout of the first run)."""
    outs = []
    for n in range(2):
        out = tmp_path_factory.mktemp(f"verilog{n}")
        r = run_module("hw.generate", "--spec", q8_spec_dir, "--lanes", 8, "--out", out, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append((out, r.stdout))
    return outs[0][0], outs[1][0], outs[0][1]


def test_generate_writes_verilog_and_manifest(generated, q8_spec):
    out, _, stdout = generated
    top = top_name(q8_spec)
    assert top == "lenet5_q8"
    assert sorted(p.name for p in out.iterdir()) == [f"{top}.json", f"{top}.v"]
    text = (out / f"{top}.v").read_text()
    assert f"module {top}(" in text
    man = json.loads((out / f"{top}.json").read_text())
    assert man["top"] == top and man["lanes"] == 8 and man["network"] == "lenet5" and man["preset"] == "q8"
    assert {p["name"] for p in man["ports"]} == PORTS
    widths = {p["name"]: (p["direction"], p["width"]) for p in man["ports"]}
    assert widths["i__payload"] == ("input", 8) and widths["clk"] == ("input", 1) and widths["rst"] == ("input", 1)
    assert widths["o__valid"] == ("output", 1) and widths["done"] == ("output", 1) and widths["busy"] == ("output", 1)
    s = schedule(q8_spec, 8)
    assert man["cycles_per_image"] == s["cycles_per_image"]
    assert man["macs_per_image"] == s["macs_per_image"] == q8_spec.macs()
    assert [l["cycles"] for l in man["cycle_model"]] == [l["cycles"] for l in s["layers"]]
    assert f"{top}.v" in stdout and f"{s['cycles_per_image']:,} cycles/image" in stdout
    assert man["verilog_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    # the network's shape, from the compiled program (LeNet-5: one 28 x 28 channel, 10 classes)
    assert man["image_shape"] == [1, 28, 28] and man["image_bytes"] == 784
    assert man["classes"] == 10 and man["output_beats"] == 11
    assert man["streams"]["o"].startswith("11 beats: class, then scores 0..9")
    assert "1 x 28 x 28" in man["streams"]["i"]
    assert not {"input_size", "input_pad"} & set(man)


def test_generate_takes_a_compiled_program(q8_spec, monkeypatch):
    """One compiled program per run: given one, generate() compiles nothing, and gives the bytes
    it gives when it compiles the spec itself."""
    import hw.generate as gen
    from hw.program import compile_spec

    prog = compile_spec(q8_spec, 2)
    text, man = gen.generate(q8_spec, 2)

    def no_compile(*a, **kw):
        raise AssertionError("compiled again")

    monkeypatch.setattr(gen, "compile_spec", no_compile)
    monkeypatch.setattr("hw.accelerator.compile_spec", no_compile)
    monkeypatch.setattr("hw.perf.compile_spec", no_compile)
    assert gen.generate(q8_spec, 2, program=prog) == (text, man)


def test_generate_any_network_shape():
    """A network that is not LeNet-5 (several channels, a non-square image, other classes): the
    manifest's shapes are the spec's."""
    randspec = pytest.importorskip("quantize.randspec")
    from hw.generate import generate

    spec = next(s for s in map(randspec.random_spec, range(100))
                if s.input_shape[0] > 1 and s.input_shape[1] != s.input_shape[2] and s.classes != 10)
    c, h, w = spec.input_shape
    _, man = generate(spec, 4)
    assert man["image_shape"] == [c, h, w] and man["image_bytes"] == c * h * w
    assert man["classes"] == spec.classes and man["output_beats"] == spec.classes + 1
    assert man["streams"]["o"].startswith(f"{spec.classes + 1} beats: class, then scores 0..{spec.classes - 1}")


def test_generate_is_deterministic(generated):
    a, b, _ = generated
    for name in ("lenet5_q8.v", "lenet5_q8.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_iverilog_compiles(generated, tmp_path):
    if shutil.which("iverilog") is None:
        pytest.skip("iverilog not installed")
    out, _, _ = generated
    r = subprocess.run(["iverilog", "-g2012", "-o", str(tmp_path / "a.out"), str(out / "lenet5_q8.v")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a.out").is_file()


def test_verilator_lint(generated):
    exe = REPO / ".venv/bin/verilator"
    exe = str(exe) if exe.is_file() else shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator not installed")
    out, _, _ = generated
    r = subprocess.run([exe, "--lint-only", *VERILATOR_WAIVERS, str(out / "lenet5_q8.v")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "%Warning" not in r.stderr and "%Error" not in r.stderr


@pytest.mark.parametrize("lanes", ["0", "300", "-1"])
def test_generate_bad_lanes(run_module, q8_spec_dir, tmp_path, lanes):
    out = tmp_path / "out"
    r = run_module("hw.generate", "--spec", q8_spec_dir, "--lanes", lanes, "--out", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "lanes" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_generate_missing_spec(run_module, tmp_path):
    out = tmp_path / "out"
    r = run_module("hw.generate", "--spec", tmp_path / "no-such-spec", "--out", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert not out.exists()


def test_generate_out_is_a_file(run_module, q8_spec_dir, tmp_path):
    out = tmp_path / "out"
    out.write_text("not a directory")
    r = run_module("hw.generate", "--spec", q8_spec_dir, "--lanes", 1, "--out", out, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error:"), r.stderr
    assert out.read_text() == "not a directory"


def _one_error_line(r, *needles):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_generate_refuses_what_the_hardware_cannot_build(run_module, q8_spec, tmp_path):
    """A valid spec the engine cannot build (a 50-bit accumulator; a padded conv after a dense
    layer): one line naming the layer and field, exit 2, nothing written."""
    import copy

    wide = copy.deepcopy(q8_spec)
    c3 = wide.layer("C3")
    c3.formats["acc"] = c3.formats["acc"].with_(width=50)
    r = run_module("hw.generate", "--spec", wide.save(tmp_path / "wide"), "--out", tmp_path / "out1")
    _one_error_line(r, "layer C3.formats.acc", "50 bits")
    assert not (tmp_path / "out1").exists()

    import numpy as np

    from quantize.qformat import QFormat
    from quantize.spec import LayerSpec

    padded = copy.deepcopy(q8_spec)  # the scores from a 3x3 conv, padded by 1, over F6's 84 values
    f6 = padded.layer("F6")
    w = QFormat(8, 7, True, "RND_CONV", "SAT")
    fmts = {"input": f6.out_format, "weight": w, "bias": QFormat(16, 13, True, "RND_CONV", "SAT"),
            "acc": QFormat(24, f6.out_format.frac + 7, True, "TRN", "WRAP")}
    padded.layers[-1] = LayerSpec(name="OUT", kind="conv", in_maps=84, out_maps=10, in_h=1, in_w=1, kernel=3,
                                  formats=fmts, weight=np.ones((10, 84, 3, 3), np.int64),
                                  bias=np.zeros(10, np.int64), pad=1)
    r = run_module("hw.generate", "--spec", padded.save(tmp_path / "padded"), "--out", tmp_path / "out2")
    _one_error_line(r, "layer OUT", "after the dense layer F6")
    assert not (tmp_path / "out2").exists()
