"""The float reference of an imported model (onnxruntime) and the user's image sets.

Images are uint8 grey levels, N x C x H x W as the spec takes them (:func:`model.data.fit_images`:
MNIST digits are area-resampled for a 1 x H x W input up to 28 x 28). The model reads a pixel p
of channel c as ``(p / 255 - mean[c]) / std[c]``, in its own input layout (N x C x H x W,
N x H x W or N x C*H*W).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from model import data
from model.util import UserError

from .onnxgraph import image_input, image_shape


def add_model_arguments(parser, images_help: str, labels_help: str):
    """The ``--model only`` flags of ``python -m quantize`` and ``python -m quantize.sweep``."""
    m = parser.add_argument_group("--model only")
    m.add_argument("--input-mean", help="pixel p enters the model as (p/255 - mean)/std: one value or one per "
                                        "channel, comma-separated (default 0)")
    m.add_argument("--input-std", help="see --input-mean (default 1)")
    m.add_argument("--images", help=images_help)
    m.add_argument("--labels", help=labels_help)
    m.add_argument("--calibration-images", type=int, default=None, help="how many calibration images (default 2000)")
    return m


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    """``--input-mean 0.5`` or ``0.5,0.4,0.3``: one value or one per channel."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected one number or one per channel (comma-separated)") from None


def load_images(images_path, labels_path=None, shape=None, flag: str = "--images"):
    """Read ``--images X.npy`` (uint8) and ``--labels Y.npy`` (integers, one per image)."""
    x = _npy(images_path, flag)
    if x.dtype != np.uint8:
        raise UserError(f"{flag} {images_path}: dtype {x.dtype}, expected uint8 grey levels (0..255)")
    if shape is not None:
        x = data.fit_images(x, shape, what=f"{flag} {images_path}")
    y = None
    if labels_path is not None:
        y = _npy(labels_path, "--labels")
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise UserError(f"--labels {labels_path}: expected a 1-D integer array, got {y.dtype} {y.shape}")
        if len(y) != len(x):
            raise UserError(f"--labels {labels_path}: {len(y)} labels for {len(x)} images")
        y = y.astype(np.int64)
    return x, y


def _npy(path, flag: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        a = np.load(p, allow_pickle=False)
    except Exception as e:
        raise UserError(f"{flag} {path}: not a .npy array ({type(e).__name__})") from None
    if not isinstance(a, np.ndarray):
        raise UserError(f"{flag} {path}: expected one array (.npy), not an archive")
    return a


def mnist_fits(shape) -> bool:
    """MNIST digits can feed a C x H x W input: one channel, at most 28 x 28 (area-resampled)."""
    c, h, w = shape
    return c == 1 and h <= 28 and w <= 28


def dataset(shape, images=None, labels=None, split: str = "test", data_dir=None, where: str = "model"):
    """(uint8 N x C x H x W images, labels or None): the user's arrays, or MNIST's ``split``."""
    if images is not None:
        return data.fit_images(np.asarray(images), shape, what="images"), labels
    if not mnist_fits(shape):
        c, h, w = shape
        raise UserError(f"{where}: takes {c} x {h} x {w} images, not MNIST digits: give --images X.npy "
                        f"(uint8 N x {c} x {h} x {w}) and --labels Y.npy")
    s = data.load(split, data_dir)
    return data.fit_images(s.images, shape), s.labels


class OnnxModel:
    """An ONNX file run by onnxruntime on uint8 images (scaled by mean/std into its input layout).

    ``outputs``: extra intermediate tensors to fetch besides the graph output (e.g. the logits
    before a final softmax)."""

    def __init__(self, model, where: str, mean=None, std=None, outputs=()):
        import onnx
        import onnxruntime as ort

        from .onnxgraph import _per_channel, load

        self.where = where
        m = load(model) if not isinstance(model, onnx.ModelProto) else model
        inp, self.model_shape = image_input(m, where)
        self.shape = image_shape(self.model_shape, where, inp.name)
        self.input_name = inp.name
        self.dtype = np.float64 if inp.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE else np.float32
        b = inp.type.tensor_type.shape.dim[0]
        self.batch = b.dim_value if b.HasField("dim_value") and b.dim_value > 0 else None
        from .qonnx import has_quant, lower

        m = lower(m) if has_quant(m) else onnx.ModelProto.FromString(m.SerializeToString())
        for name in outputs:
            if name not in {o.name for o in m.graph.output}:
                m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        self.output_names = [m.graph.output[0].name] + [n for n in outputs if n != m.graph.output[0].name]
        c = self.shape[0]
        self.mean = _per_channel(mean, 0.0, c, "--input-mean")
        self.std = _per_channel(std, 1.0, c, "--input-std")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise UserError(f"{where}: onnxruntime cannot run it ({str(e).strip().splitlines()[0][:300]})") from None

    def inputs(self, images_u8: np.ndarray) -> np.ndarray:
        p = np.arange(256, dtype=np.float64) / 255.0
        v = (p[None] - self.mean[:, None]) / self.std[:, None]
        x = v[np.arange(len(v))[None, :, None, None], images_u8]
        return x.reshape((len(x),) + tuple(self.model_shape)).astype(self.dtype)

    def run(self, images_u8: np.ndarray, chunk: int = 1000) -> list[np.ndarray]:
        """Every requested output (graph output first) for uint8 N x C x H x W images, N x ...."""
        x = self.inputs(data.fit_images(images_u8, self.shape))
        step = self.batch or chunk
        outs = [[] for _ in self.output_names]
        for i in range(0, len(x), step):
            xb = x[i:i + step]
            n = len(xb)
            if self.batch and n < self.batch:  # a fixed batch size: pad the last group
                xb = np.concatenate([xb, np.zeros((self.batch - n,) + xb.shape[1:], xb.dtype)])
            for o, r in zip(outs, self.session.run(self.output_names, {self.input_name: xb})):
                o.append(np.asarray(r)[:n].reshape(n, -1))
        return [np.concatenate(o) if o else np.zeros((0, 0)) for o in outs]

    def predict(self, images_u8: np.ndarray) -> np.ndarray:
        return self.run(images_u8)[0].argmax(1)
