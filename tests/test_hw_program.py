# amaranth: UnusedElaboratable=no
"""hw.program.compile_spec (memory images, layer modes, feature-memory layout) and hw.perf.schedule."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from hw import perf
from hw.accelerator import Accelerator
from hw.program import MAX_LANES, compile_spec, tile_shape

SPECS = ["q8_spec", "anna_spec"]
RANDOM_SEEDS = range(12)


@pytest.fixture(params=SPECS)
def spec(request):
    return request.getfixturevalue(request.param)


def _groups(lp, R, C):
    """(group, lane positions) of a conv-mode layer's map, in issue order: tiles across then down,
    or wrapped (``lp.wrap`` = W), group g on strip-linear columns g*C .. g*C + C - 1 of the strips
    of R rows laid end to end."""
    l, P = lp.spec, R * C
    if not lp.wrap:
        ty_n, tx_n = math.ceil(l.out_h / R), math.ceil(l.out_w / C)
        for ty in range(ty_n):
            for tx in range(tx_n):
                yield (ty, tx), [(ty * R + q // C, tx * C + q % C) for q in range(P)]
        return
    W = lp.wrap
    for g in range(lp.groups):
        u = [g * C + q % C for q in range(P)]
        yield g, [((u[q] // W) * R + q // C, u[q] % W) for q in range(P)]


def _conv_taps(lp, R, C):
    """(lane weights, c, ky, kx) of every tap of every group of every output map of a conv-mode
    layer, in issue order: map by map, group by group (shared-weight layers replay their map's taps)."""
    l, P = lp.spec, R * C
    K = l.kernel
    window = [(u, v) for u in range(K) for v in range(K)]
    for o in range(l.out_maps):
        for group, pos in _groups(lp, R, C):
            inside = [y < l.out_h and x < l.out_w for y, x in pos]
            if l.kind == "local":
                taps = [([int(l.weight[o, y, x, c, u, v]) if ok else 0 for (y, x), ok in zip(pos, inside)], c, u, v)
                        for c in range(l.in_maps) for u, v in window]
            elif l.kind == "conv":  # |table[o]| x K x K taps, one per weight, but none of weight 0
                taps = [([int(l.weight[o, c, u, v])] * P, c, u, v) for c in l.connections()[o] for u, v in window]
                taps = [t for t in taps if t[0][0] != 0] or taps[:1]
            else:  # a pool: its coefficient (max-pool: 1) over the k x k window of its source map
                coef = 1 if l.kind == "maxpool" else int(l.weight[o])
                taps = [([coef] * P, l.sources()[o], u, v) for u, v in window]
            yield o, group, pos, inside, taps


def _bank_words(lp, group, R, C, off0, my, mx0, off1, mx1) -> dict:
    """hw/window.py's bank addresses for a tap word over a group, as the sequencer presents them:
    bank (r, c) reads its group's first word plus off1 if its row carries (r < my), else off0;
    plus one column step if its column carries (c < mx, mx = mx1 or mx0 by the row), plus
    (wrapped) the strip's skipped words if the lane reading it runs past the strip's end."""
    lin, S = lp.in_layout, lp.in_layout.s
    if lp.wrap:
        W, m = lp.wrap, lp.wrap_skip
        s0, x0 = divmod(group * C, W)
        first, col = lin.base + group + s0 * m, 1
    else:
        (ty, tx), W, m = group, None, 0
        first, col = lin.base + ty * S * lin.lw + tx * S, S
    words = {}
    for r in range(R):
        for c in range(C):
            rc = r < my
            mx = mx1 if rc else mx0
            wraps = W is not None and (c - mx) % C >= W - x0
            words[r * C + c] = first + (off1 if rc else off0) + (col if c < mx else 0) + (m if wraps else 0)
    return words


@pytest.fixture(params=["q8_spec", "anna_spec"] + [f"random{s}" for s in RANDOM_SEEDS])
def any_spec(request):
    if request.param.startswith("random"):
        from quantize.randspec import random_spec

        return random_spec(int(request.param[6:]))
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("lanes", [1, 2, 4, 8, 16, 32])
def test_tile_reads_are_conflict_free_and_exact(any_spec, lanes):
    """The address arithmetic of hw/window.py, replayed in Python over every group and tap of every
    conv-mode layer (strides, padding, local layers, pools, wrapped groups): each lane of a group
    gets exactly the padded input pixel its output needs, with its own weight, from a bank no
    other lane reads in that cycle."""
    from hw.wrap import wrapped_groups

    spec = any_spec
    prog = compile_spec(spec, lanes)
    R, C = prog.R, prog.C
    assert (R, C) == tile_shape(lanes) and R * C == lanes and R <= C
    for lp in prog.layers:
        if lp.mode != "conv":
            continue
        l, lin = lp.spec, lp.in_layout
        S = lin.s
        assert S == l.stride and lin.pad == l.pad
        if lp.wrap:
            assert (lp.wrap, S, l.kind) == (l.out_w, 1, "conv") and lin.pitch % C == l.out_w % C
            assert lp.groups == wrapped_groups(l.out_h, l.out_w, R, C) < math.ceil(l.out_h / R) * math.ceil(l.out_w / C)
        else:
            assert lp.groups == math.ceil(l.out_h / R) * math.ceil(l.out_w / C) and lin.pitch == 0
        tap = lp.tap_base
        for o, group, pos, inside, taps in _conv_taps(lp, R, C):
            if group in (0, (0, 0)) or not lp.shared:
                start = tap
            else:
                tap = start  # the next group replays the map's taps
            words = prog.tap_words[tap:tap + len(taps)]
            assert lp.taps[o] == len(taps)
            tap += len(taps)
            for (w, off0, my, mx0, off1, mx1), (ws, c, u, v) in zip(words, taps):
                lane_w = w if isinstance(w, list) else [w] * lanes
                addr = _bank_words(lp, group, R, C, off0, my, mx0, off1, mx1)
                used = set()
                for q, ((y, x), ok) in enumerate(zip(pos, inside)):
                    dy, dx = divmod(q, C)
                    mx = mx1 if dy + my >= R else mx0
                    b = ((dy + my) % R) * C + (dx + mx) % C
                    assert b not in used
                    used.add(b)
                    if ok:
                        assert lin.locate(c, S * y + u, S * x + v) == (b, addr[b])
                        assert lane_w[q] == ws[q]


def test_wrapped_groups_in_lenet5(q8_spec):
    """C3's 10 x 10 maps run wrapped at 8 lanes (2 x 4: 13 groups for 15 tiles) and 16 (2 x 8: 7 for
    10), C1's 28 x 28 at 16 only (28 = 0 mod 4); the pools and the dense layers never."""
    for lanes, want in ((8, {"C3": 13}), (16, {"C1": 49, "C3": 7})):
        for fuse in (False, True):
            prog = compile_spec(q8_spec, lanes, fuse_pools=fuse)
            assert {lp.name: lp.groups for lp in prog.layers if lp.wrap} == want
            assert prog.wrapped


@pytest.mark.parametrize("lanes", [1, 8, 32])
def test_program_layout(spec, lanes):
    prog = compile_spec(spec, lanes)
    assert prog.lanes == lanes and [lp.name for lp in prog.layers] == [l.name for l in spec.layers]
    for lp in prog.layers:
        l = lp.spec
        if lp.mode == "conv":
            assert l.kind == "subsample" or (l.kind == "conv" and l.out_h > 1)
            assert lp.maps == l.out_maps and lp.n_out == l.out_h * l.out_w
        else:
            assert lp.mode == "dense" and lp.maps == 1 and lp.n_out == l.out_maps
            n_in = l.weight.reshape(l.out_maps, -1).shape[1]
            assert lp.taps == [n_in] and lp.groups == math.ceil(l.out_maps / lanes)
            w = l.weight.reshape(l.out_maps, -1)
            words = prog.dense_words[lp.tap_base:lp.tap_base + lp.groups * n_in]
            assert all(len(word) == lanes for word in words)
            for g in range(lp.groups):
                for i in range(n_in):
                    for q in range(lanes):
                        o = g * lanes + q
                        assert words[g * n_in + i][q] == (int(w[o, i]) if o < l.out_maps else 0)
    modes = {lp.name: lp.mode for lp in prog.layers}
    if spec.network == "lenet5":  # C5 (1x1 output) and F6 in dense mode, the RBF scores too
        assert modes == {"C1": "conv", "S2": "conv", "C3": "conv", "S4": "conv",
                         "C5": "dense", "F6": "dense", "OUT": "dense"}
        c3 = spec.layer("C3")
        # |table[o]| x 25 taps, less those of weight 0
        assert [lp.taps for lp in prog.layers if lp.name == "C3"][0] == [
            int(np.count_nonzero(c3.weight[o, list(t)])) or 1 for o, t in enumerate(c3.table)]
        assert sum(len(t) for t in c3.table) == 60  # LeNet-5's table: 6x3 + 9x4 + 1x6 inputs
    assert prog.classes == spec.classes and prog.output_beats == 1 + spec.classes
    assert prog.image_shape == spec.input_shape and prog.input_layout.pad == spec.layers[0].pad
    assert prog.input_lut == spec.input_lut.reshape(-1).tolist()
    # every distinct activation table once, each layer pointing at its own
    tables = {tuple(l.lut.tolist()) for l in spec.layers if l.lut is not None}
    assert len(prog.lut_rom) == sum(len(t) for t in tables)
    for lp in prog.layers:
        if lp.spec.lut is not None:
            assert prog.lut_rom[lp.lut_base:lp.lut_base + len(lp.spec.lut)] == lp.spec.lut.tolist()


@pytest.mark.parametrize("lanes", [1, 8, 32])
def test_program_memories(spec, lanes):
    """One banked copy of the features: ping-pong buffers A (input, S2, S4, F6) and B, every
    tensor placed one-to-one inside its buffer, the output never over the input; biases at the
    accumulator's lsb, one per conv map or dense neuron."""
    prog = compile_spec(spec, lanes)
    lays = [lp.in_layout for lp in prog.layers]
    assert all(lp.out_layout == lays[i + 1] for i, lp in enumerate(prog.layers[:-1]))
    assert prog.layers[-1].out_layout is None and not prog.layers[-1].has_activation
    size_a, size_b = prog.info["fm_a"], prog.info["fm_b"]
    assert prog.fm_words == size_a + size_b
    shapes = [spec.input_shape] + [l.out_shape for l in spec.layers[:-1]]
    for i, (lay, (maps, h, w)) in enumerate(zip(lays, shapes)):
        assert lay.base == (0 if i % 2 == 0 else size_a) and lay.lw & (lay.lw - 1) == 0
        assert (lay.h, lay.w) == (h + 2 * lay.pad, w + 2 * lay.pad)
        slots = {lay.locate(c, y, x) for c in range(maps) for y in range(lay.h) for x in range(lay.w)}
        assert len(slots) == maps * lay.h * lay.w  # one-to-one
        lo, hi = lay.base, lay.base + (size_a if i % 2 == 0 else size_b)
        assert all(0 <= b < lanes and lo <= a < hi for b, a in slots)
    if spec.network == "lenet5" and lanes == 8:  # 8 banks of 822 words (1 copy + padding: 6,576 vs 5,880)
        assert prog.fm_words == 822
    # a layer's output words never meet its input words
    for lp in prog.layers[:-1]:
        assert lp.in_layout.base != lp.out_layout.base
    # a bias per conv map; per dense neuron, in groups of lanes (zeros past the last neuron)
    n_bias = [l.out_maps if lp.mode == "conv" else lp.groups * lanes for lp, l in zip(prog.layers, spec.layers)]
    assert [lp.bias_base for lp in prog.layers] == list(np.cumsum([0] + n_bias[:-1]))
    for lp, l, n in zip(prog.layers, spec.layers, n_bias):
        b = [int(v) for v in l.bias_acc().reshape(-1)]
        assert prog.bias_words[lp.bias_base:lp.bias_base + n] == b + [0] * (n - len(b))
    assert prog.acc_width == max(l.formats["acc"].width for l in spec.layers)
    assert prog.weight_width == max(l.formats["weight"].width + (not l.formats["weight"].signed) for l in spec.layers)
    assert prog.score_width == spec.layers[-1].formats["acc"].width


def test_schedule_q8(q8_spec, record_property, capsys):
    """Cycles per image close to the ideal MACs / lanes at 8 lanes; figures for 1, 8, 32 lanes."""
    rows = {n: perf.schedule(q8_spec, n) for n in (1, 8, 32)}
    with capsys.disabled():
        print()
        for n, s in rows.items():
            print(f"  q8 lanes {n:2}: {s['cycles_per_image']:7,} cycles/image, {s['macs_per_image']:,} MACs, "
                  f"ratio {s['utilisation_ratio']:.4f}")
    for n, s in rows.items():
        record_property(f"cycles_per_image_lanes{n}", s["cycles_per_image"])
        record_property(f"utilisation_ratio_lanes{n}", s["utilisation_ratio"])
        assert s["lanes"] == n and s["macs_per_image"] == q8_spec.macs()
        assert s["utilisation_ratio"] == round(s["cycles_per_image"] / (s["macs_per_image"] / n), 4)
        assert s["cycles_per_image"] == perf.cycles_per_image(q8_spec, n)
        # never better than the ideal, and every MAC of a nonzero weight issued once per lane-group
        issued = s["macs_per_image"] - s["macs_skipped"]
        assert s["cycles_per_image"] >= issued / n
        assert sum(l["macs"] for l in s["layers"]) == s["macs_per_image"]
        assert s["mac_cycles"] * n >= issued
    assert rows[8]["utilisation_ratio"] <= 1.25
    assert rows[1]["utilisation_ratio"] <= 1.05
    assert rows[1]["cycles_per_image"] > rows[8]["cycles_per_image"] > rows[32]["cycles_per_image"]


def test_schedule_lanes1_issue_is_taps(q8_spec):
    """With one lane every tap is one issue cycle: the spec's MACs, except that a subsampling
    output (one multiply in spec.macs()) is issued as four taps of its 2x2 window."""
    s = perf.schedule(q8_spec, 1)
    sub_outputs = sum(l.out_maps * l.out_h * l.out_w for l in q8_spec.layers if l.kind == "subsample")
    assert s["mac_cycles"] == s["macs_per_image"] - s["macs_skipped"] + 3 * sub_outputs
    assert all(l["wait"] == 0 for l in s["layers"])


# -- what the generator refuses ----------------------------------------------------------------------

@pytest.mark.parametrize("lanes", [0, -1, 3, 12, MAX_LANES + 1, 300, 8.0, True, "8"])
def test_bad_lanes(q8_spec, lanes):
    with pytest.raises(ValueError, match="lanes"):
        compile_spec(q8_spec, lanes)
    with pytest.raises(ValueError, match="lanes"):
        perf.schedule(q8_spec, lanes)


@pytest.mark.parametrize("fmt", ["acc", "weight", "input"])
def test_too_wide_format(q8_spec, fmt):
    spec = copy.deepcopy(q8_spec)
    l = spec.layer("C3")
    l.formats[fmt] = l.formats[fmt].with_(width=50)
    with pytest.raises(ValueError, match="50 bits"):
        compile_spec(spec, 8)
    with pytest.raises(ValueError, match="50 bits"):
        Accelerator(spec, 8)


def test_spatial_after_dense(q8_spec):
    """A dense layer's output is a vector: a conv-mode layer after it is refused, naming the layers."""
    spec = copy.deepcopy(q8_spec)
    spec.layers.insert(6, copy.deepcopy(spec.layer("S4")))
    spec.layers[6].name = "S6"
    with pytest.raises(ValueError, match="layer S6: a spatial layer after the dense layer F6"):
        compile_spec(spec, 8)


def test_last_layer_needs_scores(q8_spec):
    spec = copy.deepcopy(q8_spec)
    spec.layers = spec.layers[:4]  # S4 (5x5 maps) last
    with pytest.raises(ValueError, match="last layer"):
        compile_spec(spec, 8)


def test_fixture_untouched(q8_spec):
    """The deep copies above left the shared fixture alone."""
    assert [l.kind for l in q8_spec.layers] == ["conv", "subsample", "conv", "subsample", "conv", "dense", "rbf"]
    assert all(f.width <= 17 for l in q8_spec.layers for f in l.formats.values())
    compile_spec(q8_spec, 8)


@pytest.mark.parametrize("lanes", [1, 8])
def test_weight_image(spec, lanes):
    """One weight memory: the dense words from address 0, then the conv taps, each word
    little-endian in whole bytes for the loader."""
    prog = compile_spec(spec, lanes)
    words = prog.weight_words()
    nd = len(prog.dense_words)
    assert len(words) == nd + len(prog.tap_words)
    assert max(words).bit_length() <= prog.weight_word_width
    ww = prog.weight_width
    for i in (0, nd - 1):
        assert [((words[i] >> (q * ww)) & ((1 << ww) - 1)) for q in range(lanes)] == \
            [v & ((1 << ww) - 1) for v in prog.dense_words[i]]
    w0, off, my, mx, _, _ = prog.tap_words[-1]
    sh = prog.tap_shift
    assert words[-1] & ((1 << ww) - 1) == w0 & ((1 << ww) - 1) and (words[-1] >> sh) & ((1 << prog.offset_width) - 1) == off
    data = prog.weight_bytes()
    nb = -(-prog.weight_word_width // 8)
    assert len(data) == nb * len(words)
    assert [int.from_bytes(data[i * nb:(i + 1) * nb], "little") for i in range(len(words))] == words


def test_perf_cli_batch(q8_spec_dir, run_module):
    """``python -m hw.perf --batch B``: the cycles of one image per batch, B x lanes MACs per cycle,
    B times the images/s; a batch of 0 is one error line."""
    r = run_module("hw.perf", "--spec", q8_spec_dir, "--lanes", 8, "--batch", 2, "--fmax", 27, "--fuse-pools", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["batch"] == 2 and s["macs_per_cycle"] == 16
    assert s["images_per_s"] == round(2 * 27e6 / s["cycles_per_image"], 1)
    bad = run_module("hw.perf", "--spec", q8_spec_dir, "--batch", 0)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == ["error: --batch must be 1..64, got 0"]
