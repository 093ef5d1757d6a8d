"""The ONNX node handlers of the importer: each turns one node of the chain into an :class:`Op`
(a layer, a fold into the layer before, an activation, a reshape...) and checks what the
QuantSpec and the hardware can build, naming the node and the attribute otherwise."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..spec import out_extent
from ..spec_check import MAX_KERNEL, MAX_PAD, POOL_KERNELS


def attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class Op:
    """One step of the chain, before layers are formed."""

    kind: str  # conv dense maxpool avgpool bn bias act flatten final pass
    node: object
    shape: tuple  # output shape (no batch)
    p: dict = field(default_factory=dict)
    in_shape: tuple = ()

    @property
    def label(self) -> str:
        return f"node {self.node.name!r} (op {self.node.op_type})"


class NodeHandlers:
    """Mixed into the graph reader: ``_<OpType>(node, data input index, input shape) -> Op``.
    Needs ``const``, ``err`` from the reader."""

    # -- node handlers: (node, data input index, input shape) -> Op ----------------------------
    def _spatial(self, node, shape):
        if len(shape) != 3:
            raise self.err(node, f"needs an N x C x H x W input, got {'x'.join(map(str, ('N',) + shape))}")
        return shape

    def _vector(self, node, shape):
        if len(shape) != 1:
            raise self.err(node, f"needs an N x D input (Flatten first), got {'x'.join(map(str, ('N',) + shape))}")
        return shape[0]

    def _data_first(self, node, k):
        if k != 0:
            raise self.err(node, "the image data must be its first input")

    def _Conv(self, node, k, shape):
        self._data_first(node, k)
        c, h, w = self._spatial(node, shape)
        a = attrs(node)
        wt = self.const(node, 1, "weight")
        b = self.const(node, 2, "bias", optional=True)
        if wt.ndim != 4:
            raise self.err(node, f"a {wt.ndim - 2}-D convolution; only 2-D convolutions are supported")
        if a.get("group", 1) != 1:
            raise self.err(node, f"group={a['group']} is not supported (group 1 only)")
        dil = list(a.get("dilations", [1, 1]))
        if any(d != 1 for d in dil):
            raise self.err(node, f"dilations={dil} are not supported (1 only)")
        o, ci, kh, kw = wt.shape
        if ci != c:
            raise self.err(node, f"weight for {ci} input channels, input has {c}")
        if kh != kw:
            raise self.err(node, f"kernel_shape={[kh, kw]} is not square")
        if not 1 <= kh <= MAX_KERNEL:
            raise self.err(node, f"kernel_shape={[kh, kw]}: kernels 1..{MAX_KERNEL} are supported")
        strides = list(a.get("strides", [1, 1]))
        if strides[0] != strides[1] or strides[0] not in (1, 2):
            raise self.err(node, f"strides={strides}: 1 or 2 (the same on both axes) are supported")
        s = strides[0]
        pad = self._pads(node, a, kh, s, h, w)
        if pad > MAX_PAD:
            raise self.err(node, f"pads={[pad] * 4}: at most {MAX_PAD} are supported")
        oh, ow = out_extent(h, kh, s, pad), out_extent(w, kh, s, pad)
        if oh < 1 or ow < 1:
            raise self.err(node, f"kernel {kh} (pad {pad}) larger than the input {h}x{w}")
        bias = np.zeros(o) if b is None else b.reshape(-1)
        return Op("conv", node, (o, oh, ow), dict(weight=wt, bias=bias, kernel=kh, stride=s, pad=pad,
                                                  formats=self._given(node, 1, 2)))

    def _given(self, node, w: int | None, b: int | None = None) -> dict:
        """The formats QONNX ``Quant`` nodes give this node's weight (input ``w``) and bias (``b``)."""
        out = {}
        for key, k in (("weight", w), ("bias", b)):
            if k is not None and k < len(node.input) and node.input[k] in self.quantized:
                out[key] = self.quantized[node.input[k]]
        return out

    def _pads(self, node, a, k, s, h, w) -> int:
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto == "VALID":
            return 0
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            totals = {max((-(-n // s) - 1) * s + k - n, 0) for n in (h, w)}
            if len(totals) != 1 or min(totals) % 2:
                raise self.err(node, f"auto_pad={auto} pads asymmetrically here; only the same padding on all "
                                     "four sides is supported")
            return totals.pop() // 2
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(set(pads)) > 1:
            raise self.err(node, f"pads={pads} are asymmetric; only the same padding on all four sides is supported")
        return int(pads[0]) if pads else 0

    def _pool(self, node, k, shape, kind):
        self._data_first(node, k)
        c, h, w = self._spatial(node, shape)
        a = attrs(node)
        ks = list(a.get("kernel_shape", []))
        if len(ks) != 2 or ks[0] != ks[1] or ks[0] not in POOL_KERNELS:
            raise self.err(node, f"kernel_shape={ks}: k x k pools with k in {POOL_KERNELS} are supported")
        kk = ks[0]
        strides = list(a.get("strides", [1, 1]))
        if strides != [kk, kk]:
            raise self.err(node, f"strides={strides}: a pool's stride must equal its kernel ({kk})")
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if any(pads) or auto not in ("NOTSET", "VALID"):
            raise self.err(node, f"pads={pads if any(pads) else auto}: pools take no padding")
        dil = list(a.get("dilations", [1, 1]))
        if any(d != 1 for d in dil):
            raise self.err(node, f"dilations={dil} are not supported (1 only)")
        if a.get("ceil_mode", 0) and (h % kk or w % kk):
            raise self.err(node, f"ceil_mode=1 on a {h}x{w} input makes partial {kk}x{kk} windows; not supported")
        if h < kk or w < kk:
            raise self.err(node, f"kernel {kk} larger than the input {h}x{w}")
        return Op(kind, node, (c, h // kk, w // kk), dict(kernel=kk))

    def _MaxPool(self, node, k, shape):
        return self._pool(node, k, shape, "maxpool")

    def _AveragePool(self, node, k, shape):
        return self._pool(node, k, shape, "avgpool")

    def _global(self, node, k, shape, kind):
        self._data_first(node, k)
        c, h, w = self._spatial(node, shape)
        if h != w or h not in POOL_KERNELS:
            raise self.err(node, f"over a {h}x{w} map; only 2x2 or 3x3 (a k x k pool) is supported")
        return Op(kind, node, (c, 1, 1), dict(kernel=h))

    def _GlobalMaxPool(self, node, k, shape):
        return self._global(node, k, shape, "maxpool")

    def _GlobalAveragePool(self, node, k, shape):
        return self._global(node, k, shape, "avgpool")

    def _Gemm(self, node, k, shape):
        self._data_first(node, k)
        d = self._vector(node, shape)
        a = attrs(node)
        if a.get("transA", 0):
            raise self.err(node, "transA=1 is not supported")
        bmat = self.const(node, 1, "weight")
        if bmat.ndim != 2:
            raise self.err(node, f"weight of rank {bmat.ndim}, expected 2")
        wt = (bmat if a.get("transB", 0) else bmat.T) * a.get("alpha", 1.0)
        if wt.shape[1] != d:
            raise self.err(node, f"weight for {wt.shape[1]} inputs, input has {d}")
        o = wt.shape[0]
        c = self.const(node, 2, "bias", optional=True)
        bias = np.zeros(o) if c is None else self._bias_vector(node, c, o) * a.get("beta", 1.0)
        given = self._given(node, 1, 2)
        if given and (a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0):
            raise self.err(node, "alpha/beta other than 1 rescale its quantized weight or bias; not supported")
        return Op("dense", node, (o,), dict(weight=wt, bias=bias, formats=given))

    def _MatMul(self, node, k, shape):
        if k != 0:
            raise self.err(node, "computes weight @ x; only x @ weight is supported")
        d = self._vector(node, shape)
        wm = self.const(node, 1, "weight")
        if wm.ndim != 2 or wm.shape[0] != d:
            raise self.err(node, f"weight of shape {wm.shape}, expected {d} x outputs")
        return Op("dense", node, (wm.shape[1],), dict(weight=wm.T, bias=np.zeros(wm.shape[1]),
                                                      formats=self._given(node, 1)))

    def _bias_vector(self, node, c, o):
        if c.size == 1:
            return np.full(o, float(c.reshape(-1)[0]))
        if c.size != o or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
            raise self.err(node, f"bias of shape {c.shape}, expected {o} values")
        return c.reshape(-1)

    def _channel_const(self, node, k, shape, what) -> np.ndarray:
        """Input ``k`` as one value per channel (map, or vector element): a scalar, (C,1,1), (1,C,1,1)."""
        b = self.const(node, k, "constant")
        if b.size == 1:
            return np.full(shape[0], float(b.reshape(-1)[0]))
        if len(shape) == 1:
            ok = b.size == shape[0] and (b.ndim <= 1 or b.shape[:-1] == (1,) * (b.ndim - 1))
        else:
            ok = b.size == shape[0] and b.ndim in (3, 4) and b.shape[-2:] == (1, 1) and b.shape[-3] == shape[0]
        if not ok:
            raise self.err(node, f"{what} a constant of shape {b.shape}; only one value per channel is supported "
                                 "(a bias or scale right after a Conv, Gemm or MatMul, or the input scaling)")
        return b.reshape(-1)

    def _Add(self, node, k, shape):
        return Op("bias", node, shape, dict(bias=self._channel_const(node, 1 - k, shape, "adds"),
                                            formats=self._given(node, None, 1 - k)))

    def _Sub(self, node, k, shape):
        if k != 0:
            raise self.err(node, "computes constant - x; only x - constant is supported")
        return Op("bias", node, shape, dict(bias=-self._channel_const(node, 1, shape, "subtracts")))

    def _Mul(self, node, k, shape):
        v = self._channel_const(node, 1 - k, shape, "multiplies by")
        return Op("bn", node, shape, dict(scale=v, shift=np.zeros_like(v)))

    def _Div(self, node, k, shape):
        if k != 0:
            raise self.err(node, "computes constant / x; only x / constant is supported")
        v = self._channel_const(node, 1, shape, "divides by")
        if np.any(v == 0):
            raise self.err(node, "divides by zero")
        return Op("bn", node, shape, dict(scale=1.0 / v, shift=np.zeros_like(v)))

    def _BatchNormalization(self, node, k, shape):
        self._data_first(node, k)
        a = attrs(node)
        if a.get("training_mode", 0):
            raise self.err(node, "training_mode=1: export the model in eval mode")
        scale, b, mean, var = (self.const(node, i, what).reshape(-1) for i, what in
                               ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
        s = scale / np.sqrt(var + a.get("epsilon", 1e-5))
        if len(s) != shape[0]:
            raise self.err(node, f"{len(s)} channels, input has {shape[0]}")
        return Op("bn", node, shape, dict(scale=s, shift=b - mean * s))

    def _act(self, node, k, shape, name, clip=None):
        self._data_first(node, k)
        return Op("act", node, shape, dict(activation=name, clip=clip))

    def _Relu(self, node, k, shape):
        return self._act(node, k, shape, "relu")

    def _Tanh(self, node, k, shape):
        return self._act(node, k, shape, "tanh")

    def _Sigmoid(self, node, k, shape):
        return self._act(node, k, shape, "sigmoid")

    def _Clip(self, node, k, shape):
        lo, hi = (self.const(node, i, what, optional=True) for i, what in ((1, "min"), (2, "max")))
        lo = None if lo is None else float(lo.reshape(-1)[0])
        hi = None if hi is None else float(hi.reshape(-1)[0])
        if lo == 0.0 and hi is None:
            return self._act(node, k, shape, "relu")
        if lo is None or hi is None or not lo < hi:
            raise self.err(node, f"Clip(min={lo}, max={hi}): only Clip(lo, hi) with lo < hi (HardTanh) or "
                                 "Clip(0) (ReLU) are supported")
        return self._act(node, k, shape, "hard_tanh", (lo, hi))

    def _flat(self, node, shape, out_shape, what):
        """A reshape within each image keeps the values' order: a flatten when it gives a vector,
        else a pass-through whose shape the next layer checks."""
        out_shape = tuple(int(v) for v in out_shape)
        return Op("flatten" if len(out_shape) == 1 else "pass", node, out_shape)

    def _Flatten(self, node, k, shape):
        axis = attrs(node).get("axis", 1)
        if axis < 0:
            axis += len(shape) + 1
        if axis != 1:
            raise self.err(node, f"axis={attrs(node).get('axis')}: only axis=1 (one vector per image) is supported")
        return Op("flatten", node, (int(np.prod(shape)),))

    def _Reshape(self, node, k, shape):
        self._data_first(node, k)
        target = [int(v) for v in self.const(node, 1, "shape").reshape(-1)]
        full = (1,) + tuple(shape)
        if not attrs(node).get("allowzero", 0):
            target = [full[i] if v == 0 and i < len(full) else v for i, v in enumerate(target)]
        try:
            out = np.zeros(full, np.uint8).reshape(target).shape
        except ValueError:
            raise self.err(node, f"cannot reshape {'x'.join(map(str, full))} to {target}") from None
        if not out or out[0] != 1:
            raise self.err(node, f"reshapes to {target}, mixing images of a batch; only a flatten per image is "
                                 "supported")
        return self._flat(node, shape, out[1:], f"shape {target}")

    def _Squeeze(self, node, k, shape):
        self._data_first(node, k)
        axes = self.const(node, 1, "axes", optional=True)
        if axes is None:
            axes = attrs(node).get("axes")
        full = (1,) + tuple(shape)
        if axes is None:
            out = tuple(d for i, d in enumerate(full) if i == 0 or d != 1)
        else:
            ax = {int(a) + (len(full) if a < 0 else 0) for a in np.asarray(axes).reshape(-1)}
            if 0 in ax:
                raise self.err(node, "squeezes the batch axis")
            out = tuple(d for i, d in enumerate(full) if i not in ax)
        return self._flat(node, shape, out[1:], "Squeeze")

    def _Dropout(self, node, k, shape):
        self._data_first(node, k)
        return Op("pass", node, shape)

    def _Identity(self, node, k, shape):
        return Op("pass", node, shape)

    def _Softmax(self, node, k, shape):
        axis = attrs(node).get("axis", -1)
        if len(shape) != 1 or axis not in (1, -1):
            raise self.err(node, f"axis={axis} on N x {'x'.join(map(str, shape))}: only a final softmax over "
                                 "the class scores is supported")
        return Op("final", node, shape)

    _LogSoftmax = _Softmax

    def _Quant(self, node, k, shape):
        """A QONNX Quant on image data: the format of the layer output (or image) it quantizes."""
        self._data_first(node, k)
        return Op("quant", node, shape, dict(format=self.quant_format(node)))
