"""QONNX import (Brevitas' export): formats from the model's Quant nodes, and results equal to the model's.

Hand-built QONNX graphs (every rounding mode, narrow range, binary points outside the word) and
the committed Brevitas models (``examples/qonnx/``, 8-bit and 4-bit) are imported; the emulator's
scores, as real numbers, must equal the model's outputs exactly (onnxruntime on the lowered graph,
itself checked against qonnx's own executor), and the RTL the emulator (amaranth.sim, Verilator).
Refusals give one line naming the node.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import model.data
from quantize import from_onnx
from quantize.__main__ import main as quantize_main
from quantize.emulator import Emulator
from quantize.evaluate import main as evaluate_main
from quantize.importer import qonnx
from quantize.importer.reference import OnnxModel
from quantize.qformat import QFormat

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = {b: REPO / "examples" / "qonnx" / f"cnn_w{b}a{b}.onnx" for b in (8, 4)}
DOMAIN = "qonnx.custom_op.general"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Small emulator runs (conftest.one_torch_thread)."""


def quant(name, x, out, scale, bits, signed=1, narrow=0, mode="ROUND", zeropt=0.0):
    """A Quant node and its constant inputs (name_s, name_z, name_b)."""
    node = helper.make_node("Quant", [x, f"{name}_s", f"{name}_z", f"{name}_b"], [out], name=name, domain=DOMAIN,
                            signed=signed, narrow=narrow, rounding_mode=mode)
    return node, {f"{name}_s": np.asarray(scale, np.float32), f"{name}_z": np.float32(zeropt),
                  f"{name}_b": np.float32(bits)}


def qgraph(mode="ROUND", narrow=0, act_scale=2.0 ** -3, w_scale=2.0 ** -6, act_bits=4, float_fc_bias=False,
           extra=None):
    """x (1x1x8x8) -> Quant u8 -> Conv 4x3x3 pad 1 (Quant w, int32 bias) -> Relu -> Quant -> MaxPool 2
    -> Reshape -> Gemm 64->10 (Quant w, int32 bias or a float one). ``extra(nodes, inits)`` may edit
    the lists."""
    rng = np.random.default_rng(1)
    nodes, inits = [], {"w": rng.normal(0, 0.3, (4, 1, 3, 3)), "cb": rng.normal(0, 0.2, 4),
                        "fw": rng.normal(0, 0.1, (10, 64)), "fb": rng.normal(0, 0.1, 10),
                        "shape": np.array([1, 64])}
    for n, i in (quant("q_in", "x", "xq", 2.0 ** -8, 8, signed=0),
                 quant("q_w", "w", "wq", w_scale, 6, narrow=1),
                 quant("q_cb", "cb", "cbq", 2.0 ** -8 * w_scale, 32),
                 quant("q_fw", "fw", "fwq", 2.0 ** -7, 6, narrow=1),
                 quant("q_fb", "fb", "fbq", act_scale * 2.0 ** -7, 32)):
        nodes.append(n)
        inits.update(i)
    if float_fc_bias:
        nodes.pop()
    nodes.append(helper.make_node("Conv", ["xq", "wq", "cbq"], ["c"], name="conv", pads=[1] * 4))
    nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    n, i = quant("q_act", "r", "a", act_scale, act_bits, signed=0, narrow=narrow, mode=mode)
    nodes.append(n)
    inits.update(i)
    nodes += [helper.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "fwq", "fb" if float_fc_bias else "fbq"], ["y"], name="fc", transB=1)]
    if extra:
        extra(nodes, inits)
    tensors = [numpy_helper.from_array(np.asarray(v, np.int64 if k == "shape" else np.float32), k)
               for k, v in inits.items()]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, [1, 10])], tensors)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])


def save(m, tmp_path, name="q.onnx") -> Path:
    p = tmp_path / name
    onnx.save(m, str(p))
    return p


def images(n=300, side=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 1, side, side), dtype=np.uint8)


