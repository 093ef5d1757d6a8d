"""The convolver's operand feed: a banked feature memory and the crossbar that puts the R x C
pixels under the current tap onto the R x C lanes.

ANNA fed its convolver from shift registers holding a window of the feature map. Here the window
slides in address space instead: the feature memory is ``lanes`` banks (one copy of the data,
laid out by :class:`hw.layout.Layout`), and for a tap (c, ky, kx) of a group the R x C pixels the
lanes need sit in R x C different banks. A bank's word is one of four (eight for wrapped groups,
:mod:`hw.wrap`) that the sequencer adds up in registers, picked by three registered select bits of
the bank: its row carries into the next tile row or strip, its column into the next word, its
lane runs past the strip's end; so a bank's read address is a multiplexer, not adders. Two levels
of multiplexers then hand each lane its pixel: row r of every column takes bank row (r + my) % R,
and lane (r, c) takes column (c + mx) % C of its row (mx: ``mx0``, or ``mx1`` where the lane's row
carries), each output with a select of its own, registered with the read (:func:`select`). In
dense mode every select names the one bank, so every lane takes its word.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .mac import _check_int
from .layout import log2 as _log2


def select(values: list, index, bits: int):
    """``values[index]`` (2**bits values): a tree of 2:1 multiplexers, one level per bit of ``index``.
    Written as expressions: in an event-driven simulator (Icarus) they are nets, which cost far less
    than the process an ``Array`` read becomes."""
    for bit in range(bits):
        values = [Mux(index[bit], values[i + 1], values[i]) for i in range(0, len(values), 2)]
    return values[0]


class TileWindow(wiring.Component):
    """Banked feature memory (``R * C`` banks of ``words`` words) with a tile read crossbar.

    Read (every cycle): bank (r, c) reads word ``base[i]``, i = rc + 2 cc + 4 w, with rc =
    ``row_carry[r]``, cc = ``col_carry[rc][c]`` and w = ``wrap[rc][c]`` (``wrap`` only with
    ``wrapped``; else i < 4); lane (dy, dx) receives bank ((dy + my) % R, (dx + mx) % C), mx =
    ``mx1`` if dy + my >= R (``wrapped``), else ``mx0``. With ``dense`` high every lane receives bank
    ``bank`` (the selects are then all 0: every bank reads ``base[0]``).
    Write: ``waddr = bank * 2**addr_width + word``; one word per cycle.

    Latency: read inputs in cycle t give ``x`` in cycle t + 2 (memory read, then the registered
    crossbar). Throughput: one tile (or one broadcast word) per cycle. A write is visible to reads
    presented in the following cycles.

    Parameters
    ----------
    R, C : int
        Tile rows and columns, powers of two (lanes = R * C).
    words : int
        Words per bank.
    width : int
        Bits per word (signed).
    wrapped : bool
        Groups may run past a strip's end (:mod:`hw.wrap`): eight bases, ``wrap`` and ``mx1``.
    """

    def __init__(self, R: int, C: int, words: int, width: int, wrapped: bool = False):
        _check_int("R", R, 1, 256)
        _check_int("C", C, 1, 256)
        for n, v in (("R", R), ("C", C)):
            if v & (v - 1):
                raise ValueError(f"{n} must be a power of two, got {v}")
        _check_int("words", words, 1, 1 << 20)
        _check_int("width", width, 1, 48)
        self.R, self.C, self.words, self.width, self.wrapped = R, C, words, width, bool(wrapped)
        self.P = R * C
        self.addr_width = max(1, (words - 1).bit_length())
        self.bases = 8 if wrapped else 4
        aw, bw = self.addr_width, max(1, _log2(self.P))
        ports = {
            "base": In(unsigned(aw)).array(self.bases),
            "row_carry": In(R),
            "col_carry": In(C).array(2),
            "my": In(range(R)),
            "mx0": In(range(C)),
            "dense": In(1),
            "bank": In(range(self.P)),
            "x": Out(signed(width)).array(self.P),
            "we": In(1),
            "waddr": In(unsigned(aw + bw)),
            "wdata": In(signed(width)),
        }
        if wrapped:
            ports |= {"wrap": In(C).array(2), "mx1": In(range(C))}
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        R, C, P, aw = self.R, self.C, self.P, self.addr_width
        lr, lc = _log2(R), _log2(C)
        wbank = self.waddr[aw:] if P > 1 else 0
        data = []
        for b in range(P):
            r, c = divmod(b, C)
            mem = Memory(shape=signed(self.width), depth=self.words, init=[])
            m.submodules[f"bank{b}"] = mem
            rp, wp = mem.read_port(), mem.write_port()
            half = []  # per row carry: the bank's word among base[rc + 2 cc + 4 w]
            for rc in range(2):
                cc = self.col_carry[rc][c]
                word = Mux(cc, self.base[rc + 2], self.base[rc])
                if self.wrapped:
                    word = Mux(self.wrap[rc][c], Mux(cc, self.base[rc + 6], self.base[rc + 4]), word)
                half.append(word)
            m.d.comb += [rp.addr.eq(Mux(self.row_carry[r], half[1], half[0])),
                         wp.en.eq(self.we & (wbank == b)), wp.addr.eq(self.waddr[:aw]), wp.data.eq(self.wdata)]
            data.append(rp.data)
        # each output picks its input with a select of its own, registered with the read: row r of
        # a column takes bank row (r + my) % R, then lane (r, c) takes column (c + mx) % C of that
        # row; in dense mode every select names the bank ``bank``, so every lane takes its word.
        # Two levels of multiplexers after the block RAM, and no broadcast multiplexer after them
        row_sel = [Signal(range(R), name=f"row_sel{r}") for r in range(R)]
        per_row = self.wrapped and R > 1  # wrapped: a row that carries rotates by mx1
        col_sel = [[Signal(range(C), name=f"col_sel{r}_{c}" if per_row else f"col_sel{c}") for c in range(C)]
                   for r in range(R if per_row else 1)]
        bank_r, bank_c = (self.bank >> lc) if R > 1 else 0, self.bank[:lc] if C > 1 else 0
        m.d.sync += [row_sel[r].eq(Mux(self.dense, bank_r, self.my + r)) for r in range(R) if R > 1]
        for r, sels in enumerate(col_sel):
            mx = Mux(self.my + r >= R, self.mx1, self.mx0) if per_row else self.mx0
            m.d.sync += [sels[c].eq(Mux(self.dense, bank_c, mx + c)) for c in range(C) if C > 1]
        # rows[r][c]: bank row row_sel[r] of column c; lane (r, c): column col_sel[c] of row r
        rows = [[select(data[c::C], row_sel[r], lr) if R > 1 else data[c] for c in range(C)] for r in range(R)]
        for q in range(P):
            r, c = divmod(q, C)
            x = Signal(signed(self.width), name=f"x{q}", reset_less=True)  # data: no reset
            sel = col_sel[r if per_row else 0][c]
            m.d.sync += x.eq(select(rows[r], sel, lc) if C > 1 else rows[r][0])
            m.d.comb += self.x[q].eq(x)
        return m
