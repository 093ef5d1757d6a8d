"""One layer's words in the engine's memories (:func:`hw.program.compile_spec` calls these):

- a conv-mode layer's **taps**: per output map (a shared-weight conv or pool) or per tile (a locally
  connected layer), one word per (input map, ky, kx), weight(s) and the input offsets of
  :func:`hw.wrap.tap_fields`; taps of weight 0 are left out;
- a dense-mode layer's **weight words**: ``lanes`` output neurons' weights for one input;
- the **biases** in accumulator lsbs, one per map or one per lane.
"""
from __future__ import annotations

import math

import numpy as np

from quantize.spec import LayerSpec

from .layout import Layout, cdiv
from .program import LayerProgram
from .wrap import tap_fields, wrapped_groups


def conv_layer(l: LayerSpec, lin: Layout, R: int, C: int, tap_words: list, bias_words: list, kw: dict) -> LayerProgram:
    """A conv-mode layer: its taps (one list per output map, or per tile of a locally connected
    layer) appended to ``tap_words``, its biases to ``bias_words``; ``kw`` the fields the caller
    fills (name, layouts, bases)."""
    K, P = l.kernel, R * C
    oh, ow = l.out_h, l.out_w
    ty_n, tx_n = cdiv(oh, R), cdiv(ow, C)

    def tap(w, c, ky, kx):
        return (w, *tap_fields(lin, c, ky, kx))

    def lane_positions(ty, tx):
        return [(ty * R + q // C, tx * C + q % C) for q in range(P)]

    taps, zero_taps = [], 0
    window = [(u, v) for u in range(K) for v in range(K)]
    for o in range(l.out_maps):
        if l.kind == "local":
            n = 0
            for ty in range(ty_n):
                for tx in range(tx_n):
                    pos = lane_positions(ty, tx)
                    for c in range(l.in_maps):
                        for u, v in window:
                            ws = [int(l.weight[o, y, x, c, u, v]) if y < oh and x < ow else 0 for y, x in pos]
                            tap_words.append(tap(ws, c, u, v))
                            n += 1
            taps.append(n // (ty_n * tx_n))
            continue
        if l.kind == "conv":
            words = [tap(int(l.weight[o, c, u, v]), c, u, v) for c in l.connections()[o] for u, v in window]
            # a zero weight adds nothing to the sum: its tap is not issued (the map keeps one tap)
            nonzero = [t for t in words if t[0] != 0] or words[:1]
            zero_taps += len(words) - len(nonzero)
            words = nonzero
        else:  # pools read one input map; max-pool taps have weight 1
            coef = 1 if l.kind == "maxpool" else int(l.weight[o])
            words = [tap(coef, l.sources()[o], u, v) for u, v in window]
        tap_words += words
        taps.append(len(words))
    if l.untied:  # one bias per lane of every tile, in issue order (0 for lanes outside the map)
        b = l.bias_acc()
        for o in range(l.out_maps):
            for ty in range(ty_n):
                for tx in range(tx_n):
                    bias_words += [int(b[o, y, x]) if y < oh and x < ow else 0 for y, x in lane_positions(ty, tx)]
    else:
        bias_words += [int(v) for v in l.bias_acc()]
    if lin.pitch:  # wrapped groups: strips of R rows, W columns each (tiles: strips, W)
        return LayerProgram(mode="conv", maps=l.out_maps, groups=wrapped_groups(oh, ow, R, C), tiles=(ty_n, ow),
                            taps=taps, n_out=oh * ow, zero_taps=zero_taps, wrap=ow, wrap_skip=(lin.pitch - ow) // C, **kw)
    return LayerProgram(mode="conv", maps=l.out_maps, groups=ty_n * tx_n, tiles=(ty_n, tx_n), taps=taps,
                        n_out=oh * ow, op="max" if l.kind == "maxpool" else "sum", shared=l.kind != "local",
                        bias_per_lane=l.untied, zero_taps=zero_taps, **kw)


def dense_layer(l: LayerSpec, lin: Layout, P: int, dense_words: list, bias_words: list, kw: dict) -> LayerProgram:
    """A dense-mode layer: one word of ``P`` weights per input per group of ``P`` output neurons
    appended to ``dense_words`` (zeros past the last neuron), one bias per lane to ``bias_words``."""
    w = l.weight.reshape(l.out_maps, -1)  # conv/local with a 1x1 output: (c, u, v) is the input's order
    n_in = w.shape[1]
    if n_in != lin.maps * lin.h * lin.w:
        raise ValueError(f"layer {l.name}: {n_in} inputs but its input holds {lin.maps * lin.h * lin.w}")
    groups = math.ceil(l.out_maps / P)
    wp = np.zeros((groups * P, n_in), np.int64)
    wp[: l.out_maps] = w
    for g in range(groups):
        dense_words += wp[g * P:(g + 1) * P].T.tolist()
    b = l.bias_acc().reshape(-1)
    bias_words += [int(v) for v in b] + [0] * (groups * P - len(b))
    return LayerProgram(mode="dense", maps=1, groups=groups, tiles=(0, 0), taps=[n_in], n_out=l.out_maps,
                        bias_per_lane=True, **kw)
