"""quantize.importer: a user's float CNN (torch -> ONNX) into a bit-exact QuantSpec.

Small torch models are built here, exported to ONNX in tmp_path, imported and checked against
onnxruntime (float), the emulator (integers), the hardware program and, for one model, the RTL
(amaranth.sim, bit-exact). Refusals give one error line and exit code 2.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import model.data
from quantize import from_onnx, from_torch, importer
from quantize import spec as qspec
from quantize.__main__ import main as quantize_main
from quantize.emulator import Emulator
from quantize.evaluate import main as evaluate_main
from quantize.importer import onnxgraph
from quantize.importer.reference import OnnxModel

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CAL = 300  # calibration images (the default is 2,000: tests stay fast)


def export(module, shape, path, **kw):
    """The exporter from_torch uses (TorchScript, batch axis dynamic, opset 17)."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros((1,) + tuple(shape)),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["scores"],
                          dynamic_axes={"input": {0: "N"}, "scores": {0: "N"}}, **kw)
    return path


def dequantized(spec, images):
    """The emulator's scores as real numbers (codes * 2**-acc.frac)."""
    r = Emulator(spec).run(images, keep=False)
    return r.scores * 2.0 ** -spec.layers[-1].formats["acc"].frac, r


def cnn() -> nn.Sequential:
    """Conv-ReLU-MaxPool-Conv-ReLU-AvgPool-Flatten-Linear-ReLU-Dropout-Linear on 1 x 16 x 16 digits."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(72, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def digits(mnist_dir):
    """MNIST digits resampled to 16 x 16 (as the spec takes them): 3,000 train, 500 test."""
    tr, te = model.data.load("train", mnist_dir), model.data.load("test", mnist_dir)
    rs = lambda a: model.data.fit_images(a, (1, 16, 16))  # noqa: E731
    return rs(tr.images[:3000]), tr.labels[:3000].astype(np.int64), rs(te.images[:500]), te.labels[:500].astype(np.int64)


def train(net, digits, epochs: int = 2, lr: float = 1e-2, mean: float = 0.1307, std: float = 0.3081):
    """A few epochs of Adam on the 3,000 training digits (seed 0); returns the net in eval mode."""
    x, y, _, _ = digits
    torch.manual_seed(0)
    xt = (torch.from_numpy(x).float() / 255 - mean) / std
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: threads only cost
    try:
        net.train()
        for _ in range(epochs):
            for i in torch.randperm(len(x)).split(32):
                loss = nn.functional.cross_entropy(net(xt[i]), yt[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """The CNN, briefly trained (2 epochs on 3,000 digits, mean/std input scaling: ~13% error), and its ONNX file."""
    torch.manual_seed(0)
    net = train(cnn(), digits)
    return net, export(net, (1, 16, 16), tmp_path_factory.mktemp("import") / "cnn.onnx")


@pytest.fixture(scope="module")
def cnn_spec(trained, digits, mnist_dir):
    _, path = trained
    return from_onnx(path, preset="q8", input_mean=0.1307, input_std=0.3081, calibration_images=CAL, data_dir=mnist_dir)


def test_cnn_q8_follows_the_float_model(trained, cnn_spec, digits, tmp_path):
    _, path = trained
    spec = qspec.load(cnn_spec.save(tmp_path / "cnn-q8"))  # validates on the way back
    assert [(l.kind, l.activation) for l in spec.layers] == [
        ("conv", "relu"), ("maxpool", None), ("conv", "relu"), ("avgpool", None), ("dense", "relu"), ("dense", None)]
    assert spec.input_shape == (1, 16, 16) and spec.classes == 10
    conv1 = spec.layers[0]
    assert conv1.pad == 1 and conv1.pad_code == 0  # zero padding: the code of 0.0
    assert spec.provenance["input_mean"] == [0.1307] and spec.provenance["qat_epochs"] == 0
    assert spec.layers[3].weight.tolist() == [spec.layers[3].formats["weight"].from_float(0.25)] * 8  # 1/k^2
    # the input table is (p/255 - mean)/std rounded into the input format, exactly
    p = np.arange(256) / 255.0
    np.testing.assert_array_equal(spec.input_lut[0], spec.input_format.from_float((p - 0.1307) / 0.3081))
    _, _, xt, yt = digits
    ref = OnnxModel(path, "cnn.onnx", 0.1307, 0.3081).run(xt)[0]
    got, r = dequantized(spec, xt)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.97
    assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()
    assert all(v["acc_overflows"] == 0 for v in r.saturations().values())
    float_err, q_err = (ref.argmax(1) != yt).mean(), (r.predictions != yt).mean()
    assert float_err < 0.25 and q_err <= float_err + 0.02


def test_from_torch_equals_the_onnx_path(trained, cnn_spec, mnist_dir):
    net, _ = trained
    spec = from_torch(net, torch.zeros(1, 1, 16, 16), preset="q8", input_mean=0.1307, input_std=0.3081,
                      calibration_images=CAL, data_dir=mnist_dir)
    assert spec.provenance["exporter"] == "torchscript"
    a, b = spec.to_json(), cnn_spec.to_json()
    assert a["layers"] == b["layers"] and a["input"] == b["input"]
    x, y = spec.arrays(), cnn_spec.arrays()
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_from_torch_falls_back_to_dynamo(monkeypatch):
    """Without the TorchScript exporter, from_torch takes the dynamo one: the same layers and scores."""
    real = torch.onnx.export

    def no_torchscript(*a, dynamo=True, **kw):
        if not dynamo:
            raise RuntimeError("TorchScript exporter unavailable")
        return real(*a, dynamo=dynamo, **kw)

    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).eval()
    x = np.random.default_rng(6).integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    ts = from_torch(net, torch.zeros(1, 1, 8, 8), images=x)
    monkeypatch.setattr(torch.onnx, "export", no_torchscript)
    dyn = from_torch(net, torch.zeros(1, 1, 8, 8), images=x)
    assert (ts.provenance["exporter"], dyn.provenance["exporter"]) == ("torchscript", "dynamo")
    assert [(l.kind, l.activation) for l in dyn.layers] == [(l.kind, l.activation) for l in ts.layers]
    np.testing.assert_array_equal(Emulator(dyn).run(x).scores, Emulator(ts).run(x).scores)


def test_batchnorm_is_folded(tmp_path, mnist_dir):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    for bn in (net[1], net[6]):  # non-trivial statistics
        n = bn.num_features
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.2, 3.0)
        bn.weight.data.uniform_(0.5, 2.0)
        bn.bias.data.uniform_(-0.5, 0.5)
        assert n
    # PRESERVE keeps the BatchNormalization nodes (eval mode would fold them in the exporter)
    path = export(net, (1, 16, 16), tmp_path / "bn.onnx", training=torch.onnx.TrainingMode.PRESERVE)
    assert sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node) == 2
    fnet = importer.read(path)
    assert [l.kind for l in fnet.layers] == ["conv", "maxpool", "dense", "dense"]
    x = np.random.default_rng(0).integers(0, 256, (32, 1, 16, 16), dtype=np.uint8)
    ref = OnnxModel(path, "bn.onnx").run(x)[0]  # onnxruntime on the unfolded graph
    with torch.no_grad():
        torch_out = net(torch.from_numpy(x).float() / 255).numpy()
    np.testing.assert_allclose(fnet.forward(x), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fnet.forward(x), torch_out, rtol=1e-5, atol=1e-5)
    spec = from_onnx(path, calibration_images=CAL, data_dir=mnist_dir)
    assert spec.provenance["onnx_nodes"]["conv1"][1].endswith("BatchNormalization")


def test_table_activations(tmp_path, digits, mnist_dir):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(4, 6, 3), nn.Sigmoid(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(54, 24), nn.Hardtanh(), nn.Linear(24, 10))
    net = nn.Sequential(*train(net, digits, epochs=1, mean=0.0, std=1.0), nn.Softmax(1))  # softmax: dropped
    path = export(net, (1, 16, 16), tmp_path / "tanh.onnx")
    spec = from_onnx(path, preset="q8", calibration_images=CAL, data_dir=mnist_dir)
    acts = [l.activation for l in spec.layers]
    assert acts == ["tanh", None, "sigmoid", None, "hard_tanh", None]
    assert spec.provenance["clip"] == {"fc1": [-1.0, 1.0]} and spec.provenance["dropped_nodes"]
    for l in spec.layers:
        if l.has_lut:  # f at every address, rounded into act
            v = l.formats["index"].to_float(np.arange(l.formats["index"].code_min, l.formats["index"].code_max + 1))
            f = {"tanh": np.tanh, "sigmoid": lambda t: 1 / (1 + np.exp(-t)), "hard_tanh": lambda t: np.clip(t, -1, 1)}
            np.testing.assert_array_equal(l.lut, l.formats["act"].from_float(f[l.activation](v)))
    assert not spec.layers[2].formats["act"].signed  # sigmoid: [0, 1)
    _, _, xt, _ = digits
    ref = OnnxModel(path, "tanh.onnx", outputs=[]).run(xt)[0]  # softmax probabilities
    got, _ = dequantized(spec, xt)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    """A 3-channel 12 x 12 model with 4 classes (stride-2 conv), its ONNX file and random images."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(36, 4))
    d = tmp_path_factory.mktemp("rgb")
    path = export(net, (3, 12, 12), d / "rgb.onnx")
    images = np.random.default_rng(3).integers(0, 256, (200, 3, 12, 12), dtype=np.uint8)
    np.save(d / "x.npy", images)
    np.save(d / "y.npy", np.random.default_rng(4).integers(0, 4, 200))
    return net, path, images, d


