"""hw/uart.py: receiver and transmitter in Amaranth's simulator against a Python model of the line."""
from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from hw.uart import MIN_DIVISOR, UARTReceiver, UARTTransmitter, divisor_for


# --------------------------------------------------------------------------- reference model
def frame_bits(byte: int, stop: int = 1) -> list[int]:
    """8N1: start bit, eight data bits LSB first, stop bit."""
    return [0] + [(byte >> k) & 1 for k in range(8)] + [stop]


def line(frames: list[list[int]], bit_cycles: float, idle: int = 20, gap: int = 0) -> list[int]:
    """Per-cycle levels of a line carrying ``frames`` with a (possibly fractional) bit period."""
    levels = [1] * idle
    for bits in frames:
        t0 = len(levels)
        for k, b in enumerate(bits):
            levels += [b] * (t0 + round((k + 1) * bit_cycles) - len(levels))
        levels += [1] * gap
    return levels + [1] * (idle + 2 * int(bit_cycles))


def decode_line(levels: list[int], bit_cycles: int) -> list[int]:
    """Reference receiver: a falling edge starts a frame; bits are read in their middles."""
    out, t = [], 1
    while t < len(levels):
        if levels[t - 1] == 1 and levels[t] == 0:
            mid = t + bit_cycles // 2
            if mid + 9 * bit_cycles >= len(levels):
                break
            bits = [levels[mid + k * bit_cycles] for k in range(10)]
            assert bits[0] == 0 and bits[9] == 1, f"bad frame at cycle {t}: {bits}"
            out.append(sum(b << k for k, b in enumerate(bits[1:9])))
            t = mid + 9 * bit_cycles
        t += 1
    return out


# --------------------------------------------------------------------------- RTL wrappers
def rtl_uart_rx(levels: list[int], divisor: int, ready_every: int = 1) -> dict:
    """Drive ``rx`` with ``levels`` (one per cycle); take a byte when offered every ``ready_every``
    cycles. Returns the bytes received, framing errors and overruns counted."""
    dut = UARTReceiver(divisor)
    res = {"bytes": [], "frame_errors": 0, "overruns": 0}

    async def tb(ctx):
        for n, v in enumerate(levels):
            ctx.set(dut.rx, v)
            ready = n % ready_every == 0
            ctx.set(dut.o.ready, ready)
            if ctx.get(dut.o.valid) and ready:
                res["bytes"].append(ctx.get(dut.o.payload))
            res["frame_errors"] += ctx.get(dut.frame_error)
            res["overruns"] += ctx.get(dut.overrun)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return res


def rtl_uart_tx(data: list[int], divisor: int, hold: int = 0) -> tuple[list[int], list[int]]:
    """Offer ``data`` on ``i`` (``hold`` idle cycles before each byte is offered); returns the
    per-cycle ``tx`` levels and the cycles of the handshakes."""
    dut = UARTTransmitter(divisor)
    levels, handshakes = [], []

    async def tb(ctx):
        cycle = 0
        for b in data:
            for _ in range(hold):
                levels.append(ctx.get(dut.tx))
                await ctx.tick()
                cycle += 1
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, b)
            while True:
                done = ctx.get(dut.i.ready)
                levels.append(ctx.get(dut.tx))
                if done:
                    handshakes.append(cycle)
                await ctx.tick()
                cycle += 1
                if done:
                    break
            ctx.set(dut.i.valid, 0)
        for _ in range(12 * divisor):
            levels.append(ctx.get(dut.tx))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return levels, handshakes


