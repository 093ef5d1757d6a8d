"""The file-driven harness, the scoreboard and the runner's bookkeeping, on a stand-in accelerator.

The stand-in (``fake_top``) has the accelerator's ports and protocol but computes something a line
of numpy predicts (class = sum of the pixels mod 8, score j = pixel j + j), so these tests run the
real harness and cocotb test in Icarus in seconds: several copies per process, the results files,
the scoreboard's verdicts and the runner's errors.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from model.util import UserError
from sim import build as sim_build
from sim.harness import HARNESS, harness_verilog
from sim.scoreboard import ImageResult, Scoreboard, decode_beat, parse_line, read_complete_lines

PIXELS, BEATS, SW, PW = 6, 4, 8, 9  # 6 pixels in, class + 3 scores out, 8-bit values, 'last' on top
CYCLES = PIXELS + 2 + BEATS + 1  # load, two cycles of "work", the beats, done


def fake_top(cheat_image: int | None = None) -> str:
    """Verilog of a stand-in accelerator. ``cheat_image``: from that image on (counted from reset)
    score 0 is off by one, as a broken design would be."""
    cheat = "" if cheat_image is None else f"if (n_img >= {cheat_image} && beat_k == 1) v = v + 1;"
    return f"""
module fake_top(input clk, input rst, input i__valid, input [7:0] i__payload, output i__ready,
                output o__valid, input o__ready, output [{PW - 1}:0] o__payload, output busy, output done);
  reg [3:0] state; reg [7:0] cnt, sum, beat_k; reg [7:0] px [0:{PIXELS - 1}]; reg [7:0] v; integer n_img;
  assign i__ready = state == 1;
  assign o__valid = state == 3;
  assign busy = state != 0;
  assign done = state == 4;
  always @* begin
    v = beat_k == 0 ? sum % 8 : px[beat_k - 1] + beat_k - 1;
    {cheat}
  end
  assign o__payload = {{beat_k == {BEATS - 1}, v}};
  always @(posedge clk) begin
    if (rst) begin state <= 0; cnt <= 0; sum <= 0; beat_k <= 0; n_img = 0; end
    else case (state)
      0: if (i__valid) begin state <= 1; cnt <= 0; sum <= 0; end
      1: if (i__valid) begin px[cnt] <= i__payload; sum <= sum + i__payload; cnt <= cnt + 1;
                              if (cnt == {PIXELS - 1}) begin state <= 2; cnt <= 0; end end
      2: begin cnt <= cnt + 1; if (cnt == 1) begin state <= 3; beat_k <= 0; end end
      3: if (o__ready) begin beat_k <= beat_k + 1; if (beat_k == {BEATS - 1}) state <= 4; end
      4: begin state <= 0; n_img = n_img + 1; end
    endcase
  end
