"""Read an ONNX graph into a :class:`~quantize.floatnet.FloatNet` (or refuse it in one line).

The graph must be one chain from the image input to the output: every tensor computed from the
image feeds exactly one node (no branches, no skip connections). Nodes off that chain (constants,
``Shape``/``Gather``/``Concat`` computing a ``Reshape`` target, ``Identity`` of an initializer)
are evaluated as constants. Along the chain:

- ``Conv`` (2-D, group 1, dilation 1, square kernel 1..7, stride 1 or 2, the same padding on all
  four sides, at most 8) -> ``conv``; ``MaxPool``/``AveragePool`` (k x k, k in 2..3, stride k,
  no padding) and ``GlobalMaxPool``/``GlobalAveragePool`` over a 2x2 or 3x3 map -> ``maxpool``/
  ``avgpool``; ``Gemm`` (transB handled, alpha/beta folded) and ``MatMul`` (+ ``Add`` of a
  bias) -> ``dense``;
- ``BatchNormalization`` and ``Add``/``Sub``/``Mul``/``Div`` by per-channel constants fold into
  the ``Conv``/``Gemm``/``MatMul`` right before them; before the first layer they are the input
  scaling and fold into the input table (mean and std);
- ``Relu``, ``Tanh``, ``Sigmoid``, ``Clip(min, max)`` (HardTanh; ``Clip(0, -)`` is a ReLU) become
  the activation of the layer before; one after a max-pool moves onto the layer before the pool
  (monotone functions commute with max);
- ``Flatten``/``Reshape``/``Squeeze`` to one vector per image, ``Dropout`` and ``Identity`` pass;
  a final ``Softmax``/``LogSoftmax`` (and a final ``Sigmoid``/``Tanh``: strictly increasing) is
  dropped: the class is the argmax of the last layer's outputs;
- QONNX ``Quant`` nodes (Brevitas' QONNX export, :mod:`.qonnx`) with power-of-two scales: on a
  weight or bias they fix that tensor's format; on the image, the input format; after a layer (and
  its activation), the layer's output format. A ``Quant`` after the last layer is dropped like a
  softmax.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from model.util import UserError

from ..floatnet import FloatNet
from ..spec_check import CLASSES, MAX_CHANNELS, MAX_SIDE
from . import qonnx
from .layers import build_layers
from .nodes import NodeHandlers, Op

MIN_OPSET = 13
SUPPORTED = ("Conv", "MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "Gemm", "MatMul", "Add", "Sub",
             "Mul", "Div", "BatchNormalization", "Relu", "Tanh", "Sigmoid", "Clip", "Flatten", "Reshape", "Squeeze",
             "Dropout", "Identity", "Softmax", "LogSoftmax")
SUPPORTED_TEXT = ("Conv, MaxPool, AveragePool, GlobalMaxPool/GlobalAveragePool (2x2, 3x3), Gemm, MatMul+Add, "
                  "BatchNormalization and Add/Sub/Mul/Div by per-channel constants (after Conv/Gemm, or on the input), "
                  "Relu, Tanh, Sigmoid, Clip (HardTanh), Flatten/Reshape/Squeeze (to a vector), Dropout, Identity, "
                  "a final Softmax/LogSoftmax, QONNX Quant (power-of-two scales)")
#: ops that only read a tensor's shape: their outputs are constants, not image data
SHAPE_OPS = ("Shape", "Size")


def load(path):
    """Read and check (opset, ``onnx.checker``) an ONNX file; one :class:`UserError` line for anything wrong."""
    import onnx

    where = str(path)
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{where}: no such file" if not p.exists() else f"{where}: not a file")
    try:
        m = onnx.load(str(p))
    except Exception as e:  # DecodeError, external data missing, ...
        raise UserError(f"{where}: not an ONNX model ({type(e).__name__}: {_first_line(e)})") from None
    if not m.HasField("graph") or not m.graph.node:
        raise UserError(f"{where}: not an ONNX model (no graph)")
    opset = opset_version(m)
    if opset is None:
        raise UserError(f"{where}: no default-domain opset import (not an ONNX model?)")
    if opset < MIN_OPSET:
        raise UserError(f"{where}: opset {opset}; opset {MIN_OPSET} or newer is needed (re-export with "
                        f"opset_version={MIN_OPSET} or later)")
    try:
        onnx.checker.check_model(m)
    except Exception as e:
        raise UserError(f"{where}: invalid ONNX model ({_first_line(e)})") from None
    return m


def infer_shapes(m, where: str):
    """onnx's strict shape inference: a model whose shapes do not agree is refused. Run after
    :func:`parse`, so an unsupported op is named first (strict inference fails on unknown ops)."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:
        raise UserError(f"{where}: shape inference failed ({_first_line(e)})") from None


