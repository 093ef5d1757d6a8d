# amaranth: UnusedElaboratable=no
# (tops are built to read their ports and stimulus too, not only to be emitted)
"""Datapath layer tops: the tile window feeding the MAC lanes (:class:`~sim.layers.window.WindowMAC`)
over a conv layer with a connection table (``conv_tile``), a 2x2 subsampling (``subsample``) and a
dense layer (``dense``), against ``quantize.ops``."""
from __future__ import annotations

import numpy as np

from quantize.qformat import QFormat

from .core import LayerTop, Schedule, extremes_and_random, register
from .window import (WINDOW_MAC_LATENCY, _build_window_mac, _feature_maps, _garbage_read, _layout, _tiles,
                     _write_maps, conv_tap, tile_read)

def _formats(p) -> tuple[QFormat, QFormat, QFormat]:
    """(data, weight, acc) formats; the accumulator wraps (two's complement), as in hw/mac.py."""
    return QFormat(p["bits"], 0), QFormat(p["weight_width"], 0), QFormat(p["acc_width"], 0, True, "TRN", "WRAP")


def _x_max_abs(fmt: QFormat) -> int:
    return max(-fmt.code_min, fmt.code_max)


def _idle(s: Schedule, dut, rng, wf: QFormat) -> None:
    """Sometimes (one time in five) one or two cycles with ``valid`` low and garbage elsewhere."""
    if rng.random() < 0.2:
        for _ in range(int(rng.integers(1, 3))):
            s.cycle(_garbage_read(rng, dut) | {"valid": 0, "first": rng.integers(0, 2),
                                               "w": rng.integers(wf.code_min, wf.code_max, dut.P, endpoint=True)})


def _run_tiles(s: Schedule, dut, rng, wf, lay, out_hw, maps_taps, exact, wrapped, v: int, n: int) -> int:
    """Every tile of every output map: the map's taps back to back (``first`` on the first; one
    weight broadcast to all lanes), the accumulators expected 4 cycles after the last tap, on the
    lanes inside the output. Returns the next vector index."""
    R, C = lay.R, lay.C
    for o, taps in enumerate(maps_taps):
        for ty, tx, care in _tiles(*out_hw, R, C):
            if v == n:
                return v
            _idle(s, dut, rng, wf)
            for t, (c, ky, kx, w) in enumerate(taps):
                c0 = s.cycle(tile_read(lay, ty, tx, conv_tap(lay, w, c, ky, kx))
                             | {"bank": rng.integers(0, dut.P), "valid": 1, "first": int(t == 0), "w": w})
            lanes = [(ty * R + dy, tx * C + dx) for dy in range(R) for dx in range(C)]
            gold = [wrapped[o, y, x] if k else 0 for (y, x), k in zip(lanes, care)]
            s.expect(c0 + WINDOW_MAC_LATENCY, v, {"acc": gold}, care)
            s.notes["wrapped"] += sum(int(exact[o, y, x] != wrapped[o, y, x]) for (y, x), k in zip(lanes, care) if k)
            s.notes["partial_tiles"] += not all(care)
            v += 1
    return v


