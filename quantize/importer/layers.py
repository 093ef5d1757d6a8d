"""The chain of ops -> the layers of a :class:`~quantize.floatnet.FloatNet`: BatchNorm and biases
folded into the Conv/Gemm before them (or into the input scaling before the first layer),
activations and QONNX output formats attached to the layer that computes their input, the final
softmax (and a final Quant) dropped."""
from __future__ import annotations

import numpy as np

from model.util import UserError

from ..floatnet import FloatLayer
from .nodes import Op


#: activations that do not change the argmax when applied to the scores (strictly increasing)
STRICT = ("tanh", "sigmoid")


def build_layers(ops: list[Op], where: str, image: tuple):
    """Group the chain into layers; return them, the dropped final nodes, the logits tensor and the
    input scaling ops before the first layer as (a, b, nodes): v -> a * v + b per channel, and the
    input format a QONNX Quant node gives the image (or None)."""
    layers: list[FloatLayer] = []
    in_fmt = None
    a_in, b_in, input_nodes = np.ones(image[0]), np.zeros(image[0]), []
    counts = {"conv": 0, "pool": 0, "fc": 0}
    prev = None  # the last op that is not a pass-through
    final: list[Op] = []
    logits = None  # the tensor the last layer writes (after its BN/bias)
    for op in ops:
        if final and op.kind not in ("final", "pass", "act", "quant"):
            raise UserError(f"{where}: {final[0].label}: only allowed at the end of the graph")
        if op.kind in ("conv", "dense", "maxpool", "avgpool"):
            key = {"conv": "conv", "dense": "fc"}.get(op.kind, "pool")
            counts[key] += 1
            in_shape = layers[-1].out_shape if layers else image
            if op.kind != "dense" and op.in_shape != in_shape:
                src = f"the output of {layers[-1].nodes[0]!r}" if layers else "the image"
                raise UserError(f"{where}: {op.label}: reads N x {' x '.join(map(str, op.in_shape))} reshaped from "
                                f"{src} (N x {' x '.join(map(str, in_shape))}); only flattening to a vector is "
                                "supported between layers")
            l = FloatLayer(name=f"{key}{counts[key]}", kind=op.kind, in_shape=in_shape, out_shape=op.shape,
                           weight=op.p.get("weight"), bias=op.p.get("bias"), kernel=op.p.get("kernel", 1),
                           stride=op.p.get("stride", op.p.get("kernel", 1) if op.kind.endswith("pool") else 1),
                           pad=op.p.get("pad", 0), nodes=[op.node.name], formats=dict(op.p.get("formats", {})))
            layers.append(l)
            logits = op.node.output[0]
        elif op.kind == "quant":
            if final:
                final.append(op)
                continue
            if not layers:
                if in_fmt is not None:
                    _twice(op, input_nodes[-1], where)
                in_fmt = op.p["format"]
                input_nodes.append(op.node.name)
            else:
                _attach_format(layers, op, where)
        elif op.kind in ("bn", "bias") and not layers and in_fmt is not None:
            raise UserError(f"{where}: {op.label}: scales the image after its Quant node; only scaling before "
                            "the input Quant is supported")
        elif op.kind in ("bn", "bias") and not layers:  # scaling of the input: folded into its table
            def per_channel(v):
                if len(op.in_shape) == 3:
                    return v
                if np.all(v == v[0]):
                    return np.full(image[0], v[0])
                raise UserError(f"{where}: {op.label}: scales the input element by element; only one value "
                                "per channel is supported")
            if op.kind == "bn":
                s = per_channel(op.p["scale"])
                a_in, b_in = a_in * s, b_in * s + per_channel(op.p["shift"])
            else:
                b_in = b_in + per_channel(op.p["bias"])
            input_nodes.append(op.node.name)
        elif op.kind in ("bn", "bias"):
            l = layers[-1]
            if (prev is None or prev.kind not in ("conv", "dense", "bn", "bias") or l.activation
                    or len(op.p.get("scale", op.p.get("bias"))) != len(l.bias)):
                raise UserError(f"{where}: {op.label}: must directly follow a Conv, Gemm or MatMul (to be folded "
                                "into it) or come before the first layer (input scaling)")
            if op.kind == "bn" and l.formats:
                raise UserError(f"{where}: {op.label}: folding it into {l.nodes[0]!r} would change that layer's "
                                "quantized weights; fold the BatchNorm before quantizing (or export it unquantized)")
            if op.kind == "bias" and op.p.get("formats"):
                if "bias" in l.formats or np.any(l.bias):
                    raise UserError(f"{where}: {op.label}: a second (quantized) bias for {l.nodes[0]!r}")
                l.formats["bias"] = op.p["formats"]["bias"]
            if op.kind == "bn":
                s = op.p["scale"]
                l.weight = l.weight * s.reshape((-1,) + (1,) * (l.weight.ndim - 1))
                l.bias = l.bias * s + op.p["shift"]
            else:
                l.bias = l.bias + op.p["bias"]
            l.nodes.append(op.node.name)
            logits = op.node.output[0]
        elif op.kind == "act":
            if final:
                final.append(op)
                continue
            _attach(layers, op, prev, where)
        elif op.kind == "final":
            if not layers:
                raise UserError(f"{where}: {op.label}: the graph has no layer before it")
            final.append(op)
        elif op.kind == "flatten":
            if layers:
                layers[-1].nodes.append(op.node.name)
        else:  # pass: Dropout, Identity, a no-op Reshape
            continue
        if op.kind != "final":
            prev = op
    if not layers:
        raise UserError(f"{where}: no Conv, Gemm or MatMul layer")
    last = layers[-1]
    dropped = [op.node.name for op in final]
    if "act" in last.formats:  # a Quant on the scores: dropped like a softmax (the class is the argmax)
        dropped.insert(0, last.quant_node)
        last.nodes.remove(last.quant_node)
        del last.formats["act"]
    for op in final:
        if op.kind == "act" and op.p["activation"] not in STRICT:
            raise UserError(f"{where}: {op.label} after the final softmax changes the class ranking; not supported")
    if last.activation:
        if last.activation not in STRICT:
            raise UserError(f"{where}: node {last.act_node!r} ({last.activation}) after the last layer "
                            f"{last.nodes[0]!r}: the scores are its raw outputs and a {last.activation} would change "
                            "the argmax of ties; remove it (a final Softmax, Sigmoid or Tanh is dropped)")
        dropped.insert(0, last.act_node)
        last.nodes.remove(last.act_node)
        last.activation, last.clip, last.act_node = None, None, None
    return layers, dropped, logits, (a_in, b_in, input_nodes), in_fmt


