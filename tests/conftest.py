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