def emulator_equals_model(spec, path, x, diff=False):
    """(classes agree, scores equal exactly) of the emulator against onnxruntime on the lowered
    graph; with ``diff``, the largest |score difference| in accumulator lsbs as well."""
    r = Emulator(spec).run(x, keep=False)
    lsb = spec.layers[-1].formats["acc"].lsb
    theirs = OnnxModel(path, str(path)).run(x)[0]
    out = (r.predictions == theirs.argmax(1)).mean(), np.all(r.scores * lsb == theirs, axis=1).mean()
    return out + (float(np.abs(r.scores * lsb - theirs).max() / lsb),) if diff else out


# --------------------------------------------------------------------------- formats


def test_quant_format():
    n = helper.make_node("Quant", ["a", "b", "c", "d"], ["y"], name="q")
    fmt = qonnx.quant_format(n, np.float32(2 ** -5), 0.0, 4.0, {"signed": 1, "narrow": 1}, "q")
    assert fmt == QFormat(4, 5, True, "RND_CONV", "SAT", narrow=True)
    assert qonnx.quant_format(n, [8.0, 8.0], 0.0, 3.0, {"signed": 0, "rounding_mode": b"FLOOR"}, "q") == \
        QFormat(3, -3, False, "TRN", "SAT")
    for mode, ours in (("CEIL", "TRN_INF"), ("UP", "TRN_AWAY"), ("DOWN", "TRN_ZERO"), ("HALF_UP", "RND_INF"),
                       ("HALF_DOWN", "RND_ZERO"), ("HALF_EVEN", "RND_CONV")):
        assert qonnx.quant_format(n, 1.0, 0.0, 8.0, {"rounding_mode": mode}, "q").rounding == ours
    bad = [((0.3, 0.0, 8.0, {}), "scale 0.3 is not a power of two"),
           (([0.5, 0.25], 0.0, 8.0, {}), "per-channel scales"),
           ((0.5, 3.0, 8.0, {}), "zero point [3.0]"),
           ((0.5, 0.0, 1.0, {}), "1-bit signed quantizer"),
           ((0.5, 0.0, 8.0, {"rounding_mode": "STOCHASTIC"}), "rounding_mode 'STOCHASTIC'"),
           ((-0.5, 0.0, 8.0, {}), "must be a positive number")]
    for args, words in bad:
        with pytest.raises(Exception) as e:
            qonnx.quant_format(n, *args, "node 'q' (op Quant)")
        assert str(e.value).startswith("node 'q' (op Quant): ") and words in str(e.value), str(e.value)


