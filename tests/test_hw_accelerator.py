# amaranth: UnusedElaboratable=no
"""The whole generated accelerator in amaranth.sim (hw.simulate.rtl_accelerator) against the
emulator: class and all ten scores bit-exact, and the measured cycles equal to the cycle model.

An image takes ~15-30 s of simulation at 8 lanes: two MNIST images and one extreme image (noise,
through randomised weights) run by default, everything else is marked slow (``make test-slow``).

The untrained fixtures are nearly degenerate (the anna spec scores every image 0,0,...,0; no LUT
address ever saturates), so the slow set also runs a *randomised* spec: the q8/anna formats with
full-range random weight and bias codes, whose accumulators wrap and whose LUT addresses saturate.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from hw.perf import cycles_per_image
from hw.simulate import rtl_accelerator
from quantize.emulator import Emulator
from quantize.spec import validate


def extreme_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    checker = ((np.arange(28)[:, None] + np.arange(28)[None, :]) % 2 * 255).astype(np.uint8)
    return {
        "zeros": np.zeros((28, 28), np.uint8),
        "ones": np.full((28, 28), 255, np.uint8),
        "checkerboard": checker,
        "noise": rng.integers(0, 256, size=(28, 28), dtype=np.uint8),
    }


def check_accelerator(spec, lanes: int, images: np.ndarray, **kw) -> None:
    images = np.asarray(images, np.uint8)
    classes, scores, cycles = rtl_accelerator(spec, lanes, images, **kw)
    want = Emulator(spec).run(images)
    np.testing.assert_array_equal(scores, want.scores)
    np.testing.assert_array_equal(classes, want.predictions)
    batch = kw.get("batch", 1)
    np.testing.assert_array_equal(cycles, [cycles_per_image(spec, lanes)] * -(-len(images) // batch))


def randomized_spec(spec, seed: int):
    """``spec`` with uniformly random weight/bias codes over their whole formats (zero outside the
    connection tables): still a valid spec, but the accumulators wrap (counted by the emulator as
    acc_overflows) and many LUT addresses saturate."""
    spec = copy.deepcopy(spec)
    rng = np.random.default_rng(seed)
    for l in spec.layers:
        if l.kind == "rbf":
            continue
        f = l.formats
        w = rng.integers(f["weight"].code_min, f["weight"].code_max, size=l.weight.shape, endpoint=True)
        if l.kind == "conv":
            keep = np.zeros(l.weight.shape[:2], bool)
            for o, conn in enumerate(l.connections()):
                keep[o, conn] = True
            w = w * keep[:, :, None, None]
        l.weight = w.astype(np.int64)
        l.bias = rng.integers(f["bias"].code_min, f["bias"].code_max, size=l.bias.shape, endpoint=True).astype(np.int64)
    validate(spec)
    return spec


@pytest.fixture(scope="module")
def mnist_two(quant_images):
    return quant_images[0][:2]


def test_accelerator_q8_mnist(q8_spec, mnist_two):
    """Two MNIST test images back to back (the second after ``done``): q8, 8 lanes."""
    check_accelerator(q8_spec, 8, mnist_two)


def test_accelerator_batch(q8_spec, quant_images):
    """Three images through a batch of two (the last group padded with a blank image): every
    image's class and scores bit-exact, the cycles of one image per group."""
    check_accelerator(q8_spec, 8, quant_images[0][2:5], batch=2)


def test_accelerator_batch_anna_shared_window(anna_spec, quant_images):
    """anna (3-bit states) at batch 3: the three images share one window (9-bit words) and the lanes
    pair images 0 and 1 on ProductPairs (image 2 on plain products): bit-exact, one image's cycles."""
    check_accelerator(anna_spec, 8, quant_images[0][5:8], batch=3)


