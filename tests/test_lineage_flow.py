"""The 1989 networks through the flow's commands: ``quantize.evaluate`` and ``sim`` read the test
digits of the spec's network (its own split by default, ``--split`` to choose), and ``sim --images
all`` takes every one of them. A q8 spec of a random net1 stands in for a trained one (fast)."""
from __future__ import annotations

import json

import pytest
import torch

import quantize.evaluate as qevaluate
from model import data, usps
from model.lenet import LeNet, LeNetConfig
from model.util import UserError


@pytest.fixture(scope="module")
def net1_spec(mnist_dir):
    from quantize.calibrate import build_spec, load_config

    torch.manual_seed(0)
    return build_spec(LeNet(LeNetConfig("net1")), load_config("q8"), data.load("train", mnist_dir).images[:200])


@pytest.fixture(scope="module")
def net1_spec_dir(net1_spec, tmp_path_factory):
    return net1_spec.save(tmp_path_factory.mktemp("quant") / "net1-q8")


@pytest.mark.parametrize("split, name, n", [("own", "digits480", 160), ("usps", "usps", 2007),
                                            ("mnist", "mnist", 10000)])
def test_test_images_of_a_spec(net1_spec, mnist_dir, split, name, n):
    got, digits = qevaluate.test_images(net1_spec, split, mnist_dir)
    assert (got, len(digits.labels)) == (name, n)
    if name != "mnist":
        ref = usps.load(name, "test", mnist_dir)
        assert (digits.images == ref.images).all() and (digits.labels == ref.labels).all()


def test_imported_or_28x28_specs_keep_mnist(q8_spec, mnist_dir):
    assert qevaluate.test_images(q8_spec, "own", mnist_dir)[0] == "mnist"
    with pytest.raises(UserError, match=r"^--split usps: 16x16 digits, but lenet5 reads 28x28 \(use --split mnist\)$"):
        qevaluate.test_images(q8_spec, "usps", mnist_dir)
    with pytest.raises(UserError, match=r"^unknown --split 'emnist' \(choose own, mnist, usps, digits480\)$"):
        qevaluate.test_images(q8_spec, "emnist", mnist_dir)


def test_evaluate_cli_reports_the_split(net1_spec_dir, mnist_dir, capsys):
    base = ["--spec", str(net1_spec_dir), "--data", str(mnist_dir), "--json"]
    for extra, (split, n) in {(): ("digits480", 160), ("--split", "mnist", "--limit", "300"): ("mnist", 300)}.items():
        assert qevaluate.main(base + list(extra)) == 0
        obj = json.loads(capsys.readouterr().out)
        assert (obj["network"], obj["split"], obj["images"]) == ("net1", split, n)
    assert qevaluate.main(base[:-1]) == 0
    assert "test error on the digits480 split" in capsys.readouterr().out


def test_sim_takes_every_digit_of_the_split(net1_spec_dir, mnist_dir, sim_out, run_module):
    """``--images all`` on net1: the 160 digits of its own split, bit-exact in Verilator."""
    r = run_module("sim", "--spec", net1_spec_dir, "--images", "all", "--data", mnist_dir, "--out", sim_out,
                   "--jobs", "1", "--json", "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["images"], res["mismatches"], res["cycles_match_model"]) == (160, 0, True)
    bad = run_module("sim", "--spec", net1_spec_dir, "--images", "3", "--split", "emnist", "--data", mnist_dir,
                     "--out", sim_out)
    assert bad.returncode == 2 and bad.stderr.splitlines() == [
        "error: unknown --split 'emnist' (choose own, mnist, usps, digits480)"]
