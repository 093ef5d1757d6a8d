"""The integer kernels of the accelerator, and the only ones: every result is an exact integer.

Kernels take and return integer torch tensors (int32 where the analytic bound fits, else int64).
Convolution, locally connected layers, dense layers and pooling sums run on float BLAS when an
analytic bound proves every partial sum exact in that float type (|sum| < 2**24 for float32,
2**53 for float64) and on int64 otherwise; :func:`exact_dtype` makes the choice. Rounding and
saturation are :meth:`QFormat.requantize` (``quantize/qformat.py``). The arithmetic is specified
in ``docs/quantspec.md``; ``hw/`` implements the same.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .qformat import QFormat, shift_round

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


def _bias_max(bias, n: int) -> np.ndarray:
    """|bias| per output map: a per-map bias (O) or the largest of an untied one (O x OH x OW)."""
    b = np.abs(np.asarray(bias, dtype=np.int64))
    return b.reshape(n, -1).max(1) if b.ndim > 1 else np.broadcast_to(b, (n,))


# --------------------------------------------------------------------------- analytic bounds


def conv_bound(w, bias, x_max_abs: int) -> int:
    """Largest |partial sum| of a conv/dense/local layer: sum|w| * max|x| + |bias|, maxed.

    ``w`` is O x ... (conv, dense) or O x OH x OW x ... (local: one weight set per position, the
    bound takes the worst); ``bias`` is per map (O) or per unit (O x OH x OW)."""
    w = np.abs(np.asarray(w, dtype=np.int64))
    n = len(w)
    if w.ndim == 6:  # local: worst position
        w = w.reshape(n, w.shape[1] * w.shape[2], -1).sum(2).max(1)
    else:
        w = w.reshape(n, -1).sum(1)
    return int((w * int(x_max_abs) + _bias_max(bias, n)).max(initial=0))


def subsample_bound(coef, bias, x_max_abs: int, kernel: int = 2) -> int:
    """Largest |value| of a pooling sum: |coef| * k * k * max|x| + |bias|."""
    coef = np.abs(np.asarray(coef, np.int64))
    return int((coef * kernel * kernel * int(x_max_abs) + _bias_max(bias, len(coef))).max(initial=0))


# --------------------------------------------------------------------------- sums of products


def _pad(x: torch.Tensor, pad: int, pad_code: int) -> torch.Tensor:
    return F.pad(x, (pad, pad, pad, pad), value=pad_code) if pad else x


def _add_bias(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Add a bias at acc lsb: per map (O) or untied (O x OH x OW) to N x O x OH x OW."""
    b = bias.to(y.dtype)
    return y + (b[None] if b.ndim == 3 else b[None, :, None, None])


def _unfold_int(x: torch.Tensor, k: int, stride: int = 1) -> torch.Tensor:
    """N x C x H x W -> N x (C*K*K) x L patches (rows c, u, v; columns i, j), any dtype."""
    n, c = x.shape[:2]
    p = x.unfold(2, k, stride).unfold(3, k, stride)  # n c oh ow k k
    return p.permute(0, 1, 4, 5, 2, 3).reshape(n, c * k * k, -1)


