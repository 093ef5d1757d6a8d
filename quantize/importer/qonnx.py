"""QONNX ``Quant`` nodes (Brevitas' QONNX export): their formats, and a standard-ONNX twin for onnxruntime.

A ``Quant(x, scale, zeropt, bitwidth)`` node (attributes ``signed``, ``narrow``, ``rounding_mode``)
computes ``y = (clip(round(x / scale + zeropt), min, max) - zeropt) * scale``, with min and max
from the bit width, signedness and narrow range. With a per-tensor power-of-two scale
``2**-f`` and a zero point of 0 that is exactly the QuantSpec's ``requantize`` into
``QFormat(bitwidth, f, signed, rounding, "SAT", narrow)``: :func:`quant_format` makes that format
or says in one line why it cannot (a scale that is not a power of two, per-channel scales, a zero
point, a 1-bit quantizer). The clip comes before the rounding in QONNX, but the bounds are
integers, so it is the same as rounding first.

:func:`lower` replaces every ``Quant`` node by Div, Add, Clip, a rounding (Round is half-to-even,
as numpy's ``round``), Sub and Mul, so onnxruntime executes the exported model as qonnx's own
executor does (``tests/test_quantize_qonnx.py`` checks the two agree).
"""
from __future__ import annotations

import math

import numpy as np

from model.util import UserError

from ..qformat import MAX_WIDTH, QFormat

#: the domains Brevitas/FINN have written ``Quant`` nodes in
DOMAINS = ("qonnx.custom_op.general", "onnx.brevitas", "finn.custom_op.general")
#: QONNX rounding_mode -> the QFormat rounding that gives the same integers (qonnx's resolve_rounding_mode)
ROUNDING = {"ROUND": "RND_CONV", "HALF_EVEN": "RND_CONV", "CEIL": "TRN_INF", "FLOOR": "TRN", "UP": "TRN_AWAY",
            "DOWN": "TRN_ZERO", "HALF_UP": "RND_INF", "HALF_DOWN": "RND_ZERO"}


def is_quant(node) -> bool:
    return node.op_type == "Quant" and node.domain in DOMAINS


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def quant_format(node, scale: np.ndarray, zeropt: np.ndarray, bitwidth: np.ndarray, attrs: dict,
                 label: str) -> QFormat:
    """The QFormat of a ``Quant`` node from its constant inputs; a UserError (``label``: which
    node) for anything the fixed-point formats cannot express exactly."""
    scale, zeropt, bitwidth = (np.asarray(a, np.float64).reshape(-1) for a in (scale, zeropt, bitwidth))
    if scale.size != 1:
        if scale.size == 0 or not np.all(scale == scale[0]):
            raise UserError(f"{label}: per-channel scales ({scale.size} values); only one scale per tensor is "
                            "supported (a per-tensor quantizer, e.g. Int8WeightPerTensorFixedPoint)")
    s = float(scale[0])
    if not (np.isfinite(s) and s > 0):
        raise UserError(f"{label}: scale {s!r} must be a positive number")
    mant, exp = math.frexp(s)  # s = mant * 2**exp, mant in [0.5, 1)
    if mant != 0.5:
        raise UserError(f"{label}: scale {s:.6g} is not a power of two; only power-of-two scales map to fixed-point "
                        "formats (Brevitas *FixedPoint quantizers, e.g. Int8ActPerTensorFixedPoint)")
    frac = 1 - exp  # s = 2**(exp - 1) = 2**-frac
    if zeropt.size != 1 or float(zeropt[0]) != 0.0:
        raise UserError(f"{label}: zero point {zeropt.tolist()}; only symmetric quantizers (zero point 0) are supported")
    if bitwidth.size != 1 or float(bitwidth[0]) != int(bitwidth[0]):
        raise UserError(f"{label}: bit width {bitwidth.tolist()} must be one integer")
    bits = int(bitwidth[0])
    signed = bool(attrs.get("signed", 1))
    narrow = bool(attrs.get("narrow", 0))
    if bits < (2 if signed else 1) or bits > MAX_WIDTH:
        raise UserError(f"{label}: {bits}-bit {'signed' if signed else 'unsigned'} quantizer; "
                        f"{2 if signed else 1}..{MAX_WIDTH} bits are supported (no bipolar 1-bit)")
    mode = _text(attrs.get("rounding_mode", "ROUND")).upper()
    if mode not in ROUNDING:
        raise UserError(f"{label}: rounding_mode {mode!r} (supported: {', '.join(ROUNDING)})")
    if not -MAX_WIDTH <= frac <= MAX_WIDTH:
        raise UserError(f"{label}: scale 2**{-frac} is out of range")
    if narrow and bits < 2:
        raise UserError(f"{label}: a narrow 1-bit quantizer holds only 0")
    return QFormat(bits, frac, signed, ROUNDING[mode], "SAT", narrow)


