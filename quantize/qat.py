"""Quantization-aware fine-tuning (straight-through estimator) for low-bit presets.

The forward pass follows the QuantSpec arithmetic in floating point: weights and biases rounded to
their formats, the pre-activation rounded and clipped to the LUT address format, the squash
rounded to the state format. Gradients pass straight through the rounding (and are zero where a
value was clipped). Formats are taken from a calibrated spec and held fixed while training.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from model import data
from model.progress import Progress
from model.lenet import LeNet, A as TANH_A, S as TANH_S

from .qformat import QFormat
from .spec import QuantSpec


def fake_quant(x: torch.Tensor, fmt: QFormat) -> torch.Tensor:
    """Round to ``fmt`` (half to even) and clip, with a straight-through gradient inside the range."""
    scale = 2.0 ** fmt.frac
    q = torch.clamp(torch.round(x * scale), fmt.code_min, fmt.code_max) / scale
    inside = (x >= fmt.min) & (x <= fmt.max)
    return torch.where(inside, x + (q - x).detach(), q.detach() + 0 * x)


class QATForward(torch.nn.Module):
    """LeNet forward pass with the spec's quantization in the loop (the model's weights train)."""

    def __init__(self, model: LeNet, spec: QuantSpec):
        super().__init__()
        self.model, self.spec = model, spec
        vals = spec.input_format.to_float(spec.input_lut).astype(np.float32)
        self.register_buffer("input_values", torch.from_numpy(vals))

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        """``images_u8``: uint8 N x C x H x W as the spec takes them (:func:`model.data.fit_images`)."""
        c = self.input_values.shape[0]
        x = self.input_values[torch.arange(c)[None, :, None, None], images_u8.long()]
        for d, m, l in zip(self.model.defs, self.model.layers, self.spec.layers):
            f = l.formats
            if d.kind in ("dense", "rbf") and x.ndim > 2:
                x = x.flatten(1)
            if d.kind == "rbf":
                x = m(x)
                continue
            if d.kind == "conv":
                if l.pad:
                    value = float(f["input"].to_float(np.int64(l.pad_code)))
                    x = F.pad(x, (l.pad,) * 4, value=value)
                a = F.conv2d(x, fake_quant(m.masked_weight(), f["weight"]), fake_quant(m.bias, f["bias"]),
                             stride=l.stride)
            elif d.kind == "subsample":
                if m.expand:
                    x = x[:, m.source]
                k = l.kernel
                a = F.avg_pool2d(x, k) * float(k * k) * fake_quant(m.coef, f["weight"])[None, :, None, None] \
                    + fake_quant(m.bias, f["bias"])[None, :, None, None]
            else:
                a = F.linear(x, fake_quant(m.weight, f["weight"]), fake_quant(m.bias, f["bias"]))
            if l.has_activation:
                a = fake_quant(a, f["index"])
                x = fake_quant(TANH_A * torch.tanh(TANH_S * a), f["act"])
            else:
                x = a
            if l.spatial and (l.out_h, l.out_w) == (1, 1):
                x = x.flatten(1)
        return -x if self.model.defs[-1].kind == "rbf" else x


def finetune(model: LeNet, spec: QuantSpec, epochs: int, lr: float = 3e-4, seed: int = 0,
             batch: int = 32, data_dir=None, progress: bool = True) -> LeNet:
    """Fine-tune ``model`` in place with ``spec``'s formats in the forward pass."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train = data.load("train", data_dir)
    imgs = torch.from_numpy(data.fit_images(train.images, spec.input_shape).copy())
    labels = torch.from_numpy(train.labels.astype(np.int64))
    net = QATForward(model, spec)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = math.ceil(len(imgs) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    bar = Progress(epochs * steps, "batch", f"QAT epoch 1/{epochs}", enabled=progress)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(imgs), generator=gen)
        seen = wrong = 0
        t0 = time.perf_counter()
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            logits = net(imgs[idx])
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            wrong += int((logits.detach().argmax(1) != labels[idx]).sum())
            if i % 100 == 0:
                bar.describe(f"QAT epoch {epoch + 1}/{epochs}", err=f"{100 * wrong / seen:.2f}%",
                             img_s=f"{seen / (time.perf_counter() - t0):.0f}")
            bar.update(1)
    bar.close()
    model.eval()
    return model