def test_three_channels_bit_exact_in_rtl(rgb):
    from hw.program import compile_spec
    from hw.simulate import rtl_accelerator

    _, path, images, _ = rgb
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    spec = from_onnx(path, preset="q8", input_mean=mean, input_std=std, images=images)
    assert spec.input_shape == (3, 12, 12) and spec.classes == 4 and spec.input_lut.shape == (3, 256)
    assert spec.layers[0].stride == 2 and spec.provenance["input_std"] == std
    ref = OnnxModel(path, "rgb.onnx", mean, std).run(images)[0]
    got, _ = dequantized(spec, images)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    compile_spec(spec, 8)
    classes, scores, _ = rtl_accelerator(spec, 8, images[:2])
    emu = Emulator(spec).run(images[:2])
    np.testing.assert_array_equal(np.asarray(scores), emu.scores)
    np.testing.assert_array_equal(np.asarray(classes), emu.predictions)


def test_cli_import(rgb, tmp_path, capsys):
    _, path, _, d = rgb
    out = tmp_path / "rgb-anna"
    assert quantize_main(["--model", str(path), "--preset", "anna", "--out", str(out), "--input-mean", "0.5,0.4,0.3",
                          "--input-std", "0.25", "--images", str(d / "x.npy"), "--labels", str(d / "y.npy"),
                          "--calibration-images", "100"]) == 0
    r = capsys.readouterr()
    assert "calibrated only" in r.err and "float error" in r.out and "conv1 conv/relu -> pool1 maxpool" in r.out
    spec = qspec.load(out)
    assert spec.provenance["calibration_images"] == 100 and spec.provenance["input_std"] == [0.25] * 3
    assert spec.input_format.width == 3 and spec.provenance["qat_epochs"] == 0  # anna widths, no QAT