endmodule
"""


def golden_of(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cls = images.astype(np.int64).sum(1) % 8
    scores = (images[:, :BEATS - 1].astype(np.int64) + np.arange(BEATS - 1)) % 256
    scores = np.where(scores >= 128, scores - 256, scores)  # 8-bit signed values
    return cls, scores


def run_fake(tmp_path, images: np.ndarray, duts: int, cheat_image: int | None = None,
             finish_at_ns: int | None = None, simulator: str = "icarus") -> tuple[str | None, dict | None, list]:
    """Build and run the harness around ``fake_top``; returns (error, result, lines)."""
    try:
        sim_build.check_simulator(simulator)
    except UserError as e:
        pytest.skip(str(e))
    src = tmp_path / "fake_top.v"
    src.write_text(fake_top(cheat_image) + ("" if finish_at_ns is None else
                                           f"module stop; initial #{finish_at_ns} $finish; endmodule\n"))
    harness = tmp_path / "harness.v"
    harness.write_text(harness_verilog("fake_top", PW, PIXELS, BEATS, duts))
    sources = [harness, src]
    tb = sim_build.build(simulator, sources, HARNESS, tmp_path / simulator,
                         extra_args=[] if finish_at_ns is None else ["-s", "stop"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "images.bin").write_bytes(images.astype(np.uint8).tobytes())
    cls, scores = golden_of(images)
    buf = io.BytesIO()
    np.savez(buf, predictions=cls, scores=scores)
    (run / "golden.npz").write_bytes(buf.getvalue())
    cfg = {"count": len(images), "duts": duts, "results": str(run / "results.txt"), "golden": str(run / "golden.npz"),
           "result": str(run / "result.json"), "beats": BEATS, "score_width": SW, "payload_width": PW,
           "model_cycles": CYCLES, "trace": False, "layers": []}
    (run / "config.json").write_text(json.dumps(cfg))
    err = tb.run_test("sim.tb_accelerator", run, env={"LENET_SIM_CONFIG": str(run / "config.json")},
                      plusargs=[f"+images={run / 'images.bin'}", f"+results={run / 'results.txt'}",
                                f"+count={len(images)}"])
    res = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else None
    lines = [read_complete_lines(run / f"results.txt.{d}") for d in range(duts)]
    return err, res, lines


@pytest.mark.parametrize("simulator, duts", [("icarus", 1), ("icarus", 3), ("verilator", 3)])
def test_harness_runs_every_image_once_in_order(tmp_path, simulator, duts):
    """In Verilator this is also the build without --public-flat-rw: cocotb reaches the harness'
    own signals (marked public) and nothing else."""
    images = np.random.default_rng(duts).integers(0, 256, size=(7, PIXELS), dtype=np.uint8)
    err, res, lines = run_fake(tmp_path, images, duts, simulator=simulator)
    assert err is None
    assert res["images"] == 7 and res["mismatches"] == 0 and res["first_mismatch"] is None
    assert res["classes"] == golden_of(images)[0].tolist()
    assert res["cycles"] == [CYCLES] * 7
    # copy d ran images d, d + duts, ...: its k-th line is image d + k * duts
    assert [len(l) for l in lines] == [len(range(d, 7, duts)) for d in range(duts)]
    for d, ls in enumerate(lines):
        for k, line in enumerate(ls):
            r = parse_line(line, BEATS, SW, PW)
            assert r.image == k and r.protocol_error is None
            assert r.cls == golden_of(images)[0][d + k * duts]


def test_harness_result_of_a_wrong_design_is_a_mismatch(tmp_path):
    images = np.random.default_rng(5).integers(0, 100, size=(5, PIXELS), dtype=np.uint8)
    err, res, _ = run_fake(tmp_path, images, 1, cheat_image=3)
    assert err is None  # the simulator ran; the testbench decided
    assert res["mismatches"] == 2
    fm = res["first_mismatch"]
    assert fm["image"] == 3 and fm["score_index"] == 0
    assert fm["actual"] == fm["expected"] + 1


def test_harness_killed_midway_keeps_finished_lines(tmp_path):
    images = np.random.default_rng(6).integers(0, 256, size=(6, PIXELS), dtype=np.uint8)
    # the simulation ends (as if killed) a little after the third image
    err, res, lines = run_fake(tmp_path, images, 1, finish_at_ns=(3 * (CYCLES + 1) + 8) * 10)
    assert res is None  # the test never finished
    assert len(lines[0]) == 3
    assert [parse_line(l, BEATS, SW, PW).cls for l in lines[0]] == golden_of(images)[0][:3].tolist()


def test_build_failure_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.v"
    bad.write_text("module lenet_harness(; endmodule\n")
    with pytest.raises(UserError) as e:
        sim_build.build("icarus", [bad], HARNESS, tmp_path / "icarus")
    assert "could not build" in str(e.value) and "build.log" in str(e.value)


# --------------------------------------------------------------------------- the scoreboard alone

def test_decode_beat_sign_and_last():
    assert decode_beat(0x1FF, 8, 9) == (-1, 1)
    assert decode_beat(0x07F, 8, 9) == (127, 0)
    assert decode_beat(0x180, 8, 9) == (-128, 1)


def test_parse_line_protocol_errors():
    ok = parse_line("0 13 4 3 5 6 107", BEATS, SW, PW)
    assert (ok.cls, ok.scores, ok.cycles, ok.protocol_error) == (3, [5, 6, 7], 13, None)
    assert "3 output beats" in parse_line("0 13 3 3 5 6 107", BEATS, SW, PW).protocol_error
    assert "'last'" in parse_line("0 13 4 3 105 6 7", BEATS, SW, PW).protocol_error
    with pytest.raises(ValueError, match="malformed"):
        parse_line("0 13 4 3 5", BEATS, SW, PW)


def test_scoreboard_counts_and_first_mismatch():
    b = Scoreboard(np.array([1, 2, 3]), np.array([[1, 2], [3, 4], [5, 6]]), 10, index=np.array([4, 7, 9]))
    assert b.add(ImageResult(0, 10, 1, [1, 2]))
    assert not b.add(ImageResult(1, 10, 2, [3, 5]))
    assert not b.add(ImageResult(2, 11, 9, [5, 6]))
    assert (b.done, b.mismatches) == (3, 2)
    assert b.first_mismatch == {"image": 7, "class": {"expected": 2, "actual": 2}, "score_index": 1,
                                "expected": 4, "actual": 5}
    assert not b.cycles_match_model
    with pytest.raises(ValueError, match="out of order"):
        b.add(ImageResult(5, 10, 1, [1, 2]))


def test_read_complete_lines_skips_a_line_being_written(tmp_path):
    f = tmp_path / "r.txt"
    assert read_complete_lines(f) == []
    f.write_text("a\nb\nc")
    assert read_complete_lines(f) == ["a", "b"]
    assert read_complete_lines(f, skip=1) == ["b"]


def test_harness_parameters_checked():
    with pytest.raises(ValueError, match="positive"):
        harness_verilog("top", 16, 0, 11)