def test_accelerator_batch_fused(q8_spec, quant_images):
    """Batch 2 with fused pools (the UP5K's candidate): one shared drain, two images' pool windows,
    three images (the last group padded): bit-exact, the fused program's cycles per group."""
    from hw.program import compile_spec

    images = quant_images[0][8:11]
    classes, scores, cycles = rtl_accelerator(q8_spec, 8, images, batch=2, fuse_pools=True)
    want = Emulator(q8_spec).run(images)
    np.testing.assert_array_equal(scores, want.scores)
    np.testing.assert_array_equal(classes, want.predictions)
    fused = cycles_per_image(q8_spec, 8, program=compile_spec(q8_spec, 8, fuse_pools=True))
    assert fused < cycles_per_image(q8_spec, 8)
    np.testing.assert_array_equal(cycles, [fused] * 2)


def test_accelerator_loaded_weights(q8_spec, mnist_two):
    """weights="load": the weight memory starts empty; the image from weight_load_data() goes in
    through ``wl`` (as the board's 'W' command sends it), then the images."""
    check_accelerator(q8_spec, 8, mnist_two[:1], weights="load")


@pytest.mark.parametrize("kw,msg", [({"weights": "flash"}, "weights must be"), ({"batch": 0}, "batch must be")])
def test_accelerator_bad_options(q8_spec, kw, msg):
    from hw.accelerator import Accelerator

    with pytest.raises(ValueError, match=msg):
        Accelerator(q8_spec, 8, **kw)


@pytest.mark.slow
def test_accelerator_anna_mnist(anna_spec, mnist_two):
    check_accelerator(anna_spec, 8, mnist_two)


@pytest.mark.slow
@pytest.mark.parametrize("lanes", [2, 32])
def test_accelerator_q8_lanes(q8_spec, mnist_two, lanes):
    """A 1 x 2 tile, and a 4 x 8 tile wider than the subsampling maps (S4: 5 x 5)."""
    check_accelerator(q8_spec, lanes, mnist_two)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zeros", "ones", "checkerboard", "noise"])
def test_accelerator_q8_extreme(q8_spec, name):
    check_accelerator(q8_spec, 8, extreme_images()[name][None])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zeros", "ones", "checkerboard", "noise"])
def test_accelerator_anna_extreme(anna_spec, name):
    check_accelerator(anna_spec, 4, extreme_images()[name][None])


def test_accelerator_randomized_q8_noise(q8_spec):
    """An extreme case in the quick set: uint8 noise through random full-range q8 weights, so the
    accumulators wrap and the LUT addresses saturate; still bit-exact."""
    spec = randomized_spec(q8_spec, seed=8)
    images = extreme_images()["noise"][None]
    r = Emulator(spec).run(images)
    assert sum(s.acc_overflows for s in r.stats.values()) > 0
    assert sum(s.saturations for s in r.stats.values()) > 0
    check_accelerator(spec, 8, images)


@pytest.mark.slow
@pytest.mark.parametrize("which,lanes", [("q8_spec", 8), ("anna_spec", 4)])
def test_accelerator_randomized(request, quant_images, which, lanes):
    """Random full-range weights on an MNIST image and checkerboard: wraps and saturation."""
    spec = randomized_spec(request.getfixturevalue(which), seed=lanes)
    images = np.concatenate([quant_images[0][:1], extreme_images()["checkerboard"][None]])
    r = Emulator(spec).run(images)
    assert sum(s.acc_overflows for s in r.stats.values()) > 0
    assert sum(s.saturations for s in r.stats.values()) > 0
    assert len(set(r.scores.ravel().tolist())) > 2
    check_accelerator(spec, lanes, images)


def test_images_per_window():
    """Images share a window as far as it costs no block RAM: q8 at 296 words, two images in 16-bit
    words (2 x 256 x 16 EBR per bank, as two windows of 512 x 8); never wider than a window's 48 bits."""
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    from hw.engine import images_per_window

    up5k = ICEBreakerPlatform()
    assert images_per_window(296, 8, up5k, 2) == 2
    assert images_per_window(296, 3, up5k, 4) == 4  # anna: 12-bit words
    assert images_per_window(840, 8, None, 12) == 6  # ECP5 DP16KD, 48-bit words at most
    assert images_per_window(100, 8, up5k, 1) == 1
