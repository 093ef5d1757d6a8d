"""Shared pytest fixtures."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(__file__).resolve().parents[2] / "shared/data/mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The shared MNIST directory (``../shared/data/mnist`` beside the repo root)."""
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    missing = [n for n in names if not (MNIST_DIR / (n + ".gz")).is_file() and not (MNIST_DIR / n).is_file()]
    if missing:
        pytest.skip(f"MNIST not available in {MNIST_DIR} (missing {', '.join(missing)})")
    return MNIST_DIR


@pytest.fixture(scope="session")
def run_module():
    """Run ``python -m MODULE ARGS...`` from the repo root; returns the CompletedProcess (text)."""

    def run(module: str, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("LENET_DATA", "LENET_MNIST_MIRROR")}
        env.update(kw.pop("env", {}))
        return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=kw.pop("cwd", REPO),
                              env=env, capture_output=True, text=True, timeout=timeout, **kw)

    return run


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module of tiny emulator runs: the thread pool only costs there
    (10-100x on a busy machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- quantize/ fixtures
# Session-scoped and shared: tests must not mutate them (copy.deepcopy first).

QUANT_IMAGES = 64


@pytest.fixture(scope="session")
def quant_images(mnist_dir):
    """The first 64 MNIST test images (uint8 N x 28 x 28) and their labels."""
    import model.data

    test = model.data.load("test", data=mnist_dir)
    return test.images[:QUANT_IMAGES], test.labels[:QUANT_IMAGES]


@pytest.fixture(scope="session")
def quant_model():
    """An untrained LeNet-5 (seed 0), in eval mode."""
    import torch

    import model.lenet

    torch.manual_seed(0)
    net = model.lenet.LeNet("lenet5")
    net.eval()
    return net


@pytest.fixture(scope="session")
def q8_spec(quant_model, quant_images):
    """A q8 QuantSpec of the untrained model, calibrated on 64 test images (no training, no QAT)."""
    from quantize.calibrate import build_spec, load_config

    return build_spec(quant_model, load_config("q8"), quant_images[0], provenance={"preset": "q8", "seed": 0})


@pytest.fixture(scope="session")
def anna_spec(quant_model, quant_images):
    """An "anna"-config QuantSpec (3-bit states, 6-bit weights): build_spec only, no QAT."""
    from quantize.calibrate import build_spec, load_config

    return build_spec(quant_model, load_config("anna"), quant_images[0], provenance={"preset": "anna", "seed": 0})


@pytest.fixture(scope="session")
def q8_spec_dir(q8_spec, tmp_path_factory):
    """``q8_spec`` saved with ``spec.save``; treat as read-only (copy it to edit)."""
    return q8_spec.save(tmp_path_factory.mktemp("quant") / "lenet5-q8")


# --------------------------------------------------------------------------- sim/ fixtures
# One output directory per session: the Verilog of q8_spec_dir and the simulator builds in it are
# shared by every sim test (sim.runner reuses a build whose Verilog and options are unchanged).


@pytest.fixture(scope="session")
def sim_out(tmp_path_factory) -> Path:
    """``out`` directory for ``sim.runner.run`` / ``python -m sim --out`` (never the repo's build/)."""
    return tmp_path_factory.mktemp("sim")


@pytest.fixture(scope="session")
def sim_verilog(q8_spec_dir, sim_out) -> Path:
    """The emitted Verilog of ``q8_spec_dir`` (8 lanes), generated once into ``sim_out``; read-only."""
    from quantize import spec as qspec
    from sim.runner import prepare_verilog

    vpath, _ = prepare_verilog(qspec.load(q8_spec_dir), q8_spec_dir, 8, sim_out / f"{q8_spec_dir.resolve().name}-L8")
    return vpath
