"""hw.synth: the Yosys + nextpnr flow end to end on one small component per FPGA family (the
CI-sized synthesis; the full builds are `make synth`), and its refusals."""
from __future__ import annotations

import json

import pytest

from hw import synth
from hw.targets import TARGETS, check_fit
from model.util import UserError


def _json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("target,component,magic", [
    ("ice40-up5k", "uart", b"\x7e\xaa\x99\x7e"),  # iCE40 bitstream sync word
    ("ecp5-25k", "mac", b"\xbd\xb3"),  # ECP5 preamble
])
def test_component_to_bitstream(run_module, tmp_path, target, component, magic):
    r = run_module("hw.synth", "--component", component, "--target", target, "--json", "--out", tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    res = _json_line(r.stdout)
    assert res["target"] == target and res["design"] == f"component_{component}"
    assert res["luts"] > 0 and res["ffs"] > 0 and res["timing_met"] is True
    assert res["fmax_mhz"] >= res["clock_mhz"]  # the clock the build asked for is met
    if component == "mac":
        assert res["dsps"] == 1  # the multiplier lands on a DSP block (MULT18X18D)
    report = json.loads((tmp_path / target / component / "report.json").read_text())  # nextpnr's own
    assert "fmax" in report and "utilization" in report
    bit = tmp_path / target / component / res["bitstream"].split("/")[-1]
    data = bit.read_bytes()
    assert len(data) > 10_000 and magic in data[:200]


def test_timing_failure_is_an_error(run_module, tmp_path):
    r = run_module("hw.synth", "--component", "uart", "--target", "ice40-up5k", "--freq", 900, "--out", tmp_path,
                   "--json", timeout=600)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: timing not met at 900 MHz: Max frequency for clock") and "lower --freq" in lines[0]
    assert not list(tmp_path.rglob("*.bin"))  # no bitstream from a build that missed timing


def test_unknown_target(run_module, tmp_path):
    r = run_module("hw.synth", "--component", "uart", "--target", "ice40-hx9000", "--out", tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "unknown target 'ice40-hx9000'" in lines[0]
    assert "ice40-up5k" in lines[0] and "ecp5-85k" in lines[0]


def test_does_not_fit_names_resource_and_excess():
    t = TARGETS["ice40-up5k"]
    with pytest.raises(UserError, match=r"needs 249 block RAMs \(EBR\), the device has 30 \(219 over\)"):
        check_fit(t, {"SB_RAM40_4K": 249, "SB_LUT4": 100, "IO": 4}, "big")
    with pytest.raises(UserError, match=r"needs 9 DSP blocks"):
        check_fit(t, {"SB_MAC16": 9, "IO": 4}, "big")
    with pytest.raises(UserError, match=r"needs 40 I/O pins, the device has 39 \(1 over\)"):
        check_fit(t, {"IO": 40}, "wide")
    check_fit(t, {"SB_RAM40_4K": 30, "SB_MAC16": 8, "SB_SPRAM256KA": 4, "SB_LUT4": 5000, "IO": 4}, "ok")
    e = TARGETS["ecp5-25k"]
    with pytest.raises(UserError, match=r"needs 29 multipliers \(MULT18X18D\), the device has 28"):
        check_fit(e, {"MULT18X18D": 29, "IO": 4}, "big")


def test_missing_tool_says_how_to_install(monkeypatch):
    with pytest.raises(UserError, match="yowasp-nextpnr-gowin not found; install it with: pip install"):
        synth.tool_argv("nextpnr-gowin")


def test_no_spec(run_module, tmp_path):
    r = run_module("hw.synth", "--target", "ecp5-85k", "--out", tmp_path)
    assert r.returncode != 0 and "--spec is required" in r.stderr


def test_core_shim_drives_every_input_and_observes_every_output():
    """The two-pin shim of a core build: the input bits shift in from ``sin`` into the core's
    ports (nothing constant for synthesis to fold), ``sout`` is the XOR of all output bits."""
    from amaranth.sim import Simulator

    from hw.mac import MACLanes

    core = MACLanes(1, 4, 4, 8)
    shim = synth.CoreShim(core)
    assert set(shim.signature.members) == {"sin", "sout"}
    # input bits in signature order: valid, first, max, w[0], x[0], bias[0] (1 + 1 + 1 + 4 + 4 + 8 = 19 bits)
    bits = [1, 1, 0] + [1, 0, 1, 0] + [1, 1, 0, 0] + [0] * 8  # valid, first, max = 0, w = 5, x = 3
    seen = {}

    async def tb(ctx):
        for b in reversed(bits):  # the first bit shifted in ends up at the far end of the chain
            ctx.set(shim.sin, b)
            await ctx.tick()
        ctx.set(shim.sin, 0)
        seen.update(valid=ctx.get(core.valid), first=ctx.get(core.first), w=ctx.get(core.w[0]), x=ctx.get(core.x[0]))
        for _ in range(4):
            await ctx.tick()
        seen["acc"] = ctx.get(core.acc[0])
        seen["sout"] = ctx.get(shim.sout)

    sim = Simulator(shim)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert (seen["valid"], seen["first"], seen["w"], seen["x"]) == (1, 1, 5, 3)
    assert seen["acc"] != 0  # the core computed from the shifted-in operands
    assert seen["sout"] == bin(seen["acc"] & 0xFF).count("1") % 2


def test_synth_report_table(tmp_path, run_module):
    """make synth's table: one row per build result, read from result.json files."""
    from hw.synth_report import load_results, markdown

    row = {"target": "ice40-up5k", "preset": "q8", "lanes": 8, "batch": 1, "luts": 2832, "ffs": 1978, "dsps": 8, "brams": 22,
           "sprams": 4, "clock_mhz": 27.0, "fmax_mhz": 27.65, "cycles_per_image": 47941.0, "images_per_s": 563.2,
           "board": "icebreaker"}
    d = tmp_path / "ice40-up5k" / "x"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(row))
    (tmp_path / "ice40-up5k" / "uart").mkdir()
    (tmp_path / "ice40-up5k" / "uart" / "result.json").write_text(json.dumps({"target": "ice40-up5k"}))  # a component
    rows = load_results(None, tmp_path)
    assert rows == [row]
    table = markdown(rows)
    assert "| ice40-up5k | q8 | 8 | 1 | 2,832 | 1,978 | 8 | 22 | 4 | 27 | 27.65 | 47,941 | 563.2 | board top (UART) |" in table
    r = run_module("hw.synth_report", "--results", tmp_path / "none", "--out", tmp_path / "s.md")
    assert r.returncode != 0 and "no synthesis results" in r.stderr


def test_shipped_configurations():
    """Every target has a shipped configuration (lanes, batch, clock) for any spec; a preset's own
    row wins over the target's default."""
    from hw.targets import SHIPPED, shipped

    for t in TARGETS:
        cfg = shipped(t, "no-such-preset")
        assert set(cfg) == {"lanes", "batch", "freq", "fuse_pools", "overlap_load", "seed"} and cfg == SHIPPED[(t, None)]
    for (t, preset), cfg in SHIPPED.items():
        assert t in TARGETS and shipped(t, preset) == cfg
        assert cfg["lanes"] & (cfg["lanes"] - 1) == 0 and cfg["batch"] >= 1 and cfg["freq"] > 0


def test_overused_resource_from_the_nextpnr_log():
    """A design nextpnr packs into more logic cells than the device has is named with the overrun."""
    from hw.targets import overused

    log = ("Info: Device utilisation:\nInfo: \t         ICESTORM_LC:    5998/   5280   113%\n"
           "Info: \t        ICESTORM_RAM:      28/     30    93%\nERROR: Failed to expand region (0, 0) |_> (25, 31)\n")
    assert overused(log) == ("ICESTORM_LC", 5998, 5280)
    assert overused(log.replace("5998", "5000")) is None


@pytest.mark.parametrize("target,freq,pll", [("ice40-up5k", 29.0, 28.875), ("ice40-up5k", 29.25, 29.25),
                                             ("ecp5-85k", 59.0, 59.375)])
def test_board_build_is_checked_at_the_pll_clock(q8_spec, target, freq, pll):
    """A board top runs at its PLL's output, not the asked --freq: that clock goes to nextpnr and
    into images/s; a design without a PLL (core, component) keeps --freq."""
    from hw.program import compile_spec

    prog = compile_spec(q8_spec, 8)
    _, _, info = synth.design_files(TARGETS[target], q8_spec, 8, None, freq, program=prog)
    assert info["clk_mhz"] == pytest.approx(pll)
    assert synth.build_clock_mhz(info, freq) == pytest.approx(pll)
    assert synth.build_clock_mhz({}, freq) == freq and synth.build_clock_mhz({}, None) == 12.0
