"""Every layer kind and option of schema 2 against a naive numpy reference (plain loops, explicit
padding): quantize.ops kernels one by one, then whole hand-built networks through the Emulator on
its fast (float BLAS, memoised outputs) and int64 paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.util import UserError
from quantize import ops
from quantize.emulator import Emulator
from quantize.qformat import QFormat
from quantize.spec import LayerSpec, QuantSpec, out_extent
from quantize_nets import BITS, NET_A, NET_B, NETS, _codes, build, images_for



@pytest.fixture(autouse=True)
def _no_global_torch_state(monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)


# --------------------------------------------------------------------------- the naive reference


def ref_pad(x, pad, code):
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * pad, w + 2 * pad), code, np.int64)
    xp[:, :, pad:pad + h, pad:pad + w] = x
    return xp


def ref_sums(l: LayerSpec, x: np.ndarray) -> np.ndarray:
    """Exact accumulators (before wrapping) of one layer, by loops over output positions."""
    n = len(x)
    b = l.bias_acc()
    if l.kind in ("dense", "rbf"):
        x = x.reshape(n, -1)
        b = np.zeros(l.out_maps, np.int64) if l.kind == "rbf" else b
        return np.stack([(x * l.weight[o]).sum(1) + b[o] for o in range(l.out_maps)], 1)
    x = x.reshape(n, l.in_maps, l.in_h, l.in_w)
    oh, ow, k, s = l.out_h, l.out_w, l.kernel, l.stride
    acc = np.zeros((n, l.out_maps, oh, ow), np.int64)
    if l.kind in ("conv", "local"):
        xp = ref_pad(x, l.pad, l.pad_code)
        conns = l.connections() if l.kind == "conv" else [list(range(l.in_maps))] * l.out_maps
        for o in range(l.out_maps):
            for i in range(oh):
                for j in range(ow):
                    win = xp[:, conns[o], i * s:i * s + k, j * s:j * s + k]
                    w = l.weight[o] if l.kind == "conv" else l.weight[o, i, j]
                    bias = b[o, i, j] if b.ndim == 3 else b[o]
                    acc[:, o, i, j] = bias + (win * w[conns[o]]).reshape(n, -1).sum(1)
        return acc
    src = l.sources()
    for o in range(l.out_maps):
        for i in range(oh):
            for j in range(ow):
                win = x[:, src[o], i * k:(i + 1) * k, j * k:(j + 1) * k].reshape(n, -1)
                acc[:, o, i, j] = win.max(1) if l.kind == "maxpool" else b[o] + l.weight[o] * win.sum(1)
    return acc


def ref_layer(l: LayerSpec, x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(output codes, acc overflows, saturations) as docs/quantspec.md specifies them."""
    acc = ref_sums(l, x)
    if l.kind == "maxpool":
        y, over, sat = acc, 0, 0
    else:
        af = l.formats["acc"]
        wrapped = (acc - af.code_min) % (1 << af.width) + af.code_min
        over = int((wrapped != acc).sum())
        if not l.has_activation:
            y, sat = wrapped, 0
        elif l.has_lut:
            idx, sat = l.formats["index"].requantize(wrapped, af.frac)
            y = l.lut[idx - l.formats["index"].code_min]
        else:
            y, sat = l.formats["act"].requantize(np.maximum(wrapped, 0) if l.activation == "relu" else wrapped, af.frac)
    if y.ndim == 4 and y.shape[2:] == (1, 1):
        y = y.reshape(len(y), -1)
    return y, over, sat


def ref_run(spec: QuantSpec, images: np.ndarray):
    c = spec.input_shape[0]
    x = np.stack([spec.input_lut[ch][images[:, ch]] for ch in range(c)], 1)
    out = {"input": x}
    stats = {}
    for l in spec.layers:
        x, over, sat = ref_layer(l, x)
        out[l.name] = x
        stats[l.name] = {"acc_overflows": over, "saturations": sat}
    return out, stats


