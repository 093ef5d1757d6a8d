"""Schema 2: save/load round trip of specs over every layer kind, schema-1 specs loaded converted,
and each validation rule of quantize/spec_check.py as one line naming the layer and field."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from model.util import UserError
from quantize import spec as qspec
from quantize.emulator import Emulator
from quantize.spec_check import validate
from quantize_nets import NET_A, NET_B, NET_D, build, images_for


@pytest.fixture(scope="module")
def specs():
    return {name: build(np.random.default_rng(i), *net) for i, (name, net) in enumerate(
        (("A", NET_A), ("B", NET_B), ("D", NET_D)))}


def same(a: qspec.QuantSpec, b: qspec.QuantSpec) -> None:
    assert a.to_json() == b.to_json()
    aa, ba = a.arrays(), b.arrays()
    assert aa.keys() == ba.keys() and all(np.array_equal(aa[k], ba[k]) for k in aa)
    assert a.input_shape == b.input_shape and a.schema == b.schema == qspec.SCHEMA
    for la, lb in zip(a.layers, b.layers):
        assert (la.kind, la.stride, la.pad, la.pad_code, la.table, la.source, la.activation, la.untied) == \
               (lb.kind, lb.stride, lb.pad, lb.pad_code, lb.table, lb.source, lb.activation, lb.untied)


@pytest.mark.parametrize("name", ["A", "B", "D"])
def test_v2_round_trip(specs, name, tmp_path):
    spec = specs[name]
    out = spec.save(tmp_path / name)
    loaded = qspec.load(out)
    same(spec, loaded)
    doc = json.loads((out / "spec.json").read_text())
    assert doc["schema"] == 2 and [doc["input"][k] for k in ("channels", "height", "width")] == list(spec.input_shape)
    with np.load(out / "weights.npz") as z:
        assert z["input.lut"].shape == (spec.input_shape[0], 256)
        for l in spec.layers:
            assert (f"{l.name}.weight" in z.files) == (l.kind != "maxpool")
            if l.kind == "local":
                assert z[f"{l.name}.weight"].shape == (l.out_maps, l.out_h, l.out_w, l.in_maps, l.kernel, l.kernel)
    imgs = images_for(np.random.default_rng(0), spec.input_shape, 3)
    assert np.array_equal(Emulator(loaded).run(imgs).scores, Emulator(spec).run(imgs).scores)


def test_v2_json_fields(specs):
    doc = specs["A"].to_json()
    l0, l1, l2 = doc["layers"][:3]
    assert l0["untied_bias"] is True and l0["pad"] == 1 and l0["stride"] == 2 and "pad_code" in l0
    assert l0["table"] == [[0], [1, 2], [0, 1, 2], [2]] and l0["activation"] == "relu"
    assert l1["kind"] == "maxpool" and l1["source"] == [0, 1, 1, 3, 2] and l1["activation"] is None
    assert (l2["in_h"], l2["in_w"]) == (3, 2) and l2["activation"] == "tanh"


def test_v1_spec_loads_converted(q8_spec, tmp_path):
    """A schema-1 directory (32x32 input padded by 2 with grey level 0, in_size, 1-D input.lut)."""
    doc = q8_spec.to_json()
    doc["schema"] = 1
    doc["input"] = {"format": doc["input"]["format"], "size": 32, "pad": 2}
    for i, l in enumerate(doc["layers"]):
        l["in_size"] = l.pop("in_h") + (4 if i == 0 else 0)
        for k in ("in_w", "stride", "pad", "pad_code"):
            l.pop(k, None)
    arrays = q8_spec.arrays()
    arrays["input.lut"] = arrays["input.lut"][0]
    d = tmp_path / "v1"
    d.mkdir()
    (d / "spec.json").write_text(json.dumps(doc))
    np.savez(d / "weights.npz", **arrays)
    loaded = qspec.load(d)
    assert loaded.schema == 1 and loaded.input_shape == (1, 28, 28) and loaded.input_lut.shape == (1, 256)
    c1 = loaded.layers[0]
    assert (c1.in_h, c1.pad, c1.pad_code) == (28, 2, int(q8_spec.input_lut[0, 0]))
    assert loaded.layer("S2").stride == 2 and loaded.layer("C5").out_shape == (120, 1, 1)
    assert loaded.to_json()["layers"] == q8_spec.to_json()["layers"]


# --------------------------------------------------------------------------- validation rules


def _edit(name, fn):
    def edit(specs):
        s = copy.deepcopy(specs[name])
        fn(s)
        return s

    return edit


def _layer(i, **kw):
    def fn(s):
        for k, v in kw.items():
            setattr(s.layers[i], k, v(getattr(s.layers[i], k)) if callable(v) else v)

    return fn


def _classes(n):
    def fn(s):
        l = s.layers[-1]
        l.out_maps, l.weight, l.bias = n, np.resize(l.weight, (n, *l.weight.shape[1:])), np.resize(l.bias, (n,))

    return fn


CASES = {
    "table names a missing map": (_edit("A", _layer(0, table=[[0], [1, 5], [0, 1, 2], [2]])),
                                  "layer L0.table: expected 4 non-empty lists of input maps in 0..2"),
    "empty table entry": (_edit("A", _layer(0, table=[[0], [], [0, 1, 2], [2]])), "layer L0.table: expected 4"),
    "local weight shape": (_edit("A", _layer(2, weight=lambda w: w[:, :-1])),
                           "layer L2.weight: shape (3, 3, 3, 5, 2, 2), expected (3, 4, 3, 5, 2, 2) "
                           "(one weight set per output position)"),
    "conv kernel": (_edit("A", _layer(0, kernel=8)), "layer L0.kernel: 8, expected 1..7"),
    "conv stride": (_edit("A", _layer(0, stride=3)), "layer L0.stride: 3, expected 1 or 2"),
    "pad": (_edit("A", _layer(0, pad=9)), "layer L0.pad: 9, expected 0..8"),
    "pad code": (_edit("A", _layer(0, pad_code=999)), "layer L0.pad_code: code 999 does not fit"),
    "pool kernel": (_edit("A", _layer(1, kernel=4, stride=4)), "layer L1.kernel: maxpool is k x k for k in (2, 3), got 4"),
    "pool stride": (_edit("A", _layer(1, stride=1)), "layer L1.stride: maxpool has stride = kernel = 2, got 1"),
    "pool pad": (_edit("A", _layer(1, pad=1)), "layer L1.pad: maxpool takes no padding, got 1"),
    "pool source range": (_edit("A", _layer(1, source=[0, 1, 1, 3, 4])),
                          "layer L1.source: expected 5 input map numbers in 0..3"),
    "pool source needed": (_edit("A", _layer(1, source=None, out_maps=3)), "layer L1.source: needed when in_maps != out_maps"),
    "source on a conv": (_edit("A", _layer(0, source=[0, 0, 0, 0])), "layer L0.source: only a pooling layer"),
    "table on a local": (_edit("A", _layer(2, table=[[0]] * 3)), "layer L2.table: only a conv layer has a connection table"),
    "dense stride": (_edit("A", _layer(4, stride=2)), "layer L4: a dense layer has no stride or padding"),
    "maxpool activation": (_edit("A", _layer(1, activation="relu")), "layer L1: a maxpool layer passes its input codes on"),
    "relu with a table": (_edit("A", _layer(0, lut=lambda _: np.zeros(128, np.int64))),
                          "layer L0: activation relu takes no lookup table"),
    "untied bias shape": (_edit("A", _layer(0, bias=lambda b: b[:, :, :-1])),
                          "layer L0.bias: shape (4, 6, 4), expected (4,) or (4, 6, 5)"),
    "avgpool bias": (_edit("B", _layer(1, bias=lambda _: np.zeros(5, np.int64))), "layer L1.bias: a avgpool layer has no bias"),
    "weight outside table": (_edit("A", _layer(0, weight=lambda w: np.where(np.arange(3)[None, :, None, None] == 2, 1, w))),
                             "layer L0.weight: non-zero weights outside the connection table"),
    "size mismatch": (_edit("A", _layer(2, in_h=4)), "layer L2: input 5@4x2 does not match the previous output 5@3x2"),
    "kernel larger than the input": (_edit("D", _layer(1, kernel=7, weight=lambda w: np.zeros((64, 2, 7, 7), np.int64))),
                                     "layer L1.kernel: 7 (pad 0) larger than the input 6x6"),
    "last layer not 1x1": (_edit("D", _layer(1, kernel=5, weight=lambda w: w[:, :, :5, :5])),
                           "layer L1: the last layer gives the scores"),
    "too many classes": (_edit("D", _classes(65)), "layer L1.out_maps: 65 classes, expected 2..64"),
    "one class": (_edit("B", _classes(1)), "layer L3.out_maps: 1 classes, expected 2..64"),
    "input channels": (_edit("A", lambda s: setattr(s, "input_shape", (5, 11, 9))), "input.channels: 5, expected 1..4"),
    "input height": (_edit("A", lambda s: setattr(s, "input_shape", (3, 65, 9))), "input.height: 65, expected 1..64"),
    "input lut per channel": (_edit("A", lambda s: setattr(s, "input_lut", s.input_lut[:2])),
                              "input.lut: shape (2, 256), expected (3, 256): one table per channel"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_validation_errors(specs, case):
    make, message = CASES[case]
    bad = make(specs)
    with pytest.raises(UserError) as e:
        validate(bad)
    text = str(e.value)
    assert "\n" not in text and text.startswith(message), (text, message)


def test_emulator_rejects_images_of_the_wrong_shape(specs):
    emu = Emulator(specs["D"])  # 1 x 9 x 9
    for bad in (np.zeros((2, 9, 8), np.uint8), np.zeros((2, 32, 32), np.uint8), np.zeros((1, 2, 9, 9), np.uint8)):
        with pytest.raises(UserError) as e:
            emu.run(bad)
        assert str(e.value) == f"images: shape {bad.shape}, the spec takes 1 x 9 x 9"
    assert emu.run(np.zeros((2, 28, 28), np.uint8)).scores.shape == (2, 64)  # digits resampled to 9x9
