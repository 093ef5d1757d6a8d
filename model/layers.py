"""Layer descriptions and their PyTorch modules, shared by every network (``model.lenet``,
``model.lineage``) and read by the quantizer (``quantize.calibrate``).

A network is a list of :class:`LayerDef` of five kinds, the ones the QuantSpec and the hardware
understand: ``conv`` (K x K, stride 1 or 2, optional padding, optional connection table, biases
per map or per unit), ``local`` (locally connected: a K x K weight set of its own at every output
position, every input map read, a bias per unit), ``subsample`` (2x2 sum times a trainable per-map
coefficient plus a trainable bias), ``dense`` and ``rbf``. Every layer with ``squash`` is followed
by f(a) = 1.7159 tanh(2a/3).

Padding: the first layer pads its input with the background value (``model.data.BACKGROUND``,
grey level 0, as the quantizer pads with the background's code); a later layer pads with 0 (the
squash's zero, code 0 in any format).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

A = 1.7159
S = 2.0 / 3.0


def squash(a: torch.Tensor) -> torch.Tensor:
    return A * torch.tanh(S * a)


def out_side(kind: str, in_size: int, kernel: int, stride: int = 1, pad: int = 0) -> int:
    """Spatial side of a layer's output: conv/local ``(n + 2 pad - K) // stride + 1`` (PyTorch's
    rule), 2x2 subsampling ``n // 2``, or 1 for dense/rbf."""
    if kind in ("conv", "local"):
        return (in_size + 2 * pad - kernel) // stride + 1
    if kind == "subsample":
        return in_size // 2
    return 1


@dataclass(frozen=True)
class LayerDef:
    name: str
    kind: str  # conv | local | subsample | dense | rbf
    in_maps: int
    out_maps: int
    in_size: int  # spatial side (1 for dense/rbf)
    kernel: int = 1
    table: tuple[tuple[int, ...], ...] | None = None  # conv only: out map -> input maps
    squash: bool = True
    stride: int = 1  # conv/local
    pad: int = 0  # conv/local: rows/columns added on each side (see the module doc for the value)
    untied: bool = False  # conv: one bias per output unit instead of one per map (local: always)

    @property
    def out_size(self) -> int:
        return out_side(self.kind, self.in_size, self.kernel, self.stride, self.pad)

    @property
    def units(self) -> int:
        """Output units (neurons) of the layer."""
        return self.out_maps * self.out_size**2

    @property
    def per_unit_bias(self) -> bool:
        return self.kind == "local" or (self.kind == "conv" and self.untied)

    def connections_per_map(self) -> list[tuple[int, ...]]:
        if self.table is not None:
            return [tuple(t) for t in self.table]
        return [tuple(range(self.in_maps))] * self.out_maps

    def fan_in(self) -> list[int]:
        """Weights each unit of each output map reads (conv/local: every kernel tap, padding too)."""
        if self.kind in ("conv", "local"):
            return [len(t) * self.kernel**2 for t in self.connections_per_map()]
        if self.kind == "subsample":
            return [self.kernel**2] * self.out_maps
        return [self.in_maps] * self.out_maps

    def params(self) -> int:
        """Free parameters: shared weights counted once, biases per map or per unit."""
        n = self.out_size**2
        biases = self.out_maps * (n if self.per_unit_bias else 1)
        if self.kind == "conv":
            return sum(self.fan_in()) + biases
        if self.kind == "local":
            return n * sum(self.fan_in()) + biases
        if self.kind == "subsample":
            return 2 * self.out_maps
        if self.kind == "dense":
            return self.in_maps * self.out_maps + self.out_maps
        return 0  # rbf: fixed centres

    def connections(self) -> int:
        """Connections, biases included (as the papers count them)."""
        n = self.out_size**2
        if self.kind in ("conv", "local"):
            return n * sum(f + 1 for f in self.fan_in())
        if self.kind == "subsample":
            return n * self.out_maps * 5
        if self.kind == "dense":
            return self.in_maps * self.out_maps + self.out_maps
        return self.in_maps * self.out_maps

    def macs(self) -> int:
        """Multiply-accumulates per image (bias adds excluded; padding taps included, as the
        hardware computes them)."""
        n = self.out_size**2
        if self.kind in ("conv", "local"):
            return n * sum(self.fan_in())
        if self.kind == "subsample":
            return n * self.out_maps  # one multiply by the coefficient per output (4 adds)
        return self.in_maps * self.out_maps


