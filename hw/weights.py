"""The weight memory: every conv tap and dense weight word of the network in one memory.

Initialised from the spec (``init``: a ROM in block RAM), or loaded at run time through a byte
stream (``init=None``), which is how the weights reach the iCE40 UP5K's SPRAMs: SPRAM cannot be
initialised by the bitstream, and LeNet-5's 61,706 weights do not fit its 30 block RAMs.
"""
from __future__ import annotations

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

SPRAM_DEPTH, SPRAM_WIDTH, SPRAM_COUNT = 16384, 16, 4  # iCE40 UP5K: 4 x SB_SPRAM256KA


def _is_ice40(platform) -> bool:
    try:
        from amaranth.vendor import LatticeICE40Platform
    except ImportError:  # pragma: no cover
        return False
    return isinstance(platform, LatticeICE40Platform)


class WeightMemory(wiring.Component):
    """``depth`` words of ``width`` bits, one synchronous read port.

    Read: ``raddr`` in cycle t gives ``rdata`` in cycle t + 1. Throughput: one word per cycle.

    With ``init=None`` the memory is loaded through ``load``: bytes, each word little-endian in
    ``ceil(width / 8)`` bytes, word 0 first (after ``depth`` words the next byte starts word 0
    again); one byte per cycle. A word is written in the cycle its last byte is taken; the owner
    must not read in that cycle (on an iCE40 platform the memory is ``ceil(width / 16)``
    SB_SPRAM256KA side by side, whose one port is shared by reads and writes).
    """

    def __init__(self, width: int, depth: int, init: list[int] | None = None):
        for name, v, hi in (("width", width, 1024), ("depth", depth, 1 << 20)):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
                raise ValueError(f"{name} must be an integer in 1..{hi}, got {v!r}")
        if init is not None and len(init) > depth:
            raise ValueError(f"init has {len(init)} words, more than depth {depth}")
        self.width, self.depth, self.init = width, depth, init
        self.word_bytes = -(-width // 8)
        ports = {"raddr": In(range(max(depth, 2))), "rdata": Out(unsigned(width))}
        if init is None:
            ports["load"] = In(stream.Signature(unsigned(8)))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        if self.init is not None:
            m.submodules.rom = rom = Memory(shape=unsigned(self.width), depth=self.depth, init=self.init)
            rp = rom.read_port()
            m.d.comb += [rp.addr.eq(self.raddr), self.rdata.eq(rp.data)]
            return m

        nb = self.word_bytes
        buf = Signal(8 * max(nb - 1, 1))
        nbyte = Signal(range(max(nb, 2)))
        waddr = Signal(range(max(self.depth, 2)))
        we = Signal()
        wdata = Signal(self.width)
        m.d.comb += [self.load.ready.eq(1), we.eq(self.load.valid & (nbyte == nb - 1)),
                     wdata.eq(Cat(buf[:8 * (nb - 1)], self.load.payload) if nb > 1 else self.load.payload)]
        with m.If(self.load.valid):
            if nb > 1:
                m.d.sync += buf.eq(Cat(buf[8:], self.load.payload))
            m.d.sync += nbyte.eq(nbyte + 1)
            with m.If(nbyte == nb - 1):
                m.d.sync += [nbyte.eq(0), waddr.eq(Mux(waddr == self.depth - 1, 0, waddr + 1))]

        if _is_ice40(platform) and self.depth <= SPRAM_DEPTH and self.width <= SPRAM_WIDTH * SPRAM_COUNT:
            addr = Mux(we, waddr, self.raddr)
            outs = []
            for k in range(-(-self.width // SPRAM_WIDTH)):
                out = Signal(SPRAM_WIDTH, name=f"spram{k}_out")
                chunk = wdata[k * SPRAM_WIDTH:(k + 1) * SPRAM_WIDTH]
                m.submodules[f"spram{k}"] = Instance(
                    "SB_SPRAM256KA", i_ADDRESS=addr, i_DATAIN=chunk, i_MASKWREN=Const(0b1111, 4), i_WREN=we,
                    i_CHIPSELECT=Const(1), i_CLOCK=ClockSignal("sync"),
                    i_STANDBY=Const(0), i_SLEEP=Const(0), i_POWEROFF=Const(1), o_DATAOUT=out)
                outs.append(out)
            m.d.comb += self.rdata.eq(Cat(*outs)[:self.width])
        else:
            m.submodules.ram = ram = Memory(shape=unsigned(self.width), depth=self.depth, init=[])
            rp, wp = ram.read_port(), ram.write_port()
            m.d.comb += [rp.addr.eq(self.raddr), self.rdata.eq(rp.data),
                         wp.en.eq(we), wp.addr.eq(waddr), wp.data.eq(wdata)]
        return m