def conv2d(x, w, bias, x_max_abs: int, allow_float: bool = True, *, stride: int = 1, pad: int = 0,
           pad_code: int = 0) -> torch.Tensor:
    """2-D convolution (cross-correlation) of codes: N x C x H x W by O x C x K x K.

    The input is first surrounded by ``pad`` rows and columns of the code ``pad_code``; outputs are
    taken every ``stride`` positions: side ``(n + 2 pad - K) // stride + 1``. ``bias`` is already at
    the accumulator's lsb, per map (O) or per unit (O x OH x OW). Entries of ``w`` outside the
    connection table are zero, so the table costs nothing here. Returns the exact sums (before any
    overflow).
    """
    bound = conv_bound(w, bias, max(int(x_max_abs), abs(int(pad_code))))
    dtype = exact_dtype(bound, allow_float)
    x, w, bias = tensor(x), tensor(w), tensor(bias)
    o, _, k, _ = w.shape
    if dtype is torch.int64:
        x = _pad(x.to(torch.int64), pad, pad_code)
        n, _, h, wd = x.shape
        cols = _unfold_int(x, k, stride)  # N, C*K*K, L
        y = torch.einsum("ncl,oc->nol", cols, w.to(torch.int64).reshape(o, -1))
        y = y.reshape(n, o, (h - k) // stride + 1, (wd - k) // stride + 1)
        return _add_bias(y, bias)
    x = _pad(x.to(dtype), pad, pad_code)
    if bias.ndim == 1:
        return _as_int(F.conv2d(x, w.to(dtype), bias.to(dtype), stride=stride), bound)
    return _as_int(_add_bias(F.conv2d(x, w.to(dtype), None, stride=stride), bias), bound)


def local2d(x, w, bias, x_max_abs: int, allow_float: bool = True, *, stride: int = 1, pad: int = 0,
            pad_code: int = 0) -> torch.Tensor:
    """Locally connected layer: like :func:`conv2d` but with a weight set per output position,
    ``w`` of shape O x OH x OW x C x K x K; every input map is read. Exact."""
    bound = conv_bound(w, bias, max(int(x_max_abs), abs(int(pad_code))))
    dtype = exact_dtype(bound, allow_float)
    x, w, bias = tensor(x), tensor(w), tensor(bias)
    o, oh, ow, c, k, _ = w.shape
    x = _pad(x.to(dtype), pad, pad_code)
    cols = _unfold_int(x, k, stride)  # N, C*K*K, OH*OW
    y = torch.einsum("ncl,olc->nol", cols, w.to(dtype).reshape(o, oh * ow, c * k * k))
    y = _add_bias(y.reshape(len(x), o, oh, ow), bias)
    return y if dtype is torch.int64 else _as_int(y, bound)


def dense(x, w, bias, x_max_abs: int, allow_float: bool = True) -> torch.Tensor:
    """``x @ w.T + bias`` on codes: N x I by O x I; exact."""
    bound = conv_bound(w, bias, x_max_abs)
    dtype = exact_dtype(bound, allow_float)
    x, w, bias = tensor(x), tensor(w), tensor(bias)
    if dtype is torch.int64:
        return x.to(torch.int64) @ w.to(torch.int64).T + bias.to(torch.int64)
    return _as_int(torch.addmm(bias.to(dtype), x.to(dtype), w.to(dtype).T), bound)


# --------------------------------------------------------------------------- pooling


def _select(x: torch.Tensor, source) -> torch.Tensor:
    return x if source is None else x[:, tensor(np.asarray(source, np.int64))]


def window_sum(x: torch.Tensor, k: int, allow_float: bool = True) -> torch.Tensor:
    """Sum of each k x k block (stride k; trailing rows/columns that fill no block are dropped)."""
    n, c, h, w = x.shape
    if x.is_floating_point() and allow_float:  # sums of integers, no division: exact
        return F.avg_pool2d(x, k, divisor_override=1)
    oh, ow = h // k, w // k
    return x[:, :, : oh * k, : ow * k].reshape(n, c, oh, k, ow, k).sum(dim=(3, 5))


def subsample(x, coef, bias, x_max_abs: int, source=None, allow_float: bool = True, *,
              kernel: int = 2) -> torch.Tensor:
    """Sum of each k x k block (stride k) times the per-map coefficient plus the per-map bias
    (at acc lsb): ``subsample`` and ``avgpool`` (whose bias is zero).

    ``source[j]`` is the input map of output map j (identity when None). Exact.
    """
    bound = subsample_bound(coef, bias, x_max_abs, kernel)
    dtype = exact_dtype(bound, allow_float)
    x, coef, bias = _select(tensor(x), source), tensor(coef), tensor(bias)
    s = window_sum(x.to(dtype), kernel, allow_float)
    y = s * coef.to(dtype)[None, :, None, None] + bias.to(dtype)[None, :, None, None]
    return _as_int(y, bound)


def maxpool(x, kernel: int, source=None) -> torch.Tensor:
    """Largest code of each k x k block (stride k), on codes of any integer dtype."""
    x = _select(tensor(x), source)
    n, c, h, w = x.shape
    oh, ow = h // kernel, w // kernel
    return x[:, :, : oh * kernel, : ow * kernel].reshape(n, c, oh, kernel, ow, kernel).amax(dim=(3, 5))


def rbf_scores(x, centres) -> torch.Tensor:
    """RBF as a dot product: with +-1 centres, ||x-c||^2 = ||x||^2 - 2 x.c + n, so the nearest
    centre has the largest score x.c. Exact int64, N x classes."""
    return tensor(x).to(torch.int64) @ tensor(centres).to(torch.int64).T


# --------------------------------------------------------------------------- outputs


def requantize(codes, src_frac: int, fmt: QFormat) -> tuple[torch.Tensor, int]:
    """Shift/round/saturate codes with ``src_frac`` fraction bits into ``fmt``; returns (codes, clipped)."""
    out, n = fmt.requantize(tensor(codes).to(torch.int64).numpy(), src_frac)
    return torch.from_numpy(out), n


def lut(codes, index_fmt: QFormat, table) -> torch.Tensor:
    """Look codes of ``index_fmt`` up in ``table`` (entry 0 is the code ``index_fmt.code_min``)."""
    return tensor(table)[tensor(codes).to(torch.int64) - index_fmt.code_min]


def activation(acc, acc_frac: int, index_fmt: QFormat, table) -> tuple[torch.Tensor, int]:
    """Accumulator -> LUT address (requantize with the index format's rounding and SAT) -> state."""
    idx, clipped = requantize(acc, acc_frac, index_fmt)
    return lut(idx, index_fmt, table), clipped


def output(acc, acc_frac: int, activation_name: str | None, formats: dict, table=None) -> tuple[torch.Tensor, int]:
    """A layer's output codes from its accumulators, and how many were clipped.

    Table activations: :func:`activation`. ``relu``: ``requantize(max(acc, 0), acc_frac, act)``;
    ``None``: ``requantize(acc, acc_frac, act)`` (the act format's rounding and overflow).
    """
    if table is not None:
        return activation(acc, acc_frac, formats["index"], table)
    acc = tensor(acc).to(torch.int64)
    if activation_name == "relu":
        acc = acc.clamp(min=0)
    return requantize(acc, acc_frac, formats["act"])


def output_inside(accs: np.ndarray, acc_frac: int, activation_name: str | None, formats: dict,
                  has_table: bool) -> np.ndarray:
    """For each accumulator value: True where :func:`output` does not clip (saturate or wrap)."""
    fmt = formats["index"] if has_table else formats["act"]
    v = np.asarray(accs, np.int64)
    if not has_table and activation_name == "relu":
        v = np.maximum(v, 0)
    r = shift_round(v, acc_frac - fmt.frac, fmt.rounding)
    return (r >= fmt.code_min) & (r <= fmt.code_max)


def argmax(scores) -> torch.Tensor:
    """Class = index of the first largest score (ties go to the lowest index, as in the hardware)."""
    return tensor(scores).argmax(dim=1)  # torch returns the first maximal index
