"""quantize.emulator and quantize.ops: exact kernels, fast path == int64 path, agreement with the
float model within an error bound derived from the formats, input handling, and the run/evaluate CLIs."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import model.data
import quantize.evaluate as qevaluate
import quantize.run as qrun
from model.lenet import A as TANH_A, S as TANH_S, preprocess
from model.util import UserError
from quantize import ops
from quantize.emulator import Emulator
from quantize.qformat import QFormat
from quantize.spec import validate

REPO = Path(__file__).resolve().parents[1]

SHAPES = {"input": (1, 28, 28), "C1": (6, 28, 28), "S2": (6, 14, 14), "C3": (16, 10, 10), "S4": (16, 5, 5),
          "C5": (120,), "F6": (84,), "OUT": (10,)}


@pytest.fixture(autouse=True)
def _no_global_torch_state(monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)


def extreme_images() -> np.ndarray:
    """Adversarial inputs: saturated, empty, noise, checkerboards, stripes."""
    rng = np.random.default_rng(123)
    i, j = np.indices((28, 28))
    boards = [((i + j) % 2) * 255, (1 - (i + j) % 2) * 255, ((i // 2 + j // 2) % 2) * 255,
              ((i // 4 + j // 4) % 2) * 255, (j % 2) * 255, (i % 3 == 0) * 255, (i < 14) * 255]
    return np.concatenate([
        np.full((2, 28, 28), 255, np.uint8), np.zeros((2, 28, 28), np.uint8),
        rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        rng.choice(np.array([0, 255], np.uint8), (4, 28, 28)),  # binary noise: the largest sums
        np.stack(boards).astype(np.uint8),
    ])


def narrowed(spec, widths: dict[str, int | None]):
    """A copy whose accumulators are narrowed (width=None: as narrow as the frac allows) or widened."""
    s = copy.deepcopy(spec)
    for l in s.layers:
        if l.name in widths:
            acc = l.formats["acc"]
            l.formats["acc"] = acc.with_(width=widths[l.name] or acc.frac)
    validate(s)
    return s


def assert_same_result(a, b):
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        assert a.tensors[k].dtype == b.tensors[k].dtype == np.int64, k
        assert np.array_equal(a.tensors[k], b.tensors[k]), k
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.predictions, b.predictions)
    assert a.saturations() == b.saturations()


@pytest.fixture(scope="module")
def all_images(quant_images):
    """32 MNIST test images and the adversarial ones (the machine is small: keep the runs short)."""
    return np.concatenate([quant_images[0][:32], extreme_images()])


# --------------------------------------------------------------------------- fast path == int64 path


@pytest.mark.parametrize("which", ["q8", "anna", "q8-narrow-acc", "anna-wide-acc"])
def test_fast_path_equals_int64_path(which, q8_spec, anna_spec, all_images):
    base = q8_spec if which.startswith("q8") else anna_spec
    if which.endswith("narrow-acc"):
        spec = narrowed(base, {"C1": None, "S2": None})
    elif which.endswith("wide-acc"):  # beyond Emulator.TABLE_BITS: the unmemoised activation on the fast path
        spec = narrowed(base, {"C1": 40, "C3": 30, "F6": 64})
    else:
        spec = base
    fast = Emulator(spec).run(all_images)
    slow = Emulator(spec, allow_float=False).run(all_images)
    assert_same_result(fast, slow)
    overflows = {k: v["acc_overflows"] for k, v in fast.saturations().items()}
    if which.endswith("narrow-acc"):
        assert overflows["C1"] > 0 and overflows["S2"] > 0, overflows
    else:
        assert sum(overflows.values()) == 0, overflows  # a calibrated spec never wraps, even on extremes
    if which == "q8-narrow-acc":  # batching changes nothing (the stats add up over batches)
        assert_same_result(Emulator(spec).run(all_images, batch=13), fast)


def test_narrow_acc_wraps_like_the_format(q8_spec, quant_images):
    """The wrapped accumulator is the exact sum taken mod 2**width, then the activation."""
    spec = narrowed(q8_spec, {"C1": None})
    l, l0 = spec.layers[0], q8_spec.layers[0]
    imgs = extreme_images()[:4]
    emu = Emulator(spec, allow_float=False)
    x = emu.input_codes(imgs)
    exact = ops.conv2d(x, l.weight, l.bias_acc(), 128, allow_float=False, pad=l.pad, pad_code=l.pad_code).numpy()
    acc = l.formats["acc"]
    wrapped = (exact - acc.code_min) % (1 << acc.width) + acc.code_min
    assert np.any(wrapped != exact)
    want, _ = ops.activation(wrapped, acc.frac, l.formats["index"], l.lut)
    got = Emulator(spec).run(imgs).tensors["C1"]
    assert np.array_equal(got, want.numpy())
    assert not np.array_equal(got, Emulator(q8_spec).run(imgs).tensors["C1"])
    assert l0.formats["acc"].width > acc.width


# --------------------------------------------------------------------------- shapes and formats


@pytest.mark.parametrize("which", ["q8", "anna"])
def test_layer_tensors_shapes_and_formats(which, q8_spec, anna_spec, all_images):
    spec = q8_spec if which == "q8" else anna_spec
    r = Emulator(spec).run(all_images)
    n = len(all_images)
    assert list(r.tensors) == list(SHAPES)
    for k, shape in SHAPES.items():
        assert r.tensors[k].shape == (n, *shape), k
    assert spec.input_format.contains(r.tensors["input"])
    for l in spec.layers:
        fmt = l.out_format
        t = r.tensors[l.name]
        assert fmt.contains(t), (l.name, str(fmt), t.min(), t.max())
        if l.has_activation:  # every state is an entry of the layer's table
            assert np.isin(t, l.lut).all(), l.name
    assert r.scores.shape == (n, 10) and np.array_equal(r.scores, r.tensors["OUT"])
    assert r.predictions.shape == (n,) and r.predictions.dtype == np.int64
    assert np.array_equal(r.predictions, np.argmax(r.scores, axis=1))  # numpy: first maximum too
    # the input codes are the LUT of the image; C1 pads them with the code of grey level 0
    assert np.array_equal(r.tensors["input"], spec.input_lut[0][all_images][:, None])
    assert spec.input_shape == (1, 28, 28) and spec.layers[0].pad == 2
    assert spec.layers[0].pad_code == spec.input_lut[0, 0]
    assert set(r.saturations()) == {l.name for l in spec.layers}


def test_keep_false_and_empty(q8_spec, quant_images):
    imgs = quant_images[0][:5]
    full = Emulator(q8_spec).run(imgs)
    light = Emulator(q8_spec).run(imgs, keep=False)
    assert light.tensors == {} and np.array_equal(light.scores, full.scores)
    assert np.array_equal(light.predictions, full.predictions)
    empty = Emulator(q8_spec).run(np.zeros((0, 28, 28), np.uint8))
    assert empty.predictions.shape == (0,) and empty.scores.shape == (0, 10)


# --------------------------------------------------------------------------- input handling


def test_run_rejects_bad_images(q8_spec):
    emu = Emulator(q8_spec)
    with pytest.raises(UserError, match="shape"):
        emu.run(np.zeros((2, 27, 27), np.uint8))
    with pytest.raises(UserError, match=r"shape \(2, 2, 28, 28\), the spec takes 1 x 28 x 28"):
        emu.run(np.zeros((2, 2, 28, 28), np.uint8))
    with pytest.raises(UserError, match="shape"):
        emu.run(np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(UserError, match="dtype float32"):
        emu.run(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(UserError, match="dtype int64"):
        emu.run(np.zeros((2, 28, 28), np.int64))


def test_single_image_and_padding(q8_spec, quant_images):
    imgs = quant_images[0][:3]
    emu = Emulator(q8_spec)
    one = emu.run(imgs[0])
    assert one.predictions.shape == (1,) and one.tensors["C1"].shape == (1, 6, 28, 28)
    batch = emu.run(imgs)
    assert np.array_equal(one.tensors["F6"][0], batch.tensors["F6"][0])
    padded = np.pad(imgs, ((0, 0), (2, 2), (2, 2)))
    assert_same_result(emu.run(padded), batch)  # the old 32x32 input: its blank border is cropped
    assert_same_result(emu.run(imgs[:, None]), batch)  # N x 1 x 28 x 28
    inked = padded.copy()
    inked[:, 0, :] = 255
    with pytest.raises(UserError, match="non-blank"):
        emu.run(inked)


# --------------------------------------------------------------------------- exact kernels


def ref_conv(x, w, b):
    """Valid cross-correlation on Python-exact int64 (numpy einsum on integers uses no BLAS)."""
    x, w = np.asarray(x, np.int64), np.asarray(w, np.int64)
    k = w.shape[-1]
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))  # n c i j u v
    return np.einsum("ncijuv,ocuv->noij", win, w) + np.asarray(b, np.int64)[None, :, None, None]


def ref_conv_loops(x, w, b):
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    out = np.zeros((n, o, h - k + 1, wd - k + 1), dtype=object)
    for a in range(n):
        for oo in range(o):
            for i in range(h - k + 1):
                for j in range(wd - k + 1):
                    out[a, oo, i, j] = int(b[oo]) + sum(int(w[oo, cc, u, v]) * int(x[a, cc, i + u, j + v])
                                                        for cc in range(c) for u in range(k) for v in range(k))
    return out


def ref_subsample(x, coef, b, source=None):
    x = np.asarray(x, np.int64)
    if source is not None:
        x = x[:, source]
    n, c, h, w = x.shape
    s = x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).sum(axis=(3, 5))
    return s * np.asarray(coef, np.int64)[None, :, None, None] + np.asarray(b, np.int64)[None, :, None, None]


def _codes(rng, bits, shape):
    return rng.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1, size=shape, endpoint=True, dtype=np.int64)


# (x bits, w bits, b bits, expected path): chosen so the analytic bound lands in each dtype's range
PATHS = [(8, 8, 16, torch.float32), (16, 20, 30, torch.float64), (20, 30, 50, torch.int64), (24, 34, 58, torch.int64)]


@pytest.mark.parametrize("xb, wb, bb, dtype", PATHS)
@pytest.mark.parametrize("allow_float", [True, False])
def test_conv2d_exact(xb, wb, bb, dtype, allow_float):
    rng = np.random.default_rng(xb * 100 + wb)
    x, w, b = _codes(rng, xb, (3, 4, 11, 9)), _codes(rng, wb, (5, 4, 5, 5)), _codes(rng, bb, (5,))
    x_max = 1 << (xb - 1)
    bound = ops.conv_bound(w, b, x_max)
    assert ops.exact_dtype(bound) is dtype
    got = ops.conv2d(x, w, b, x_max, allow_float)
    want = ref_conv(x, w, b)
    assert got.shape == want.shape == (3, 5, 7, 5)
    assert np.array_equal(got.to(torch.int64).numpy(), want)
    assert got.dtype == (torch.int32 if bound <= ops.I32_MAX and allow_float else got.dtype)
    # a few outputs against plain Python integers (no numpy at all)
    loops = ref_conv_loops(x[:1, :, :6, :6], w[:2], b[:2])
    assert (ops.conv2d(x[:1, :, :6, :6], w[:2], b[:2], x_max, allow_float).to(torch.int64).numpy() == loops).all()


def test_conv2d_with_table_zero_weights_and_extremes():
    """Worst cases: every code at its extreme, the sum hitting the float32 limit 2**24 - 1 exactly."""
    # 25 taps * 1 map: w = 127, x = 2**k: choose bias so that the total is exactly 2**24 - 1
    x = np.full((1, 1, 5, 5), 5243, np.int64)
    w = np.full((1, 1, 5, 5), 127, np.int64)
    b = np.array([(1 << 24) - 1 - 25 * 127 * 5243], np.int64)
    bound = ops.conv_bound(w, b, 5243)
    assert bound == (1 << 24) - 1 and ops.exact_dtype(bound) is torch.float32
    assert int(ops.conv2d(x, w, b, 5243)[0, 0, 0, 0]) == (1 << 24) - 1
    assert int(ops.conv2d(-x, w, -b, 5243)[0, 0, 0, 0]) == -((1 << 24) - 1)
    # one more and it is float64
    assert ops.exact_dtype(bound + 1) is torch.float64 and ops.exact_dtype((1 << 53) - 1) is torch.float64
    assert ops.exact_dtype(1 << 53) is torch.int64 and ops.exact_dtype(5, allow_float=False) is torch.int64
    # odd sums just below 2**53 on the float64 path: exact
    x = np.full((1, 1, 5, 5), (1 << 26) - 1, np.int64)
    w = np.full((1, 1, 5, 5), (1 << 21) - 1, np.int64)
    b = np.array([1], np.int64)
    assert ops.exact_dtype(ops.conv_bound(w, b, (1 << 26) - 1)) is torch.float64
    assert int(ops.conv2d(x, w, b, (1 << 26) - 1)[0, 0, 0, 0]) == 25 * ((1 << 26) - 1) * ((1 << 21) - 1) + 1


@pytest.mark.parametrize("xb, wb, bb, dtype", PATHS)
@pytest.mark.parametrize("allow_float", [True, False])
def test_dense_exact(xb, wb, bb, dtype, allow_float):
    rng = np.random.default_rng(xb + wb)
    x, w, b = _codes(rng, xb, (7, 120)), _codes(rng, wb, (84, 120)), _codes(rng, bb, (84,))
    x_max = 1 << (xb - 1)
    bound = ops.conv_bound(w, b, x_max)
    if dtype is not torch.int64:  # 120 terms instead of 100: the bound still lands in the same range
        assert ops.exact_dtype(bound) is dtype
    got = ops.dense(x, w, b, x_max, allow_float).to(torch.int64).numpy()
    want = np.array([[int(b[o]) + sum(int(w[o, i]) * int(x[n, i]) for i in range(120)) for o in range(84)]
                     for n in range(7)], dtype=object)
    assert (got == want).all()


@pytest.mark.parametrize("xb, wb, bb, dtype", PATHS)
@pytest.mark.parametrize("allow_float", [True, False])
def test_subsample_exact(xb, wb, bb, dtype, allow_float):
    rng = np.random.default_rng(xb * 7 + wb)
    x = _codes(rng, xb, (3, 4, 11, 10))  # odd height: the last row is dropped
    coef, b = _codes(rng, wb + 4, (8,)), _codes(rng, bb, (8,))
    source = np.arange(8) // 2  # LeNet-4 style: two maps per input map
    x_max = 1 << (xb - 1)
    got = ops.subsample(x, coef, b, x_max, source, allow_float).to(torch.int64).numpy()
    assert got.shape == (3, 8, 5, 5)
    assert np.array_equal(got, ref_subsample(x, coef, b, source))
    got = ops.subsample(x, coef[:4], b[:4], x_max, None, allow_float).to(torch.int64).numpy()
    assert np.array_equal(got, ref_subsample(x, coef[:4], b[:4]))
    # Python integers for one output
    assert int(got[1, 2, 3, 4]) == int(coef[2]) * int(x[1, 2, 6, 8] + x[1, 2, 6, 9] + x[1, 2, 7, 8] + x[1, 2, 7, 9]) + int(b[2])


def test_subsample_float_path_extremes():
    """The float path of subsample at the edge of float32: sums of four extreme codes."""
    x = np.full((1, 1, 2, 2), -128, np.int64)
    coef = np.array([-((1 << 15) - 1)], np.int64)
    b = np.array([(1 << 24) - 1 - 4 * 128 * ((1 << 15) - 1)], np.int64)
    bound = ops.subsample_bound(coef, b, 128)
    assert bound == (1 << 24) - 1 and ops.exact_dtype(bound) is torch.float32
    assert int(ops.subsample(x, coef, b, 128)[0, 0, 0, 0]) == (1 << 24) - 1
    assert int(ops.subsample(-x, coef, -b, 128)[0, 0, 0, 0]) == -((1 << 24) - 1)


def test_rbf_lut_argmax():
    rng = np.random.default_rng(3)
    x = _codes(rng, 8, (5, 84))
    c = rng.choice(np.array([-1, 1]), (10, 84))
    assert np.array_equal(ops.rbf_scores(x, c).numpy(), x @ c.T)
    # ties go to the lowest index
    s = np.array([[3, 7, 7, 1], [0, 0, 0, 0], [-5, -1, -2, -1]], np.int64)
    assert ops.argmax(s).tolist() == [1, 0, 1]
    idx = QFormat(4, 2)
    table = np.arange(16) * 10
    assert ops.lut(np.array([-8, 0, 7]), idx, table).tolist() == [0, 80, 150]
    # activation = requantize into the index format (SAT) then the table
    acc = np.array([-1000, -3, 0, 5, 1000])
    y, clipped = ops.activation(acc, 4, idx, table)
    want = [table[int(v) - idx.code_min] for v in idx.requantize(acc, 4)[0]]
    assert y.tolist() == want and clipped == 2


# --------------------------------------------------------------------------- against the float model


def layer_params(mod, kind):
    if kind == "conv":
        w = mod.masked_weight()
    elif kind == "subsample":
        w = mod.coef
    else:
        w = mod.weight
    return w.detach().double().numpy(), mod.bias.detach().double().numpy()


@pytest.mark.parametrize("which", ["q8", "anna"])
def test_emulator_tracks_the_float_model(which, quant_model, q8_spec, anna_spec, quant_images):
    """Each layer's dequantized output is within a bound propagated from the formats' lsb:

    |acc - a| <= sum|w_q| e_in + sum|w_q - w| max|x| + |b_q - b|   (exact integer sums)
    |y - f(a)| <= A S (|acc - a| + index.lsb / 2) + max LUT error (+ saturation of the index)
    """
    spec = q8_spec if which == "q8" else anna_spec
    imgs = quant_images[0]
    r = Emulator(spec).run(imgs)
    with torch.no_grad():
        _, outs = quant_model(preprocess(imgs, "lenet5"), return_all=True)
    grey = np.arange(256, dtype=np.uint8)
    e_in = np.abs(spec.input_lut * spec.input_format.lsb - model.data.scale(grey).astype(np.float64)).max()
    assert e_in <= spec.input_format.lsb / 2 + 1e-6
    x_float = model.data.scale(model.data.pad32(imgs)).astype(np.float64)
    bounds = {}
    for d, mod, l, out in zip(quant_model.defs, quant_model.layers, spec.layers, outs):
        if l.kind == "rbf":
            break
        f = l.formats
        wt, bt = layer_params(mod, l.kind)
        wq, bq = l.weight * f["weight"].lsb, l.bias * f["bias"].lsb
        ew = np.abs(wq - wt).reshape(len(wt), -1)
        assert ew.max() <= f["weight"].lsb / 2 and np.abs(bq - bt).max() <= f["bias"].lsb / 2
        x_max = np.abs(x_float).max()
        if l.kind == "subsample":
            e_acc = (np.abs(wq) * 4 * e_in + ew[:, 0] * 4 * x_max + np.abs(bq - bt)).max()
        else:
            e_acc = (np.abs(wq).reshape(len(wq), -1).sum(1) * e_in + ew.sum(1) * x_max + np.abs(bq - bt)).max()
        idx = f["index"]
        addr = np.arange(idx.code_min, idx.code_max + 1)
        e_lut = np.abs(l.lut * f["act"].lsb - TANH_A * np.tanh(TANH_S * addr * idx.lsb)).max()
        sat = TANH_A * (1 - np.tanh(TANH_S * min(-idx.min, idx.max))) if r.stats[l.name].saturations else 0.0
        bound = TANH_A * TANH_S * (e_acc + idx.lsb / 2) + e_lut + sat + 1e-5  # + float32 slack
        diff = np.abs(r.tensors[l.name] * f["act"].lsb - out.numpy().astype(np.float64)).max()
        assert diff <= bound, (l.name, diff, bound)
        bounds[l.name] = bound
        e_in, x_float = bound, out.numpy().astype(np.float64)
    # the bound is not vacuous where it matters: C1 and S2 within a few lsb
    lsb = spec.input_format.lsb
    assert bounds["C1"] < 5 * lsb and bounds["S2"] < 6 * lsb, bounds


def _checkpoint_model():
    path = REPO / "model/checkpoints/lenet5.pt"
    if not path.is_file():
        return None
    from model import checkpoint

    return checkpoint.load(path, "lenet5")[0]


def test_classification_agrees_with_the_float_model(quant_model, q8_spec, quant_images):
    imgs = quant_images[0]
    net, spec = quant_model, q8_spec
    with torch.no_grad():
        float_pred = net(preprocess(imgs, "lenet5")).argmax(1).numpy()
    if len(np.unique(float_pred)) == 1:  # the untrained net answers one class: no test of agreement
        net = _checkpoint_model()
        if net is None:
            pytest.skip("the untrained LeNet-5 is degenerate (one class) and model/checkpoints/lenet5.pt is missing")
        from quantize.calibrate import build_spec, load_config

        spec = build_spec(net, load_config("q8"), imgs)
        with torch.no_grad():
            float_pred = net(preprocess(imgs, "lenet5")).argmax(1).numpy()
    pred = Emulator(spec).run(imgs).predictions
    assert (pred == float_pred).mean() >= 0.97


# --------------------------------------------------------------------------- CLIs


def test_run_cli(q8_spec, q8_spec_dir, quant_images, tmp_path, capsys):
    imgs = np.concatenate([quant_images[0][:6], extreme_images()[:3]])
    np.save(tmp_path / "imgs.npy", imgs)
    out = tmp_path / "sub" / "golden.npz"
    assert qrun.main(["--spec", str(q8_spec_dir), "--images", str(tmp_path / "imgs.npy"), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    want = Emulator(q8_spec).run(imgs)
    with np.load(out) as z:
        assert set(z.files) == set(SHAPES) | {"scores", "predictions"}
        for k in SHAPES:
            assert np.array_equal(z[k], want.tensors[k]), k
        assert np.array_equal(z["scores"], want.scores) and np.array_equal(z["predictions"], want.predictions)
    assert sorted(p.name for p in out.parent.iterdir()) == ["golden.npz"]  # no temporary left


@pytest.mark.parametrize("arr, words", [
    (np.zeros((2, 27, 27), np.uint8), ["shape (2, 27, 27)"]),
    (np.zeros((2, 28, 28), np.float32), ["dtype float32"]),
    (np.zeros(5, np.uint8), ["shape (5,)"]),
])
def test_run_cli_bad_images(arr, words, q8_spec_dir, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", arr)
    out = tmp_path / "out.npz"
    assert qrun.main(["--spec", str(q8_spec_dir), "--images", str(tmp_path / "bad.npy"), "--out", str(out)]) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --images") and all(w in lines[0] for w in words), cap.err
    assert cap.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy"]


def test_run_cli_missing_and_archive(q8_spec_dir, tmp_path, capsys):
    out = tmp_path / "out.npz"
    assert qrun.main(["--spec", str(q8_spec_dir), "--images", str(tmp_path / "none.npy"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    np.savez(tmp_path / "arch.npz", a=np.zeros((1, 28, 28), np.uint8))
    assert qrun.main(["--spec", str(q8_spec_dir), "--images", str(tmp_path / "arch.npz"), "--out", str(out)]) == 2
    assert "archive" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_run_cli_subprocess(q8_spec_dir, quant_images, tmp_path, run_module):
    np.save(tmp_path / "imgs.npy", quant_images[0][:2])
    r = run_module("quantize.run", "--spec", q8_spec_dir, "--images", tmp_path / "imgs.npy", "--out", tmp_path / "g.npz")
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "g.npz") as z:
        assert z["C1"].shape == (2, 6, 28, 28) and z["predictions"].shape == (2,)


def test_evaluate_json(q8_spec, q8_spec_dir, mnist_dir, capsys):
    assert qevaluate.main(["--spec", str(q8_spec_dir), "--json", "--limit", "200", "--data", str(mnist_dir)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    res = json.loads(out[0])
    assert res["images"] == 200 and 0 <= res["error_rate"] <= 1 and res["images_per_s"] > 0
    assert set(res["saturations"]) == {l.name for l in q8_spec.layers}
    for v in res["saturations"].values():
        assert set(v) == {"acc_overflows", "saturations"} and v["acc_overflows"] == 0
    test = model.data.load("test", data=mnist_dir)
    pred = Emulator(q8_spec).run(test.images[:200], keep=False).predictions
    assert res["errors"] == int((pred != test.labels[:200]).sum())
    assert res["error_rate"] == res["errors"] / 200


def test_evaluate_text_and_bad_limit(q8_spec_dir, mnist_dir, capsys):
    assert qevaluate.main(["--spec", str(q8_spec_dir), "--limit", "50", "--data", str(mnist_dir)]) == 0
    assert "test error" in capsys.readouterr().out
    for bad in ("0", "-5"):
        assert qevaluate.main(["--spec", str(q8_spec_dir), "--limit", bad, "--data", str(mnist_dir)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and "--limit" in err[0]
