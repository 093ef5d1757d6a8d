# amaranth: UnusedElaboratable=no
"""hw.activation.Activation (the drain: requantize + activation ROM + write-back) against
quantize.ops.activation, with the program compiled from real q8 and anna specs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.activation import Activation
from hw.program import compile_spec
from quantize import ops


@dataclass
class Capture:
    layer: int
    out_addr: int
    mask: int
    acc: list[int]
    back_to_back: bool = False  # capture in the previous group's last lane turn (else idle cycles first)


def addr_width(prog) -> int:
    return max(1, (prog.fm_words - 1).bit_length())  # as hw/accelerator.py sizes it


def rtl_activation(prog, captures: list[Capture]):
    """Drive the captures through Activation; returns (fm writes, score writes), each a list of
    (cycle relative to its capture, capture index, address, data) in the order presented."""
    P = prog.lanes
    dut = Activation(prog, addr_width(prog))
    starts, c = [], 1
    for cap in captures:
        c = c + P if cap.back_to_back and starts else c + P + 4
        starts.append(c)
    end = starts[-1] + P + 4
    writes, scores = [], []

    def owner(turn):  # lane turns of a capture in cycle s are s + 1 .. s + P
        i = max(i for i, s in enumerate(starts) if s < turn)
        return i, turn - starts[i]

    async def testbench(ctx):
        for cycle in range(end):
            if cycle in starts:
                cap = captures[starts.index(cycle)]
                ctx.set(dut.capture, 1)
                ctx.set(dut.layer, cap.layer)
                ctx.set(dut.out_addr, cap.out_addr)
                ctx.set(dut.mask, cap.mask)
                for q in range(P):
                    ctx.set(dut.acc[q], int(cap.acc[q]))
            else:
                ctx.set(dut.capture, 0)
                ctx.set(dut.mask, 0)
                ctx.set(dut.layer, 0)
            if ctx.get(dut.we):
                i, rel = owner(cycle - 1)  # a write is presented the cycle after its lane's turn
                writes.append((rel + 1, i, ctx.get(dut.waddr), ctx.get(dut.wdata)))
            if ctx.get(dut.score_we):
                i, rel = owner(cycle)
                scores.append((rel, i, ctx.get(dut.score_idx), ctx.get(dut.score)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return writes, scores


def emu_activation(prog, captures: list[Capture]):
    """Golden writes from the emulator's kernels: the layer's acc format (WRAP), then
    ops.activation with the layer's index format and LUT; the last layer writes the scores.
    Each entry: (cycle after capture, capture index, address, data); lane k's turn is cycle 1 + k
    and its feature-memory write is presented in cycle 2 + k (hw/activation.py)."""
    writes, scores = [], []
    for i, cap in enumerate(captures):
        l = prog.layers[cap.layer].spec
        f = l.formats
        acc, _ = f["acc"].overflow_codes(np.array(cap.acc, np.int64))
        if l.has_activation:
            y = ops.activation(acc, f["acc"].frac, f["index"], l.lut)[0].numpy()
        for k in range(prog.lanes):
            if cap.mask >> k & 1:
                if l.has_activation:
                    writes.append((2 + k, i, cap.out_addr + k, int(y[k])))
                else:
                    scores.append((1 + k, i, cap.out_addr + k, int(acc[k])))
    return writes, scores


def interesting_accs(rng, prog, layer_index: int, n: int) -> np.ndarray:
    """Accumulator values for one layer: the acc format's extremes, the edges of the LUT address
    range (and just past them), values far outside it (saturation), values wider than the layer's
    own acc (wrapped first), zero, and uniform random ones."""
    P = prog.lanes
    l = prog.layers[layer_index].spec
    f = l.formats
    a = f["acc"]
    W = prog.acc_width
    wide_lo, wide_hi = -(1 << (W - 1)), (1 << (W - 1)) - 1
    vals = [a.code_min, a.code_max, a.code_min + 1, a.code_max - 1, 0, -1, 1, wide_lo, wide_hi]
    if l.has_activation:
        s = a.frac - f["index"].frac
        for edge in (f["index"].code_min, f["index"].code_max):
            e = edge << s if s >= 0 else edge >> -s
            vals += [e + d for d in range(-3, 4)]
        hi = f["index"].code_max << max(s, 0)
        vals += [min(a.code_max, 4 * hi), max(a.code_min, -4 * hi), a.code_max // 2, a.code_min // 2]
    vals = np.clip(np.array(vals, np.int64), wide_lo, wide_hi)
    rnd = np.concatenate([rng.integers(a.code_min, a.code_max, size=n, endpoint=True),
                          rng.integers(wide_lo, wide_hi, size=max(1, n // 4), endpoint=True)])
    out = np.concatenate([vals, rnd])
    return np.concatenate([out, rng.integers(a.code_min, a.code_max, size=(-len(out)) % P, endpoint=True)])


def make_captures(rng, prog, values_per_layer: int, back_to_back_every: int = 2) -> list[Capture]:
    P = prog.lanes
    aw = addr_width(prog)
    caps = []
    for li, lp in enumerate(prog.layers):
        accs = interesting_accs(rng, prog, li, values_per_layer)
        rng.shuffle(accs)
        for g in range(len(accs) // P):
            if lp.has_activation:
                out_addr = int(rng.integers(0, (1 << aw) - P + 1))
                mask = [(1 << P) - 1, 0, int(rng.integers(0, 1 << P))][g % 3] if g else (1 << P) - 1
            else:  # scores: lanes past the last score are masked out, as the sequencer does
                out_addr = int(rng.integers(0, prog.scores))
                valid = sum(1 << q for q in range(P) if out_addr + q < prog.scores)
                mask = valid & ([(1 << P) - 1, int(rng.integers(0, 1 << P))][g % 2])
            caps.append(Capture(li, out_addr, mask, accs[g * P:(g + 1) * P].tolist(),
                                back_to_back=g % back_to_back_every != 0))
    return caps


def check(prog, captures):
    got_w, got_s = rtl_activation(prog, captures)
    want_w, want_s = emu_activation(prog, captures)
    # values first (the clearer message), then the exact cycles
    assert [w[1:] for w in got_w] == [w[1:] for w in want_w]
    assert [s[1:] for s in got_s] == [s[1:] for s in want_s]
    assert got_w == want_w and got_s == want_s


@pytest.mark.parametrize("lanes", [8, 3])
def test_activation_q8(q8_spec, lanes):
    prog = compile_spec(q8_spec, lanes)
    check(prog, make_captures(np.random.default_rng(lanes), prog, 120))


@pytest.mark.parametrize("lanes", [4])
def test_activation_anna(anna_spec, lanes):
    """3-bit states, 8-bit LUT addresses at the accumulator's lsb or finer (a left shift), and
    accumulators narrower than the widest (C5: 9 of 10 bits) that must wrap first."""
    prog = compile_spec(anna_spec, lanes)
    assert len({l.spec.formats["acc"].width for l in prog.layers}) > 1
    check(prog, make_captures(np.random.default_rng(11), prog, 100))


def test_activation_back_to_back_all_lanes(q8_spec):
    """Every capture in the previous group's last lane turn, all lanes masked in, across layers:
    a continuous stream of one write per cycle."""
    prog = compile_spec(q8_spec, 8)
    rng = np.random.default_rng(5)
    caps = []
    for li, lp in enumerate(prog.layers[:-1]):
        accs = interesting_accs(rng, prog, li, 32)
        caps += [Capture(li, 8 * g, 0xFF, accs[8 * g:8 * g + 8].tolist(), back_to_back=True) for g in range(3)]
    caps.append(Capture(len(prog.layers) - 1, 0, 0xFF, list(range(-4, 4)), back_to_back=True))
    caps.append(Capture(len(prog.layers) - 1, 8, 0x03, [7, -9, 0, 0, 0, 0, 0, 0], back_to_back=True))
    got_w, _ = rtl_activation(prog, caps)
    check(prog, caps)
    cycles = [c + 8 * i for c, i, _, _ in got_w]  # one write per cycle, no gap, no overlap
    assert cycles == list(range(cycles[0], cycles[0] + len(cycles)))


def test_activation_saturates(q8_spec):
    """Far outside the LUT range (the acc format's extremes) every address saturates."""
    prog = compile_spec(q8_spec, 8)
    for li, lp in enumerate(prog.layers[:-1]):
        f = lp.spec.formats
        accs = [f["acc"].code_max] * 4 + [f["acc"].code_min] * 4
        assert ops.activation(np.array(accs), f["acc"].frac, f["index"], lp.spec.lut)[1] == 8
        check(prog, [Capture(li, 0, 0xFF, accs)])
