# amaranth: UnusedElaboratable=no
"""hw.activation.Activation (the drain: bias + requantize + activation ROM + write-back) against
quantize.ops.activation, with the program compiled from real q8 and anna specs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.activation import Activation
from hw.program import addr_width, compile_spec
from quantize import ops


@dataclass
class Capture:
    layer: int
    unit: int  # conv: output map; dense: first neuron of the group (n0)
    tile: tuple[int, int]  # conv: (ty, tx); wrapped groups (hw/wrap.py): (strip, first column)
    mask: int
    acc: list[int]  # accumulators without the bias (the drain adds it)
    back_to_back: bool = False  # capture in the previous group's last lane turn (else idle cycles first)


def drive(prog, cap: Capture) -> dict:
    """The port values the sequencer presents with a capture."""
    lp = prog.layers[cap.layer]
    conv = lp.mode == "conv"
    lhw = lp.out_layout.lhw if lp.out_layout is not None else 0
    return {"layer": cap.layer, "ty": cap.tile[0] if conv else 0, "tx": cap.tile[1] if conv else 0,
            "map_off": cap.unit * lhw if conv else 0, "n0": 0 if conv else cap.unit,
            "bias_addr": lp.bias_base + cap.unit, "mask": cap.mask}


def rtl_activation(prog, captures: list[Capture]):
    """Drive the captures through Activation; returns (fm writes, score writes), each a list of
    (cycle relative to its capture, capture index, address, data) in the order presented."""
    P = prog.lanes
    dut = Activation(prog)
    starts, c = [], 1
    for cap in captures:
        c = c + P if cap.back_to_back and starts else c + P + 4
        starts.append(c)
    end = starts[-1] + P + 6
    writes, scores = [], []

    def owner(cycle):
        i = max(i for i, s in enumerate(starts) if s < cycle)
        return i, cycle - starts[i]

    async def testbench(ctx):
        for cycle in range(end):
            if cycle in starts:
                cap = captures[starts.index(cycle)]
                ctx.set(dut.capture, 1)
                for port, v in drive(prog, cap).items():
                    ctx.set(getattr(dut, port), v)
                for q in range(P):
                    ctx.set(dut.acc[q], int(cap.acc[q]))
            else:
                ctx.set(dut.capture, 0)
                ctx.set(dut.mask, 0)
                ctx.set(dut.layer, 0)
            if ctx.get(dut.we):
                i, rel = owner(cycle - 3)  # a write is presented three cycles after its lane's turn
                writes.append((rel + 3, i, ctx.get(dut.waddr), ctx.get(dut.wdata)))
            if ctx.get(dut.score_we):
                i, rel = owner(cycle - 2)
                scores.append((rel + 2, i, ctx.get(dut.score_idx), ctx.get(dut.score)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return writes, scores


def emu_activation(prog, captures: list[Capture]):
    """Golden writes from the emulator's kernels: accumulator + the layer's bias in its acc format
    (WRAP), then ops.activation with the layer's index format and LUT, written where the next
    layer's Layout puts that output; the last layer writes the scores.
    Each entry: (cycle after capture, capture index, address, data); lane k's turn is cycle 1 + k,
    its score is presented in cycle 3 + k and its feature-memory write in cycle 4 + k."""
    aw = addr_width(prog)
    writes, scores = [], []
    for i, cap in enumerate(captures):
        lp = prog.layers[cap.layer]
        l = lp.spec
        f = l.formats
        bias = l.bias_acc()
        units = [cap.unit] * prog.lanes if lp.mode == "conv" else [cap.unit + k for k in range(prog.lanes)]
        total = np.array(cap.acc, np.int64) + np.array([bias[u] if u < len(bias) else 0 for u in units])
        acc, _ = f["acc"].overflow_codes(total)
        if l.has_activation:
            y = ops.activation(acc, f["acc"].frac, f["index"], l.lut)[0].numpy()
        for k in range(prog.lanes):
            if cap.mask >> k & 1:
                if l.has_activation:
                    if lp.mode == "conv":
                        pos = (cap.unit, *lane_position(prog, lp, cap.tile, k))
                    else:
                        pos = (cap.unit + k, 0, 0)
                    p = lp.out_layout.pad
                    bank, word = lp.out_layout.locate(pos[0], pos[1] + p, pos[2] + p)
                    writes.append((4 + k, i, (bank << aw) | word, int(y[k])))
                else:
                    scores.append((3 + k, i, cap.unit + k, int(acc[k])))
    return writes, scores


def lane_position(prog, lp, tile, k) -> tuple[int, int]:
    """Output (y, x) of lane k of a conv-mode group: tile (ty, tx) -> (ty*R + dy, tx*C + dx); wrapped
    (strip s0, first column x0): column x0 + dx of the strips laid end to end, W = ``lp.wrap`` wide."""
    dy, dx = divmod(k, prog.C)
    if not lp.wrap:
        return tile[0] * prog.R + dy, tile[1] * prog.C + dx
    s, x = divmod(tile[1] + dx, lp.wrap)
    return (tile[0] + s) * prog.R + dy, x


def valid_mask(prog, lp, unit, tile) -> int:
    """Lanes whose output exists (inside the map / below the neuron count), as the sequencer masks."""
    P = prog.lanes
    if lp.mode == "conv":
        return sum(1 << k for k in range(P) if all(v < n for v, n in zip(lane_position(prog, lp, tile, k),
                                                                          (lp.out_h, lp.out_w))))
    return sum(1 << k for k in range(P) if unit + k < lp.spec.out_maps)


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
    caps = []
    for li, lp in enumerate(prog.layers):
        accs = interesting_accs(rng, prog, li, values_per_layer)
        rng.shuffle(accs)
        for g in range(len(accs) // P):
            if lp.mode == "conv":
                unit = int(rng.integers(0, lp.maps))
                if lp.wrap:  # a random group: its strip and first column
                    tile = divmod(int(rng.integers(0, lp.groups)) * prog.C, lp.wrap)
                else:
                    tile = (int(rng.integers(0, lp.tiles[0])), int(rng.integers(0, lp.tiles[1])))
            else:
                unit, tile = int(rng.integers(0, lp.groups)) * P, (0, 0)
            mask = valid_mask(prog, lp, unit, tile) & ([(1 << P) - 1, 0, int(rng.integers(0, 1 << P))][g % 3] if g else -1)
            caps.append(Capture(li, unit, tile, mask, accs[g * P:(g + 1) * P].tolist(),
                                back_to_back=g % back_to_back_every != 0))
    return caps


def check(prog, captures):
    got_w, got_s = rtl_activation(prog, captures)
    want_w, want_s = emu_activation(prog, captures)
    # values first (the clearer message), then the exact cycles
    assert [w[1:] for w in got_w] == [w[1:] for w in want_w]
    assert [s[1:] for s in got_s] == [s[1:] for s in want_s]
    assert got_w == want_w and got_s == want_s


@pytest.mark.parametrize("lanes", [8, 2])
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
        for g in range(3):
            unit, tile = (g, (0, 0)) if lp.mode == "conv" else (0, (0, 0))
            caps.append(Capture(li, unit, tile, 0xFF, accs[8 * g:8 * g + 8].tolist(), back_to_back=True))
    caps.append(Capture(len(prog.layers) - 1, 0, (0, 0), 0xFF, list(range(-4, 4)), back_to_back=True))
    caps.append(Capture(len(prog.layers) - 1, 8, (0, 0), 0x03, [7, -9, 0, 0, 0, 0, 0, 0], back_to_back=True))
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
        b = int(lp.spec.bias_acc()[0])
        assert ops.activation(np.array(accs) + b, f["acc"].frac, f["index"], lp.spec.lut)[1] >= 6
        check(prog, [Capture(li, 0, (0, 0), 0xFF, accs)])
