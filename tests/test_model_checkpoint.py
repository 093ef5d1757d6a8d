"""model.checkpoint, model.train and model.evaluate: round trips, bad checkpoints, determinism, CLIs."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import model.data
import model.evaluate
import model.train
from model import checkpoint
from model.data import Split
from model.lenet import ARCHS, LeNet
from model.util import UserError


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip(tmp_path, arch):
    torch.manual_seed(3)
    net = LeNet(arch)
    path = tmp_path / "sub/dir" / f"{arch}.pt"  # parents are created
    checkpoint.save(path, net, seed=3, epochs=1, distort=False, test_error=0.5, command="python -m model.train")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind

    loaded, meta = checkpoint.load(path, arch)
    assert same_state(loaded.state_dict(), net.state_dict())
    assert not loaded.training
    assert loaded.config == net.config
    assert meta["config"] == {"arch": arch, "input_size": net.config.input_size}
    assert meta["format"] == checkpoint.FORMAT and meta["version"] == checkpoint.VERSION
    assert (meta["seed"], meta["epochs"], meta["distort"], meta["test_error"]) == (3, 1, False, 0.5)
    assert meta["command"] == "python -m model.train"
    assert meta["path"] == str(path) and "state_dict" not in meta

    x = torch.zeros(2, 1, net.config.input_size, net.config.input_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x), rtol=0, atol=0)

    again, _ = checkpoint.load(path)  # arch read from the checkpoint
    assert again.config.arch == arch


def test_save_is_a_copy(tmp_path):
    net = LeNet("lenet1")
    path = tmp_path / "a.pt"
    checkpoint.save(path, net, seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    assert same_state(checkpoint.load(path)[0].state_dict(), before)


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "a.pt"
    checkpoint.save(path, LeNet("lenet1"), seed=1)
    checkpoint.save(path, LeNet("lenet4"), seed=2)
    assert checkpoint.load(path)[1]["seed"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


@pytest.fixture
def lenet4_ckpt(tmp_path):
    path = tmp_path / "lenet4.pt"
    checkpoint.save(path, LeNet("lenet4"), seed=0)
    return path


def test_wrong_arch(lenet4_ckpt):
    with pytest.raises(UserError, match=r"is a lenet4 checkpoint, not lenet5"):
        checkpoint.load(lenet4_ckpt, "lenet5")


def test_unknown_arch(lenet4_ckpt):
    with pytest.raises(UserError, match=r"unknown --arch 'lenet9'"):
        checkpoint.load(lenet4_ckpt, "lenet9")


def test_nonexistent(tmp_path):
    with pytest.raises(UserError, match=r"checkpoint .*nope\.pt: no such file"):
        checkpoint.load(tmp_path / "nope.pt", "lenet5")
    with pytest.raises(UserError, match="no such file"):
        checkpoint.load(tmp_path)  # a directory
    with pytest.raises(UserError, match="give --checkpoint or --arch"):
        checkpoint.load(None)


@pytest.mark.parametrize("content", [b"", b"garbage\x00\xff" * 100, b"PK\x03\x04" + b"\x00" * 60])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "g.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"not a readable PyTorch file"):
        checkpoint.load(path, "lenet5")


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(print, protocol=2))  # weights_only: no arbitrary globals
    with pytest.raises(UserError, match=r"not a readable PyTorch file"):
        checkpoint.load(path)


@pytest.mark.parametrize("blob", [
    {"state_dict": {"w": torch.zeros(3)}},
    LeNet("lenet5").state_dict(),
    torch.zeros(3),
    [1, 2, 3],
    {"format": "something-else", "config": {"arch": "lenet5"}},
])
def test_foreign_torch_file(tmp_path, blob):
    path = tmp_path / "foreign.pt"
    torch.save(blob, path)
    with pytest.raises(UserError, match=r"not a lenet-hw checkpoint"):
        checkpoint.load(path, "lenet5")


def test_newer_version(tmp_path):
    path = tmp_path / "new.pt"
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION + 1, "config": {"arch": "lenet5"}}, path)
    with pytest.raises(UserError, match="newer than this tool"):
        checkpoint.load(path)


@pytest.mark.parametrize("config,state,msg", [
    ({"arch": "lenet5", "input_size": 32}, lambda: LeNet("lenet4").state_dict(), "weights do not fit lenet5"),
    ({"arch": "lenet5", "input_size": 32}, lambda: {}, "weights do not fit lenet5"),
    ({"arch": "lenet5", "colour": True}, lambda: LeNet("lenet5").state_dict(), "weights do not fit lenet5"),
    ({"arch": "lenet7"}, lambda: {}, "unknown --arch 'lenet7'"),
])
def test_inconsistent_checkpoint(tmp_path, config, state, msg):
    path = tmp_path / "bad.pt"
    torch.save({"format": checkpoint.FORMAT, "version": 1, "config": config, "state_dict": state()}, path)
    with pytest.raises(UserError, match=msg):
        checkpoint.load(path)


def test_evaluate_cli_wrong_arch(lenet4_ckpt, run_module, mnist_dir):
    r = run_module("model.evaluate", "--arch", "lenet5", "--checkpoint", lenet4_ckpt, "--data", mnist_dir)
    assert r.returncode == 2
    assert r.stdout == "" and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0] == f"error: checkpoint {lenet4_ckpt} is a lenet4 checkpoint, not lenet5"


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_evaluate_cli_rejects_bad_limit(lenet4_ckpt, mnist_dir, capsys, limit):
    assert model.evaluate.main(["--checkpoint", str(lenet4_ckpt), "--data", str(mnist_dir), "--limit", limit]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: --limit must be a positive number of images"]


# --------------------------------------------------------------------------- determinism and training


def test_construction_is_seeded():
    for arch in ARCHS:
        torch.manual_seed(11)
        a = LeNet(arch).state_dict()
        torch.manual_seed(11)
        b = LeNet(arch).state_dict()
        torch.manual_seed(12)
        c = LeNet(arch).state_dict()
        assert same_state(a, b), arch
        assert not same_state(a, c), arch


@pytest.fixture
def torch_globals(monkeypatch):
    """train() sets process-wide torch state; put it back afterwards.

    One thread, and train()'s set_num_threads(2) disabled: on a 2-core machine that may be running a
    training job, two spinning threads make a few batches take seconds instead of 0.1 s.
    """
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rng = torch.get_rng_state()
    torch.set_num_threads(1)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    yield
    monkeypatch.undo()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)
    torch.set_rng_state(rng)


@pytest.fixture(scope="module")
def tiny(mnist_dir):
    """The first 256 training and 200 test images."""
    model.data._CACHE.clear()
    train, test = model.data.load("train", mnist_dir), model.data.load("test", mnist_dir)
    model.data._CACHE.clear()
    return {"train": Split(train.images[:256].copy(), train.labels[:256].copy()),
            "test": Split(test.images[:200].copy(), test.labels[:200].copy())}


@pytest.fixture
def tiny_data(monkeypatch, tiny, torch_globals):
    calls = []

    def load(split="test", data=None):
        calls.append((split, data))
        return tiny[split]

    monkeypatch.setattr(model.data, "load", load)
    return calls


@pytest.mark.parametrize("arch,distort", [("lenet5", False), ("lenet1", True)])
def test_train_is_deterministic(tiny_data, arch, distort):
    kw = dict(epochs=1, distort_on=distort, batch=32, progress=False)
    a = model.train.train(arch, seed=5, data_dir="somewhere", **kw)
    b = model.train.train(arch, seed=5, **kw)
    c = model.train.train(arch, seed=6, **kw)
    assert tiny_data == [("train", "somewhere"), ("train", None), ("train", None)]
    assert isinstance(a, LeNet) and not a.training
    assert same_state(a.state_dict(), b.state_dict())
    assert not same_state(a.state_dict(), c.state_dict())
    torch.manual_seed(5)
    init = LeNet(arch).state_dict()
    assert not same_state(a.state_dict(), init)  # it did train
    if arch == "lenet5":  # masked C3 weights stay zero through Adam
        c3 = a.layers[2]
        assert (c3.weight[c3.mask == 0] == 0).all()


def test_distort_keeps_background_and_shape():
    x = torch.full((4, 1, 32, 32), -0.1)
    gen = torch.Generator().manual_seed(0)
    y = model.train.distort(x, gen, -0.1)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x)


def test_train_cli_end_to_end(tiny_data, tmp_path, capsys):
    out = tmp_path / "ckpt/lenet1.pt"
    argv = ["--arch", "lenet1", "--epochs", "1", "--seed", "4", "--out", str(out), "--no-progress"]
    assert model.train.main(argv) == 0
    assert [s for s, _ in tiny_data] == ["train", "test"]
    stdout = capsys.readouterr().out
    assert stdout.startswith("lenet1: test error ") and f"saved {out}" in stdout
    net, meta = checkpoint.load(out, "lenet1")
    assert (meta["seed"], meta["epochs"], meta["distort"], meta["batch"]) == (4, 1, False, 32)
    assert meta["test_errors"] == round(meta["test_error"] * 200)
    assert meta["command"] == "python -m model.train " + " ".join(argv)
    result = model.evaluate.evaluate(net)
    assert result["errors"] == meta["test_errors"] and result["images"] == 200


@pytest.mark.parametrize("argv,msg", [
    (["--arch", "lenet7"], "unknown --arch 'lenet7'"),
    (["--arch", "lenet5", "--epochs", "0"], "--epochs and --batch must be positive"),
    (["--arch", "lenet5", "--epochs", "-1"], "--epochs and --batch must be positive"),
    (["--arch", "lenet5", "--batch", "0"], "--epochs and --batch must be positive"),
])
def test_train_cli_rejects_before_training(monkeypatch, capsys, argv, msg):
    def no_training(*a, **k):
        raise AssertionError("train() must not be reached")

    monkeypatch.setattr(model.train, "train", no_training)
    assert model.train.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {msg}" + (" (choose lenet1, lenet4, lenet5, boosted-lenet4, zip1989, net1, net2, net3, net4, net5)" if "arch" in msg else "")]


def test_train_cli_unknown_arch_subprocess(run_module):
    r = run_module("model.train", "--arch", "lenet7", "--no-progress")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.splitlines() == ["error: unknown --arch 'lenet7' (choose lenet1, lenet4, lenet5, boosted-lenet4, zip1989, net1, net2, net3, net4, net5)"]


# --------------------------------------------------------------------------- evaluate


def test_evaluate_function(tiny_data):
    net = LeNet("lenet5")
    r = model.evaluate.evaluate(net, limit=50)
    assert r["arch"] == "lenet5" and r["images"] == 50 and 0 <= r["errors"] <= 50
    assert r["error_rate"] == r["errors"] / 50
    pred = model.evaluate.predict(net, np.zeros((0, 28, 28), np.uint8))
    assert pred.shape == (0,)


def _check_json(stdout: str, arch: str, checkpoint_path: str, images: int) -> dict:
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout
    obj = json.loads(lines[0])
    assert {"arch", "checkpoint", "images", "errors", "error_rate"} <= obj.keys()
    assert obj["arch"] == arch and obj["images"] == images and obj["checkpoint"] == checkpoint_path
    assert obj["error_rate"] == pytest.approx(obj["errors"] / images)
    return obj


def test_evaluate_cli_json_committed(run_module, mnist_dir):
    path = checkpoint.default_path("lenet5")
    if not path.is_file():
        pytest.skip(f"no committed checkpoint {path}")
    r = run_module("model.evaluate", "--arch", "lenet5", "--json", "--limit", "200", "--data", mnist_dir)
    assert r.returncode == 0, r.stderr
    obj = _check_json(r.stdout, "lenet5", str(path), 200)
    assert obj["error_rate"] < 0.05  # a trained network


def test_evaluate_cli_json_tmp_checkpoint(run_module, mnist_dir, tmp_path):
    path = tmp_path / "l1.pt"
    checkpoint.save(path, LeNet("lenet1"), seed=0)
    r = run_module("model.evaluate", "--checkpoint", path, "--json", "--limit", "200", "--data", mnist_dir)
    assert r.returncode == 0, r.stderr
    _check_json(r.stdout, "lenet1", str(path), 200)
