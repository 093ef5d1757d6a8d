# amaranth: UnusedElaboratable=no
"""hw.weights.WeightMemory: the initialised ROM, the byte-stream loader, and the iCE40 SPRAM mapping."""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator

from hw.weights import WeightMemory


def rtl_weights(width, depth, init, load_words=None, reads=()):
    """Load ``load_words`` (if any) through the byte stream, then read ``reads``; returns the data."""
    dut = WeightMemory(width, depth, init)
    out = []

    async def tb(ctx):
        if load_words is not None:
            nb = -(-width // 8)
            ctx.set(dut.load.valid, 1)
            for w in load_words:
                for b in int(w).to_bytes(nb, "little"):
                    ctx.set(dut.load.payload, b)
                    await ctx.tick().until(dut.load.ready)
            ctx.set(dut.load.valid, 0)
        for a in reads:
            ctx.set(dut.raddr, a)
            await ctx.tick()
            out.append(ctx.get(dut.rdata))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return out


@pytest.mark.parametrize("width", [8, 21, 64])
def test_rom_and_loaded_memory_read_the_same(width):
    rng = np.random.default_rng(width)
    depth = 37
    words = [int(v) for v in rng.integers(0, 1 << min(width, 62), size=depth)]
    words[0], words[-1] = (1 << width) - 1, 1 << (width - 1)  # all ones, top bit alone
    reads = [int(a) for a in rng.permutation(depth)] + [0, depth - 1]
    want = [words[a] for a in reads]
    assert rtl_weights(width, depth, words, reads=reads) == want
    assert rtl_weights(width, depth, None, load_words=words, reads=reads) == want


def test_reload_wraps_to_word_zero():
    first, second = [1, 2, 3], [7, 8, 9]
    assert rtl_weights(16, 3, None, load_words=first + second, reads=[0, 1, 2]) == second


def test_spram_on_ice40():
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    text = rtlil.convert(WeightMemory(64, 9226, None), platform=ICEBreakerPlatform(), name="w")
    assert text.count("SB_SPRAM256KA") == 4
    generic = rtlil.convert(WeightMemory(64, 9226, None), name="w")
    assert "SB_SPRAM256KA" not in generic


@pytest.mark.parametrize("args,msg", [((0, 4), "width"), ((8, 0), "depth"), ((8, 2, [1, 2, 3]), "more than depth")])
def test_bad_parameters(args, msg):
    with pytest.raises(ValueError, match=msg):
        WeightMemory(*args)
