"""UART receiver and transmitter, 8N1: one start bit (0), eight data bits LSB first, one stop bit (1).

Both take the bit period in clock cycles, ``divisor`` (``clk_hz // baud``), as a constructor
parameter; the line idles high. :class:`UARTReceiver` puts each received byte on a stream,
:class:`UARTTransmitter` sends each byte of a stream.
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

#: smallest bit period: the start bit must still be low when sampled in its middle after the
#: 2-cycle synchroniser and the edge detection, with some slack for the two clocks' mismatch
MIN_DIVISOR = 4
FRAME_BITS = 10  # start + 8 data + stop


def check_divisor(divisor) -> int:
    """Validate a bit period in clock cycles; returns it as an ``int``."""
    if isinstance(divisor, bool) or not isinstance(divisor, int):
        raise TypeError(f"divisor must be an integer number of clock cycles per bit, got {divisor!r}")
    if divisor < MIN_DIVISOR:
        raise ValueError(f"divisor must be at least {MIN_DIVISOR} clock cycles per bit (clk_hz // baud), "
                         f"got {divisor}: lower the baud rate or raise the clock")
    return divisor


def divisor_for(clk_hz, baud, tolerance: float = 0.02) -> int:
    """``clk_hz // baud``, checked: at least :data:`MIN_DIVISOR`, and the real baud rate
    ``clk_hz / divisor`` within ``tolerance`` of ``baud`` (a UART frame survives about 4-5%)."""
    for name, v in (("clk_hz", clk_hz), ("baud", baud)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or v != int(v):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    clk_hz, baud = int(clk_hz), int(baud)
    divisor = clk_hz // baud
    if divisor < MIN_DIVISOR:
        raise ValueError(f"baud {baud} is too fast for a {clk_hz} Hz clock: clk_hz // baud = {divisor}, "
                         f"need at least {MIN_DIVISOR}")
    err = abs(clk_hz / divisor - baud) / baud
    if err > tolerance:
        raise ValueError(f"baud {baud} from a {clk_hz} Hz clock: divisor {divisor} gives "
                         f"{clk_hz / divisor:.0f} baud, {100 * err:.1f}% off (more than {100 * tolerance:.0f}%)")
    return divisor


class UARTReceiver(wiring.Component):
    """UART receiver, 8N1.

    ``rx`` passes a 2-flop synchroniser (it comes from another clock, or from a pin); a falling
    edge starts a frame, the start bit is checked in its middle (a shorter low pulse is a glitch
    and ignored), and every following bit is sampled in its middle, ``divisor`` cycles apart. A
    frame whose stop bit is low is a framing error: the byte is dropped, ``frame_error`` pulses for
    one cycle, and the receiver waits for the line to return high (a break) before the next frame.

    The byte is presented on ``o`` until taken; a byte that completes while the previous one is
    still waiting is dropped and ``overrun`` pulses (a UART cannot be stalled), so the consumer
    must take each byte within one frame time.

    Latency: ``o.valid`` rises 3 cycles (synchroniser + edge detection) after the middle of the stop
    bit, i.e. about ``9.5 * divisor + 3`` cycles after the start bit's falling edge on ``rx``.
    Throughput: one byte per frame, back-to-back frames included (the receiver re-arms in the middle
    of the stop bit, so a sender whose clock is up to ~5% faster is still received).

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (``clk_hz // baud``), at least :data:`MIN_DIVISOR`.
    """

    def __init__(self, divisor: int):
        self.divisor = check_divisor(divisor)
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(unsigned(8))),
            "frame_error": Out(1),
            "overrun": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1, stages=2)

        timer = Signal(range(d))
        bit = Signal(range(8))
        shreg = Signal(8)
        full = Signal()
        data = Signal(8)
        m.d.comb += [self.o.valid.eq(full), self.o.payload.eq(data)]
        with m.If(self.o.ready):
            m.d.sync += full.eq(0)

        with m.FSM(name="rx"):
            with m.State("IDLE"):
                with m.If(~rx):
                    # the first sample is this cycle: the middle of the start bit is d//2 ahead
                    m.d.sync += timer.eq(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(rx):
                        m.next = "IDLE"  # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(d - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq((shreg >> 1) | (rx << 7)), bit.eq(bit + 1), timer.eq(d - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(rx):
                        with m.If(full & ~self.o.ready):
                            m.d.comb += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [data.eq(shreg), full.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.frame_error.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTransmitter(wiring.Component):
    """UART transmitter, 8N1.

    Takes a byte from ``i`` when idle or in the last cycle of a stop bit, so a stream that is
    always valid is sent back to back: one frame per ``10 * divisor`` cycles, the line never idle
    between frames. ``tx`` is a register (no glitches on the pin) and idles high.

    Latency: the start bit begins on ``tx`` the cycle after the handshake.
    Throughput: one byte per ``10 * divisor`` cycles.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (``clk_hz // baud``), at least :data:`MIN_DIVISOR`.
    """

    def __init__(self, divisor: int):
        self.divisor = check_divisor(divisor)
        super().__init__({
            "i": In(stream.Signature(unsigned(8))),
            "tx": Out(1, init=1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        shreg = Signal(FRAME_BITS, init=(1 << FRAME_BITS) - 1)  # bit 0 is on the line
        left = Signal(range(FRAME_BITS + 1))  # bits still to finish, the one on the line included
        timer = Signal(range(d))
        m.d.comb += [self.tx.eq(shreg[0]), self.busy.eq(left != 0),
                     self.i.ready.eq((left == 0) | ((left == 1) & (timer == 0)))]
        with m.If(left != 0):
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [shreg.eq((shreg >> 1) | (1 << (FRAME_BITS - 1))), left.eq(left - 1), timer.eq(d - 1)]
        with m.If(self.i.valid & self.i.ready):
            # stop bit 1, the data LSB first, start bit 0
            m.d.sync += [shreg.eq((1 << (FRAME_BITS - 1)) | (self.i.payload << 1)), left.eq(FRAME_BITS),
                         timer.eq(d - 1)]
        return m