def test_evaluate_model_and_spec(rgb, tmp_path, capsys):
    _, path, images, d = rgb
    spec = from_onnx(path, images=images)
    sdir = spec.save(tmp_path / "s")
    assert evaluate_main(["--model", str(path), "--images", str(d / "x.npy"), "--labels", str(d / "y.npy"), "--json"]) == 0
    fl = json.loads(capsys.readouterr().out)
    assert fl["images"] == 200 and 0 <= fl["error_rate"] <= 1
    assert evaluate_main(["--spec", str(sdir), "--images", str(d / "x.npy"), "--labels", str(d / "y.npy"), "--json"]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["images"] == 200
    # the float reference on the user's images: MNIST digits do not fit 3 x 12 x 12
    assert evaluate_main(["--model", str(path)]) == 2
    assert "--images" in capsys.readouterr().err


# --------------------------------------------------------------------------- refusals


def graph(nodes, inits, in_shape=(1, 1, 8, 8), out_shape=None, opset=17):
    """A small ONNX model from nodes and float initializers (name -> array)."""
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_shape or ["N", "K"])],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _conv(name="conv1", **attrs):
    from onnx import helper

    return helper.make_node("Conv", ["x", "w"], ["c"], name=name, **attrs)


def _head(inp="c", n=4 * 8 * 8):
    """Flatten + Gemm to 10 classes after a tensor of n values."""
    from onnx import helper

    return [helper.make_node("Flatten", [inp], ["f"], name="flat"),
            helper.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1)], {"fw": np.zeros((10, n))}


