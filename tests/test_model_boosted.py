"""model.boosted: the ensemble as one network, assembling three LeNet-4s, the boosting filters,
deterministic training, the committed checkpoint and the refusals."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import model.data
import model.train
from model import boosted, checkpoint
from model.data import Split
from model.lenet import ALL_ARCHS, C3_TABLE_LENET4, LeNet, LeNetConfig, input_geometry
from model.util import UserError

NAME = "boosted-lenet4"


def totals(net: LeNet) -> dict:
    rows = net.param_table()
    return {k: sum(r[k] for r in rows) for k in ("params", "connections", "macs")}


def test_layers_are_three_lenet4s():
    ens, one = LeNet(NAME), LeNet("lenet4")
    assert NAME in ALL_ARCHS and ens.config.input_size == 32 and input_geometry(NAME) == (28, 2)
    assert [r["output"] for r in ens.param_table()] == ["12@28x28", "24@14x14", "48@10x10", "48@5x5", "360@1x1",
                                                        "10@1x1"]
    t, o = totals(ens), totals(one)
    assert t["macs"] == 3 * o["macs"] == 748_704
    # F6 sums the members' outputs: one set of 10 biases instead of three
    assert t["params"] == 3 * o["params"] - 20 == 152_074
    assert t["connections"] == 3 * o["connections"] - 20
    c3, f5 = ens.defs[2].table, ens.defs[4].table
    for m in range(3):  # block diagonal: member m reads only its own maps
        assert c3[16 * m:16 * (m + 1)] == tuple(tuple(i + 8 * m for i in row) for row in C3_TABLE_LENET4)
        assert set(f5[120 * m:120 * (m + 1)]) == {tuple(range(16 * m, 16 * (m + 1)))}
    assert ens.defs[4].kind == "conv" and ens.defs[4].kernel == 5 and ens.defs[4].out_size == 1


def test_assemble_adds_the_members_logits():
    torch.manual_seed(7)
    members = [LeNet("lenet4").eval() for _ in range(3)]
    for m in members:  # away from the initialisation, masked-out weights not zero
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
    ens = boosted.assemble(members)
    assert ens.config.arch == NAME and not ens.training
    x = torch.rand(16, 1, 32, 32) * 1.275 - 0.1
    with torch.no_grad():
        torch.testing.assert_close(ens(x), sum(m(x) for m in members), rtol=0, atol=1e-5)
    # the dense F5 (120 x 400, features in (map, row, column) order) is the 5x5 conv's block
    f5 = ens.layers[4].weight[120:240, 16:32]
    assert torch.equal(f5.reshape(120, 400), members[1].layers[4].weight)
    own3, own5 = torch.zeros(48, 24, dtype=torch.bool), torch.zeros(360, 48, dtype=torch.bool)
    for m in range(3):
        own3[16 * m:16 * (m + 1), 8 * m:8 * (m + 1)] = True
        own5[120 * m:120 * (m + 1), 16 * m:16 * (m + 1)] = True
    assert (ens.layers[2].weight[~own3] == 0).all() and (ens.layers[4].weight[~own5] == 0).all()


@pytest.mark.parametrize("members", [lambda: [LeNet("lenet4")] * 2, lambda: [LeNet("lenet4")] * 2 + [LeNet("lenet5")]])
def test_assemble_refuses_other_members(members):
    with pytest.raises(UserError, match="assemble needs 3 lenet4 networks"):
        boosted.assemble(members())


# --------------------------------------------------------------------------- filtering


class Constant(nn.Module):
    """A 'net' that always answers ``cls`` (logit 10 against 0)."""

    def __init__(self, cls: int):
        super().__init__()
        self.cls = cls

    def forward(self, x):
        out = torch.zeros(len(x), 10)
        out[:, self.cls] = 10.0
        return out


class Ink(nn.Module):
    """Answers 7 for a mostly inked image, else 3."""

    def forward(self, x):
        out = torch.zeros(len(x), 10)
        ink = x.mean((1, 2, 3)) > 0.5
        out[ink, 7], out[~ink, 3] = 10.0, 10.0
        return out


def test_balanced_and_disagree():
    gen = torch.Generator().manual_seed(0)
    iw, ir = boosted.balanced(torch.arange(5), torch.arange(12), gen)
    assert len(iw) == len(ir) == 5 and set(iw.tolist()) == set(range(5)) and len(set(ir.tolist())) == 5
    iw, ir = boosted.balanced(torch.arange(9), torch.arange(4), gen)
    assert len(iw) == len(ir) == 4 and len(set(iw.tolist())) == 4 and max(iw) < 9
    assert boosted.disagree(torch.tensor([1, 2, 3]), torch.tensor([1, 5, 3])).tolist() == [False, True, False]


def test_second_set_is_half_wrong_half_right():
    # 30 blank digits: labels 0..9; the first net always says 3, so it is right on the 3s only
    x = torch.full((30, 1, 32, 32), model.data.BACKGROUND)
    y = torch.arange(30) % 10
    gen = torch.Generator().manual_seed(1)
    xs, ys, found = boosted.second_set(Constant(3), x, y, 2000, margin=8.0, keep=0.5, gen=gen)
    assert found["risky2"] == 27  # the 3s are classified with margin 10: never drawn as wrong candidates
    assert found["wrong"] > 1000 and found["right"] > 0
    n = len(ys) // 2
    assert len(ys) == 2 * n == 2 * min(found["wrong"], found["right"])
    assert (ys[:n] != 3).all() and (ys[n:] == 3).all()  # wrong first, then as many right
    assert xs.shape == (2 * n, 1, 32, 32)


def test_third_set_is_where_the_nets_disagree():
    # 10 blank digits (label 0) and 10 inked ones (label 1): the nets disagree on the inked ones only
    x = torch.cat([torch.full((10, 1, 32, 32), v) for v in (model.data.BACKGROUND, model.data.FOREGROUND)])
    y = torch.tensor([0] * 10 + [1] * 10)
    xs, ys = boosted.third_set(Constant(3), Ink(), x, y, 400, torch.Generator().manual_seed(2))
    assert 150 < len(ys) < 250 and (ys == 1).all()
    assert not boosted.third_set(Constant(3), Constant(3), x, y, 100, torch.Generator().manual_seed(2))[1].numel()


# --------------------------------------------------------------------------- training


@pytest.fixture
def tiny_train(monkeypatch, mnist_dir):
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    model.data._CACHE.clear()
    train = model.data.load("train", mnist_dir)
    model.data._CACHE.clear()
    tiny = Split(train.images[:256].copy(), train.labels[:256].copy())
    monkeypatch.setattr(model.data, "load", lambda split="train", data=None: tiny)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


def test_train_boosted_is_deterministic(tiny_train):
    kw = dict(progress=False, pool2=3000, pool3=400, epochs2=1, epochs3=1, margin=1e9, keep_right=0.5)
    a, info = boosted.train_boosted(5, **kw)  # member 1: the committed LeNet-4
    b, _ = boosted.train_boosted(5, **kw)
    c, _ = boosted.train_boosted(6, **kw)
    assert a.config.arch == NAME and not a.training
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.layers[0].weight[4:], c.layers[0].weight[4:])
    first, _ = checkpoint.load(checkpoint.default_path("lenet4"), "lenet4")
    assert torch.equal(a.layers[0].weight[:4], first.layers[0].weight) and torch.equal(c.layers[0].weight[:4],
                                                                                       first.layers[0].weight)
    assert info["set2"] == 2 * min(info["wrong"], info["right"]) > 0 and info["set3"] > 0
    assert info["recipe"]["pool2"] == 3000 and info["member1"]["checkpoint"] == "model/checkpoints/lenet4.pt"
    with pytest.raises(UserError, match="unknown recipe key 'epochs'"):
        boosted.train_boosted(0, first=first, epochs=3)


def test_train_cli_refuses_single_network_options(capsys):
    assert model.train.main(["--arch", NAME, "--epochs", "3"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: boosted-lenet4: --epochs does not apply (its recipe is model.boosted.RECIPE)"]


# --------------------------------------------------------------------------- the committed checkpoint


@pytest.fixture(scope="module")
def committed():
    path = checkpoint.default_path(NAME)
    if not path.is_file():
        pytest.skip(f"no committed checkpoint {path}")
    return checkpoint.load(path, NAME)


def test_committed_checkpoint(committed, mnist_dir):
    net, meta = committed
    assert net.config == LeNetConfig(NAME) and meta["command"] == "python -m model.train --arch boosted-lenet4"
    assert meta["seed"] == 0 and meta["test_error"] <= 0.007 and "train_seconds" not in meta
    b = meta["boosting"]
    assert b["set2"] == 2 * min(b["wrong"], b["right"]) and b["recipe"] == boosted.RECIPE
    lenet4, _ = checkpoint.load(checkpoint.default_path("lenet4"), "lenet4")
    assert torch.equal(net.layers[0].weight[:4], lenet4.layers[0].weight)  # member 1: the committed LeNet-4
    from model.evaluate import predict

    test = model.data.load("test", mnist_dir)
    assert (predict(net, test.images[:300]) != test.labels[:300]).sum() <= 2


def test_lenet4_checkpoint_refused_as_boosted(run_module):
    path = checkpoint.default_path("lenet4")
    with pytest.raises(UserError, match=r"is a lenet4 checkpoint, not boosted-lenet4$"):
        checkpoint.load(path, NAME)
    r = run_module("model.evaluate", "--arch", NAME, "--checkpoint", path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"error: checkpoint {path} is a lenet4 checkpoint, not boosted-lenet4"]
