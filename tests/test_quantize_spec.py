"""quantize.spec: save/load round trip, validation of every field, and the CLIs' error handling."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import quantize.__main__ as qmain
import quantize.evaluate as qevaluate
from model.util import UserError
from quantize import spec as qspec
from quantize.calibrate import load_config


def same_spec(a: qspec.QuantSpec, b: qspec.QuantSpec) -> None:
    assert a.to_json() == b.to_json()
    aa, ba = a.arrays(), b.arrays()
    assert aa.keys() == ba.keys()
    for k in aa:
        assert aa[k].dtype == ba[k].dtype == np.int64, k
        assert np.array_equal(aa[k], ba[k]), k
    assert a.provenance == b.provenance
    for la, lb in zip(a.layers, b.layers):
        assert la.formats == lb.formats and la.table == lb.table and la.source == lb.source


@pytest.fixture
def spec_copy(q8_spec_dir, tmp_path) -> Path:
    """A private copy of the saved q8 spec directory, to break."""
    d = tmp_path / "spec"
    shutil.copytree(q8_spec_dir, d)
    return d


def edit_json(d: Path, fn) -> None:
    doc = json.loads((d / "spec.json").read_text())
    fn(doc)
    (d / "spec.json").write_text(json.dumps(doc))


def edit_npz(d: Path, fn) -> None:
    with np.load(d / "weights.npz") as z:
        arrays = {k: z[k] for k in z.files}
    fn(arrays)
    np.savez(d / "weights.npz", **arrays)


def layer(doc: dict, name: str) -> dict:
    return next(l for l in doc["layers"] if l["name"] == name)


@pytest.fixture(autouse=True)
def _no_global_torch_state(monkeypatch):
    """The CLIs set torch's thread count and deterministic mode: keep that out of this process."""
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda *a, **k: None)


# --------------------------------------------------------------------------- round trip


def test_round_trip(q8_spec, q8_spec_dir):
    assert sorted(p.name for p in q8_spec_dir.iterdir()) == ["spec.json", "weights.npz"]
    # no temporary directory left beside it
    assert sorted(p.name for p in q8_spec_dir.parent.iterdir()) == [q8_spec_dir.name]
    loaded = qspec.load(q8_spec_dir)
    same_spec(q8_spec, loaded)
    assert loaded.provenance["preset"] == "q8" and loaded.provenance["config"]["weight_bits"] == 8
    assert [l.name for l in loaded.layers] == ["C1", "S2", "C3", "S4", "C5", "F6", "OUT"]
    # the path of spec.json itself is accepted too
    same_spec(q8_spec, qspec.load(q8_spec_dir / "spec.json"))
    doc = json.loads((q8_spec_dir / "spec.json").read_text())
    assert doc["schema"] == qspec.SCHEMA == 2
    assert doc["input"]["channels"] == 1 and (doc["input"]["height"], doc["input"]["width"]) == (28, 28)
    c1 = doc["layers"][0]
    assert (c1["in_h"], c1["in_w"], c1["pad"], c1["pad_code"], c1["stride"]) == (28, 28, 2, int(q8_spec.input_lut[0, 0]), 1)
    assert "pad" not in doc["layers"][1] and doc["layers"][1]["stride"] == 2
    assert doc["layers"][0]["activation"] == "scaled_tanh" and doc["layers"][-1]["activation"] is None


def test_round_trip_anna(anna_spec, tmp_path):
    out = anna_spec.save(tmp_path / "anna")
    same_spec(anna_spec, qspec.load(out))


