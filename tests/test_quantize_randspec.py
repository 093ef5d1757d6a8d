"""quantize.randspec: random specs are valid, deterministic, round-trip through disk, respect the
hardware's rules and size limits, cover every feature tag together, and run in the emulator with
identical integers on the float and the int64 paths."""
from __future__ import annotations

import json

import numpy as np
import pytest

from quantize import spec as qspec
from quantize.randspec import ALL_TAGS, MAX_BITS, dense_mode, extreme_images, feature_tags, main, random_spec
from quantize.spec_check import validate

SEEDS = range(64)


def same_spec(a: qspec.QuantSpec, b: qspec.QuantSpec) -> None:
    assert json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)
    aa, ba = a.arrays(), b.arrays()
    assert aa.keys() == ba.keys()
    for k in aa:
        assert aa[k].dtype == ba[k].dtype == np.int64, k
        np.testing.assert_array_equal(aa[k], ba[k], err_msg=k)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """The emulator runs here are tiny (conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def specs() -> dict[int, qspec.QuantSpec]:
    return {s: random_spec(s) for s in SEEDS}


def test_valid_and_deterministic(specs):
    for seed, spec in specs.items():
        validate(spec)
        same_spec(spec, random_spec(seed))
        assert spec.provenance["seed"] == seed
    assert len({json.dumps(s.to_json(), sort_keys=True) for s in specs.values()}) == len(specs)


@pytest.mark.parametrize("seed", [0, 7, 23, 41])
def test_save_load_round_trip(seed, tmp_path, specs):
    spec = specs[seed]
    same_spec(spec, qspec.load(spec.save(tmp_path / "spec")))


def test_limits_and_hardware_rules(specs):
    for seed, spec in specs.items():
        c, h, w = spec.input_shape
        assert 1 <= c <= 4 and 4 <= h <= 12 and 4 <= w <= 12, seed
        assert 2 <= len(spec.layers) <= 5 and 2 <= spec.classes <= 12, seed
        assert spec.macs() <= 2500, seed
        formats = [spec.input_format] + [f for l in spec.layers for f in l.formats.values()]
        assert max(f.width for f in formats) <= MAX_BITS, seed
        last = spec.layers[-1]
        assert last.kind in ("dense", "rbf") or (last.kind in ("conv", "local") and last.out_shape[1:] == (1, 1)), seed
        seen_dense = False
        for l in spec.layers:
            assert not seen_dense or l.kind in ("dense", "rbf"), (seed, l.name)
            seen_dense = seen_dense or dense_mode(l)
            if l.spatial:
                assert (l is last or l.out_maps <= 4) and l.kernel <= 7 and l.in_h <= 12 and l.in_w <= 12, (seed, l.name)
            if l.kind not in ("rbf", "maxpool"):
                assert "acc" in l.formats and l.formats["acc"].overflow == "WRAP" and l.formats["acc"].signed


def test_tags_cover_everything(specs):
    union = set()
    for spec in specs.values():
        tags = feature_tags(spec)
        assert tags <= ALL_TAGS, tags - ALL_TAGS
        union |= tags
    assert union == ALL_TAGS, f"never drawn: {sorted(ALL_TAGS - union)}"


def test_lenet_subset():
    for seed in range(16):
        spec = random_spec(seed, lenet=True, classes=10)
        c, h, w = spec.input_shape
        assert c == 1 and h == w and spec.classes == 10
        assert spec.layers[0].kind == "conv"
        for l in spec.layers[:-1]:
            assert l.kind in ("conv", "subsample", "dense") and l.has_lut, (seed, l.name)
        assert {"local", "avgpool", "maxpool", "untied", "stride2", "relu", "none", "channels>1",
                "nonsquare"}.isdisjoint(feature_tags(spec)), seed
        if spec.layers[0].pad:
            assert spec.layers[0].pad_code == spec.input_lut[0, 0]


def test_extreme_images(specs):
    spec = specs[3]
    c, h, w = spec.input_shape
    imgs = extreme_images(spec, np.random.default_rng(0), 12)
    assert imgs.dtype == np.uint8 and imgs.shape == (12, c, h, w)
    flat = imgs.reshape(12, -1)
    assert any((f == 0).all() for f in flat) and any((f == 255).all() for f in flat)
    assert any(set(np.unique(f)) == {0, 255} and f[0] != f[1] for f in flat)  # a checkerboard
    np.testing.assert_array_equal(imgs, extreme_images(spec, np.random.default_rng(0), 12))


def test_cli(run_module, tmp_path, capsys):
    p = run_module("quantize.randspec", "--seed", 5, "--out", tmp_path / "s5")
    assert p.returncode == 0, p.stderr
    same_spec(qspec.load(tmp_path / "s5"), random_spec(5))
    assert "MACs" in p.stdout
    assert main(["--seed", "6", "--lenet", "--out", str(tmp_path / "l6")]) == 0
    same_spec(qspec.load(tmp_path / "l6"), random_spec(6, lenet=True))
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--seed" in capsys.readouterr().out


@pytest.mark.parametrize("seed", SEEDS)
def test_emulator_float_equals_int(seed, specs):
    from quantize.emulator import Emulator

    spec = specs[seed]
    rng = np.random.default_rng(seed)
    c, h, w = spec.input_shape
    images = np.concatenate([extreme_images(spec, rng, 6), rng.integers(0, 256, (4, c, h, w), dtype=np.uint8)])
    fast = Emulator(spec, allow_float=True).run(images)
    exact = Emulator(spec, allow_float=False).run(images)
    np.testing.assert_array_equal(fast.scores, exact.scores)
    np.testing.assert_array_equal(fast.predictions, exact.predictions)
    assert fast.scores.shape == (len(images), spec.classes)
    assert fast.tensors.keys() == exact.tensors.keys()
    for k in fast.tensors:
        np.testing.assert_array_equal(fast.tensors[k], exact.tensors[k], err_msg=k)