def refusals():
    from onnx import helper

    w = {"w": np.ones((4, 1, 3, 3))}
    head, hw = _head()
    cases = {
        "op": ([helper.make_node("ConvTranspose", ["x", "w"], ["c"], name="up1")] + head, {**w, **hw},
               "node 'up1' (op ConvTranspose) is not supported; supported: Conv"),
        "groups": ([_conv(group=1, pads=[1] * 4)] + head, {**w, **hw}, None),  # accepted (sanity)
        "asymmetric": ([_conv(pads=[0, 0, 1, 1])] + _head(n=4 * 7 * 7)[0], {**w, "fw": np.zeros((10, 196))},
                       "node 'conv1' (op Conv): pads=[0, 0, 1, 1] are asymmetric"),
        "dilation": ([_conv(dilations=[2, 2])] + _head(n=4 * 4 * 4)[0], {**w, "fw": np.zeros((10, 64))},
                     "node 'conv1' (op Conv): dilations=[2, 2] are not supported"),
        "pool_stride": ([_conv(pads=[1] * 4), helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[3, 3],
                                                              strides=[2, 2])] + _head("p", 4 * 3 * 3)[0],
                        {**w, "fw": np.zeros((10, 36))},
                        "node 'pool' (op MaxPool): strides=[2, 2]: a pool's stride must equal its kernel (3)"),
        "classes": ([_conv(pads=[1] * 4)] + _head()[0], {**w, "fw": np.zeros((65, 256))},
                    "node 'fc': 65 classes; 2..64 are supported"),
        "skip": ([_conv(pads=[1] * 4), helper.make_node("Relu", ["c"], ["r"], name="relu"),
                  helper.make_node("Add", ["c", "r"], ["a"], name="skip")] + _head("a")[0], {**w, **hw},
                 "tensor 'c' feeds 2 nodes"),
    }
    chans = ([helper.make_node("Conv", ["x", "w5"], ["c"], name="conv1", pads=[1] * 4)] + head,
             {"w5": np.ones((4, 5, 3, 3)), **hw}, "input 'x': 5 channels; 1..4 are supported")
    side = ([_conv(pads=[1] * 4)] + _head(n=4 * 65 * 65)[0], {**w, "fw": np.zeros((10, 4 * 65 * 65))},
            "input 'x': 65 x 65 images; at most 64 x 64")
    kernel = ([helper.make_node("Conv", ["x", "w9"], ["c"], name="big")] + _head(n=4 * 2 * 2)[0],
              {"w9": np.ones((4, 1, 9, 9)), "fw": np.zeros((10, 16))}, "node 'big' (op Conv): kernel_shape=[9, 9]")
    out = {k: graph(n, i) for k, (n, i, _) in cases.items()}
    out["kernel"] = graph(kernel[0], kernel[1], in_shape=(1, 1, 10, 10))
    out["channels"] = graph(chans[0], chans[1], in_shape=(1, 5, 8, 8))
    out["side"] = graph(side[0], side[1], in_shape=(1, 1, 65, 65))
    out["opset"] = graph(cases["groups"][0], cases["groups"][1], opset=11)
    msgs = {k: m for k, (_, _, m) in cases.items()}
    msgs.update(channels=chans[2], side=side[2], kernel=kernel[2], opset="opset 11; opset 13 or newer is needed")
    return out, msgs


REFUSALS = ["op", "asymmetric", "dilation", "pool_stride", "kernel", "classes", "skip", "channels", "side", "opset"]


@pytest.mark.parametrize("case", REFUSALS)
def test_refusal_is_one_line(case, tmp_path, capsys):
    models, msgs = refusals()
    path = tmp_path / f"{case}.onnx"
    onnx.save(models[case], str(path))
    out = tmp_path / "out"
    rc = quantize_main(["--model", str(path), "--preset", "q8", "--out", str(out), "--images",
                        str(_images(tmp_path, models[case]))])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: {path}: "), err
    assert msgs[case] in err, err
    assert not out.exists()


def _images(tmp_path, m):
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim][1:]
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((4, *dims), np.uint8))
    return p


def test_groups_refused(tmp_path, capsys):
    from onnx import helper

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="dw", group=2, pads=[1] * 4)] + _head(n=2 * 8 * 8)[0]
    m = graph(nodes, {"w": np.ones((2, 1, 3, 3)), "fw": np.zeros((10, 128))}, in_shape=(1, 2, 8, 8))
    onnx.save(m, str(tmp_path / "g.onnx"))
    assert quantize_main(["--model", str(tmp_path / "g.onnx"), "--preset", "q8", "--out", str(tmp_path / "o"),
                          "--images", str(_images(tmp_path, m))]) == 2
    assert "node 'dw' (op Conv): group=2 is not supported" in capsys.readouterr().err


