"""model.lenet: architectures against the published parameter/connection counts, masks, RBF, CLI."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

from model.lenet import (ARCHS, C3_TABLE_LENET5, RBF, LeNet, LeNetConfig, Subsample, TableConv, preprocess,
                         rbf_centres, summary)
from model.util import UserError

# LeCun et al. 1998, section II.B
LENET5_PARAMS = {"C1": 156, "S2": 12, "C3": 1516, "S4": 32, "C5": 48120, "F6": 10164, "OUT": 0}
LENET5_CONNECTIONS = {"C1": 122304, "S2": 5880, "C3": 151600, "S4": 2000, "C5": 48120, "F6": 10164}

# Table I of the 1998 paper: X marks which S2 feature maps (rows) each C3 map (columns) combines.
TABLE_I = """
X...XXX..XXXX.XX
XX...XXX..XXXX.X
XXX...XXX..X.XXX
.XXX..XXXX..X.XX
..XXX..XXXX.XX.X
...XXX..XXXX.XXX
"""


def layer(model: LeNet, name: str) -> dict:
    return next(r for r in model.param_table() if r["layer"] == name)


def test_lenet5_counts_match_paper():
    m = LeNet("lenet5")
    for name, n in LENET5_PARAMS.items():
        assert layer(m, name)["params"] == n, name
    for name, n in LENET5_CONNECTIONS.items():
        assert layer(m, name)["connections"] == n, name
    assert m.trainable_params() == 60000
    assert sum(r["connections"] for r in m.param_table()) == 340908  # the paper's total, incl. the RBF
    assert [r["output"] for r in m.param_table()] == ["6@28x28", "6@14x14", "16@10x10", "16@5x5", "120@1x1",
                                                      "84@1x1", "10@1x1"]


def test_lenet1_counts_match_paper():
    m = LeNet("lenet1")
    assert m.trainable_params() == 2578
    assert sum(r["connections"] for r in m.param_table()) == 98442
    assert m.config.input_size == 28


def test_lenet4_counts():
    m = LeNet("lenet4")
    assert sum(r["connections"] for r in m.param_table()) == 262306  # "about 260,000"
    assert m.config.input_size == 32


def _free_entries(module: nn.Module) -> int:
    """Trainable scalars actually used by a layer module (masked-out C3 weights excluded)."""
    if isinstance(module, TableConv):
        k = module.weight.shape[-1]
        return int(module.mask.sum()) * k * k + module.bias.numel()
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ARCHS)
def test_layerdef_params_equal_module_params(arch):
    m = LeNet(arch)
    for d, module in zip(m.defs, m.layers):
        assert d.params() == _free_entries(module), (arch, d.name)
    assert m.trainable_params() == sum(_free_entries(x) for x in m.layers)
    # every parameter of the torch module belongs to one layer; the RBF has none
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for x in m.layers for p in x.parameters())
    rbf = [x for x in m.layers if isinstance(x, RBF)]
    assert all(not list(x.parameters()) for x in rbf)


def test_c3_table_is_table_i():
    rows = [r for r in TABLE_I.split() if r]
    expected = [tuple(i for i in range(6) if rows[i][c] == "X") for c in range(16)]
    assert [tuple(t) for t in C3_TABLE_LENET5] == expected
    m = LeNet("lenet5")
    c3 = m.layers[2]
    assert isinstance(c3, TableConv)
    mask = np.zeros((16, 6))
    for o, ins in enumerate(expected):
        mask[o, list(ins)] = 1
    np.testing.assert_array_equal(c3.mask.numpy(), mask)
    assert int(c3.mask.sum()) == 60


def test_masked_weights_get_zero_gradient():
    torch.manual_seed(0)
    m = LeNet("lenet5")
    x = preprocess(np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8), "lenet5")
    loss = nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    c3 = m.layers[2]
    off = c3.mask == 0
    assert (c3.weight.grad[off] == 0).all()
    assert (c3.weight[off] == 0).all()  # initialised to zero too
    assert (c3.weight.grad[~off].abs().sum((-1, -2)) > 0).all()  # and the connected ones do learn


def test_masked_weights_do_not_affect_output():
    torch.manual_seed(1)
    m = LeNet("lenet5")
    x = preprocess(np.random.default_rng(1).integers(0, 256, (2, 28, 28), dtype=np.uint8), "lenet5")
    before = m(x)
    with torch.no_grad():
        m.layers[2].weight[m.layers[2].mask == 0] = 123.0
    torch.testing.assert_close(m(x), before)


def test_rbf_centres():
    c = rbf_centres()
    assert c.shape == (10, 84) and c.dtype == np.float32
    assert set(np.unique(c)) == {-1.0, 1.0}
    for i, j in itertools.combinations(range(10), 2):
        assert (c[i] != c[j]).sum() >= 4, (i, j)  # pairwise distinct (by a margin)
    m = LeNet("lenet5")
    np.testing.assert_array_equal(m.layers[-1].centres.numpy(), c)


def test_rbf_output_is_minus_distance():
    m = LeNet("lenet5")
    centres = torch.from_numpy(rbf_centres())
    # the RBF layer alone: its own centre is at distance 0, and is the nearest
    d = m.layers[-1](centres)
    assert torch.equal(torch.diagonal(d), torch.zeros(10))
    assert torch.equal(d.argmin(1), torch.arange(10))


EXPECTED_SHAPES = {
    "lenet1": [(3, 4, 24, 24), (3, 4, 12, 12), (3, 12, 8, 8), (3, 12, 4, 4), (3, 10)],
    "lenet4": [(3, 4, 28, 28), (3, 8, 14, 14), (3, 16, 10, 10), (3, 16, 5, 5), (3, 120), (3, 10)],
    "lenet5": [(3, 6, 28, 28), (3, 6, 14, 14), (3, 16, 10, 10), (3, 16, 5, 5), (3, 120), (3, 84), (3, 10)],
}


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes(arch):
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    x = preprocess(images, arch)
    size = LeNetConfig(arch).input_size
    assert x.shape == (3, 1, size, size) and x.dtype == torch.float32
    assert float(x.min()) >= -0.1 - 1e-6 and float(x.max()) <= 1.175 + 1e-6
    m = LeNet(arch).eval()
    with torch.no_grad():
        logits, outs = m(x, return_all=True)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    assert [tuple(o.shape) for o in outs] == EXPECTED_SHAPES[arch]
    for d, o in zip(m.defs, outs):  # squashed outputs stay within +-1.7159
        if d.squash:
            assert float(o.abs().max()) <= 1.7159 + 1e-5
    # a 32x32 input (already padded) gives the same result as the 28x28 one
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    torch.testing.assert_close(preprocess(padded, arch), x)


def test_preprocess_lenet1_background_border():
    x = preprocess(np.full((1, 28, 28), 255, np.uint8), "lenet1")
    assert x.shape == (1, 1, 28, 28)
    torch.testing.assert_close(x[0, 0, 6:22, 6:22], torch.full((16, 16), 1.175))
    assert float(x[0, 0, :6].max()) == pytest.approx(-0.1)


def test_preprocess_rejects_bad_input():
    with pytest.raises(UserError, match="dtype float64"):
        preprocess(np.zeros((1, 28, 28)), "lenet5")
    with pytest.raises(UserError, match="shape"):
        preprocess(np.zeros((1, 20, 20), np.uint8), "lenet5")


def test_subsample_is_scaled_sum():
    from model.lenet import _layers

    d = next(x for x in _layers("lenet4") if x.name == "S2")
    s = Subsample(d)
    with torch.no_grad():
        s.coef.copy_(torch.arange(1.0, 9.0))
        s.bias.fill_(0.5)
    x = torch.arange(4 * 4 * 4, dtype=torch.float32).reshape(1, 4, 4, 4)
    with torch.no_grad():
        y = s(x)
    assert y.shape == (1, 8, 2, 2)
    j = 5  # reads C1 map 5 // 2
    expected = x[0, j // 2, :2, :2].sum() * (j + 1) + 0.5
    assert float(y[0, j, 0, 0]) == pytest.approx(float(expected))


def test_unknown_arch():
    with pytest.raises(UserError, match="unknown --arch 'lenet7'"):
        LeNet("lenet7")


def test_summary_cli(run_module):
    r = run_module("model.lenet", "--arch", "lenet5", "--summary")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == summary(LeNet("lenet5"))
    lines = r.stdout.splitlines()
    assert lines[0] == "lenet5: input 1@32x32"
    assert lines[1].split() == ["layer", "kind", "output", "params", "connections", "MACs"]
    c3 = next(line.split() for line in lines if line.startswith("C3"))
    assert c3[:5] == ["C3", "conv", "16@10x10", "1,516", "151,600"]
    assert lines[-1].split()[:3] == ["total", "60,000", "340,908"]


def test_summary_cli_unknown_arch(run_module):
    r = run_module("model.lenet", "--arch", "lenet7")
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown --arch 'lenet7'"), r.stderr