def _conv_tile_vectors(dut, p, rng, n):
    """Rounds of: a fresh input tensor written through the write port (every other round with a
    saturated block at code_min), fresh weights (even maps: extremes and uniform codes; odd maps:
    mostly code_min, so the sums over the saturated block wrap), then for each output map of
    ``table`` (its input maps, as a LeNet connection table) and each tile, the map's taps back to
    back as ``compile_spec`` orders them (c, ky, kx), with idle cycles now and then. One vector =
    one (map, tile) accumulation.
    Golden: ``quantize.ops.conv2d`` (bias 0; the accelerator adds it in the drain) wrapped by the
    acc format's ``overflow_codes``, on the lanes inside the output."""
    from quantize import ops

    s = Schedule(dut)
    lay, K, table = _layout(p), p["kernel"], p["table"]
    df, wf, af = _formats(p)
    out_hw = (lay.h - K + 1, lay.w - K + 1)
    v, rnd = 0, 0
    s.notes.update(wrapped=0, partial_tiles=0, weights=set(), data=set())
    while v < n:
        x = _feature_maps(rng, df, (lay.maps, lay.h, lay.w), saturate=0.3 if rnd % 2 else 0.0)
        wt = np.zeros((len(table), lay.maps, K, K), np.int64)  # unconnected maps: weight 0, as in the spec
        for o, conn in enumerate(table):
            k = len(conn) * K * K
            if o % 2 == 0:
                vals = extremes_and_random(rng, wf, k)
                rng.shuffle(vals)
            else:
                vals = np.where(rng.random(k) < 0.85, wf.code_min, rng.integers(wf.code_min, wf.code_max, k, endpoint=True))
            wt[o, list(conn)] = vals.reshape(len(conn), K, K)
        exact = ops.conv2d(x[None], wt, np.zeros(len(table), np.int64), _x_max_abs(df))[0].numpy().astype(np.int64)
        wrapped, _ = af.overflow_codes(exact)
        _write_maps(s, lay, dut, x, rng, lambda: {"valid": 0})
        taps = [[(c, ky, kx, int(wt[o, c, ky, kx])) for c in conn for ky in range(K) for kx in range(K)]
                for o, conn in enumerate(table)]
        v = _run_tiles(s, dut, rng, wf, lay, out_hw, taps, exact, wrapped, v, n)
        s.notes["weights"] |= set(np.unique(wt).tolist())
        s.notes["data"] |= set(np.unique(x).tolist())
        rnd += 1
    return s


register(LayerTop(
    "conv_tile", "TileWindow -> MACLanes (2x4 lanes): 5x5 conv over 2 maps of 10x10 with a connection table, "
    "partial tiles, 18-bit wrapping accumulators, latency 4",
    _build_window_mac, _conv_tile_vectors,
    {"lanes": 8, "shape": (2, 10, 10), "kernel": 5, "stride": 1, "base": 5, "table": ((0, 1), (1,)), "bits": 8,
     "weight_width": 8, "acc_width": 18}, n=48))


