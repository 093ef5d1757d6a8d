"""Bit-accurate integer model of the accelerator: ``Emulator(spec).run(images)``.

Every layer computes exact integers as specified in docs/quantspec.md, through the kernels of
:mod:`quantize.ops`. The result keeps every layer's integer tensor (golden vectors for the RTL
testbenches) and per-layer overflow/saturation counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from model.data import check_images

from . import ops
from .qformat import shift_round
from .spec import LayerSpec, QuantSpec


@dataclass
class LayerStats:
    acc_overflows: int = 0  # accumulator values outside the acc format (wrapped): a spec bug
    saturations: int = 0  # LUT addresses clipped to the index format's range (SAT)

    def to_dict(self) -> dict:
        return {"acc_overflows": self.acc_overflows, "saturations": self.saturations}


@dataclass
class Result:
    predictions: np.ndarray  # N, int64 class
    scores: np.ndarray  # N x 10, int64 (RBF dot products, or the last layer's accumulators)
    tensors: dict[str, np.ndarray]  # "input" and every layer name -> int64 codes
    stats: dict[str, LayerStats] = field(default_factory=dict)

    def saturations(self) -> dict[str, dict]:
        return {k: v.to_dict() for k, v in self.stats.items()}


class _Prepared:
    """Per-layer constants derived once from the spec: tensors, bounds, the memoised activation."""

    def __init__(self, l: LayerSpec, table_bits: int):
        f = l.formats
        self.in_max = max(-f["input"].code_min, f["input"].code_max)
        self.weight = torch.from_numpy(l.weight)
        self.bias = torch.from_numpy(l.bias_acc())
        if l.kind in ("conv", "dense"):
            bound = ops.conv_bound(l.weight, l.bias_acc(), self.in_max)
        elif l.kind == "subsample":
            bound = ops.subsample_bound(l.weight, l.bias_acc(), self.in_max)
        else:
            bound = int(np.abs(l.weight).sum(1).max()) * self.in_max
        # the accumulator provably never leaves its format: no overflow check needed
        self.acc_safe = bound <= f["acc"].code_max
        self.table = None
        if l.has_activation and f["acc"].width <= table_bits:
            # Memoise the activation over every accumulator value: one gather per output instead
            # of the shift/round/clip/lookup chain. The table is computed *with* ops.activation,
            # so the integers are the same. Beyond (lo, hi) the LUT address saturates
            # (requantize is monotonic): that gives the saturation count.
            acc_fmt, idx_fmt = f["acc"], f["index"]
            accs = np.arange(acc_fmt.code_min, acc_fmt.code_max + 1, dtype=np.int64)
            states, _ = ops.activation(accs, acc_fmt.frac, idx_fmt, l.lut)
            idx = shift_round(accs, acc_fmt.frac - idx_fmt.frac, idx_fmt.rounding)
            inside = np.flatnonzero((idx >= idx_fmt.code_min) & (idx <= idx_fmt.code_max))
            self.table = states.to(torch.int32)
            self.lo, self.hi = int(accs[inside[0]]), int(accs[inside[-1]])
            self.offset = acc_fmt.code_min


class Emulator:
    """Runs a :class:`QuantSpec` on uint8 images.

    Parameters
    ----------
    spec : QuantSpec
    allow_float : bool
        Use float32/float64 BLAS where the analytic bound proves the sums exact (the fast path);
        ``False`` forces the int64 path and the unmemoised activation everywhere. Both give
        identical integers (tested).
    """

    #: largest accumulator (bits) whose activation is memoised as one table (acc -> state)
    TABLE_BITS = 22

    def __init__(self, spec: QuantSpec, allow_float: bool = True):
        self.spec = spec
        self.allow_float = allow_float
        self._prep = {l.name: _Prepared(l, self.TABLE_BITS if allow_float else 0) for l in spec.layers}
        self._input_lut = torch.from_numpy(spec.input_lut.astype(np.int32))

    def input_codes(self, images: np.ndarray) -> torch.Tensor:
        """uint8 N x 28 x 28 (padded with grey level 0) or N x 32 x 32 -> input codes N x 1 x S x S."""
        images = check_images(images)
        s = self.spec
        if images.shape[1] != s.input_size:
            p = s.input_pad
            images = np.pad(images, ((0, 0), (p, p), (p, p)))
        return self._input_lut[torch.from_numpy(images).long()][:, None]

    def layer(self, l: LayerSpec, x: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        """One layer on codes ``x`` (N x C x H x W, or N x I for dense/rbf)."""
        f, p = l.formats, self._prep[l.name]
        if l.kind in ("dense", "rbf") and x.ndim > 2:
            x = x.reshape(len(x), -1)
        if l.kind == "conv":
            acc = ops.conv2d(x, p.weight, p.bias, p.in_max, self.allow_float)
        elif l.kind == "subsample":
            acc = ops.subsample(x, p.weight, p.bias, p.in_max, l.source, self.allow_float)
        elif l.kind == "dense":
            acc = ops.dense(x, p.weight, p.bias, p.in_max, self.allow_float)
        else:
            acc = ops.rbf_scores(x, p.weight)
        if not p.acc_safe:
            wrapped, n = f["acc"].overflow_codes(acc.to(torch.int64).numpy())
            acc = torch.from_numpy(wrapped)
            stats.acc_overflows += n
        if not l.has_activation:
            y = acc.to(torch.int64)
        elif p.table is not None:
            stats.saturations += int(torch.count_nonzero(acc < p.lo)) + int(torch.count_nonzero(acc > p.hi))
            y = p.table.index_select(0, (acc - p.offset).flatten()).view(acc.shape)
        else:
            y, n = ops.activation(acc, f["acc"].frac, f["index"], l.lut)
            stats.saturations += n
        if y.ndim == 4 and l.out_size == 1:
            y = y.reshape(len(y), -1)  # C5: 120 maps of 1x1 -> a vector
        return y

    def run(self, images: np.ndarray, keep: bool = True, batch: int = 2000) -> Result:
        """Run the network. ``keep=False`` drops the per-layer tensors (faster, less memory)."""
        images = check_images(np.asarray(images))
        stats = {l.name: LayerStats() for l in self.spec.layers}
        preds, scores, tensors = [], [], {}
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                x = self.input_codes(images[i:i + batch])
                if keep:
                    tensors.setdefault("input", []).append(x[:, 0].to(torch.int64).numpy())
                for l in self.spec.layers:
                    x = self.layer(l, x, stats[l.name])
                    if keep:
                        tensors.setdefault(l.name, []).append(x.to(torch.int64).numpy())
                scores.append(x.to(torch.int64).numpy())
                preds.append(ops.argmax(x).numpy())
        if not preds:
            return Result(np.zeros(0, np.int64), np.zeros((0, 10), np.int64), {}, stats)
        tensors = {k: np.concatenate(v) for k, v in tensors.items()}
        return Result(np.concatenate(preds).astype(np.int64), np.concatenate(scores), tensors, stats)
