"""Fixed-point requantize in Amaranth: the hardware twin of ``quantize/qformat.py``.

:func:`requantize` builds combinational logic that shifts a signed value from ``src_frac``
fraction bits into a :class:`~quantize.qformat.QFormat`, rounding with the format's mode and then
saturating or wrapping. It is tested exhaustively against :meth:`QFormat.requantize` at small
widths and on random values at large ones (``tests/test_hw_fixed.py``).

Latency 0 (combinational); :class:`Requantize` wraps it as a component for tests and synthesis.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from quantize.qformat import QFormat

#: the widest format the generator accepts (DSP-friendly datapath; the emulator goes to 64)
MAX_HW_WIDTH = 48


def check_format(fmt: QFormat, what: str) -> None:
    if fmt.width > MAX_HW_WIDTH:
        raise ValueError(f"{what}: {fmt.width}-bit format is wider than the generator supports ({MAX_HW_WIDTH} bits)")


def shape_of(fmt: QFormat):
    return signed(fmt.width) if fmt.signed else unsigned(fmt.width)


def shift_round(value: Value, shift: int, rounding: str) -> Value:
    """``round(value / 2**shift)`` for a signed ``value``; exact left shift when ``shift <= 0``."""
    v = value.as_signed() if not value.shape().signed else value
    if shift <= 0:
        return v << -shift
    floor, inc = _floor_inc(v, shift, rounding)
    return floor + inc


def _floor_inc(v: Value, shift: int, rounding: str) -> tuple[Value, Value]:
    """``(floor(v / 2**shift), inc)`` with ``round(v / 2**shift) == floor + inc`` (``inc`` one bit,
    by the rounding mode), for a signed ``v`` and ``shift >= 1``."""
    if len(v) <= shift:  # sign-extend so that rem below has all ``shift`` bits
        v = Cat(v, v[-1].replicate(shift + 1 - len(v))).as_signed()
    floor = v >> shift  # arithmetic shift: floor division
    rem = v.as_unsigned()[:shift]
    half = Const(1 << (shift - 1), shift)
    neg = v[-1]
    nz = rem != 0
    up = rem > half
    tie = rem == half
    odd = floor[0]
    inc = {
        "TRN": Const(0, 1),
        "TRN_INF": nz,
        "TRN_ZERO": nz & neg,
        "TRN_AWAY": nz & ~neg,
        "RND": up | tie,
        "RND_MIN_INF": up,
        "RND_ZERO": up | (tie & neg),
        "RND_INF": up | (tie & ~neg),
        "RND_CONV": up | (tie & odd),
        "RND_CONV_ODD": up | (tie & ~odd),
    }.get(rounding)
    if inc is None:
        raise ValueError(f"unknown rounding mode {rounding!r}")
    return floor, inc


def overflow(value: Value, fmt: QFormat) -> tuple[Value, Value]:
    """Bring ``value`` into ``fmt`` (SAT or WRAP). Returns (result, out_of_range)."""
    lo, hi = fmt.code_min, fmt.code_max
    out_of_range = (value < lo) | (value > hi)
    if fmt.overflow == "SAT":
        result = Mux(value > hi, hi, Mux(value < lo, lo, value))
    else:
        if len(value) < fmt.width:  # sign-extend first: slicing past the top would drop the sign
            value = value.as_signed()
            value = Cat(value, value[-1].replicate(fmt.width - len(value))).as_signed()
        result = value[:fmt.width]
    result = result[:fmt.width]
    return (result.as_signed() if fmt.signed else result.as_unsigned()), out_of_range


def requantize(value: Value, src_frac: int, fmt: QFormat) -> tuple[Value, Value]:
    """Combinational requantize of signed ``value`` (``src_frac`` fraction bits) into ``fmt``.

    Returns ``(code, clipped)`` where ``clipped`` is 1 when the rounded value was out of range.
    """
    check_format(fmt, "requantize target")
    shift = src_frac - fmt.frac
    if shift <= 0 or fmt.overflow != "SAT":
        return overflow(shift_round(value, shift, fmt.rounding), fmt)
    # saturate from the floor and the increment, not from their sum: the range checks run beside
    # the rounding logic, and the sum is only as wide as the result (one carry chain, not three)
    v = value.as_signed() if not value.shape().signed else value
    floor, inc = _floor_inc(v, shift, fmt.rounding)
    lo, hi = fmt.code_min, fmt.code_max
    above = Mux(inc, floor >= hi, floor > hi)  # floor + inc > hi
    below = Mux(inc, floor < lo - 1, floor < lo)  # floor + inc < lo
    n = fmt.width
    bits = floor.as_unsigned() if len(floor) >= n else Cat(floor, floor[-1].replicate(n - len(floor)))
    low = (bits[:n] + inc)[:n]  # floor + inc in range: its low n bits are the code
    result = Mux(above, Const(hi & ((1 << n) - 1), n), Mux(below, Const(lo & ((1 << n) - 1), n), low))
    return (result.as_signed() if fmt.signed else result.as_unsigned()), above | below


class Requantize(wiring.Component):
    """``o = requantize(i)`` from a signed ``src_width``-bit value with ``src_frac`` fraction bits.

    Latency 0 (combinational); one value per cycle.
    """

    def __init__(self, src_width: int, src_frac: int, fmt: QFormat):
        if not isinstance(src_width, int) or not 2 <= src_width <= MAX_HW_WIDTH:
            raise ValueError(f"src_width must be 2..{MAX_HW_WIDTH}, got {src_width!r}")
        check_format(fmt, "target")
        self.src_width, self.src_frac, self.fmt = src_width, src_frac, fmt
        super().__init__({"i": In(signed(src_width)), "o": Out(shape_of(fmt)), "clipped": Out(1)})

    def elaborate(self, platform):
        m = Module()
        code, clipped = requantize(self.i, self.src_frac, self.fmt)
        m.d.comb += [self.o.eq(code), self.clipped.eq(clipped)]
        return m