@pytest.mark.parametrize("mode", sorted(qonnx.ROUNDING))
def test_lowering_equals_qonnx_executor(mode, tmp_path):
    """Quant lowered to standard ops (what onnxruntime runs) == qonnx's executor, ties included."""
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    for signed, narrow in ((1, 0), (1, 1), (0, 1)):
        n, i = quant("q", "x", "y", 0.25, 3, signed=signed, narrow=narrow, mode=mode)
        g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [41])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [41])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in i.items()])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
        x = (np.arange(41, dtype=np.float32) - 20) / 16  # multiples of 1/16: ties at every 1/8 (half a step)
        want = execute_onnx(ModelWrapper(m), {"x": x})["y"]
        import onnxruntime as ort

        got = ort.InferenceSession(qonnx.lower(m).SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_array_equal(got, want, err_msg=f"{mode} signed={signed} narrow={narrow}")
        fmt = qonnx.quant_format(n, 0.25, 0.0, 3.0, {"signed": signed, "narrow": narrow, "rounding_mode": mode}, "q")
        np.testing.assert_array_equal(fmt.to_float(fmt.from_float(x.astype(np.float64))), want)


# --------------------------------------------------------------------------- hand-built graphs


@pytest.mark.parametrize("mode, narrow", [("ROUND", 0), ("FLOOR", 1), ("HALF_UP", 0), ("DOWN", 1)])
def test_hand_built_graph_is_exact(mode, narrow, tmp_path):
    path = save(qgraph(mode=mode, narrow=narrow, act_scale=2.0 ** 1 if narrow else 2.0 ** -3), tmp_path)
    spec = from_onnx(path, images=images(64))
    conv = spec.layers[0].formats
    assert conv["input"] == QFormat(8, 8, False, "RND_CONV", "SAT")
    assert conv["weight"] == QFormat(6, 6, True, "RND_CONV", "SAT", narrow=True)
    assert conv["act"].rounding == qonnx.ROUNDING[mode] and conv["act"].narrow == bool(narrow)
    assert conv["act"].frac == (-1 if narrow else 3)  # a scale of 2: the binary point left of the word
    assert spec.layers[-1].formats["weight"].frac == 7 > 6  # small weights keep all their bits
    assert spec.provenance["formats_calibrated"] == []
    agree, equal = emulator_equals_model(spec, path, images(300, seed=1))
    assert agree == 1.0 and equal == 1.0


def test_float_bias_is_rounded_to_the_accumulator(tmp_path):
    """A float bias (Brevitas bias_quant=None) is the one calibrated format: rounded to the
    accumulator's lsb, the scores are within half an lsb of the model's."""
    path = save(qgraph(float_fc_bias=True), tmp_path)
    spec = from_onnx(path, images=images(64))
    assert spec.provenance["formats_calibrated"] == ["fc1.bias"]
    assert spec.layers[-1].formats["bias"].frac == spec.layers[-1].formats["acc"].frac
    agree, _, diff = emulator_equals_model(spec, path, images(300, seed=1), diff=True)
    assert agree >= 0.99 and diff <= 0.5 + 1e-3


def test_hardware_runs_a_qonnx_spec(tmp_path):
    """amaranth.sim: the RTL of an imported QONNX spec (narrow range, frac outside the word) == emulator."""
    from hw.simulate import rtl_accelerator

    spec = from_onnx(save(qgraph(mode="HALF_UP", narrow=1, act_scale=2.0), tmp_path), images=images(64))
    x = images(3, seed=2)
    classes, scores, _ = rtl_accelerator(spec, 4, x)
    np.testing.assert_array_equal(scores, Emulator(spec).run(x).scores)


def _bn_after_conv(nodes, inits):
    i = next(k for k, n in enumerate(nodes) if n.name == "conv")
    nodes[i].output[0] = "c0"
    nodes.insert(i + 1, helper.make_node("BatchNormalization", ["c0", "g", "bb", "m", "v"], ["c"], name="bn"))
    inits.update(g=np.ones(4), bb=np.zeros(4), m=np.zeros(4), v=np.ones(4))


def _relu_after_quant(nodes, inits):
    relu = next(n for n in nodes if n.name == "relu")
    act = next(n for n in nodes if n.name == "q_act")
    relu.input[0], relu.output[0], act.input[0], act.output[0] = "q", "a", "c", "q"
    nodes.remove(relu)
    nodes.insert(nodes.index(act) + 1, relu)


def _quant_twice(nodes, inits):
    i = next(k for k, n in enumerate(nodes) if n.name == "q_act")
    nodes[i].output[0] = "a0"
    n, q = quant("q_again", "a0", "a", 2.0 ** -2, 4, signed=0)
    nodes.insert(i + 1, n)
    inits.update(q)


def _scale(name, value):
    return lambda nodes, inits: inits.update({f"{name}_s": np.asarray(value, np.float32)})


REFUSED = {
    "not a power of two": (_scale("q_act", 0.3), "node 'q_act' (op Quant): scale 0.3 is not a power of two"),
    "weight scale": (_scale("q_w", 0.01), "node 'q_w' (op Quant): scale 0.01 is not a power of two"),
    "per-channel": (_scale("q_w", [2 ** -6, 2 ** -5, 2 ** -6, 2 ** -6]), "node 'q_w' (op Quant): per-channel scales"),
    "zero point": (lambda n, i: i.update(q_act_z=np.float32(2)), "node 'q_act' (op Quant): zero point [2.0]"),
    "bias finer than products": (_scale("q_cb", 2.0 ** -20), "finer lsb (2**-20) than the products (2**-14)"),
    "batchnorm after quantized conv": (_bn_after_conv, "node 'bn' (op BatchNormalization): folding it into 'conv'"),
    "activation after quant": (_relu_after_quant, "node 'relu' (op Relu): an activation after the Quant node"),
    "quant twice": (_quant_twice, "node 'q_again' (op Quant): quantizes again what Quant node 'q_act'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusal_is_one_line(case, tmp_path, capsys):
    edit, words = REFUSED[case]
    path = save(qgraph(extra=edit), tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, images(4))
    out = tmp_path / "out"
    rc = quantize_main(["--model", str(path), "--out", str(out), "--images", str(x)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert words in err, err
    assert not out.exists()


# --------------------------------------------------------------------------- the committed Brevitas models


@pytest.fixture(scope="module")
def mnist_test(mnist_dir):
    t = model.data.load("test", mnist_dir)
    return t.images[:1000].reshape(-1, 1, 28, 28), t.labels[:1000]


@pytest.mark.parametrize("bits", [8, 4])
def test_committed_brevitas_model(bits, mnist_test, tmp_path, capsys):
    """All formats from the model; emulator == the QONNX model on 1,000 MNIST test digits, every score."""
    path = MODELS[bits]
    out = tmp_path / "spec"
    assert quantize_main(["--model", str(path), "--out", str(out), "--calibration-images", "200"]) == 0
    assert "formats: 9 from the model's Quant nodes; none calibrated" in capsys.readouterr().out
    spec = json.loads((out / "spec.json").read_text())
    assert spec["provenance"]["format"] == "qonnx" and spec["provenance"]["formats_calibrated"] == []
    widths = {l["name"]: l["formats"]["weight"]["width"] for l in spec["layers"] if "weight" in l["formats"]}
    assert set(widths.values()) == {bits}
    x, y = mnist_test
    assert evaluate_main(["--spec", str(out), "--against", str(path), "--limit", "1000", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 1000 and r["classes_agree"] == 1000 and r["scores_equal"] == 1000
    assert r["emulator_errors"] == r["model_errors"] <= 40  # a trained model: about 1-2% on these digits


def test_committed_model_in_rtl(mnist_test):
    """The 4-bit model's RTL (amaranth.sim, 16 lanes) == the emulator on two digits (Verilator on
    10,000: ``make qonnx``)."""
    from hw.simulate import rtl_accelerator

    spec = from_onnx(MODELS[4], calibration_images=64)
    x = mnist_test[0][:2]
    np.testing.assert_array_equal(rtl_accelerator(spec, 16, x)[1], Emulator(spec).run(x).scores)


def test_fresh_brevitas_export(tmp_path, mnist_test):
    """The installed Brevitas' QONNX exporter, end to end: an untrained 4-bit net (its scales set by
    a few batches) exported, imported, and equal to onnxruntime's run of it on every score."""
    pytest.importorskip("brevitas")
    import torch

    spec_ = importlib.util.spec_from_file_location("brevitas_cnn", REPO / "examples" / "brevitas_cnn.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.quant_cnn(4, c1=4, c2=8)
    x, _ = mnist_test
    net.train()
    with torch.no_grad():
        for i in range(3):
            net(mod.scale(x[i * 64:(i + 1) * 64, 0]))
    path = tmp_path / "fresh.onnx"
    mod.export(net, path)
    spec = from_onnx(path, calibration_images=64)
    assert spec.provenance["formats_calibrated"] == []
    agree, equal = emulator_equals_model(spec, path, x[:300])
    assert agree == 1.0 and equal == 1.0


def test_sweep_refuses_a_qonnx_model(capsys, tmp_path):
    from quantize.sweep import main as sweep_main

    rc = sweep_main(["--model", str(MODELS[4]), "--out", str(tmp_path / "sw"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "fixes its own formats in its Quant nodes" in err and err.count("\n") == 1, err
