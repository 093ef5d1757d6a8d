# amaranth: UnusedElaboratable=no
"""hw.layout: the banked layout's address, once in Python (Layout.locate) and once in Amaranth
(address, div_const), checked against each other on every pixel of many layouts."""
from __future__ import annotations

import itertools

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hw.layout import Layout, address, div_const

LAYOUTS = [Layout(m, h, w, s, R, C, base, pad)
           for (m, h, w, pad), s, (R, C), base in itertools.product(
               [(1, 5, 5, 0), (2, 9, 7, 1), (3, 12, 16, 2), (1, 32, 32, 2), (2, 13, 10, 3)], [1, 2, 3],
               [(1, 1), (1, 2), (2, 2), (2, 4), (4, 8)], [0, 37])]
# wrapped layouts (hw/wrap.py): stride 1, a strip pitch W' >= w with W' = W (mod C), W the reader's
# output width (LeNet-5's C3 input at 2 x 4 and 2 x 8, C1's at 2 x 8, odd sizes)
WRAPPED = [Layout(6, 14, 14, 1, 2, 4, 150, 0, 14), Layout(6, 14, 14, 1, 2, 8, 0, 0, 18),
           Layout(1, 32, 32, 1, 2, 8, 0, 2, 36), Layout(3, 11, 9, 1, 4, 8, 5, 1, 13), Layout(2, 7, 7, 1, 2, 2, 0, 0, 7)]


def _rtl_addresses(lay: Layout) -> dict:
    limit = max(lay.h, lay.w) + 1
    y, x = Signal(range(limit)), Signal(range(limit))
    bank, word = address(lay, y, x, limit)
    b_sig, w_sig = Signal(16), Signal(20)
    m = Module()
    m.d.comb += [b_sig.eq(bank), w_sig.eq(word)]
    got = {}

    async def bench(ctx):
        for yy in range(lay.h):
            for xx in range(lay.w):
                ctx.set(y, yy)
                ctx.set(x, xx)
                got[yy, xx] = (ctx.get(b_sig), ctx.get(w_sig))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("lay", LAYOUTS[::7] + [LAYOUTS[-1]] + WRAPPED, ids=str)
def test_address_equals_locate(lay):
    """Every padded pixel: the hardware's (bank, word) equals Layout.locate's (map 0, base added)."""
    got = _rtl_addresses(lay)
    for (y, x), (b, w) in got.items():
        assert lay.locate(0, y, x) == (b, lay.base + w), (y, x)


@pytest.mark.parametrize("lay", LAYOUTS + WRAPPED, ids=str)
def test_layout_is_one_to_one(lay):
    """No two pixels of the padded tensor share a bank word; banks in range; the words per bank hold it."""
    slots = [lay.locate(c, y, x) for c in range(lay.maps) for y in range(lay.h) for x in range(lay.w)]
    assert len(set(slots)) == len(slots)
    assert all(0 <= b < lay.R * lay.C and lay.base <= a < lay.base + lay.words for b, a in slots)


def test_wrapped_layout_needs_stride_1_and_a_wide_pitch():
    with pytest.raises(ValueError, match="stride 1 and a pitch >= its width 14"):
        Layout(6, 14, 14, 1, 2, 4, 0, 0, 13)
    with pytest.raises(ValueError, match="stride 2"):
        Layout(6, 14, 14, 2, 2, 4, 0, 0, 14)


def test_border_is_the_padding():
    lay = Layout(2, 9, 7, 1, 2, 2, 0, pad=2)
    border = lay.border()
    assert len(border) == 2 * (9 * 7 - 5 * 3)
    assert all(y < 2 or y >= 7 or x < 2 or x >= 5 for _, y, x in border)
    assert Layout(2, 9, 7, 1, 2, 2).border() == []


@pytest.mark.parametrize("d,limit", [(1, 64), (2, 130), (3, 200), (3, 300), (5, 100)])
def test_div_const(d, limit):
    v = Signal(range(limit))
    q, r = div_const(v, d, limit)
    qs, rs = Signal(16), Signal(8)
    m = Module()
    m.d.comb += [qs.eq(q), rs.eq(r)]

    async def bench(ctx):
        for n in range(limit):
            ctx.set(v, n)
            assert (ctx.get(qs), ctx.get(rs)) == divmod(n, d)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
