# amaranth: UnusedElaboratable=no
"""hw.fixed.Requantize (Amaranth) against QFormat.requantize (the emulator's rounding), bit for bit.

Exhaustive over every source code for small formats, random (with ties and extremes mixed in) for
24..40-bit sources. One Simulator per source format holds one Requantize per target format and
mode, all fed the same value, so the whole cross product runs in a few seconds.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.sim import Simulator

from hw.fixed import MAX_HW_WIDTH, Requantize
from quantize.qformat import OVERFLOW, ROUNDING, QFormat, shift_round


def rtl_requantize(src_width: int, src_frac: int, fmts: list[QFormat], values) -> tuple[np.ndarray, np.ndarray]:
    """Run ``values`` (signed ``src_width``-bit codes) through one ``Requantize`` per target format.

    Returns (codes, clipped), each len(fmts) x len(values). Every output is read in one ``ctx.get``
    of their concatenation (one read per value, not two per format: much faster).
    """
    values = [int(v) for v in values]
    m = Module()
    i = Signal(signed(src_width))
    fields = []
    for n, fmt in enumerate(fmts):
        dut = Requantize(src_width, src_frac, fmt)
        m.submodules[f"rq{n}"] = dut
        m.d.comb += dut.i.eq(i)
        fields += [dut.o.as_unsigned(), dut.clipped]
    word = Signal(sum(len(f) for f in fields))
    m.d.comb += word.eq(Cat(*fields))
    words = []

    async def testbench(ctx):
        for v in values:
            ctx.set(i, v)
            words.append(ctx.get(word))

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()
    codes = np.zeros((len(fmts), len(values)), np.int64)
    clipped = np.zeros((len(fmts), len(values)), np.int64)
    for j, w in enumerate(words):
        for n, fmt in enumerate(fmts):
            c = w & ((1 << fmt.width) - 1)
            if fmt.signed and c >> (fmt.width - 1):
                c -= 1 << fmt.width
            codes[n, j], clipped[n, j] = c, (w >> fmt.width) & 1
            w >>= fmt.width + 1
    return codes, clipped


def emu_requantize(src_frac: int, fmt: QFormat, values) -> tuple[np.ndarray, np.ndarray]:
    """Golden: QFormat.requantize, and "out of range before overflow" from shift_round."""
    v = np.asarray(values, np.int64)
    codes, _ = fmt.requantize(v, src_frac)
    r = shift_round(v, src_frac - fmt.frac, fmt.rounding)
    return codes, ((r < fmt.code_min) | (r > fmt.code_max)).astype(np.int64)


def all_modes(width: int, frac: int, signed_: bool) -> list[QFormat]:
    return [QFormat(width, frac, signed_, r, o) for r in ROUNDING for o in OVERFLOW]


def check(src_width, src_frac, fmts, values):
    got, got_clip = rtl_requantize(src_width, src_frac, fmts, values)
    for n, fmt in enumerate(fmts):
        want, want_clip = emu_requantize(src_frac, fmt, values)
        where = f"src Q{src_width}/{src_frac} -> {fmt}"
        np.testing.assert_array_equal(got[n], want, err_msg=where)
        np.testing.assert_array_equal(got_clip[n], want_clip, err_msg=where + " (clipped)")


# -- exhaustive, small formats ---------------------------------------------------------------------

# shifts s = src_frac - frac: right by 1..3, by the whole source width and beyond (only the sign
# and the tie at -2**(w-1) are left), and left/none (exact: the rounding mode plays no part)
RIGHT = (1, 2, 3, "w-1", "w", "w+2")
LEFT = (-2, -1, 0)


def _shift(s, w):
    return {"w-1": w - 1, "w": w, "w+2": w + 2}.get(s, s)


def small_cases(w: int, full: bool):
    """(src_frac, target format) pairs for a ``w``-bit source; ``full`` is the whole cross product.

    The quick set: all modes on signed targets of 2..6 bits at right shifts 1 and 3, at shifts w-1,
    w and w+2 on 2- and 5-bit targets, unsigned 2- and 5-bit targets at shifts 1 and w, and every
    target at the exact (left/zero) shifts with both overflows (the rounding mode plays no part).
    """
    out = []
    for tw in range(2, 7):
        for sgn in (True, False):
            if full:
                right = sorted({_shift(s, w) for s in RIGHT})
            elif sgn:
                right = [1, 3] + ([w - 1, w, w + 2] if tw in (2, 5) else [])
            else:
                right = [1, w] if tw in (2, 5) else []
            for s in sorted(set(right)):
                out += [(s, f) for f in all_modes(tw, min(tw, 2), sgn)]
            for s in LEFT:
                if full or (s == -1 and tw == 4 and sgn):
                    out += [(s, f) for f in all_modes(tw, min(tw, 2), sgn)]
                elif s != -2 or sgn:
                    out += [(s, QFormat(tw, min(tw, 2), sgn, "RND_CONV", o)) for o in OVERFLOW]
    return out


def run_small(src_width: int, full: bool):
    codes = np.arange(-(1 << (src_width - 1)), 1 << (src_width - 1), dtype=np.int64)
    by_src: dict[int, list[QFormat]] = {}
    for s, fmt in small_cases(src_width, full):
        by_src.setdefault(fmt.frac + s, []).append(fmt)
    for src_frac, fmts in sorted(by_src.items()):
        check(src_width, src_frac, fmts, codes)


@pytest.mark.parametrize("src_width", range(2, 8))
def test_requantize_exhaustive_small(src_width):
    """Every source code, every rounding x overflow, targets of 2..6 bits, left and right shifts."""
    run_small(src_width, full=False)


@pytest.mark.slow
@pytest.mark.parametrize("src_width", range(2, 8))
def test_requantize_exhaustive_small_full(src_width):
    """The whole cross product: every shift with every target width, signedness and mode."""
    run_small(src_width, full=True)


# -- random, large formats -------------------------------------------------------------------------

def large_values(rng, src_width: int, shift: int, n: int) -> np.ndarray:
    """Uniform codes, plus the extremes, zero, +-1, and exact ties / near-ties at the shift."""
    lo, hi = -(1 << (src_width - 1)), (1 << (src_width - 1)) - 1
    v = rng.integers(lo, hi, size=n, endpoint=True, dtype=np.int64)
    special = [lo, lo + 1, -1, 0, 1, hi - 1, hi]
    if shift > 0:
        half = 1 << (shift - 1)
        base = rng.integers(lo >> shift, hi >> shift, size=n // 8, endpoint=True, dtype=np.int64) << shift
        special += list(np.clip(np.concatenate([base + half, base + half - 1, base + half + 1, base, base - half]), lo, hi))
    v[: len(special)] = special[:n]
    return v


LARGE = [  # (src_width, src_frac, target width, target frac, signed)
    (24, 14, 10, 9, True),  # an accumulator into a LUT address
    (32, 20, 8, 6, True),
    (40, 30, 16, 10, True),
    (40, 12, 40, 12, True),  # no shift, same width
    (28, 6, 40, 14, True),  # left shift into a wider format
    (36, 18, 12, 4, False),  # unsigned target
    (30, 0, 24, 0, True),
]


@pytest.mark.parametrize("src_width", (2, 5, 7))
def test_requantize_narrow_and_outside_point(src_width):
    """Narrow-range targets (QONNX ``narrow``: no -2**(w-1), or no 2**w - 1 unsigned) and binary
    points outside the word (frac < 0 or > width), every source code, every rounding mode."""
    codes = np.arange(-(1 << (src_width - 1)), 1 << (src_width - 1), dtype=np.int64)
    for src_frac in (-1, 1, 4):
        fmts = [QFormat(tw, frac, sgn, r, "SAT", narrow) for tw in (2, 3, 5) for sgn in (True, False)
                for frac in (-2, tw + 1, 1) for r in ROUNDING for narrow in (True, False)
                if (narrow or frac != 1)]
        check(src_width, src_frac, fmts, codes)


@pytest.mark.parametrize("overflow", sorted(OVERFLOW))
def test_requantize_random_large(overflow):
    """~2,000 values per (rounding, overflow) over 24..40-bit sources."""
    rng = np.random.default_rng(1234 if overflow == "SAT" else 4321)
    per_case = 2000 // len(LARGE) + 1
    for sw, sf, tw, tf, sgn in LARGE:
        fmts = [QFormat(tw, tf, sgn, r, overflow) for r in ROUNDING]
        check(sw, sf, fmts, large_values(rng, sw, sf - tf, per_case))


def test_requantize_max_widths():
    """The widest source and target the generator accepts."""
    rng = np.random.default_rng(7)
    w = MAX_HW_WIDTH
    fmts = [QFormat(w, 20, True, r, "SAT") for r in ("RND_CONV", "TRN", "TRN_AWAY")]
    check(w, 24, fmts, large_values(rng, w, 4, 200))
    fmts = [QFormat(12, 6, True, r, o) for r in ("RND_CONV", "RND_INF") for o in OVERFLOW]
    check(w, 40, fmts, large_values(rng, w, 34, 200))


# -- bad parameters --------------------------------------------------------------------------------

@pytest.mark.parametrize("src_width", [0, 1, -3, MAX_HW_WIDTH + 1, 8.0, None])
def test_requantize_bad_src_width(src_width):
    with pytest.raises(ValueError, match="src_width"):
        Requantize(src_width, 0, QFormat(8, 4))


def test_requantize_too_wide_target():
    with pytest.raises(ValueError, match="60-bit"):
        Requantize(16, 8, QFormat(60, 8))
