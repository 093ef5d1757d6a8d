"""Random networks (quantize.randspec) in Amaranth's simulator against the emulator, bit for bit:
every layer kind, shape and format feature the hardware builds, 2-3 images each (an extreme one
among them: all 0, all 255, checkerboards), a lane count drawn from the seed, and the cycle count
of :mod:`hw.perf`.

Cost: each network is simulated cycle by cycle (at most 2,500 MACs per image); the file runs in
~1-2 minutes on one core. A failing seed is reproduced by
``python -m quantize.randspec --seed N --out DIR`` and ``rtl_accelerator(spec, lanes, images)``.
"""
from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest

from quantize.emulator import Emulator
from quantize.qformat import ROUNDING
from quantize.randspec import ALL_TAGS, extreme_images, feature_tags, random_spec

SEEDS = range(96)
LANES = (1, 2, 4, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """The emulator runs here are tiny (conftest.one_torch_thread)."""


def lanes_for(seed: int) -> int:
    return LANES[int(np.random.default_rng([seed, 1]).integers(len(LANES)))]


def images_for(spec, seed: int) -> np.ndarray:
    """2 or 3 images from consecutive extreme patterns (any 2 of them hold one made of 0s and 255s only)."""
    rng = np.random.default_rng([seed, 2])
    return extreme_images(spec, rng, 2 + int(rng.integers(2)))


def model_cycles(spec, lanes: int) -> int:
    """hw.perf's cycles per image, whether it takes (spec, lanes) or a compiled program."""
    from hw import perf

    params = [p for p in inspect.signature(perf.cycles_per_image).parameters.values() if p.default is p.empty]
    if len(params) >= 2:
        return perf.cycles_per_image(spec, lanes)
    from hw.program import compile_spec

    return perf.cycles_per_image(compile_spec(spec, lanes))


def check(spec, lanes: int, images: np.ndarray, what: str) -> None:
    from hw.simulate import rtl_accelerator

    golden = Emulator(spec).run(images)
    classes, scores, cycles = rtl_accelerator(spec, lanes, images)
    shapes = " -> ".join(f"{l.kind} {'x'.join(map(str, l.out_shape))}" for l in spec.layers)
    msg = f"{what}, lanes {lanes}: {'x'.join(map(str, spec.input_shape))} -> {shapes}"
    np.testing.assert_array_equal(scores, golden.scores, err_msg=msg)
    np.testing.assert_array_equal(classes, golden.predictions, err_msg=msg)
    model = model_cycles(spec, lanes)
    assert list(cycles) == [model] * len(images), f"{msg}: cycles {list(cycles)}, model {model}"


@pytest.mark.parametrize("seed", SEEDS)
def test_random_network_bit_exact(seed):
    spec = random_spec(seed)
    check(spec, lanes_for(seed), images_for(spec, seed), f"randspec seed {seed}")


@pytest.mark.parametrize("seed", [0, 3, 6])
def test_lenet_subset_bit_exact(seed):
    """The classic subset (one square channel, conv/subsample/dense, table activations)."""
    spec = random_spec(seed, lenet=True)
    check(spec, lanes_for(seed), images_for(spec, seed), f"randspec --lenet seed {seed}")


def test_seeds_cover_every_feature():
    union = set().union(*(feature_tags(random_spec(s)) for s in SEEDS))
    assert union == ALL_TAGS, f"never simulated: {sorted(ALL_TAGS - union)}"


def test_one_rounding_mode_is_visible():
    """The comparison has teeth: one layer's rounding mode changed in the hardware's copy of the
    spec (a change the emulator sees on these images) makes the scores differ from the golden ones."""
    from hw.simulate import rtl_accelerator

    seed = 12
    spec = random_spec(seed)
    images = images_for(spec, seed)
    golden = Emulator(spec).run(images).scores
    for i, l in enumerate(spec.layers[:-1]):
        key = "index" if l.has_lut else "act"
        for mode in ROUNDING:
            if key not in l.formats or l.kind == "maxpool" or mode == l.formats[key].rounding:
                continue
            bad = copy.deepcopy(spec)
            bad.layers[i].formats[key] = l.formats[key].with_(rounding=mode)
            if key == "act":
                bad.layers[i + 1].formats["input"] = bad.layers[i].formats[key]
            if not np.array_equal(Emulator(bad).run(images).scores, golden):
                _, scores, _ = rtl_accelerator(bad, lanes_for(seed), images)
                assert not np.array_equal(scores, golden)
                return
    pytest.fail("no rounding change of this spec shows in its scores: pick another seed")
