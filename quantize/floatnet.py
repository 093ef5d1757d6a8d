"""A float feed-forward CNN in the QuantSpec's terms: the bridge from an imported model to a spec.

:class:`FloatNet` is what :mod:`quantize.importer` reads out of an ONNX graph (BatchNorm already
folded, activations attached to the layer before them, dropout and the final softmax gone): a
chain of :class:`FloatLayer` of the spec's kinds (``conv``, ``maxpool``, ``avgpool``, ``dense``)
with float64 weights, and the input scaling ``(p / 255 - mean) / std`` per channel. Its forward
pass (torch, float64) gives the logits and every layer's pre-activation, which the generic
calibrator (:mod:`quantize.importer.calibrate`) turns into formats.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

#: activation name -> f(v) on float64 numpy arrays (hard_tanh takes the clip bounds)
FUNCTIONS = {
    "relu": lambda v, lo=None, hi=None: np.maximum(v, 0.0),
    "tanh": lambda v, lo=None, hi=None: np.tanh(v),
    "sigmoid": lambda v, lo=None, hi=None: 1.0 / (1.0 + np.exp(-v)),
    "hard_tanh": lambda v, lo=-1.0, hi=1.0: np.clip(v, lo, hi),
}


@dataclass
class FloatLayer:
    """One layer of a :class:`FloatNet` (shapes without the batch dimension).

    ``weight``: conv O x C x K x K, dense O x I (float64); None for pools. ``bias``: O or None.
    ``activation``: ``relu``, ``tanh``, ``sigmoid``, ``hard_tanh`` (clip to ``clip``) or None.
    ``nodes``: the ONNX nodes folded into this layer (for messages and provenance).
    ``formats``: the formats a quantized model (QONNX) gives the weight, bias and output (``act``):
    the weights are then exact multiples of their lsb, and the forward pass rounds the output into
    ``act`` as the model does.
    """

    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    activation: str | None = None
    clip: tuple[float, float] | None = None
    nodes: list[str] = field(default_factory=list)
    act_node: str | None = None  # the node of the activation
    formats: dict = field(default_factory=dict)  # QFormats the model fixes (QONNX): weight, bias, act
    quant_node: str | None = None  # the Quant node that fixes formats["act"]

    def act(self, v: np.ndarray) -> np.ndarray:
        """The activation on float values (identity without one)."""
        if self.activation is None:
            return v
        lo, hi = self.clip if self.clip else (-1.0, 1.0)
        return FUNCTIONS[self.activation](v, lo, hi)

    def output(self, v: np.ndarray) -> np.ndarray:
        """The activation, then the model's own output quantizer (if it has one)."""
        v = self.act(v)
        fmt = self.formats.get("act")
        return v if fmt is None else fmt.to_float(fmt.from_float(v))


@dataclass
class FloatNet:
    """A float network the QuantSpec can express, with its input scaling.

    ``input_shape`` is C x H x W of the uint8 image; ``model_input_shape`` the model's own input
    (without batch: (C, H, W), (H, W) or (C*H*W,)) for onnxruntime. A pixel p of channel c enters
    the first layer as ``(p / 255 - mean[c]) / std[c]``; ``feed_mean``/``feed_std`` is the part of
    that scaling done before the model (the user's), the rest was in the graph (Sub/Div nodes).
    ``input_format``: the format a QONNX Quant node gives the image (None: calibrated).
    """

    name: str
    input_shape: tuple[int, int, int]
    layers: list[FloatLayer]
    mean: np.ndarray
    std: np.ndarray
    model_input_shape: tuple = ()
    source: dict = field(default_factory=dict)
    feed_mean: np.ndarray | None = None
    feed_std: np.ndarray | None = None
    input_format: object = None

    @property
    def quantized(self) -> bool:
        """Whether the model fixes formats itself (QONNX Quant nodes)."""
        return self.input_format is not None or any(l.formats for l in self.layers)

    @property
    def classes(self) -> int:
        return int(self.layers[-1].out_shape[0])

    def input_values(self) -> np.ndarray:
        """C x 256 float64: the model's input value for each grey level of each channel (after its
        input quantizer, if it has one)."""
        p = np.arange(256, dtype=np.float64) / 255.0
        v = (p[None, :] - self.mean[:, None]) / self.std[:, None]
        f = self.input_format
        return v if f is None else f.to_float(f.from_float(v))

    def scale(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 N x C x H x W -> the float64 model input N x C x H x W."""
        v = self.input_values()
        return v[np.arange(len(v))[None, :, None, None], images_u8]

    @torch.no_grad()
    def forward(self, images_u8: np.ndarray, collect: bool = False, batch: int = 1000):
        """Logits (N x classes float64) of uint8 N x C x H x W images; with ``collect``, also every
        layer's float pre-activation (None for a max-pool), concatenated over the batches."""
        logits, pres = [], [[] for _ in self.layers]
        for i in range(0, len(images_u8), batch):
            x = torch.from_numpy(self.scale(images_u8[i:i + batch]))
            for j, l in enumerate(self.layers):
                if l.kind == "dense":
                    x = x.reshape(len(x), -1)
                    a = x @ torch.from_numpy(l.weight).T
                    if l.bias is not None:
                        a = a + torch.from_numpy(l.bias)
                elif l.kind == "conv":
                    b = None if l.bias is None else torch.from_numpy(l.bias)
                    a = F.conv2d(x, torch.from_numpy(l.weight), b, stride=l.stride, padding=l.pad)
                elif l.kind == "avgpool":
                    a = F.avg_pool2d(x, l.kernel)
                else:
                    x = F.max_pool2d(x, l.kernel)
                    continue
                if collect:
                    pres[j].append(a.to(torch.float32).numpy())
                x = torch.from_numpy(l.output(a.numpy())) if l.activation or l.formats.get("act") else a
            logits.append(x.reshape(len(x), -1).numpy())
        out = np.concatenate(logits) if logits else np.zeros((0, self.classes))
        if not collect:
            return out
        return out, [np.concatenate(p) if p else None for p in pres]