def _uniform(t: torch.Tensor, bound) -> None:
    """The paper's init: uniform in +-2.4 / fan-in (``bound`` broadcasts over ``t``)."""
    t.uniform_(-1, 1).mul_(bound)


class TableConv(nn.Module):
    """K x K convolution where output map o reads only the input maps in ``table[o]``; stride,
    padding (with ``pad_value``) and per-unit biases as the :class:`LayerDef` says."""

    def __init__(self, d: LayerDef, pad_value: float = 0.0):
        super().__init__()
        self.stride, self.pad, self.pad_value = d.stride, d.pad, float(pad_value)
        self.weight = nn.Parameter(torch.empty(d.out_maps, d.in_maps, d.kernel, d.kernel))
        n = d.out_size
        self.bias = nn.Parameter(torch.empty((d.out_maps, n, n) if d.untied else (d.out_maps,)))
        mask = torch.zeros(d.out_maps, d.in_maps)
        for o, ins in enumerate(d.connections_per_map()):
            mask[o, list(ins)] = 1.0
        self.register_buffer("mask", mask, persistent=False)
        fan_in = mask.sum(1)[:, None, None, None] * d.kernel**2
        with torch.no_grad():
            _uniform(self.weight, 2.4 / fan_in)
            self.weight.mul_(mask[:, :, None, None])
            _uniform(self.bias, (2.4 / fan_in).reshape((-1,) + (1,) * (self.bias.ndim - 1)))

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask[:, :, None, None]

    def forward(self, x):
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, value=self.pad_value)
        if self.bias.ndim == 1:
            return F.conv2d(x, self.masked_weight(), self.bias, stride=self.stride)
        return F.conv2d(x, self.masked_weight(), None, stride=self.stride) + self.bias[None]


class LocalConv(nn.Module):
    """Locally connected layer: the weights of output unit (o, i, j) are ``weight[o, i, j]``
    (C x K x K, no sharing), its bias ``bias[o, i, j]``; stride and padding as a conv."""

    def __init__(self, d: LayerDef, pad_value: float = 0.0):
        super().__init__()
        self.stride, self.pad, self.pad_value, self.kernel = d.stride, d.pad, float(pad_value), d.kernel
        n = d.out_size
        self.weight = nn.Parameter(torch.empty(d.out_maps, n, n, d.in_maps, d.kernel, d.kernel))
        self.bias = nn.Parameter(torch.empty(d.out_maps, n, n))
        fan_in = d.in_maps * d.kernel**2
        with torch.no_grad():
            _uniform(self.weight, 2.4 / fan_in)
            _uniform(self.bias, 2.4 / fan_in)

    def forward(self, x):
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, value=self.pad_value)
        o, oh, ow = self.bias.shape
        cols = F.unfold(x, self.kernel, stride=self.stride)  # N x (C K K) x (OH OW), rows (c, u, v)
        w = self.weight.reshape(o, oh * ow, -1)
        y = torch.einsum("ncl,olc->nol", cols, w)
        return y.reshape(len(x), o, oh, ow) + self.bias[None]


class Subsample(nn.Module):
    """2x2 non-overlapping sum times a trainable coefficient plus a trainable bias, per map.

    ``source[j]`` is the input map of output map j (LeNet-4 has two subsampling maps per C1 map).
    """

    def __init__(self, d: LayerDef):
        super().__init__()
        self.coef = nn.Parameter(torch.full((d.out_maps,), 0.25))
        self.bias = nn.Parameter(torch.zeros(d.out_maps))
        ratio = d.out_maps // d.in_maps
        self.register_buffer("source", torch.arange(d.out_maps) // ratio, persistent=False)
        self.expand = ratio != 1

    def forward(self, x):
        if self.expand:
            x = x[:, self.source]
        s = F.avg_pool2d(x, 2) * 4.0
        return s * self.coef[None, :, None, None] + self.bias[None, :, None, None]
