# amaranth: UnusedElaboratable=no
"""hw.mac.MACLanes against quantize.ops.dense: exact dot products plus bias, wrapping at acc_width."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from hw.mac import MACLanes
from quantize import ops
from quantize.qformat import QFormat

LATENCY = 2  # inputs in cycle t are in ``acc`` from cycle t + 2 (hw/mac.py)


def rtl_mac(lanes: int, ww: int, dw: int, accw: int, groups, gaps=None, keep_max: bool = False) -> np.ndarray:
    """Run dot-product groups through MACLanes; returns the final accumulators, groups x lanes.

    ``groups``: list of (w T x lanes, x T x lanes, bias lanes). Groups are issued back to back
    (``first`` on each group's first tap, no idle cycle) unless ``gaps[g]`` idle cycles
    (``valid`` low) precede group g. Each result is read in the one cycle it is final before the
    next group overwrites it (or, for the last group, LATENCY cycles after its last tap).
    """
    dut = MACLanes(lanes, ww, dw, accw)
    gaps = gaps or [0] * len(groups)
    max_mode = int(keep_max)
    schedule = []  # per cycle: None (idle) or (w row, x row, bias, first)
    final_at = []  # cycle in which each group's result is in acc
    for (w, x, b), gap in zip(groups, gaps):
        schedule += [None] * gap
        for t in range(len(w)):
            schedule.append((w[t], x[t], b, t == 0))
        final_at.append(len(schedule) - 1 + LATENCY)
    schedule += [None] * LATENCY
    samples = {}

    async def testbench(ctx):
        for cycle, step in enumerate(schedule):
            if step is None:
                ctx.set(dut.valid, 0)
                ctx.set(dut.first, 0)
            else:
                w, x, b, first = step
                ctx.set(dut.valid, 1)
                ctx.set(dut.first, int(first))
                ctx.set(dut.max, max_mode)
                for q in range(lanes):
                    ctx.set(dut.w[q], int(w[q]))
                    ctx.set(dut.x[q], int(x[q]))
                    ctx.set(dut.bias[q], int(b[q]))
            if cycle in final_at:
                samples[cycle] = [ctx.get(dut.acc[q]) for q in range(lanes)]
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return np.array([samples[c] for c in final_at], dtype=np.int64)


def emu_dot(groups) -> np.ndarray:
    """Exact sums: ops.dense per lane (lane q: x[:, q] . w[:, q] + bias[q]), groups x lanes."""
    out = []
    for w, x, b in groups:
        w, x, b = (np.asarray(a, np.int64) for a in (w, x, b))
        x_max = int(np.abs(x).max(initial=0))
        out.append([ops.dense(x[:, q][None], w[:, q][None], b[q:q + 1], x_max).to(torch.int64).item()
                    for q in range(w.shape[1])])
    return np.array(out, dtype=np.int64)


def emu_mac(accw: int, groups) -> np.ndarray:
    """Golden: the exact sums wrapped to acc_width (the acc format: signed, TRN, WRAP)."""
    return QFormat(accw, 0, True, "TRN", "WRAP").overflow_codes(emu_dot(groups))[0]


def random_group(rng, lanes, ww, dw, accw, taps):
    w = rng.integers(-(1 << (ww - 1)), 1 << (ww - 1), size=(taps, lanes))
    x = rng.integers(-(1 << (dw - 1)), 1 << (dw - 1), size=(taps, lanes))
    bmax = 1 << (min(accw, 62) - 1)
    b = rng.integers(-bmax, bmax, size=lanes)
    return w, x, b


@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_mac_random_back_to_back(lanes):
    """Random groups of 1..40 taps, back to back (the next group's ``first`` right after the
    last tap), plus a few with idle cycles before them (``valid`` low: acc holds)."""
    rng = np.random.default_rng(lanes)
    ww, dw, accw = 8, 8, 24
    taps = [25, 1, 1, 3, 40, 2, 7, 1, 16, 5]
    groups = [random_group(rng, lanes, ww, dw, accw, t) for t in taps]
    gaps = [0, 0, 0, 3, 0, 1, 0, 0, 2, 0]
    np.testing.assert_array_equal(rtl_mac(lanes, ww, dw, accw, groups, gaps), emu_mac(accw, groups))


@pytest.mark.parametrize("lanes,ww,dw,accw", [(3, 6, 3, 12), (8, 16, 12, 40), (1, 2, 2, 2)])
def test_mac_random_widths(lanes, ww, dw, accw):
    rng = np.random.default_rng(ww * 100 + dw)
    groups = [random_group(rng, lanes, ww, dw, accw, t) for t in (9, 1, 30, 4)]
    np.testing.assert_array_equal(rtl_mac(lanes, ww, dw, accw, groups), emu_mac(accw, groups))


@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_mac_extremes_wrap(lanes):
    """Every weight and input at its minimum: each product is the largest positive one, and the
    sums overflow a narrow accumulator; the result wraps exactly like the acc format (WRAP)."""
    ww, dw = 8, 8
    wmin, xmin, xmax = -(1 << (ww - 1)), -(1 << (dw - 1)), (1 << (dw - 1)) - 1
    for accw, taps in [(16, 2), (16, 3), (17, 4), (20, 100), (15, 1)]:
        bmin, bmax = -(1 << (accw - 1)), (1 << (accw - 1)) - 1
        groups = [
            (np.full((taps, lanes), wmin), np.full((taps, lanes), xmin), np.full(lanes, bmax)),
            (np.full((taps, lanes), wmin), np.full((taps, lanes), xmin), np.full(lanes, 0)),
            (np.full((taps, lanes), wmin), np.full((taps, lanes), xmax), np.full(lanes, bmin)),
            (np.full((taps, lanes), wmin), np.full((taps, lanes), xmin), np.full(lanes, bmin)),
        ]
        want = emu_mac(accw, groups)
        assert QFormat(accw, 0, True, "TRN", "WRAP").overflow_codes(emu_dot(groups))[1] > 0  # it does wrap
        np.testing.assert_array_equal(rtl_mac(lanes, ww, dw, accw, groups), want, err_msg=f"acc_width {accw}, {taps} taps")


def test_mac_extremes_no_wrap():
    """A wide accumulator holds the largest possible sum exactly (nothing wraps)."""
    lanes, ww, dw, accw, taps = 3, 16, 16, 40, 150
    groups = [(np.full((taps, lanes), -(1 << 15)), np.full((taps, lanes), -(1 << 15)), np.full(lanes, (1 << 39) - (1 << 38))),
              (np.full((taps, lanes), -(1 << 15)), np.full((taps, lanes), (1 << 15) - 1), np.full(lanes, -(1 << 38)))]
    want = emu_mac(accw, groups)
    assert QFormat(accw, 0, True, "TRN", "WRAP").contains(want)
    np.testing.assert_array_equal(rtl_mac(lanes, ww, dw, accw, groups), want)


@pytest.mark.parametrize("kw", [
    dict(lanes=0), dict(lanes=257), dict(lanes=2.0), dict(lanes=True),
    dict(weight_width=1), dict(weight_width=33), dict(data_width=1), dict(data_width=33),
    dict(acc_width=1), dict(acc_width=65), dict(acc_width=None),
])
def test_mac_bad_params(kw):
    args = dict(lanes=4, weight_width=8, data_width=8, acc_width=20) | kw
    with pytest.raises(ValueError, match=next(iter(kw))):
        MACLanes(**args)


@pytest.mark.parametrize("lanes,dw", [(1, 3), (4, 8), (8, 6)])
def test_max_mode(lanes, dw):
    """``max`` high (a max-pool, weights 1): each lane keeps the largest of its group's inputs,
    ``first`` restarting from the first input, back to back and after gaps."""
    rng = np.random.default_rng(lanes * 7 + dw)
    lo, hi = -(1 << (dw - 1)), (1 << (dw - 1)) - 1
    groups, want = [], []
    for taps in (4, 9, 1, 9, 4):
        x = rng.integers(lo, hi + 1, (taps, lanes))
        x[rng.integers(0, taps)] = rng.choice([lo, hi])  # the extremes of the code range
        groups.append((np.ones((taps, lanes), np.int64), x, np.zeros(lanes, np.int64)))
        want.append(x.max(axis=0))
    got = rtl_mac(lanes, 2, dw, dw + 2, groups, gaps=[0, 0, 2, 0, 1], keep_max=True)
    np.testing.assert_array_equal(got, np.array(want))


@pytest.mark.parametrize("images,ww,dw,max_mode", [(2, 8, 8, False), (3, 6, 3, False), (2, 8, 8, True), (2, 9, 8, False)])
def test_images_share_weights(images, ww, dw, max_mode):
    """B images in lockstep (``images=B``, pairs on ProductPairs, the odd one and 9-bit operands on
    plain products): image b's accumulators equal a one-image MACLanes fed image b's data, with the
    same latency, every cycle."""
    lanes, accw, T = 4, 20, 12
    rng = np.random.default_rng(images * 100 + ww + dw)
    w = rng.integers(-(1 << ww - 1), 1 << ww - 1, (T, lanes))
    x = rng.integers(-(1 << dw - 1), 1 << dw - 1, (images, T, lanes))
    first = [t % 5 == 0 for t in range(T)]
    valid = [t != 7 for t in range(T)]

    def run(dut, xs):
        seen = []

        async def bench(ctx):
            for t in range(T + LATENCY):
                if t < T:
                    ctx.set(dut.valid, int(valid[t]))
                    ctx.set(dut.first, int(first[t]))
                    ctx.set(dut.max, int(max_mode))
                    for q in range(lanes):
                        ctx.set(dut.w[q], int(w[t, q]))
                        for b, xb in enumerate(xs):
                            ctx.set(dut.x[q] if len(xs) == 1 else dut.x[b][q], int(xb[t, q]))
                accs = [[ctx.get(dut.acc[q] if len(xs) == 1 else dut.acc[b][q]) for q in range(lanes)]
                        for b in range(len(xs))]
                seen.append(accs)
                await ctx.tick()

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        sim.run()
        return np.array(seen, np.int64)  # cycles x images x lanes

    both = run(MACLanes(lanes, ww, dw, accw, bias=False, images=images, dsp="rtl"), list(x))
    for b in range(images):
        alone = run(MACLanes(lanes, ww, dw, accw, bias=False), [x[b]])
        np.testing.assert_array_equal(both[:, b], alone[:, 0])
    assert np.abs(both[-1]).sum() > 0  # the lanes did accumulate


def test_images_bad_dsp():
    with pytest.raises(ValueError, match="dsp must be"):
        MACLanes(4, 8, 8, 20, images=2, dsp="dsp48")