def test_save_replaces_an_existing_spec(q8_spec, anna_spec, tmp_path):
    out = tmp_path / "s"
    anna_spec.save(out)
    (out / "stray.txt").write_text("left over")
    q8_spec.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["spec.json", "weights.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no .s.old / temp dirs
    same_spec(q8_spec, qspec.load(out))


def test_save_creates_parents(q8_spec, tmp_path):
    out = q8_spec.save(tmp_path / "a" / "b" / "spec")
    assert out == tmp_path / "a" / "b" / "spec" and (out / "spec.json").is_file()


def test_save_onto_a_file_is_a_user_error(q8_spec, tmp_path):
    f = tmp_path / "file"
    f.write_text("not a directory")
    with pytest.raises(UserError, match="exists and is not a directory"):
        q8_spec.save(f)
    assert f.read_text() == "not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_save_validates_first(q8_spec, tmp_path):
    import copy

    bad = copy.deepcopy(q8_spec)
    bad.layers[0].weight[0, 0, 0, 0] = 10_000
    with pytest.raises(UserError, match="layer C1.weight"):
        bad.save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- bad specs

def _set(path, value):
    """Edit spec.json at a path like ("layers", "C1", "formats", "weight", "width")."""

    def fn(doc):
        node = doc
        for k in path[:-1]:
            node = layer(doc, k) if isinstance(node, list) else node[k]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return fn


DELETE = object()

JSON_CASES = {
    "zero-bit format": (_set(("layers", "C1", "formats", "weight", "width"), 0),
                        ["layer C1.formats.weight", "width 0"]),
    "65-bit format": (_set(("layers", "C3", "formats", "acc", "width"), 65),
                      ["layer C3.formats.acc", "width 65"]),
    "frac out of range": (_set(("layers", "S2", "formats", "bias", "frac"), 65),
                          ["layer S2.formats.bias", "fraction bits 65"]),
    "negative frac out of range": (_set(("layers", "S2", "formats", "bias", "frac"), -70),
                                   ["layer S2.formats.bias", "fraction bits -70"]),
    "unknown rounding": (_set(("layers", "F6", "formats", "index", "rounding"), "ROUND_UP"),
                         ["layer F6.formats.index", "unknown rounding 'ROUND_UP'"]),
    "unknown overflow": (_set(("layers", "F6", "formats", "act", "overflow"), "CLAMP"),
                         ["layer F6.formats.act", "unknown overflow 'CLAMP'"]),
    "input format": (_set(("input", "format", "rounding"), "FLOOR"), ["input.format", "FLOOR"]),
    "unknown format field": (_set(("layers", "C1", "formats", "weight", "sign"), True),
                             ["layer C1.formats.weight", "unknown field 'sign'"]),
    "missing format field": (_set(("layers", "C1", "formats", "weight", "frac"), DELETE),
                             ["layer C1.formats.weight", "missing field 'frac'"]),
    "missing format": (_set(("layers", "C5", "formats", "acc"), DELETE), ["layer C5.formats", "missing format 'acc'"]),
    "missing layer field": (_set(("layers", "C1", "kernel"), DELETE), ["layer C1", "missing field 'kernel'"]),
    "missing top field": (_set(("network",), DELETE), ["missing field 'network'"]),
    "missing input height": (_set(("input", "height"), DELETE), ["input", "missing field 'height'"]),
    "input channels": (_set(("input", "channels"), 5), ["input.channels: 5, expected 1..4"]),
    "input width": (_set(("input", "width"), 65), ["input.width: 65, expected 1..64"]),
    "input size mismatch": (_set(("input", "width"), 27), ["layer C1: input 1@28x28 does not match the previous output 1@28x27"]),
    "conv stride": (_set(("layers", "C1", "stride"), 3), ["layer C1.stride: 3, expected 1 or 2"]),
    "conv kernel": (_set(("layers", "C1", "kernel"), 9), ["layer C1.kernel: 9, expected 1..7"]),
    "pad": (_set(("layers", "C1", "pad"), 9), ["layer C1.pad: 9, expected 0..8"]),
    "pad code": (_set(("layers", "C1", "pad_code"), 300), ["layer C1.pad_code: code 300 does not fit"]),
    "untied flag": (_set(("layers", "C1", "untied_bias"), True), ["layer C1.untied_bias: True, but C1.bias has shape (6,)"]),
    "pool stride": (_set(("layers", "S2", "stride"), 1), ["layer S2.stride: subsample has stride = kernel = 2, got 1"]),
    "string kernel": (_set(("layers", "C1", "kernel"), "5"), ["layer C1.kernel", "expected an integer"]),
    "missing layer": (lambda doc: doc["layers"].pop(1), ["layer C3", "does not match the previous output"]),
    "empty layers": (_set(("layers",), []), ["'layers' must be a non-empty list"]),
    "schema from the future": (_set(("schema",), 99), ["schema version 99", "newer"]),
    "schema 0": (_set(("schema",), 0), ["schema version 0"]),
    "unknown layer kind": (_set(("layers", "S4", "kind"), "pool3d"), ["layer S4", "unknown kind 'pool3d'"]),
    "maxpool with weights": (_set(("layers", "S4", "kind"), "maxpool"), ["layer S4", "a maxpool layer passes its input codes on"]),
    "unknown activation": (_set(("layers", "C1", "activation"), "swish"), ["layer C1.activation", "swish"]),
    "relu with a table": (_set(("layers", "C1", "activation"), "relu"), ["layer C1: activation relu takes no lookup table"]),
    "acc frac": (_set(("layers", "C1", "formats", "acc", "frac"), 13),
                 ["layer C1.formats.acc", "frac 13 must equal input.frac + weight.frac = 14"]),
    "acc saturates": (_set(("layers", "C1", "formats", "acc", "overflow"), "SAT"),
                      ["layer C1.formats.acc", "signed with WRAP"]),
    "bias frac beyond acc": (_set(("layers", "C1", "formats", "bias"),
                                  {"width": 20, "frac": 15, "signed": True, "rounding": "RND_CONV", "overflow": "SAT"}),
                             ["layer C1.formats.bias", "exceeds acc.frac 14"]),
    "input format mismatch": (_set(("layers", "C3", "formats", "input", "frac"), 5),
                              ["layer C3.formats.input", "differs from the previous layer's output"]),
    "in_maps": (_set(("layers", "F6", "in_maps"), 119), ["layer F6.in_maps", "119"]),
    "duplicate name": (_set(("layers", "S2", "name"), "C1"), ["layer C1", "duplicate"]),
    "C3 table": (_set(("layers", "C3", "table"), [[0, 1, 9]] * 16), ["layer C3.table"]),
    "subsample kernel": (_set(("layers", "S2", "kernel"), 4), ["layer S2.kernel: subsample is k x k for k in (2, 3), got 4"]),
    "index too wide": (_set(("layers", "C1", "formats", "index", "width"), 17), ["layer C1.formats.index", "17-bit"]),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_bad_spec_json(spec_copy, case):
    fn, words = JSON_CASES[case]
    edit_json(spec_copy, fn)
    with pytest.raises(UserError) as e:
        qspec.load(spec_copy)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def _arr(key, fn):
    def edit(arrays):
        arrays[key] = fn(arrays[key].copy())

    return edit


def _poke(idx, value):
    def fn(a):
        a[idx] = value
        return a

    return fn


NPZ_CASES = {
    "weight too large": (_arr("C1.weight", _poke((0, 0, 0, 0), 128)), ["layer C1.weight", "code 128 does not fit"]),
    "weight too small": (_arr("F6.weight", _poke((3, 7), -129)), ["layer F6.weight", "code -129"]),
    "bias does not fit": (_arr("C5.bias", _poke(0, 1 << 15)), ["layer C5.bias", "code 32768 does not fit"]),
    "lut does not fit": (_arr("C3.lut", _poke(5, 200)), ["layer C3.lut", "code 200 does not fit"]),
    "input lut does not fit": (_arr("input.lut", _poke((0, 255), 1000)), ["input.lut", "code 1000 does not fit"]),
    "outside the C3 table": (_arr("C3.weight", _poke((0, 5, 2, 2), 1)),
                             ["layer C3.weight", "non-zero weights outside the connection table"]),
    "rbf centre": (_arr("OUT.weight", _poke((0, 0), 0)), ["layer OUT.weight", "+-1"]),
    "weight shape": (_arr("C1.weight", lambda a: a.reshape(6, 1, 25)), ["layer C1.weight", "shape (6, 1, 25)", "(6, 1, 5, 5)"]),
    "dense shape": (_arr("F6.weight", lambda a: a.T), ["layer F6.weight", "shape (120, 84)"]),
    "bias shape": (_arr("S2.bias", lambda a: a[:5]), ["layer S2.bias", "shape (5,)"]),
    "lut length": (_arr("C1.lut", lambda a: a[:-1]), ["layer C1.lut", "shape (1023,)", "(1024,)", "10-bit index"]),
    "input lut length": (_arr("input.lut", lambda a: a[:, :128]), ["input.lut", "(1, 128)", "(1, 256)"]),
    "float weights": (_arr("C1.weight", lambda a: a.astype(np.float32)), ["C1.weight", "dtype float32"]),
    "missing array": (lambda arrays: arrays.pop("S4.bias"), ["weights.npz", "missing array 'S4.bias'"]),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_bad_weights(spec_copy, case):
    fn, words = NPZ_CASES[case]
    edit_npz(spec_copy, fn)
    with pytest.raises(UserError) as e:
        qspec.load(spec_copy)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_missing_files_and_garbage(spec_copy, tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        qspec.load(tmp_path / "does-not-exist")
    (spec_copy / "weights.npz").unlink()
    with pytest.raises(UserError, match="missing weights.npz"):
        qspec.load(spec_copy)
    (spec_copy / "weights.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable npz"):
        qspec.load(spec_copy)
    (spec_copy / "spec.json").write_text("{ nope")
    with pytest.raises(UserError, match="not valid JSON"):
        qspec.load(spec_copy)
    (spec_copy / "spec.json").unlink()
    with pytest.raises(UserError, match="missing spec.json"):
        qspec.load(spec_copy)


def test_a_valid_edit_still_loads(spec_copy, q8_spec):
    """The validator is not over-eager: a narrower accumulator (may wrap) and an extra array load."""
    edit_json(spec_copy, _set(("layers", "C1", "formats", "acc", "width"), 16))
    edit_npz(spec_copy, lambda arrays: arrays.update(extra=np.zeros(3, np.int64)))
    s = qspec.load(spec_copy)
    assert s.layers[0].formats["acc"].width == 16


# --------------------------------------------------------------------------- CLIs


def one_error_line(err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_evaluate_cli_bad_spec_subprocess(spec_copy, run_module, mnist_dir):
    edit_json(spec_copy, _set(("layers", "C1", "formats", "acc", "frac"), 13))
    r = run_module("quantize.evaluate", "--spec", spec_copy, "--data", mnist_dir)
    assert r.returncode == 2, r.stderr
    one_error_line(r.stderr, "layer C1.formats.acc", "frac 13")
    assert r.stdout == ""


@pytest.mark.parametrize("case, words", [
    ("zero-bit format", ["layer C1.formats.weight"]),
    ("unknown rounding", ["layer F6.formats.index"]),
    ("schema from the future", ["schema version 99"]),
    ("missing layer", ["layer C3"]),
])
def test_evaluate_cli_bad_spec(spec_copy, capsys, mnist_dir, case, words):
    edit_json(spec_copy, JSON_CASES[case][0])
    assert qevaluate.main(["--spec", str(spec_copy), "--data", str(mnist_dir)]) == 2
    out, err = capsys.readouterr()
    one_error_line(err, *words)
    assert out == ""


def test_evaluate_cli_bad_weights_and_missing_dir(spec_copy, tmp_path, capsys, mnist_dir):
    edit_npz(spec_copy, NPZ_CASES["outside the C3 table"][0])
    assert qevaluate.main(["--spec", str(spec_copy), "--data", str(mnist_dir)]) == 2
    one_error_line(capsys.readouterr().err, "layer C3.weight")
    assert qevaluate.main(["--spec", str(tmp_path / "nope"), "--data", str(mnist_dir)]) == 2
    one_error_line(capsys.readouterr().err, "no such directory")


def test_quantize_cli_missing_checkpoint(tmp_path, capsys):
    out = tmp_path / "X"
    assert qmain.main(["--checkpoint", str(tmp_path / "missing.pt"), "--preset", "q8", "--out", str(out)]) == 2
    cap = capsys.readouterr()
    one_error_line(cap.err, "missing.pt", "no such file")
    assert cap.out == "" and not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_quantize_cli_missing_checkpoint_subprocess(tmp_path, run_module):
    out = tmp_path / "X"
    r = run_module("quantize", "--checkpoint", tmp_path / "missing.pt", "--preset", "q8", "--out", out)
    assert r.returncode == 2, r.stderr
    one_error_line(r.stderr, "missing.pt", "no such file")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_quantize_cli_unknown_preset(tmp_path, capsys):
    out = tmp_path / "X"
    assert qmain.main(["--checkpoint", str(tmp_path / "missing.pt"), "--preset", "nope", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "--preset 'nope'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cfg, words", [
    ({"weight_bits": 0}, ["weight_bits = 0"]),
    ({"weight_bits": 40}, ["weight_bits = 40"]),
    ({"act_bits": 1}, ["act_bits = 1"]),
    ({"index_bits": 17}, ["index_bits = 17"]),
    ({"acc_bits": 65}, ["acc_bits = 65"]),
    ({"rounding": "ROUND_UP"}, ["unknown rounding 'ROUND_UP'"]),
    ({"layers": {"C5": {"weight_bits": 0}}}, ["layers.C5.weight_bits = 0"]),
    ({"layers": {"C5": {"stride": 2}}}, ["layers.C5"]),
    ({"preset": "nope"}, ["unknown preset 'nope'"]),
    ({"widht": 8}, ["unknown key 'widht'"]),
])
def test_quantize_cli_bad_config(tmp_path, capsys, cfg, words):
    conf = tmp_path / "cfg.json"
    conf.write_text(json.dumps(cfg))
    out = tmp_path / "X"
    assert qmain.main(["--checkpoint", str(tmp_path / "missing.pt"), "--config", str(conf), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json"]


def test_quantize_cli_config_file_errors(tmp_path, capsys):
    out = tmp_path / "X"
    assert qmain.main(["--checkpoint", "c.pt", "--config", str(tmp_path / "none.json"), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "none.json", "no such file")
    (tmp_path / "bad.json").write_text("[1, 2")
    assert qmain.main(["--checkpoint", "c.pt", "--config", str(tmp_path / "bad.json"), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "not valid JSON")
    assert not out.exists()


def test_load_config_presets():
    q8, anna = load_config("q8"), load_config("anna")
    assert (q8["weight_bits"], q8["act_bits"], q8["index_bits"], q8["bias_bits"]) == (8, 8, 10, 16)
    assert (anna["weight_bits"], anna["act_bits"], anna["input_bits"], anna["qat_epochs"]) == (6, 3, 3, 2)


def test_quantize_cli_end_to_end(tmp_path, capsys, quant_model, mnist_dir):
    """A real (untrained) checkpoint through ``python -m quantize --config`` (in-process, 100 images)."""
    from model import checkpoint

    ckpt = tmp_path / "net.pt"
    checkpoint.save(ckpt, quant_model, seed=0, epochs=0, test_error=0.9)
    conf = tmp_path / "cfg.json"
    conf.write_text(json.dumps({"weight_bits": 6, "calibration_images": 100,
                                "layers": {"C5": {"weight_bits": 4}}}))
    out = tmp_path / "spec"
    assert qmain.main(["--checkpoint", str(ckpt), "--config", str(conf), "--out", str(out),
                       "--data", str(mnist_dir), "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    s = qspec.load(out)
    assert s.layer("C1").formats["weight"].width == 6 and s.layer("C5").formats["weight"].width == 4
    p = s.provenance
    assert p["calibration_images"] == 100 and p["preset"] == "custom:cfg.json" and p["checkpoint_sha256"]
    assert p["config"]["layers"] == {"C5": {"weight_bits": 4}}
    # --out naming an existing file: one error line, the file untouched, nothing else written
    f = tmp_path / "afile"
    f.write_text("keep")
    before = sorted(x.name for x in tmp_path.iterdir())
    assert qmain.main(["--checkpoint", str(ckpt), "--config", str(conf), "--out", str(f),
                       "--data", str(mnist_dir), "--no-progress"]) == 2
    one_error_line(capsys.readouterr().err, "afile", "not a directory")
    assert f.read_text() == "keep" and sorted(x.name for x in tmp_path.iterdir()) == before