def _attach(layers, op: Op, prev, where: str) -> None:
    """Put an activation on the layer that computes its input (across max-pools: they commute)."""
    act, clip = op.p["activation"], op.p["clip"]
    i = len(layers) - 1
    while i >= 0 and layers[i].kind == "maxpool":
        i -= 1
    if i < 0 or prev is None:
        raise UserError(f"{where}: {op.label}: an activation needs a Conv, Gemm, MatMul or AveragePool before it")
    l = layers[i]
    if "act" in l.formats:
        raise UserError(f"{where}: {op.label}: an activation after the Quant node {l.quant_node!r} of {l.nodes[0]!r}; "
                        "only Quant after the activation (as Brevitas exports QuantReLU) is supported")
    if l.activation:
        if act == "relu" and l.activation == "relu":  # relu(relu(x)) == relu(x)
            layers[-1].nodes.append(op.node.name)
            return
        raise UserError(f"{where}: {op.label}: a second activation after {l.nodes[0]!r} ({l.activation}) is not "
                        "supported")
    l.activation, l.clip, l.act_node = act, clip, op.node.name
    l.nodes.append(op.node.name)


def _attach_format(layers, op: Op, where: str) -> None:
    """A QONNX Quant after a layer (and its activation; across max-pools, which commute with a
    monotone quantizer) fixes that layer's output format."""
    i = len(layers) - 1
    while i >= 0 and layers[i].kind == "maxpool":
        i -= 1
    if i < 0:
        raise UserError(f"{where}: {op.label}: after a max-pool of the image; put the Quant on the image instead")
    l = layers[i]
    if "act" in l.formats:
        _twice(op, l.quant_node, where)
    l.formats["act"] = op.p["format"]
    l.quant_node = op.node.name
    l.nodes.append(op.node.name)


def _twice(op: Op, first: str, where: str):
    raise UserError(f"{where}: {op.label}: quantizes again what Quant node {first!r} quantized; one Quant per "
                    "tensor is supported")
