"""The banked feature-memory layout: where pixel (c, y, x) of a layer's input lives.

Written once for Python (:meth:`Layout.locate`, used by the compiler, the cycle model and the
tests) and once for hardware (:func:`address`, Amaranth expressions used by the loader and the
drain), like ``quantize/qformat.py`` and ``hw/fixed.py``; a test checks the two against each other
on every pixel of many layouts.

The feature memory is ``R * C`` banks (one per lane). A layer's input is laid out for its reader's
stride ``s``: pixel (c, y, x) of the *padded* tensor has super coordinates (Y, X) = (y // s, x // s);
its bank is ``(Y % R) * C + X % C`` and its word ``base + c * lhw + lrow * lw + lcol`` with
``lrow = (Y // R) * s + y % s`` and ``lcol = (X // C) * s + x % s``. ``lw`` is a power of two. For
any tap (ky, kx) the R x C output positions of a tile then read R x C distinct banks.

A *wrapped* layout (``pitch`` W' > 0, stride 1; the input of a layer whose groups run on from one
strip of R output rows into the next, :mod:`hw.wrap`) lays the strips of R rows end to end instead:
pixel (c, y, x) has strip S = y // R and strip-linear column V = S * W' + x, bank
``(y % R) * C + V % C`` and word ``base + c * lhw + V // C``. W' is at least the padded width and
W' = W (mod C), W the reader's output width, so that a group's lanes that pass the end of a strip
still take C different bank columns.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const


def log2(n: int) -> int:
    return n.bit_length() - 1


def pow2ceil(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Layout:
    """A tensor of ``maps`` x ``h`` x ``w`` (padded sizes: ``pad`` rows/columns of the reader's pad
    code on each side, around the producer's ``h - 2 pad`` x ``w - 2 pad`` output) read at stride ``s``."""

    maps: int
    h: int
    w: int
    s: int
    R: int
    C: int
    base: int = 0
    pad: int = 0
    pitch: int = 0  # a wrapped layout's strip pitch W' (0: the tiled layout)

    def __post_init__(self):
        if self.pitch and (self.s != 1 or self.pitch < self.w):
            raise ValueError(f"a wrapped layout needs stride 1 and a pitch >= its width {self.w}, got "
                             f"stride {self.s}, pitch {self.pitch}")

    @property
    def lh(self) -> int:
        return cdiv(cdiv(self.h, self.s), self.R) * self.s

    @property
    def lw(self) -> int:
        return pow2ceil(cdiv(cdiv(self.w, self.s), self.C) * self.s)

    @property
    def lhw(self) -> int:
        if self.pitch:
            return cdiv(cdiv(self.h, self.R) * self.pitch, self.C)
        return self.lh * self.lw

    @property
    def words(self) -> int:
        """Words per bank."""
        return self.maps * self.lhw

    def locate(self, c: int, y: int, x: int) -> tuple[int, int]:
        """(bank, word) of pixel (c, y, x) of the padded tensor."""
        s, R, C = self.s, self.R, self.C
        if self.pitch:
            v = (y // R) * self.pitch + x
            return (y % R) * C + v % C, self.base + c * self.lhw + v // C
        Y, X = y // s, x // s
        lrow, lcol = (Y // R) * s + y % s, (X // C) * s + x % s
        return (Y % R) * C + X % C, self.base + c * self.lhw + lrow * self.lw + lcol

    def border(self) -> list[tuple[int, int, int]]:
        """The padding's pixels (c, y, x), in map-major raster order."""
        p = self.pad
        return [(c, y, x) for c in range(self.maps) for y in range(self.h) for x in range(self.w)
                if p and (y < p or y >= self.h - p or x < p or x >= self.w - p)]


def div_const(v, d: int, limit: int):
    """``(v // d, v % d)`` for an unsigned expression ``v < limit`` and a constant ``d`` >= 1, as a
    multiply by a constant and a shift (exact on 0..limit-1, checked here exhaustively)."""
    if d & (d - 1) == 0:
        k = log2(d)
        return (v >> k, v[:k] if k else Const(0, 1))
    for sh in range(1, 32):
        mul = cdiv(1 << sh, d)
        if all((n * mul) >> sh == n // d for n in range(limit)):
            q = ((v * mul) >> sh)[:max(1, (limit - 1).bit_length())]
            return q, (v - q * d)[:max(1, (d - 1).bit_length())]
    raise ValueError(f"no multiplier divides 0..{limit - 1} by {d}")  # pragma: no cover


def mul_const(v, k: int):
    """``v * k`` for a constant ``k`` >= 0, as a sum of shifted copies of ``v`` (no multiplier: Yosys
    would put a ``*`` on a DSP block)."""
    terms = [v << i for i in range(k.bit_length()) if k >> i & 1]
    total = terms[0] if terms else Const(0, 1)
    for t in terms[1:]:
        total = total + t
    return total


def address(lay: Layout, y, x, limit: int, llw=None):
    """Amaranth (bank, word - base - c * lhw) of padded pixel (y, x) of ``lay``; ``y`` and ``x`` are
    unsigned expressions below ``limit``. The caller adds the map's first word. ``llw``: log2 of
    the row length as a signal, for a reader that walks layouts of several widths (else ``lay.lw``)."""
    R, C, s = lay.R, lay.C, lay.s
    lr, lc = log2(R), log2(C)
    if lay.pitch:
        v = mul_const(y >> lr, lay.pitch) + x
        parts = ([v[:lc]] if lc else []) + ([y[:lr]] if lr else [])
        return (Cat(*parts) if parts else Const(0, 1)), v >> lc
    Y, ry = div_const(y, s, limit)
    X, rx = div_const(x, s, limit)
    lrow = (Y >> lr) * s + ry if s > 1 else Y >> lr
    lcol = (X >> lc) * s + rx if s > 1 else X >> lc
    parts = ([X[:lc]] if lc else []) + ([Y[:lr]] if lr else [])
    bank = Cat(*parts) if parts else Const(0, 1)
    return bank, (lrow << (log2(lay.lw) if llw is None else llw)) + lcol