@pytest.mark.parametrize("bits", list(BITS))
@pytest.mark.parametrize("net", list(NETS))
def test_emulator_matches_reference(net, bits):
    rng = np.random.default_rng([ord(net), len(bits), ord(bits[1])])
    shape, plan = NETS[net]
    xb, wb, bb = BITS[bits]
    spec = build(rng, shape, plan, xb=xb, wb=wb, bb=bb)
    imgs = images_for(rng, shape)
    want, stats = ref_run(spec, imgs)
    for allow_float in (True, False):
        r = Emulator(spec, allow_float=allow_float).run(imgs, batch=4)
        assert list(r.tensors) == list(want)
        for k in want:
            assert r.tensors[k].dtype == np.int64 and r.tensors[k].shape == want[k].shape, k
            assert np.array_equal(r.tensors[k], want[k]), (k, allow_float)
        assert r.saturations() == stats
        last = want[spec.layers[-1].name]
        assert r.scores.shape == (len(imgs), spec.classes) and np.array_equal(r.scores, last)
        assert np.array_equal(r.predictions, np.argmax(last, axis=1))
    assert sum(s["acc_overflows"] for s in stats.values()) == 0  # exact accumulators


@pytest.mark.parametrize("net", list(NETS))
def test_narrow_accumulators_wrap_like_the_reference(net):
    rng = np.random.default_rng(7 + ord(net))
    shape, plan = NETS[net]
    names = [f"L{i}" for i, p in enumerate(plan) if p["kind"] != "maxpool"]
    spec = build(rng, shape, plan, narrow=names)
    imgs = images_for(rng, shape, 8)
    want, stats = ref_run(spec, imgs)
    assert sum(s["acc_overflows"] for s in stats.values()) > 0
    fast, slow = Emulator(spec).run(imgs), Emulator(spec, allow_float=False).run(imgs)
    for r in (fast, slow):
        for k in want:
            assert np.array_equal(r.tensors[k], want[k]), k
        assert r.saturations() == stats


def test_every_rounding_and_relu_wrap():
    """relu/none outputs with each rounding mode, SAT and WRAP act formats, against the reference."""
    rng = np.random.default_rng(11)
    shape, plan = NET_A
    for mode in ("TRN", "TRN_INF", "TRN_AWAY", "RND_MIN_INF", "RND_CONV_ODD"):
        spec = build(rng, shape, plan, rounding=mode)
        imgs = images_for(rng, shape, 4)
        want, stats = ref_run(spec, imgs)
        for af in (True, False):
            r = Emulator(spec, allow_float=af).run(imgs)
            assert all(np.array_equal(r.tensors[k], want[k]) for k in want), mode
            assert r.saturations() == stats


# --------------------------------------------------------------------------- kernels one by one


PATHS = [(8, 8, 16, torch.float32), (16, 20, 30, torch.float64), (22, 32, 50, torch.int64)]


def _conv_layer(x, w, b, stride, pad, pad_code, kind="conv"):
    n, c, h, wd = x.shape
    k = w.shape[-1]
    return LayerSpec(name="X", kind=kind, in_maps=c, out_maps=len(w), in_h=h, in_w=wd, kernel=k,
                     formats={"acc": QFormat(64, 0), "bias": QFormat(64, 0)}, weight=w, bias=b,
                     stride=stride, pad=pad, pad_code=pad_code)


@pytest.mark.parametrize("xb, wb, bb, dtype", PATHS)
@pytest.mark.parametrize("stride, pad, untied", [(1, 0, False), (2, 1, True), (1, 3, False), (2, 2, True)])
def test_conv2d_stride_pad_untied(xb, wb, bb, dtype, stride, pad, untied):
    rng = np.random.default_rng(xb + 3 * pad + stride)
    x, w = _codes(rng, xb, (2, 3, 9, 7)), _codes(rng, wb, (4, 3, 3, 3))
    pad_code = int(_codes(rng, xb, 1)[0])
    oh, ow = out_extent(9, 3, stride, pad), out_extent(7, 3, stride, pad)
    b = _codes(rng, bb, (4, oh, ow) if untied else (4,))
    x_max = 1 << (xb - 1)
    assert ops.exact_dtype(ops.conv_bound(w, b, x_max)) is dtype
    want = ref_sums(_conv_layer(x, w, b, stride, pad, pad_code), x)
    for af in (True, False):
        got = ops.conv2d(x, w, b, x_max, af, stride=stride, pad=pad, pad_code=pad_code).to(torch.int64).numpy()
        assert got.shape == (2, 4, oh, ow) and np.array_equal(got, want), af


