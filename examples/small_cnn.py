"""A small ReLU / max-pool CNN for MNIST, trained in PyTorch on the CPU (the import walk-through's model).

::

    image 1 x 28 x 28, pixel p -> (p/255 - 0.1307) / 0.3081
    Conv 1 -> 8, 5 x 5   -> 8 x 24 x 24, ReLU     200 weights
    MaxPool 2 x 2        -> 8 x 12 x 12
    Conv 8 -> 16, 5 x 5  -> 16 x 8 x 8, ReLU      3,200 weights
    MaxPool 2 x 2        -> 16 x 4 x 4
    Flatten, Linear 256 -> 10 (the class scores)  2,560 weights

5,994 parameters, 322,560 multiply-accumulates per image. Every layer is one the importer
(``python -m quantize --model``) and the hardware take: kernels up to 7 x 7, pools with stride =
kernel, no padding needed, a final dense layer whose outputs are the scores.

Nothing here knows about quantization or hardware: it is an ordinary PyTorch model, trained with
Adam and a one-cycle learning rate, deterministically (a seeded generator for the initial weights
and the batch order, deterministic algorithms, a fixed number of threads). About 13 s per epoch of
60,000 images on one core; 3 epochs give about 1% test error.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

#: the usual MNIST normalisation (mean and standard deviation of p/255 over the training set)
INPUT_MEAN = 0.1307
INPUT_STD = 0.3081


class SmallCNN(nn.Module):
    """Conv(1->8, 5x5)-ReLU-MaxPool2-Conv(8->16, 5x5)-ReLU-MaxPool2-Flatten-Linear(256->10)."""

    def __init__(self, c1: int = 8, c2: int = 16, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 4 * 4, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def normalise(images_u8: np.ndarray, mean: float = INPUT_MEAN, std: float = INPUT_STD) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float32 N x 1 x 28 x 28, ``(p/255 - mean) / std``: what the model reads
    (and what ``--input-mean``/``--input-std`` tell the importer)."""
    x = torch.from_numpy(np.array(images_u8, dtype=np.float32)) / 255.0  # a copy: MNIST arrays are read-only
    return ((x - mean) / std)[:, None]


def train(images_u8: np.ndarray, labels: np.ndarray, epochs: int = 3, seed: int = 0, batch_size: int = 64,
          max_lr: float = 4e-3, log=print) -> tuple[SmallCNN, float]:
    """Train a SmallCNN from scratch; returns (model in eval mode, training seconds).

    The result depends only on the arguments (and torch's CPU kernels): the caller should fix the
    thread count (``torch.set_num_threads``) for bit-identical weights from run to run.
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    model = SmallCNN()
    seconds = fit(model, normalise(images_u8), torch.from_numpy(labels.astype(np.int64)), epochs, seed, batch_size,
                  max_lr, log)
    return model, seconds


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 3, seed: int = 0, batch_size: int = 64,
        max_lr: float = 4e-3, log=print) -> float:
    """The training loop (Adam, one-cycle learning rate, seeded batch order; also the Brevitas
    example's): ``model`` is left in eval mode; returns the seconds it took."""
    steps_per_epoch = max(1, len(x) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=max_lr / 10)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=epochs * steps_per_epoch)
    order = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=order)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log(f"  epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f} "
            f"({time.perf_counter() - t0:.1f} s)")
    model.eval()
    return time.perf_counter() - t0


@torch.no_grad()
def test_error(model: nn.Module, images_u8: np.ndarray, labels: np.ndarray, batch: int = 2000,
               inputs=normalise) -> float:
    """Fraction of ``images_u8`` the model misclassifies (argmax of the scores); ``inputs`` turns
    uint8 images into what it reads."""
    model.eval()
    wrong = 0
    for i in range(0, len(images_u8), batch):
        pred = model(inputs(images_u8[i:i + batch])).argmax(1).numpy()
        wrong += int((pred != labels[i:i + batch]).sum())
    return wrong / len(images_u8)