def opset_version(m) -> int | None:
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)


def _first_line(e: Exception) -> str:
    lines = [s.strip() for s in str(e).strip().splitlines() if s.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def image_input(m, where: str):
    """(the graph's image input, its shape without batch) with the usual checks."""
    import onnx

    g = m.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise UserError(f"{where}: {len(inputs)} graph inputs ({', '.join(i.name for i in inputs)}); one image "
                        "input is supported")
    inp = inputs[0]
    tt = inp.type.tensor_type
    if not inp.type.HasField("tensor_type") or tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise UserError(f"{where}: input {inp.name!r} is not a float tensor")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if len(dims) not in (2, 3, 4):
        raise UserError(f"{where}: input {inp.name!r} has rank {len(dims)}; expected N x C x H x W, N x H x W or N x D")
    if any(d is None or d < 1 for d in dims[1:]):
        raise UserError(f"{where}: input {inp.name!r} has shape {['?' if d is None else d for d in dims]}: "
                        "every dimension but the batch must be fixed (export with a fixed image size)")
    return inp, tuple(dims[1:])


def image_shape(model_shape: tuple, where: str, name: str) -> tuple[int, int, int]:
    """C x H x W of the uint8 image behind a model input of ``model_shape`` (no batch)."""
    if len(model_shape) == 3:
        c, h, w = model_shape
    elif len(model_shape) == 2:
        c, (h, w) = 1, model_shape
    else:
        d = model_shape[0]
        s = int(round(d ** 0.5))
        if s * s != d:
            raise UserError(f"{where}: input {name!r} is a vector of {d} values, not a square image "
                            "(give the model an N x C x H x W input)")
        c, h, w = 1, s, s
    if not 1 <= c <= MAX_CHANNELS:
        raise UserError(f"{where}: input {name!r}: {c} channels; 1..{MAX_CHANNELS} are supported")
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise UserError(f"{where}: input {name!r}: {h} x {w} images; at most {MAX_SIDE} x {MAX_SIDE} are supported")
    return c, h, w


class _Graph(NodeHandlers):
    """The graph as the importer walks it: which tensors carry image data, who reads them, and
    the constants (initializers, Constant nodes, or evaluated once)."""

    def __init__(self, m, where: str):
        from onnx import numpy_helper

        self.m, self.where = m, where
        g = m.graph
        for i, n in enumerate(g.node):  # names are optional in ONNX; messages and provenance need one
            if not n.name:
                n.name = f"{n.op_type}_{i}"
        self.inits = {t.name: t for t in g.initializer}
        self.to_array = numpy_helper.to_array
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.input, self.model_shape = image_input(m, where)
        if len(g.output) != 1:
            raise UserError(f"{where}: {len(g.output)} graph outputs; one (the class scores) is supported")
        self.output = g.output[0].name
        self.data = {self.input.name}
        for n in g.node:  # nodes are topologically sorted (checked)
            if n.op_type not in SHAPE_OPS and any(i in self.data for i in n.input):
                self.data.update(o for o in n.output if o)
        self.consumers: dict[str, list] = {}
        for n in g.node:
            if n.op_type in SHAPE_OPS:
                continue
            for k, i in enumerate(n.input):
                if i in self.data:
                    self.consumers.setdefault(i, []).append((n, k))
        self._evaluated = None
        self.quantized: dict[str, object] = {}  # constant tensor -> the QFormat of the Quant node making it
        self.m_eval = qonnx.lower(m) if qonnx.has_quant(m) else m  # what onnx's evaluators can run

    def label(self, node) -> str:
        return f"{self.where}: node {node.name!r} (op {node.op_type})"

    def err(self, node, msg: str) -> UserError:
        return UserError(f"{self.label(node)}: {msg}")

    def const(self, node, k: int, what: str, optional: bool = False):
        """Input ``k`` of ``node`` as a float64/int64 array (None if absent and optional)."""
        name = node.input[k] if k < len(node.input) else ""
        if not name:
            if optional:
                return None
            raise self.err(node, f"missing {what}")
        if name in self.data:
            raise self.err(node, f"its {what} ({name!r}) is computed from the image; it must be a constant")
        if name in self.inits:
            a = self.to_array(self.inits[name])
        else:
            prod = self.producer.get(name)
            if prod is not None and qonnx.is_quant(prod):  # a quantized weight or bias: its format, its values
                fmt = self.quant_format(prod)
                self.quantized[name] = fmt
                a = qonnx.quantize_const(fmt, self.const(prod, 0, "input"))
            elif prod is not None and prod.op_type == "Constant":
                import onnx

                (attr,) = prod.attribute
                v = onnx.helper.get_attribute_value(attr)
                a = self.to_array(v) if isinstance(v, onnx.TensorProto) else np.asarray(v)
            else:
                a = self._evaluate(name, node)
        a = np.asarray(a)
        return a.astype(np.int64) if np.issubdtype(a.dtype, np.integer) else a.astype(np.float64)

    def _evaluate(self, name: str, node):
        """Constants computed by nodes (Shape -> Gather -> Concat, Identity, Transpose of a weight,
        ...): run the graph once on a zero image with onnx's reference evaluator."""
        if self._evaluated is None:
            from onnx.reference import ReferenceEvaluator

            elem = self.input.type.tensor_type.elem_type
            dtype = np.float64 if elem == 11 else np.float32
            try:
                self._evaluated = ReferenceEvaluator(self.m_eval).run(
                    None, {self.input.name: np.zeros((1,) + self.model_shape, dtype)}, intermediate=True)
            except Exception as e:
                raise self.err(node, f"could not evaluate the constant {name!r} ({_first_line(e)})") from None
        if name not in self._evaluated:
            raise self.err(node, f"could not evaluate the constant {name!r}")
        return self._evaluated[name]

    def quant_format(self, node):
        """The QFormat of a ``Quant`` node (its scale, zero point and bit width are constants)."""
        from .nodes import attrs

        scale, zeropt, bits = (self.const(node, i, what) for i, what in ((1, "scale"), (2, "zero point"),
                                                                            (3, "bit width")))
        return qonnx.quant_format(node, scale, zeropt, bits, attrs(node), self.label(node))

    # -- the chain -----------------------------------------------------------------------------
    def chain(self) -> list[Op]:
        x, shape, ops = self.input.name, self.model_shape, []
        while True:
            cons = self.consumers.get(x, [])
            if x == self.output:
                if cons:
                    raise self.err(cons[0][0], f"reads the graph output {x!r}; the output must be the end of the chain")
                return ops
            if not cons:
                raise UserError(f"{self.where}: tensor {x!r} is computed from the image but is neither used nor the "
                                f"output (the graph must be one chain from the input to the output)")
            if len(cons) > 1:
                names = ", ".join(f"{n.name!r} ({n.op_type})" for n, _ in cons)
                raise self.err(cons[0][0], f"tensor {x!r} feeds {len(cons)} nodes ({names}); only a chain of layers "
                                           "is supported (no branches or skip connections)")
            node, k = cons[0]
            if qonnx.is_quant(node):
                pass
            elif node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED:
                op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                raise UserError(f"{self.where}: node {node.name!r} (op {op}) is not supported; "
                                f"supported: {SUPPORTED_TEXT}")
            other = [i for j, i in enumerate(node.input) if j != k and i in self.data]
            if other:
                raise self.err(node, f"combines two tensors computed from the image ({x!r}, {other[0]!r}); only a "
                                     "chain of layers is supported (no skip connections)")
            for o in node.output[1:]:
                if o and (o in self.consumers or o == self.output):
                    raise self.err(node, f"its second output {o!r} is used; only the first is supported")
            op = getattr(self, "_" + node.op_type)(node, k, shape)
            op.in_shape = tuple(shape)
            ops.append(op)
            x, shape = node.output[0], op.shape


def parse(m, where: str, mean=None, std=None, name: str | None = None) -> tuple[FloatNet, str]:
    """An ONNX ModelProto (from :func:`load`) -> (FloatNet, the name of its logits tensor)."""
    g = _Graph(m, where)
    c, h, w = image_shape(g.model_shape, where, g.input.name)
    ops = g.chain()
    layers, dropped, logits, (a_in, b_in, input_nodes), in_fmt = build_layers(ops, where, (c, h, w))
    infer_shapes(g.m_eval, where)
    shape = (c, h, w)
    for l in layers:
        l.in_shape = (int(np.prod(shape)),) if l.kind == "dense" else shape
        shape = l.out_shape
    last = layers[-1]
    if last.kind not in ("dense", "conv") or (last.kind == "conv" and last.out_shape[1:] != (1, 1)):
        raise UserError(f"{where}: node {last.nodes[0]!r}: the last layer gives the scores: a Gemm/MatMul or a Conv "
                        f"with a 1x1 output, not a {last.kind} with output {'x'.join(map(str, last.out_shape))}")
    classes = int(last.out_shape[0])
    if not CLASSES[0] <= classes <= CLASSES[1]:
        raise UserError(f"{where}: node {last.nodes[0]!r}: {classes} classes; {CLASSES[0]}..{CLASSES[1]} are supported")
    feed_mean = mean = _per_channel(mean, 0.0, c, "--input-mean")
    feed_std = std = _per_channel(std, 1.0, c, "--input-std")
    if np.any(std <= 0):
        raise UserError(f"--input-std {list(std)}: must be positive")
    if np.any(a_in == 0):
        raise UserError(f"{where}: node {input_nodes[0]!r}: the input scaling multiplies a channel by 0")
    # (p/255 - mean)/std, then a * v + b  ==  (p/255 - (mean - b std / a)) / (std / a)
    mean, std = mean - b_in * std / a_in, std / a_in
    producer = f"{m.producer_name} {m.producer_version}".strip()
    net = FloatNet(name=name or Path(where).stem, input_shape=(c, h, w), layers=layers, mean=mean, std=std,
                   model_input_shape=g.model_shape, feed_mean=feed_mean, feed_std=feed_std, input_format=in_fmt,
                   source={"opset": opset_version(m), "producer": producer, "input": g.input.name,
                           "dropped": dropped, "input_nodes": input_nodes,
                           "quant_nodes": sum(qonnx.is_quant(n) for n in m.graph.node)})
    return net, logits


def _per_channel(v, default: float, c: int, flag: str) -> np.ndarray:
    if v is None:
        return np.full(c, default)
    a = np.atleast_1d(np.asarray(v, dtype=np.float64)).reshape(-1)
    if a.size == 1:
        a = np.full(c, a[0])
    if a.size != c:
        raise UserError(f"{flag}: {a.size} values for {c} input channels (give 1 or {c})")
    if not np.all(np.isfinite(a)):
        raise UserError(f"{flag}: values must be finite")
    return a


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