def test_accepted_sanity_case(tmp_path):
    """The refusal fixtures are otherwise valid: the same graph with symmetric pads imports."""
    models, _ = refusals()
    onnx.save(models["groups"], str(tmp_path / "ok.onnx"))
    spec = from_onnx(tmp_path / "ok.onnx", images=np.zeros((4, 1, 8, 8), np.uint8))
    assert [l.kind for l in spec.layers] == ["conv", "dense"] and spec.layers[0].activation is None


def test_refusal_via_the_cli(run_module, tmp_path):
    """Through a real process: an unsupported op gives exit 2, one line, nothing written."""
    models, msgs = refusals()
    onnx.save(models["op"], str(tmp_path / "model.onnx"))
    r = run_module("quantize", "--model", tmp_path / "model.onnx", "--preset", "q8", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and msgs["op"] in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_corrupt_file(tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"\x00not a model at all\xff" * 10)
    assert quantize_main(["--model", str(tmp_path / "bad.onnx"), "--preset", "q8", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.onnx: not an ONNX model" in err, err
    assert not (tmp_path / "o").exists()


def test_options_refused(tmp_path, capsys, rgb):
    _, path, _, d = rgb
    args = ["--model", str(path), "--preset", "q8", "--out", str(tmp_path / "o")]
    assert quantize_main(args + ["--input-mean", "0.1,0.2"]) == 2
    assert "--input-mean: 2 values for 3 input channels" in capsys.readouterr().err
    assert quantize_main(args + ["--input-std", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert quantize_main(args) == 2  # 3 x 12 x 12: no MNIST default
    assert "give calibration images with --images" in capsys.readouterr().err
    assert quantize_main(["--checkpoint", "x.pt", "--preset", "q8", "--out", "o", "--input-mean", "0.5"]) == 2
    assert "is for --model" in capsys.readouterr().err


def test_graph_forms(tmp_path):
    """MatMul + Add, a Reshape computed from Shape, Clip(0) as ReLU, relu after the max-pool, LogSoftmax."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3)
            self.w = nn.Parameter(torch.randn(48, 5) * 0.2)
            self.b = nn.Parameter(torch.randn(5) * 0.1)

        def forward(self, x):
            x = (x - 0.1307) / 0.3081  # input scaling in the graph: folded into the input table
            x = torch.relu(nn.functional.max_pool2d(self.conv(x), 2))  # pool, then relu
            x = x.view(x.size(0), -1)  # Shape -> Gather -> Concat -> Reshape
            x = torch.clamp(x @ self.w + self.b, min=0)  # MatMul + Add, Clip(0)
            return torch.log_softmax(x @ torch.ones(5, 3) + 0.5, 1)

    torch.manual_seed(5)
    path = export(Net(), (1, 10, 10), tmp_path / "forms.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert {"Sub", "Div", "MatMul", "Add", "Reshape", "Shape", "LogSoftmax"} <= set(ops)
    net = importer.read(path)
    assert [(l.kind, l.activation) for l in net.layers] == [("conv", "relu"), ("maxpool", None), ("dense", "relu"),
                                                            ("dense", None)]
    np.testing.assert_allclose([net.mean[0], net.std[0]], [0.1307, 0.3081])
    assert (net.feed_mean[0], net.feed_std[0]) == (0.0, 1.0)  # nothing before the graph
    x = np.random.default_rng(0).integers(0, 256, (8, 1, 10, 10), dtype=np.uint8)
    spec = from_onnx(path, images=x)
    assert spec.classes == 3 and len(spec.provenance["input_nodes"]) == 2
    np.testing.assert_allclose(spec.provenance["input_table"]["mean"], [0.1307])


def test_final_relu_and_bad_files(tmp_path):
    from onnx import helper

    nodes = [_conv(pads=[1] * 4)] + _head()[0] + [helper.make_node("Relu", ["y"], ["r"], name="last_relu")]
    onnx.save(graph(nodes, {"w": np.ones((4, 1, 3, 3)), "fw": np.zeros((10, 256))}), str(tmp_path / "r.onnx"))
    with pytest.raises(Exception, match="'last_relu' \\(relu\\) after the last layer"):
        importer.read(tmp_path / "r.onnx")
    with pytest.raises(Exception, match="no such file"):
        onnxgraph.load(tmp_path / "missing.onnx")
