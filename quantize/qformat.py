"""The one fixed-point type of the project: :class:`QFormat`.

A format is (width, frac, signed, rounding, overflow). A value v is held as the integer code
``c = v * 2**frac``; signed codes are two's complement in ``width`` bits. Rounding and overflow
modes carry apytypes' names, so a format can be checked against that library directly.

The rounding arithmetic here (:func:`shift_round`, :func:`apply_overflow`) is one of the two
implementations of the project (the other is ``hw/fixed.py``, in Amaranth); both are tested against
each other and against apytypes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.util import UserError

#: rounding modes (apytypes QuantizationMode names) and what they do with the dropped bits
ROUNDING = {
    "TRN": "truncate: toward minus infinity (floor)",
    "TRN_INF": "toward plus infinity (ceil)",
    "TRN_ZERO": "toward zero",
    "TRN_AWAY": "away from zero",
    "RND": "nearest, ties toward plus infinity (half up)",
    "RND_ZERO": "nearest, ties toward zero",
    "RND_INF": "nearest, ties away from zero",
    "RND_MIN_INF": "nearest, ties toward minus infinity (half down)",
    "RND_CONV": "nearest, ties to even (convergent)",
    "RND_CONV_ODD": "nearest, ties to odd",
}
OVERFLOW = {"WRAP": "two's complement wrap-around", "SAT": "saturate to min/max"}

MAX_WIDTH = 64  # the emulator's limit (int64 codes); the HDL generator may set a lower one


def shift_round(x: np.ndarray, shift: int, rounding: str) -> np.ndarray:
    """Exact ``round(x / 2**shift)`` of int64 codes under ``rounding``; ``shift <= 0`` is a left shift.

    Works on int64 arrays (or Python ints); the caller guarantees no int64 overflow.
    """
    x = np.asarray(x, dtype=np.int64)
    if shift <= 0:
        return x << np.int64(-shift)
    if shift >= 64:
        # |x| <= 2**63 <= 2**(shift-1): only the sign matters, and whether x/2**shift is exactly
        # -1/2; the same case at shift 2 (numpy shifts of 64+ bits are undefined)
        x = np.where(x == np.iinfo(np.int64).min, -2 if shift == 64 else -1, np.sign(x))
        shift = 2
    s = np.int64(shift)
    one = np.int64(1)
    half = one << (s - one)
    mask = ~(np.int64(-1) << s)  # 2**s - 1 without int64 overflow at s = 63
    floor = x >> s
    rem = x & mask  # x - floor * 2**s, in [0, 2**s)
    if rounding == "TRN":
        return floor
    if rounding == "TRN_INF":
        return floor + (rem != 0)
    if rounding == "TRN_ZERO":
        return floor + ((rem != 0) & (x < 0))
    if rounding == "TRN_AWAY":
        return floor + ((rem != 0) & (x > 0))
    up = rem > half
    tie = rem == half
    if rounding == "RND":
        return floor + (up | tie)
    if rounding == "RND_MIN_INF":
        return floor + up
    if rounding == "RND_ZERO":
        return floor + (up | (tie & (x < 0)))
    if rounding == "RND_INF":
        return floor + (up | (tie & (x >= 0)))
    if rounding == "RND_CONV":
        return floor + (up | (tie & ((floor & one) == one)))
    if rounding == "RND_CONV_ODD":
        return floor + (up | (tie & ((floor & one) == 0)))
    raise UserError(f"unknown rounding mode {rounding!r} (one of {', '.join(ROUNDING)})")


@dataclass(frozen=True)
class QFormat:
    """A fixed-point format.

    Parameters
    ----------
    width : int
        Total bits, sign included (1..64).
    frac : int
        Fraction bits: the lsb is ``2**-frac``. Usually 0..width; a model's power-of-two scales
        (an imported QONNX graph) may put it anywhere in -MAX_WIDTH..MAX_WIDTH.
    signed : bool
        Two's complement if true.
    rounding, overflow : str
        How values are brought into this format (see :data:`ROUNDING`, :data:`OVERFLOW`).
    narrow : bool
        Narrow range (saturating formats only): the most negative code of a signed format, or
        the largest code of an unsigned one, is left out (QONNX's ``narrow``; -127..127 at 8 bits).
    """

    width: int
    frac: int
    signed: bool = True
    rounding: str = "RND_CONV"
    overflow: str = "SAT"
    narrow: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self, where: str = "format") -> None:
        if not isinstance(self.width, int) or isinstance(self.width, bool):
            raise UserError(f"{where}: width must be an integer, got {self.width!r}")
        if not 1 <= self.width <= MAX_WIDTH:
            raise UserError(f"{where}: width {self.width} outside 1..{MAX_WIDTH} bits")
        if not isinstance(self.signed, (bool, np.bool_)):
            raise UserError(f"{where}: signed must be true or false, got {self.signed!r}")
        if self.signed and self.width < 2:
            raise UserError(f"{where}: a signed format needs at least 2 bits")
        if not isinstance(self.frac, int) or isinstance(self.frac, bool) or not -MAX_WIDTH <= self.frac <= MAX_WIDTH:
            raise UserError(f"{where}: fraction bits {self.frac!r} outside {-MAX_WIDTH}..{MAX_WIDTH}")
        if self.rounding not in ROUNDING:
            raise UserError(f"{where}: unknown rounding {self.rounding!r} (one of {', '.join(ROUNDING)})")
        if self.overflow not in OVERFLOW:
            raise UserError(f"{where}: unknown overflow {self.overflow!r} (WRAP or SAT)")
        if not isinstance(self.narrow, (bool, np.bool_)):
            raise UserError(f"{where}: narrow must be true or false, got {self.narrow!r}")
        if self.narrow and (self.overflow != "SAT" or self.width < 2):
            raise UserError(f"{where}: a narrow-range format must saturate (SAT) and have at least 2 bits")

    # -- range -------------------------------------------------------------------------------------
    @property
    def int_bits(self) -> int:
        """Integer bits, sign included (apytypes' ``int_bits``)."""
        return self.width - self.frac

    @property
    def code_min(self) -> int:
        return -(1 << (self.width - 1)) + int(self.narrow) if self.signed else 0

    @property
    def code_max(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1 - int(self.narrow)

    @property
    def lsb(self) -> float:
        return 2.0 ** -self.frac

    @property
    def min(self) -> float:
        return self.code_min * self.lsb

    @property
    def max(self) -> float:
        return self.code_max * self.lsb

    def with_(self, **kw) -> "QFormat":
        d = self.to_dict()
        d.update(kw)
        return QFormat(**d)

    # -- codes -------------------------------------------------------------------------------------
    def overflow_codes(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        """Bring int64 ``codes`` (already at this format's lsb) into range; return them and the
        number of values that were out of range (wrapped or saturated)."""
        codes = np.asarray(codes, dtype=np.int64)
        out = (codes < self.code_min) | (codes > self.code_max)
        n = int(np.count_nonzero(out))
        if n == 0:
            return codes, 0
        if self.overflow == "SAT":
            return np.clip(codes, self.code_min, self.code_max), n
        return wrap(codes, self.width, self.signed), n

    def requantize(self, codes: np.ndarray, src_frac: int) -> tuple[np.ndarray, int]:
        """Codes with ``src_frac`` fraction bits -> codes of this format (round, then overflow)."""
        return self.overflow_codes(shift_round(codes, src_frac - self.frac, self.rounding))

    def from_float(self, values) -> np.ndarray:
        """Exact conversion of real values to codes with this format's rounding and overflow.

        float64 inputs are exact dyadic rationals, so they are scaled to 2**(frac+extra) exactly
        and rounded by integer arithmetic, the same path as :meth:`requantize`.
        """
        v = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(v)):
            raise UserError("cannot quantize a NaN or infinite value")
        lim = 2.0 ** (60 - self.frac)
        huge = np.abs(v) >= lim
        if np.any(huge) and self.overflow == "WRAP":
            raise UserError(f"value {v[huge].flat[0]!r} too large to wrap exactly into {self}")
        # Scale by 2**(frac+1) (exact for a double), keep the integer part and append a sticky
        # bit for whatever lies below it: exactly what rounding needs, then the integer path.
        scaled = np.ldexp(np.clip(v, -lim, lim), self.frac + 1)
        ints = np.trunc(scaled)
        codes = ints.astype(np.int64) * 2 + np.sign(scaled - ints).astype(np.int64)
        out, _ = self.requantize(codes, self.frac + 2)
        if np.any(huge):  # SAT only (WRAP refused above): v * 2**frac is an integer (> 2**53), clip it exactly
            out = np.array(out)
            out[huge] = [min(max(int(b), self.code_min), self.code_max) for b in np.ldexp(v[huge], self.frac)]
        return out

    def to_float(self, codes) -> np.ndarray:
        return np.asarray(codes, dtype=np.float64) * self.lsb

    def contains(self, codes) -> bool:
        c = np.asarray(codes)
        return bool(np.all((c >= self.code_min) & (c <= self.code_max)))

    # -- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"width": self.width, "frac": self.frac, "signed": self.signed,
             "rounding": self.rounding, "overflow": self.overflow}
        if self.narrow:  # only when set: specs without it stay byte-identical
            d["narrow"] = True
        return d

    @classmethod
    def from_dict(cls, d, where: str = "format") -> "QFormat":
        if not isinstance(d, dict):
            raise UserError(f"{where}: expected an object with width/frac/signed/rounding/overflow")
        unknown = set(d) - {"width", "frac", "signed", "rounding", "overflow", "narrow"}
        if unknown:
            raise UserError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        for key in ("width", "frac"):
            if key not in d:
                raise UserError(f"{where}: missing field {key!r}")
        try:
            return cls(**d)
        except UserError as e:
            raise UserError(f"{where}: {str(e).removeprefix('format: ')}") from None

    def __str__(self) -> str:
        s = "Q" if self.signed else "UQ"
        n = " narrow" if self.narrow else ""
        return f"{s}{self.int_bits}.{self.frac} ({self.width}b {self.rounding}/{self.overflow}{n})"


def wrap(codes: np.ndarray, width: int, signed: bool) -> np.ndarray:
    """Two's complement wrap of int64 codes to ``width`` bits."""
    codes = np.asarray(codes, dtype=np.int64)
    if width >= 64:
        return codes
    mask = np.int64((1 << width) - 1)
    u = codes & mask
    if signed:
        u = np.where(u >= (1 << (width - 1)), u - mask - 1, u)  # u - 2**width, int64-safe at width 63
    return u


def bits_for(max_abs: float, signed: bool = True) -> int:
    """Integer bits (sign included) needed to hold +-max_abs."""
    if max_abs <= 0:
        return 1 if signed else 0
    ib = int(np.floor(np.log2(max_abs))) + 1
    return ib + (1 if signed else 0)