def quantize_const(fmt: QFormat, values: np.ndarray) -> np.ndarray:
    """What the Quant node outputs for a constant input (a weight): the dequantized float64 values."""
    return fmt.to_float(fmt.from_float(np.asarray(values, np.float64)))


# -- a standard-ONNX twin for onnxruntime ----------------------------------------------------------
_LOWER_ROUNDING = {  # QONNX mode -> the standard ops that round y (names as in qonnx's numpy twins)
    "ROUND": ["Round"], "HALF_EVEN": ["Round"], "CEIL": ["Ceil"], "FLOOR": ["Floor"],
}


def lower(m):
    """A copy of ModelProto ``m`` with every ``Quant`` node replaced by standard ops (opset >= 13)."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto.FromString(m.SerializeToString())
    g = out.graph
    nodes = []
    for i, n in enumerate(g.node):
        if not is_quant(n):
            nodes.append(n)
            continue
        x, scale, zeropt, bitwidth = list(n.input) + [""] * (4 - len(n.input))
        a = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
        mode = _text(a.get("rounding_mode", "ROUND")).upper()
        p = f"{n.name or 'Quant'}_{i}_lowered"
        bounds = _bound_consts(g, bitwidth, signed, narrow, p)
        t = lambda s: f"{p}_{s}"  # noqa: E731
        nodes += [helper.make_node("Div", [x, scale], [t("div")], name=t("div")),
                  helper.make_node("Add", [t("div"), zeropt], [t("zp")], name=t("zp")),
                  helper.make_node("Max", [t("zp"), bounds[0]], [t("lo")], name=t("lo")),
                  helper.make_node("Min", [t("lo"), bounds[1]], [t("clip")], name=t("clip"))]
        nodes += _rounding_nodes(mode, t("clip"), t("round"), p)
        nodes += [helper.make_node("Sub", [t("round"), zeropt], [t("unzp")], name=t("unzp")),
                  helper.make_node("Mul", [t("unzp"), scale], [n.output[0]], name=t("mul"))]
    del g.node[:]
    g.node.extend(nodes)
    keep = [o for o in out.opset_import if o.domain not in DOMAINS]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out


def _bound_consts(g, bitwidth: str, signed: bool, narrow: bool, p: str):
    """(min, max) tensors of a Quant's integer range, computed from its bit-width input."""
    from onnx import numpy_helper

    bw = next((t for t in g.initializer if t.name == bitwidth), None)
    if bw is None:
        raise UserError(f"Quant node {p}: its bit width {bitwidth!r} is not a constant")
    bits = int(np.asarray(numpy_helper.to_array(bw)).reshape(-1)[0])
    lo = (-(2 ** (bits - 1)) + int(narrow)) if signed else 0
    hi = (2 ** (bits - 1) - 1) if signed else (2 ** bits - 1 - int(narrow))
    names = (f"{p}_min", f"{p}_max")
    for name, v in zip(names, (lo, hi)):
        g.initializer.append(numpy_helper.from_array(np.array(v, np.float32), name))
    return names


def _rounding_nodes(mode: str, x: str, y: str, p: str) -> list:
    from onnx import helper

    if mode in _LOWER_ROUNDING:
        return [helper.make_node(_LOWER_ROUNDING[mode][0], [x], [y], name=f"{p}_rnd")]
    # sign(x) * f(|x|): UP ceil, DOWN floor, HALF_UP floor(|x| + 1/2), HALF_DOWN ceil(|x| - 1/2)
    f, off = {"UP": ("Ceil", 0.0), "DOWN": ("Floor", 0.0), "HALF_UP": ("Floor", 0.5), "HALF_DOWN": ("Ceil", -0.5)}[mode]
    half = helper.make_node("Constant", [], [f"{p}_off"], name=f"{p}_off",
                            value=helper.make_tensor(f"{p}_offv", 1, [], [off]))
    return [half,
            helper.make_node("Abs", [x], [f"{p}_abs"], name=f"{p}_abs"),
            helper.make_node("Add", [f"{p}_abs", f"{p}_off"], [f"{p}_absoff"], name=f"{p}_absoff"),
            helper.make_node(f, [f"{p}_absoff"], [f"{p}_mag"], name=f"{p}_mag"),
            helper.make_node("Sign", [x], [f"{p}_sign"], name=f"{p}_sign"),
            helper.make_node("Mul", [f"{p}_sign", f"{p}_mag"], [y], name=f"{p}_rnd")]


def has_quant(m) -> bool:
    return any(is_quant(n) for n in m.graph.node)
