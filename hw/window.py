"""The convolver's operand feed: a banked feature memory and the crossbar that puts the R x C
pixels under the current tap onto the R x C lanes.

ANNA fed its convolver from shift registers holding a window of the feature map. Here the window
slides in address space instead: the feature memory is ``lanes`` banks (one copy of the data,
laid out by :class:`hw.program.Layout`), and for a tap (c, ky, kx) of a tile the R x C pixels the
lanes need sit in R x C different banks, at one of four word addresses (``base``, the next tile
row's ``base_row``, column's ``base_col``, or both, ``base_both``; the sequencer adds them up in
registers, so a bank's address is a multiplexer, not adders). Two levels of multiplexers then hand
each lane its pixel: row r of every column takes bank row (r + my) % R, and lane (r, c) takes column
(c + mx) % C of its row, each output with a select of its own, registered with the read
(:func:`select`). In dense mode every select names the one bank, so every lane takes its word.
"""
from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
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

    Read (every cycle): bank (r, c) reads word ``base``, or ``base_row`` if only r < my,
    ``base_col`` if only c < mx, ``base_both`` if both;
    lane (dy, dx) receives bank ((dy + my) % R, (dx + mx) % C). With ``dense`` high every bank reads
    ``base`` and every lane receives bank ``bank``.
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
    """

    def __init__(self, R: int, C: int, words: int, width: int):
        _check_int("R", R, 1, 256)
        _check_int("C", C, 1, 256)
        for n, v in (("R", R), ("C", C)):
            if v & (v - 1):
                raise ValueError(f"{n} must be a power of two, got {v}")
        _check_int("words", words, 1, 1 << 20)
        _check_int("width", width, 1, 48)
        self.R, self.C, self.words, self.width = R, C, words, width
        self.P = R * C
        self.addr_width = max(1, (words - 1).bit_length())
        aw, bw = self.addr_width, max(1, _log2(self.P))
        super().__init__({
            "base": In(unsigned(aw)),
            "base_row": In(unsigned(aw)),
            "base_col": In(unsigned(aw)),
            "base_both": In(unsigned(aw)),
            "my": In(range(R)),
            "mx": In(range(C)),
            "dense": In(1),
            "bank": In(range(self.P)),
            "x": Out(signed(width)).array(self.P),
            "we": In(1),
            "waddr": In(unsigned(aw + bw)),
            "wdata": In(signed(width)),
        })

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
            in_row = ~self.dense & (r < self.my) if R > 1 else Const(0, 1)
            in_col = ~self.dense & (c < self.mx) if C > 1 else Const(0, 1)
            addr = Mux(in_col, Mux(in_row, self.base_both, self.base_col), Mux(in_row, self.base_row, self.base))
            m.d.comb += [rp.addr.eq(addr), wp.en.eq(self.we & (wbank == b)), wp.addr.eq(self.waddr[:aw]),
                         wp.data.eq(self.wdata)]
            data.append(rp.data)
        # each output picks its input with a select of its own, registered with the read: row r of
        # a column takes bank row (r + my) % R, then lane (r, c) takes column (c + mx) % C of that
        # row; in dense mode every select names the bank ``bank``, so every lane takes its word.
        # Two levels of multiplexers after the block RAM, and no broadcast multiplexer after them
        # (against the rotators' levels and a broadcast level: the ECP5-85F's critical path)
        row_sel = [Signal(range(R), name=f"row_sel{r}") for r in range(R)]
        col_sel = [Signal(range(C), name=f"col_sel{c}") for c in range(C)]
        bank_r, bank_c = (self.bank >> lc) if R > 1 else 0, self.bank[:lc] if C > 1 else 0
        m.d.sync += [row_sel[r].eq(Mux(self.dense, bank_r, self.my + r)) for r in range(R) if R > 1]
        m.d.sync += [col_sel[c].eq(Mux(self.dense, bank_c, self.mx + c)) for c in range(C) if C > 1]
        # rows[r][c]: bank row row_sel[r] of column c; lane (r, c): column col_sel[c] of row r
        rows = [[select(data[c::C], row_sel[r], lr) if R > 1 else data[c] for c in range(C)] for r in range(R)]
        for q in range(P):
            r, c = divmod(q, C)
            x = Signal(signed(self.width), name=f"x{q}", reset_less=True)  # data: no reset
            m.d.sync += x.eq(select(rows[r], col_sel[c], lc) if C > 1 else rows[r][0])
            m.d.comb += self.x[q].eq(x)
        return m
