"""quantize.calibrate and quantize.qat for LeNet-1, -4 and -5: schema-2 geometry derived from the
model (LeNet-1 takes 16x16 digits padded by 6 in C1, LeNet-4/5 28x28 padded by 2, both with the
background's code), the emulator tracking the float model layer by layer, and QAT's forward pass
computing the emulator's numbers in floating point."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model import data
from model.lenet import LeNet, input_geometry, preprocess
from quantize.calibrate import build_spec, load_config
from quantize.emulator import Emulator
from quantize.qat import QATForward

GEOMETRY = {"lenet1": ((1, 16, 16), 6, [(4, 24, 24), (4, 12, 12), (12, 8, 8), (12, 4, 4), (10, 1, 1)]),
            "lenet4": ((1, 28, 28), 2, [(4, 28, 28), (8, 14, 14), (16, 10, 10), (16, 5, 5), (120, 1, 1), (10, 1, 1)]),
            "lenet5": ((1, 28, 28), 2, [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (120, 1, 1), (84, 1, 1),
                                        (10, 1, 1)])}


@pytest.fixture(scope="module")
def nets():
    out = {}
    for arch in GEOMETRY:
        torch.manual_seed(1)
        out[arch] = LeNet(arch).eval()
    return out


@pytest.mark.parametrize("arch", list(GEOMETRY))
def test_geometry(arch, nets, quant_images):
    shape, pad, outs = GEOMETRY[arch]
    spec = build_spec(nets[arch], load_config("q8"), quant_images[0][:32])
    assert spec.input_shape == shape and spec.input_lut.shape == (1, 256) and spec.classes == 10
    assert input_geometry(arch) == (shape[1], pad)
    c1 = spec.layers[0]
    assert (c1.in_h, c1.in_w, c1.pad, c1.stride) == (shape[1], shape[2], pad, 1)
    assert c1.pad_code == spec.input_lut[0, 0] == spec.input_format.from_float(data.BACKGROUND)
    assert [l.out_shape for l in spec.layers] == outs
    assert all(l.pad == 0 for l in spec.layers[1:])
    assert [l.stride for l in spec.layers if l.kind == "subsample"] == [2, 2]


@pytest.mark.parametrize("arch", ["lenet1", "lenet4"])
def test_emulator_tracks_the_float_model(arch, nets, quant_images):
    """Each squashed layer's dequantized output stays near the float model's: the integer input,
    padding and geometry are the float model's."""
    imgs = quant_images[0][:32]
    net = nets[arch]
    spec = build_spec(net, load_config("q8"), imgs)
    r = Emulator(spec).run(imgs)
    with torch.no_grad():
        _, outs = net(preprocess(imgs, arch), return_all=True)
    for l, out in zip(spec.layers, outs):
        if not l.has_activation:
            break
        got = r.tensors[l.name] * l.out_format.lsb
        diff = np.abs(got - out.numpy().reshape(got.shape)).max()
        assert diff < 0.06, (arch, l.name, diff)


@pytest.mark.parametrize("arch", ["lenet1", "lenet4"])
@pytest.mark.parametrize("preset", ["q8", "anna"])
def test_qat_forward_is_the_emulator_in_float(arch, preset, nets, quant_images):
    imgs = quant_images[0][:32]
    net = nets[arch]
    spec = build_spec(net, load_config(preset), imgs)
    r = Emulator(spec).run(imgs)
    with torch.no_grad():
        logits = QATForward(net, spec)(torch.from_numpy(data.fit_images(imgs, spec.input_shape).copy())).numpy()
    lsb = spec.layers[-1].formats["acc"].lsb
    np.testing.assert_allclose(logits, r.scores * lsb, atol=1e-4 * max(1.0, np.abs(logits).max()))
