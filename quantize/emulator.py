"""Bit-accurate integer model of the accelerator: ``Emulator(spec).run(images)``.

Every layer computes exact integers as specified in docs/quantspec.md, through the kernels of
:mod:`quantize.ops`. The result keeps every layer's integer tensor (golden vectors for the RTL
testbenches) and per-layer overflow/saturation counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from model.data import fit_images

from . import ops
from .spec import LayerSpec, QuantSpec


@dataclass
class LayerStats:
    acc_overflows: int = 0  # accumulator values outside the acc format (wrapped): a spec bug
    saturations: int = 0  # outputs clipped: LUT addresses (SAT), or relu/none values outside act

    def to_dict(self) -> dict:
        return {"acc_overflows": self.acc_overflows, "saturations": self.saturations}


@dataclass
class Result:
    predictions: np.ndarray  # N, int64 class
    scores: np.ndarray  # N x classes, int64 (the last layer's wrapped accumulators)
    # "input" (N x C x H x W) and every layer name -> int64 codes: N x maps x rows x cols, or N x
    # values for dense/rbf layers and spatial layers with a 1x1 output
    tensors: dict[str, np.ndarray]
    stats: dict[str, LayerStats] = field(default_factory=dict)

    def saturations(self) -> dict[str, dict]:
        return {k: v.to_dict() for k, v in self.stats.items()}


class _Prepared:
    """Per-layer constants derived once from the spec: tensors, bounds, the memoised output."""

    def __init__(self, l: LayerSpec, table_bits: int):
        f = l.formats
        self.in_max = max(-f["input"].code_min, f["input"].code_max)
        self.table = None
        if l.kind == "maxpool":
            return
        self.weight = torch.from_numpy(l.weight)
        self.bias = torch.from_numpy(l.bias_acc())
        if l.kind in ("subsample", "avgpool"):
            bound = ops.subsample_bound(l.weight, l.bias_acc(), self.in_max, l.kernel)
        elif l.kind == "rbf":
            bound = int(np.abs(l.weight).sum(1).max()) * self.in_max
        else:
            x_max = max(self.in_max, abs(l.pad_code)) if l.pad else self.in_max
            bound = ops.conv_bound(l.weight, l.bias_acc(), x_max)
        # the accumulator provably never leaves its format: no overflow check needed
        self.acc_safe = bound <= f["acc"].code_max
        self.lut = l.lut if l.has_lut else None
        if l.has_activation and f["acc"].width <= table_bits:
            # Memoise the output over every accumulator value: one gather per output instead of
            # the shift/round/clip(/lookup) chain. The table is computed *with* ops.output, so the
            # integers are the same. Requantize is monotonic, so the values it does not clip are
            # one interval [lo, hi] of accumulators: that gives the saturation count.
            acc_fmt = f["acc"]
            accs = np.arange(acc_fmt.code_min, acc_fmt.code_max + 1, dtype=np.int64)
            out, _ = ops.output(accs, acc_fmt.frac, l.activation, f, self.lut)
            inside = np.flatnonzero(ops.output_inside(accs, acc_fmt.frac, l.activation, f, self.lut is not None))
            if len(inside) and inside[-1] - inside[0] + 1 == len(inside) and out.abs().max() <= ops.I32_MAX:
                # the narrowest integer type holding the codes: the gather writes less memory
                dtype = next(t for t in (torch.int8, torch.int16, torch.int32)
                             if torch.iinfo(t).min <= int(out.min()) and int(out.max()) <= torch.iinfo(t).max)
                self.table = out.to(dtype)
                self.lo, self.hi = int(accs[inside[0]]), int(accs[inside[-1]])
                self.offset = acc_fmt.code_min
                if self.acc_safe:
                    # the sums then give the table index acc - code_min directly: the offset is
                    # folded into the bias (the kernels' bound covers it, so still exact)
                    self.bias = self.bias - self.offset
                    self.lo, self.hi, self.offset = self.lo - self.offset, self.hi - self.offset, 0


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

    #: largest accumulator (bits) whose output is memoised as one table (acc -> code)
    TABLE_BITS = 22

    def __init__(self, spec: QuantSpec, allow_float: bool = True):
        self.spec = spec
        self.allow_float = allow_float
        self._prep = {l.name: _Prepared(l, self.TABLE_BITS if allow_float else 0) for l in spec.layers}
        lut = spec.input_lut
        self._input_lut = lut.astype(next(t for t in (np.int8, np.int16, np.int32, np.int64) if
                                          np.iinfo(t).min <= lut.min() and lut.max() <= np.iinfo(t).max))

    def fit(self, images) -> np.ndarray:
        """The images as the spec takes them: uint8 N x C x H x W (see :func:`model.data.fit_images`)."""
        return fit_images(images if isinstance(images, np.ndarray) else np.asarray(images), self.spec.input_shape)

    def input_codes(self, images) -> torch.Tensor:
        """Images (anything :meth:`fit` takes) -> input codes N x C x H x W: channel c's pixel p
        becomes ``input_lut[c, p]``."""
        images = self.fit(images)
        lut = self._input_lut
        if len(lut) == 1:
            return torch.from_numpy(lut[0][images])
        return torch.from_numpy(lut[np.arange(len(lut))[None, :, None, None], images])

    def layer(self, l: LayerSpec, x: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        """One layer on codes ``x`` (N x C x H x W, or N x I)."""
        f, p = l.formats, self._prep[l.name]
        af = self.allow_float
        if l.spatial and x.ndim == 2:
            x = x.reshape(len(x), l.in_maps, l.in_h, l.in_w)
        elif not l.spatial and x.ndim > 2:
            x = x.reshape(len(x), -1)
        if l.kind == "maxpool":
            y = ops.maxpool(x, l.kernel, l.source)
            return y.reshape(len(y), -1) if (l.out_h, l.out_w) == (1, 1) else y
        if l.kind == "conv":
            acc = ops.conv2d(x, p.weight, p.bias, p.in_max, af, stride=l.stride, pad=l.pad, pad_code=l.pad_code)
        elif l.kind == "local":
            acc = ops.local2d(x, p.weight, p.bias, p.in_max, af, stride=l.stride, pad=l.pad, pad_code=l.pad_code)
        elif l.kind in ("subsample", "avgpool"):
            acc = ops.subsample(x, p.weight, p.bias, p.in_max, l.source, af, kernel=l.kernel)
        elif l.kind == "dense":
            acc = ops.dense(x, p.weight, p.bias, p.in_max, af)
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
            y = p.table.index_select(0, (acc - p.offset if p.offset else acc).flatten()).view(acc.shape)
        else:
            y, n = ops.output(acc, f["acc"].frac, l.activation, f, p.lut)
            stats.saturations += n
        if y.ndim == 4 and (l.out_h, l.out_w) == (1, 1):
            y = y.reshape(len(y), -1)  # a 1x1 map per output map (LeNet-5's C5) -> a vector
        return y

    def run(self, images, keep: bool = True, batch: int = 2000) -> Result:
        """Run the network on uint8 images (see :func:`model.data.fit_images` for the shapes
        taken). ``keep=False`` drops the per-layer tensors (faster, less memory)."""
        images = self.fit(images)
        stats = {l.name: LayerStats() for l in self.spec.layers}
        preds, scores, tensors = [], [], {}
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                x = self.input_codes(images[i:i + batch])
                if keep:
                    tensors.setdefault("input", []).append(x.to(torch.int64).numpy())
                for l in self.spec.layers:
                    x = self.layer(l, x, stats[l.name])
                    if keep:
                        tensors.setdefault(l.name, []).append(x.to(torch.int64).numpy())
                x = x.reshape(len(x), -1).to(torch.int64)
                scores.append(x.numpy())
                preds.append(ops.argmax(x).numpy())
        if not preds:
            return Result(np.zeros(0, np.int64), np.zeros((0, self.spec.classes), np.int64), {}, stats)
        tensors = {k: np.concatenate(v) for k, v in tensors.items()}
        return Result(np.concatenate(preds).astype(np.int64), np.concatenate(scores), tensors, stats)