# --------------------------------------------------------------------------- parameters
def test_divisor_validation():
    for bad in (MIN_DIVISOR - 1, 0, -8):
        with pytest.raises(ValueError, match="at least"):
            UARTReceiver(bad)
        with pytest.raises(ValueError, match="at least"):
            UARTTransmitter(bad)
    for bad in (8.0, "8", True, None):
        with pytest.raises(TypeError, match="integer"):
            UARTReceiver(bad)
    assert divisor_for(12_000_000, 115200) == 104
    assert divisor_for(25_000_000, 115200) == 217
    assert divisor_for(800, 100) == 8
    with pytest.raises(ValueError, match="too fast"):
        divisor_for(12_000_000, 4_000_000)
    with pytest.raises(ValueError, match="off"):
        divisor_for(1000, 180)  # divisor 5: 200 baud, 11% off
    for bad in ((0, 9600), (12e6, -1), (12e6, 9600.5), ("12e6", 9600)):
        with pytest.raises(ValueError, match="positive integer"):
            divisor_for(*bad)


def test_reference_model_roundtrip():
    data = [0x00, 0xFF, 0x55, 0xA3]
    assert decode_line(line([frame_bits(b) for b in data], 8), 8) == data


# --------------------------------------------------------------------------- receiver
@pytest.mark.parametrize("divisor", [4, 5, 8, 13])
def test_rx_random_bytes_back_to_back(divisor):
    rng = random.Random(divisor)
    data = [rng.randrange(256) for _ in range(24)] + [0x00, 0xFF]
    res = rtl_uart_rx(line([frame_bits(b) for b in data], divisor), divisor)
    assert res == {"bytes": data, "frame_errors": 0, "overruns": 0}


@pytest.mark.parametrize("skew", [-0.03, 0.03])
def test_rx_tolerates_clock_mismatch(skew):
    divisor = 16
    data = list(range(0, 256, 17))
    res = rtl_uart_rx(line([frame_bits(b) for b in data], divisor * (1 + skew)), divisor)
    assert res["bytes"] == data


def test_rx_framing_error_dropped_then_recovers():
    divisor = 8
    # a low stop bit that goes on as a break: one framing error, and no frame starts inside the break
    frames = [frame_bits(0x41), frame_bits(0x42, stop=0) + [0] * 25, frame_bits(0x43)]
    res = rtl_uart_rx(line(frames, divisor, gap=3), divisor)
    assert res["bytes"] == [0x41, 0x43]
    assert res["frame_errors"] == 1


def test_rx_glitch_is_not_a_start_bit():
    divisor = 8
    levels = [1] * 20 + [0, 0] + [1] * 30 + line([frame_bits(0x5A)], divisor)
    assert rtl_uart_rx(levels, divisor)["bytes"] == [0x5A]


def test_rx_overrun_drops_the_new_byte():
    divisor = 4
    data = [1, 2, 3, 4, 5, 6]
    res = rtl_uart_rx(line([frame_bits(b) for b in data], divisor), divisor, ready_every=100)
    assert res["overruns"] > 0
    got = res["bytes"]
    assert got and got == sorted(got) and set(got) <= set(data)  # kept bytes are in order, none corrupted


# --------------------------------------------------------------------------- transmitter
@pytest.mark.parametrize("divisor", [4, 7, 8])
def test_tx_back_to_back_frames(divisor):
    rng = random.Random(divisor)
    data = [rng.randrange(256) for _ in range(16)] + [0x00, 0xFF]
    levels, hs = rtl_uart_tx(data, divisor)
    assert levels[0] == 1
    assert decode_line(levels, divisor) == data
    # one frame per 10 * divisor cycles: the next byte is taken in the last cycle of the stop bit
    assert [b - a for a, b in zip(hs, hs[1:])] == [10 * divisor] * (len(data) - 1)
    start = levels.index(0)
    assert start == hs[0] + 1  # the start bit follows the handshake
    assert all(v == 1 for v in levels[start + 10 * divisor * len(data):])


def test_tx_with_idle_gaps():
    levels, _ = rtl_uart_tx([0x12, 0x34, 0xEF], 5, hold=13)
    assert decode_line(levels, 5) == [0x12, 0x34, 0xEF]


def test_loopback_tx_into_rx():
    data = list(range(256))
    levels, _ = rtl_uart_tx(data, 6)
    assert rtl_uart_rx(levels, 6)["bytes"] == data