def _subsample_vectors(dut, p, rng, n):
    """Rounds of: a fresh input tensor (every other round with a saturated block) written into a
    stride-2 layout, per-map coefficients (uniform, one of them code_min or code_max in turn), then
    for each output map (input map ``source[j]``) and tile the four taps of the 2x2 window, each
    carrying the map's coefficient (as ``compile_spec`` compiles subsampling). One vector = one
    (map, tile) accumulation.
    Golden: ``quantize.ops.subsample`` (bias 0) wrapped by the acc format, lanes inside the output."""
    from quantize import ops

    s = Schedule(dut)
    lay, source = _layout(p), p["source"]
    df, wf, af = _formats(p)
    O = len(source)
    out_hw = (lay.h // 2, lay.w // 2)
    v, rnd = 0, 0
    s.notes.update(wrapped=0, partial_tiles=0, weights=set(), data=set())
    while v < n:
        x = _feature_maps(rng, df, (lay.maps, lay.h, lay.w), saturate=0.3 if rnd % 2 else 0.0)
        coef = rng.integers(wf.code_min, wf.code_max, O, endpoint=True)
        coef[rnd % O] = (wf.code_min, wf.code_max)[(rnd // O) % 2]
        exact = ops.subsample(x[None], coef, np.zeros(O, np.int64), _x_max_abs(df), source)[0].numpy().astype(np.int64)
        wrapped, _ = af.overflow_codes(exact)
        _write_maps(s, lay, dut, x, rng, lambda: {"valid": 0})
        taps = [[(source[j], u, w_, int(coef[j])) for u in range(2) for w_ in range(2)] for j in range(O)]
        v = _run_tiles(s, dut, rng, wf, lay, out_hw, taps, exact, wrapped, v, n)
        s.notes["weights"] |= set(coef.tolist())
        s.notes["data"] |= set(np.unique(x).tolist())
        rnd += 1
    return s


register(LayerTop(
    "subsample", "TileWindow (stride-2 layout) -> MACLanes (2x4 lanes): 2x2 subsampling of 2 maps of 12x12 "
    "(source maps swapped), partial tiles, 16-bit wrapping accumulators, latency 4",
    _build_window_mac, _subsample_vectors,
    {"lanes": 8, "shape": (2, 12, 12), "stride": 2, "base": 0, "source": (1, 0), "bits": 8, "weight_width": 8,
     "acc_width": 16}, n=36))


def _dense_vectors(dut, p, rng, n):
    """Rounds of: a fresh input tensor (``shape``, flattened in the emulator's order; every other
    round three quarters of it at code_min) written through the write port, a fresh ``outputs`` x
    inputs weight matrix (extremes and uniform codes; every third row all code_min, whose sums wrap
    on the saturated rounds), padded with zero rows to whole groups as ``compile_spec`` does; then
    for each group of ``lanes`` neurons the inputs one per cycle, read in dense mode (every lane
    gets the same input) with one weight per lane. One vector = one group.
    Golden: ``quantize.ops.dense`` (bias 0) wrapped by the acc format, the lanes holding a neuron."""
    from quantize import ops

    s = Schedule(dut)
    lay, O = _layout(p), p["outputs"]
    df, wf, af = _formats(p)
    P = dut.P
    I = lay.maps * lay.h * lay.w
    groups = -(-O // P)
    v, rnd = 0, 0
    s.notes.update(wrapped=0, partial_groups=0, weights=set(), data=set())
    while v < n:
        x = _feature_maps(rng, df, (lay.maps, lay.h, lay.w))
        flat = x.reshape(-1)  # a view: the saturation below lands in x too
        if rnd % 2:
            flat[rng.permutation(I)[: 3 * I // 4]] = df.code_min
        w = np.zeros((groups * P, I), np.int64)
        for o in range(O):
            w[o] = wf.code_min if o % 3 == 2 else rng.permutation(extremes_and_random(rng, wf, I))
        exact = ops.dense(flat[None], w[:O], np.zeros(O, np.int64), _x_max_abs(df))[0].numpy().astype(np.int64)
        wrapped, _ = af.overflow_codes(exact)
        _write_maps(s, lay, dut, x, rng, lambda: {"valid": 0})
        for g in range(groups):
            if v == n:
                break
            _idle(s, dut, rng, wf)
            for i in range(I):
                bank, word = lay.locate(*(int(k) for k in np.unravel_index(i, x.shape)))
                c0 = s.cycle(_garbage_read(rng, dut) | {"base": [word] * 4, "row_carry": 0, "col_carry": [0, 0],
                                                        "dense": 1, "bank": bank, "valid": 1,
                                                        "first": int(i == 0), "w": w[g * P:(g + 1) * P, i]})
            care = [int(g * P + q < O) for q in range(P)]
            gold = [wrapped[g * P + q] if k else 0 for q, k in enumerate(care)]
            s.expect(c0 + WINDOW_MAC_LATENCY, v, {"acc": gold}, care)
            s.notes["wrapped"] += sum(int(exact[g * P + q] != wrapped[g * P + q]) for q, k in enumerate(care) if k)
            s.notes["partial_groups"] += not all(care)
            v += 1
        s.notes["weights"] |= set(np.unique(w[:O]).tolist())
        s.notes["data"] |= set(np.unique(x).tolist())
        rnd += 1
    return s


register(LayerTop(
    "dense", "TileWindow broadcast reads -> MACLanes (2x2 lanes): 14 neurons over 20 inputs (5 maps of 2x2) in "
    "groups of 4, one weight per lane, 18-bit wrapping accumulators, latency 4",
    _build_window_mac, _dense_vectors,
    {"lanes": 4, "shape": (5, 2, 2), "base": 2, "outputs": 14, "bits": 8, "weight_width": 8, "acc_width": 18}, n=32))