@pytest.mark.parametrize("xb, wb, bb, dtype", PATHS)
@pytest.mark.parametrize("stride, pad, untied", [(1, 0, False), (2, 1, True), (1, 2, True)])
def test_local2d(xb, wb, bb, dtype, stride, pad, untied):
    rng = np.random.default_rng(xb + 5 * pad + stride)
    x = _codes(rng, xb, (3, 2, 6, 8))
    oh, ow = out_extent(6, 3, stride, pad), out_extent(8, 3, stride, pad)
    w = _codes(rng, wb, (3, oh, ow, 2, 3, 3))
    b = _codes(rng, bb, (3, oh, ow) if untied else (3,))
    pad_code = int(_codes(rng, xb, 1)[0])
    x_max = 1 << (xb - 1)
    assert ops.exact_dtype(ops.conv_bound(w, b, x_max)) is dtype
    want = ref_sums(_conv_layer(x, w, b, stride, pad, pad_code, "local"), x)
    for af in (True, False):
        got = ops.local2d(x, w, b, x_max, af, stride=stride, pad=pad, pad_code=pad_code).to(torch.int64).numpy()
        assert np.array_equal(got, want), af


@pytest.mark.parametrize("xb, wb, bb, dtype", PATHS)
@pytest.mark.parametrize("k", [2, 3])
def test_pools(xb, wb, bb, dtype, k):
    rng = np.random.default_rng(xb * k)
    x = _codes(rng, xb, (2, 3, 10, 8))  # trailing rows/columns dropped for k = 3
    coef, b = _codes(rng, wb, (5,)), _codes(rng, bb, (5,))
    source = [0, 2, 2, 1, 0]
    x_max = 1 << (xb - 1)
    for kind in ("subsample", "maxpool"):
        l = LayerSpec(name="P", kind=kind, in_maps=3, out_maps=5, in_h=10, in_w=8, kernel=k, stride=k,
                      formats={"acc": QFormat(64, 0), "bias": QFormat(64, 0)}, weight=coef, bias=b, source=source)
        want = ref_sums(l, x)
        for af in (True, False):
            if kind == "maxpool":
                got = ops.maxpool(torch.from_numpy(x), k, source)
            else:
                got = ops.subsample(x, coef, b, x_max, source, af, kernel=k)
            assert np.array_equal(got.to(torch.int64).numpy(), want), (kind, af)


def test_output_functions():
    idx, act = QFormat(5, 2, True, "RND", "SAT"), QFormat(4, 1, False, "TRN", "SAT")
    acc = np.arange(-300, 300, dtype=np.int64)
    f = {"index": idx, "act": act}
    y, n = ops.output(acc, 4, "relu", f)
    want, wn = act.requantize(np.maximum(acc, 0), 4)
    assert np.array_equal(y.numpy(), want) and n == wn > 0
    y, n = ops.output(acc, 4, None, f)
    want, wn = act.requantize(acc, 4)
    assert np.array_equal(y.numpy(), want) and n == wn > 0
    inside = ops.output_inside(acc, 4, None, f, False)
    assert int((~inside).sum()) == wn
    table = np.arange(32) % 16
    y, n = ops.output(acc, 4, "tanh", f, table)
    a, an = idx.requantize(acc, 4)
    assert np.array_equal(y.numpy(), table[a - idx.code_min]) and n == an
    assert int((~ops.output_inside(acc, 4, "tanh", f, True)).sum()) == an


# --------------------------------------------------------------------------- images


def test_multichannel_input_lut_and_image_shapes():
    rng = np.random.default_rng(5)
    spec = build(rng, *NET_A)
    emu = Emulator(spec)
    imgs = images_for(rng, (3, 11, 9), 3)
    codes = emu.input_codes(imgs).numpy()
    for c in range(3):
        assert np.array_equal(codes[:, c], spec.input_lut[c][imgs[:, c]])
    one = emu.run(imgs[0])  # a single C x H x W image
    assert one.predictions.shape == (1,) and np.array_equal(one.scores[0], emu.run(imgs).scores[0])
    for bad in (np.zeros((2, 11, 9), np.uint8), np.zeros((2, 3, 9, 11), np.uint8), np.zeros((2, 28, 28), np.uint8)):
        with pytest.raises(UserError) as e:
            emu.run(bad)
        assert str(e.value) == f"images: shape {bad.shape}, the spec takes 3 x 11 x 9"
    with pytest.raises(UserError, match="dtype float32"):
        emu.run(imgs.astype(np.float32))


def test_small_spec_takes_resampled_digits():
    """A 1 x H x W spec with H, W < 28 takes MNIST digits, area-resampled by model.data.resample."""
    from model.data import resample

    rng = np.random.default_rng(9)
    spec = build(rng, (1, 12, 10), NET_B[1][:1] + [dict(kind="dense", out_maps=2)])
    digits = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    r = Emulator(spec).run(digits)
    assert np.array_equal(r.tensors["input"][:, 0], spec.input_lut[0][resample(digits, 12, 10)])
