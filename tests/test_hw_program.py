# amaranth: UnusedElaboratable=no
"""hw.program.compile_spec (memory images, layer modes, feature-memory layout) and hw.perf.schedule."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from hw import perf
from hw.accelerator import Accelerator
from hw.program import MAX_LANES, compile_spec

SPECS = ["q8_spec", "anna_spec"]


@pytest.fixture(params=SPECS)
def spec(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("lanes", [1, 3, 8, 32])
def test_program_layout(spec, lanes):
    prog = compile_spec(spec, lanes)
    assert prog.lanes == lanes and [lp.name for lp in prog.layers] == [l.name for l in spec.layers]
    tap = 0
    for lp in prog.layers:
        l = lp.spec
        if lp.mode == "conv":
            assert l.kind == "subsample" or (l.kind == "conv" and l.out_size > 1)
            assert lp.tap_base == tap and lp.maps == l.out_maps and lp.n_out == l.out_size**2
            assert lp.groups == math.ceil(l.out_size**2 / lanes)
            for o in range(l.out_maps):
                if l.kind == "conv":  # |table[o]| x K x K taps, one per weight, offset into the input maps
                    conn = l.connections()[o]
                    assert lp.taps[o] == len(conn) * l.kernel**2
                    want = [(int(l.weight[o, c, u, v]), c * l.in_size**2 + u * l.in_size + v)
                            for c in conn for u in range(l.kernel) for v in range(l.kernel)]
                else:  # subsampling: the coefficient four times over the 2x2 window of its source map
                    c = l.source[o] if l.source is not None else o
                    assert lp.taps[o] == 4
                    want = [(int(l.weight[o]), c * l.in_size**2 + u * l.in_size + v) for u in range(2) for v in range(2)]
                assert prog.tap_words[tap:tap + lp.taps[o]] == want
                tap += lp.taps[o]
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
    assert tap == len(prog.tap_words)
    modes = {lp.name: lp.mode for lp in prog.layers}
    if spec.network == "lenet5":  # C5 (1x1 output) and F6 in dense mode, the RBF scores too
        assert modes == {"C1": "conv", "S2": "conv", "C3": "conv", "S4": "conv",
                         "C5": "dense", "F6": "dense", "OUT": "dense"}
        c3 = spec.layer("C3")
        assert [lp.taps for lp in prog.layers if lp.name == "C3"][0] == [len(t) * 25 for t in c3.table]
        assert sum(len(t) for t in c3.table) == 60  # LeNet-5's table: 6x3 + 9x4 + 1x6 inputs
    assert prog.scores == 10 and prog.input_size == 32 and prog.input_pad == 2
    assert prog.input_lut == spec.input_lut.tolist()
    assert len(prog.lut_rom) == sum(len(l.lut) for l in spec.layers if l.lut is not None)


@pytest.mark.parametrize("lanes", [1, 8])
def test_program_memories(spec, lanes):
    """Ping-pong feature buffers: the input image in A, each layer's output in the other buffer,
    A and B sized by the largest tensor they hold, the biases at the accumulator's lsb."""
    prog = compile_spec(spec, lanes)
    sizes = [spec.input_size**2] + [l.out_maps * l.out_size**2 for l in spec.layers]
    size_a = max(sizes[0:-1:2])
    size_b = max(sizes[1:-1:2])
    assert prog.info == {"fm_a": size_a, "fm_b": size_b} and prog.fm_words == size_a + size_b
    if spec.network == "lenet5":  # A: input 32x32, S2 6x14x14, S4 16x5x5, F6 84; B: C1 6x28x28, C3, C5
        assert (size_a, size_b) == (6 * 14 * 14, 6 * 28 * 28)
    for i, lp in enumerate(prog.layers):
        in_words = sizes[i]
        assert lp.in_base == (0 if i % 2 == 0 else size_a)
        assert lp.in_base + in_words <= prog.fm_words
        if i < len(prog.layers) - 1:
            assert lp.out_base == (size_a if i % 2 == 0 else 0)
            out = range(lp.out_base, lp.out_base + sizes[i + 1])
            assert out.stop <= prog.fm_words
            assert not set(out) & set(range(lp.in_base, lp.in_base + in_words))  # never overwrite the input
        else:
            assert lp.out_base is None and not lp.has_activation
    # bias memory: one word per conv map / dense group, at the accumulator's lsb
    for lp in prog.layers:
        b = lp.spec.bias_acc()
        n_words = lp.maps if lp.mode == "conv" else lp.groups
        words = prog.bias_words[lp.bias_base:lp.bias_base + n_words]
        if lp.mode == "conv":
            assert words == [[int(b[o])] * lanes for o in range(lp.maps)]
        else:
            flat = [v for word in words for v in word]
            assert flat[: lp.spec.out_maps] == b.tolist() and not any(flat[lp.spec.out_maps:])
    assert prog.acc_width == max(l.formats["acc"].width for l in spec.layers)
    assert prog.weight_width == max(l.formats["weight"].width for l in spec.layers)
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
        # never better than the ideal, and every MAC issued once per lane-group
        assert s["cycles_per_image"] >= s["macs_per_image"] / n
        assert sum(l["macs"] for l in s["layers"]) == s["macs_per_image"]
        assert s["mac_cycles"] * n >= s["macs_per_image"]
    assert rows[8]["utilisation_ratio"] <= 1.25
    assert rows[1]["utilisation_ratio"] <= 1.05
    assert rows[1]["cycles_per_image"] > rows[8]["cycles_per_image"] > rows[32]["cycles_per_image"]


def test_schedule_lanes1_issue_is_taps(q8_spec):
    """With one lane every tap is one issue cycle: the spec's MACs, except that a subsampling
    output (one multiply in spec.macs()) is issued as four taps of its 2x2 window."""
    s = perf.schedule(q8_spec, 1)
    sub_outputs = sum(l.out_maps * l.out_size**2 for l in q8_spec.layers if l.kind == "subsample")
    assert s["mac_cycles"] == s["macs_per_image"] + 3 * sub_outputs
    assert all(l["wait"] == 0 for l in s["layers"])


# -- what the generator refuses ----------------------------------------------------------------------

@pytest.mark.parametrize("lanes", [0, -1, MAX_LANES + 1, 300, 8.0, True, "8"])
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


def test_unknown_layer_kind(q8_spec):
    spec = copy.deepcopy(q8_spec)
    spec.layer("S2").kind = "pool"
    with pytest.raises(ValueError, match="pool"):
        compile_spec(spec, 8)
    with pytest.raises(ValueError, match="pool"):
        perf.cycles_per_image(spec, 8)


def test_last_layer_needs_scores(q8_spec):
    spec = copy.deepcopy(q8_spec)
    spec.layers = spec.layers[:-1]  # F6 (with an activation) last
    with pytest.raises(ValueError, match="last layer"):
        compile_spec(spec, 8)


def test_fixture_untouched(q8_spec):
    """The deep copies above left the shared fixture alone."""
    assert [l.kind for l in q8_spec.layers] == ["conv", "subsample", "conv", "subsample", "conv", "dense", "rbf"]
    assert all(f.width <= 17 for l in q8_spec.layers for f in l.formats.values())
    compile_spec(q8_spec, 8)
