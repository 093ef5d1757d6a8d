"""The integer kernels of the accelerator, and the only ones: every result is an exact integer.

Kernels take and return integer torch tensors (int32 where the analytic bound fits, else int64).
Convolution, dense and subsampling run on float BLAS when an analytic bound proves every partial
sum exact in that float type (|sum| < 2**24 for float32, 2**53 for float64) and on int64
otherwise; :func:`exact_dtype` makes the choice. Rounding and saturation are
:meth:`QFormat.requantize` (``quantize/qformat.py``). The arithmetic is specified in
``docs/quantspec.md``; ``hw/`` implements the same.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .qformat import QFormat

F32_EXACT = 1 << 24
F64_EXACT = 1 << 53
I32_MAX = (1 << 31) - 1


def exact_dtype(bound: int, allow_float: bool = True) -> torch.dtype:
    """The cheapest dtype in which integer sums up to ``bound`` in magnitude are exact."""
    if allow_float and bound < F32_EXACT:
        return torch.float32
    if allow_float and bound < F64_EXACT:
        return torch.float64
    return torch.int64


def tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))


def _as_int(y: torch.Tensor, bound: int) -> torch.Tensor:
    return y.to(torch.int32 if bound <= I32_MAX else torch.int64)


def requantize(codes, src_frac: int, fmt: QFormat) -> tuple[torch.Tensor, int]:
    """Shift/round/saturate codes with ``src_frac`` fraction bits into ``fmt``; returns (codes, clipped)."""
    out, n = fmt.requantize(tensor(codes).to(torch.int64).numpy(), src_frac)
    return torch.from_numpy(out), n


def conv_bound(w, bias, x_max_abs: int) -> int:
    """Largest |partial sum| of a conv/dense: sum|w| * max|x| + |bias|, per output, maxed."""
    w = np.abs(np.asarray(w, dtype=np.int64)).reshape(len(w), -1).sum(1) * int(x_max_abs)
    return int((w + np.abs(np.asarray(bias, dtype=np.int64))).max(initial=0))


def subsample_bound(coef, bias, x_max_abs: int) -> int:
    return int((np.abs(np.asarray(coef, np.int64)) * 4 * int(x_max_abs) + np.abs(np.asarray(bias, np.int64))).max(initial=0))


def conv2d(x, w, bias, x_max_abs: int, allow_float: bool = True) -> torch.Tensor:
    """Valid 2-D convolution (cross-correlation, stride 1) of codes: N x C x H x W by O x C x K x K.

    ``bias`` is already at the accumulator's lsb. Entries of ``w`` outside the connection table are
    zero, so the table costs nothing here. Returns the exact sums (before any overflow).
    """
    bound = conv_bound(w, bias, x_max_abs)
    dtype = exact_dtype(bound, allow_float)
    x, w, bias = tensor(x), tensor(w), tensor(bias)
    if dtype is torch.int64:
        n, c, h, wd = x.shape
        o, _, k, _ = w.shape
        cols = _unfold_int(x.to(torch.int64), k)  # N, C*K*K, L
        y = torch.einsum("ncl,oc->nol", cols, w.to(torch.int64).reshape(o, -1)) + bias.to(torch.int64)[None, :, None]
        return y.reshape(n, o, h - k + 1, wd - k + 1)
    return _as_int(F.conv2d(x.to(dtype), w.to(dtype), bias.to(dtype)), bound)


def _unfold_int(x: torch.Tensor, k: int) -> torch.Tensor:
    n, c, h, w = x.shape
    p = x.unfold(2, k, 1).unfold(3, k, 1)  # n c oh ow k k
    return p.permute(0, 1, 4, 5, 2, 3).reshape(n, c * k * k, -1)


def dense(x, w, bias, x_max_abs: int, allow_float: bool = True) -> torch.Tensor:
    """``x @ w.T + bias`` on codes: N x I by O x I; exact."""
    bound = conv_bound(w, bias, x_max_abs)
    dtype = exact_dtype(bound, allow_float)
    x, w, bias = tensor(x), tensor(w), tensor(bias)
    if dtype is torch.int64:
        return x.to(torch.int64) @ w.to(torch.int64).T + bias.to(torch.int64)
    return _as_int(torch.addmm(bias.to(dtype), x.to(dtype), w.to(dtype).T), bound)


def subsample(x, coef, bias, x_max_abs: int, source=None, allow_float: bool = True) -> torch.Tensor:
    """Sum of each 2x2 block times the per-map coefficient plus the per-map bias (at acc lsb).

    ``source[j]`` is the input map of output map j (identity when None). Exact.
    """
    bound = subsample_bound(coef, bias, x_max_abs)
    dtype = exact_dtype(bound, allow_float)
    x, coef, bias = tensor(x), tensor(coef), tensor(bias)
    if source is not None:
        x = x[:, tensor(source).long()]
    n, c, h, w = x.shape
    if dtype is torch.int64:
        x = x[:, :, : h // 2 * 2, : w // 2 * 2].to(dtype)
        s = x.reshape(n, c, h // 2, 2, w // 2, 2).sum(dim=(3, 5))
    else:  # the mean of four integers times 4 is exact in binary floating point
        s = F.avg_pool2d(x.to(dtype), 2) * 4
    y = s * coef.to(dtype)[None, :, None, None] + bias.to(dtype)[None, :, None, None]
    return _as_int(y, bound)


def lut(codes, index_fmt: QFormat, table) -> torch.Tensor:
    """Look codes of ``index_fmt`` up in ``table`` (entry 0 is the code ``index_fmt.code_min``)."""
    return tensor(table)[tensor(codes).to(torch.int64) - index_fmt.code_min]


def activation(acc, acc_frac: int, index_fmt: QFormat, table) -> tuple[torch.Tensor, int]:
    """Accumulator -> LUT address (requantize with the index format's rounding and SAT) -> state."""
    idx, clipped = requantize(acc, acc_frac, index_fmt)
    return lut(idx, index_fmt, table), clipped


def rbf_scores(x, centres) -> torch.Tensor:
    """RBF as a dot product: with +-1 centres, ||x-c||^2 = ||x||^2 - 2 x.c + 84, so the nearest
    centre has the largest score x.c. Exact int64, N x 10."""
    return tensor(x).to(torch.int64) @ tensor(centres).to(torch.int64).T


def argmax(scores) -> torch.Tensor:
    """Class = index of the first largest score (ties go to the lowest index, as in the hardware)."""
    return tensor(scores).argmax(dim=1)  # torch returns the first maximal index
