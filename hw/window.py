"""The convolver's operand feed: a banked feature memory and the crossbar that puts the R x C
pixels under the current tap onto the R x C lanes.

ANNA fed its convolver from shift registers holding a window of the feature map. Here the window
slides in address space instead: the feature memory is ``lanes`` banks (one copy of the data,
laid out by :class:`hw.program.Layout`), and for a tap (c, ky, kx) of a tile the R x C pixels the
lanes need sit in R x C different banks, at one of four word addresses (``base``, the next tile
row's ``base_row``, column's ``base_col``, or both, ``base_both``; the sequencer adds them up in
registers, so a bank's address is a multiplexer, not adders). A two-stage rotation (rows by ``my``,
columns by ``mx``; logarithmic rotators, :func:`rotate`) then hands each lane its pixel. In dense
mode the rotation brings the one bank's word to lane 0, and every lane takes lane 0's.
"""
from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .mac import _check_int
from .layout import log2 as _log2



def rotate(values: list, amount, bits: int) -> list:
    """``[values[(i + amount) % n] for i in range(n)]``, n = 2**bits: a logarithmic rotator, one stage
    of 2:1 multiplexers per bit of ``amount`` (n * bits multiplexers, against n * (n - 1) for a
    multiplexer tree per output). Written as expressions: in an event-driven simulator (Icarus) they
    are nets, which cost far less than the process an ``Array`` read becomes."""
    n = len(values)
    for bit in range(bits):
        step = 1 << bit
        values = [Mux(amount[bit], values[(i + step) % n], values[i]) for i in range(n)]
    return values


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
        # the rotation amounts of the word now leaving the banks; in dense mode the rotation that
        # brings bank ``bank`` to lane 0, whose pixel every lane then takes
        my, mx, dense = Signal.like(self.my), Signal.like(self.mx), Signal()
        m.d.sync += [my.eq(Mux(self.dense, self.bank >> lc, self.my) if R > 1 else 0),
                     mx.eq(Mux(self.dense, self.bank[:lc], self.mx) if C > 1 else 0), dense.eq(self.dense)]
        cols = [rotate(data[c::C], my, lr) for c in range(C)]  # each column's rows, rotated by my
        rows = [rotate([cols[c][r] for c in range(C)], mx, lc) for r in range(R)]  # each row, by mx
        lanes_out = [v for row in rows for v in row]
        for q in range(P):
            x = Signal(signed(self.width), name=f"x{q}", reset_less=True)  # data: no reset
            m.d.sync += x.eq(Mux(dense, lanes_out[0], lanes_out[q]) if q else lanes_out[0])
            m.d.comb += self.x[q].eq(x)
        return m
