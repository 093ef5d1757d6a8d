"""The QuantSpec: the one contract between the emulator and the hardware generator.

On disk a spec is a directory with ``spec.json`` (schema version, input, per-layer shapes, formats
and activations, provenance) and ``weights.npz`` (integer weights, biases, lookup tables). See
docs/quantspec.md. :func:`load` validates everything (``quantize/spec_check.py``) and names the
first bad field. Schema 2 describes any feed-forward LeNet-style CNN; schema-1 files (LeNet-5's
32x32 padded input) still load and are converted on reading.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.util import UserError

from .qformat import QFormat
from .spec_check import validate

SCHEMA = 2
KINDS = ("conv", "local", "subsample", "avgpool", "maxpool", "dense", "rbf")
#: activations computed through a lookup table (the name records which function the table holds)
LUT_FUNCTIONS = ("scaled_tanh", "tanh", "sigmoid", "hard_tanh")
ACTIVATIONS = LUT_FUNCTIONS + ("relu",)
SPATIAL = ("conv", "local", "subsample", "avgpool", "maxpool")
POOLS = ("subsample", "avgpool", "maxpool")
#: formats each layer kind carries besides those of its activation
REQUIRED = {
    "conv": ("input", "weight", "bias", "acc"),
    "local": ("input", "weight", "bias", "acc"),
    "dense": ("input", "weight", "bias", "acc"),
    "subsample": ("input", "weight", "bias", "acc"),
    "avgpool": ("input", "weight", "acc"),
    "maxpool": ("input",),
    "rbf": ("input", "weight", "acc"),
}


def out_extent(n: int, kernel: int, stride: int, pad: int) -> int:
    """Output positions along one axis: ``(n + 2 pad - kernel) // stride + 1`` (PyTorch's rule)."""
    return (n + 2 * pad - kernel) // stride + 1


@dataclass
class LayerSpec:
    """One layer. Spatial kinds read ``in_maps`` maps of ``in_h`` x ``in_w``; ``dense``/``rbf`` read
    ``in_maps`` values (the previous output flattened in (map, row, column) order)."""

    name: str
    kind: str
    in_maps: int
    out_maps: int
    in_h: int
    in_w: int
    kernel: int
    formats: dict[str, QFormat]
    # int64 codes: conv O x C x K x K (0 outside the table); local O x OH x OW x C x K x K;
    # subsample/avgpool O (one coefficient per map); dense/rbf O x I; maxpool: None
    weight: np.ndarray | None
    bias: np.ndarray | None  # bias codes: O, or O x OH x OW ("untied": one per unit); None: no bias
    lut: np.ndarray | None = None  # act codes, 2**index.width entries (table activations)
    table: list[list[int]] | None = None  # conv: out map -> input maps
    source: list[int] | None = None  # pools: out map -> input map
    stride: int = 1  # pools: always the kernel
    pad: int = 0  # rows/columns of pad_code around the input (conv, local)
    pad_code: int = 0  # a code of the input format
    activation: str | None = None  # one of LUT_FUNCTIONS, "relu", or None

    # -- shape -------------------------------------------------------------------------------------
    @property
    def spatial(self) -> bool:
        return self.kind in SPATIAL

    @property
    def out_h(self) -> int:
        return out_extent(self.in_h, self.kernel, self.stride, self.pad) if self.spatial else 1

    @property
    def out_w(self) -> int:
        return out_extent(self.in_w, self.kernel, self.stride, self.pad) if self.spatial else 1

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.out_maps, self.out_h, self.out_w)

    @property
    def untied(self) -> bool:
        """One bias per output unit (O x OH x OW) instead of one per map."""
        return self.bias is not None and self.bias.ndim == 3

    # -- arithmetic --------------------------------------------------------------------------------
    @property
    def has_lut(self) -> bool:
        return self.activation in LUT_FUNCTIONS

    @property
    def has_activation(self) -> bool:
        """True for every layer but the last: its output is a feature map of the ``act`` format."""
        return self.kind == "maxpool" or "act" in self.formats

    @property
    def out_format(self) -> QFormat:
        if self.kind == "maxpool":
            return self.formats["input"]
        return self.formats["act"] if "act" in self.formats else self.formats["acc"]

    def bias_acc(self) -> np.ndarray:
        """Bias codes moved to the accumulator's lsb (exact left shift); zeros without a bias."""
        if self.bias is None:
            return np.zeros(self.out_maps, np.int64)
        return self.bias.astype(np.int64) << (self.formats["acc"].frac - self.formats["bias"].frac)

    def connections(self) -> list[list[int]]:
        if self.table is not None:
            return self.table
        return [list(range(self.in_maps))] * self.out_maps

    def sources(self) -> list[int]:
        """Pools: the input map of each output map."""
        return list(self.source) if self.source is not None else list(range(self.out_maps))

    def macs(self) -> int:
        """Multiply-accumulates per image (a pool: one multiply per output; max-pool: none)."""
        n = self.out_h * self.out_w
        if self.kind == "conv":
            return n * sum(len(t) for t in self.connections()) * self.kernel**2
        if self.kind == "local":
            return n * self.out_maps * self.in_maps * self.kernel**2
        if self.kind in ("subsample", "avgpool"):
            return n * self.out_maps
        if self.kind == "maxpool":
            return 0
        return self.in_maps * self.out_maps

    def weight_bits(self) -> int:
        """Bits of weight memory: real weights (table entries only), biases, coefficients."""
        if self.kind in ("rbf", "maxpool"):
            return 0
        n = self.weight.size
        if self.kind == "conv":
            n = sum(len(t) for t in self.connections()) * self.kernel**2
        bias = self.bias.size * self.formats["bias"].width if self.bias is not None else 0
        return n * self.formats["weight"].width + bias


@dataclass
class QuantSpec:
    network: str
    input_format: QFormat
    input_lut: np.ndarray  # channels x 256 int64 codes: grey level of channel c -> input code
    input_shape: tuple[int, int, int]  # channels, height, width of the image the network takes
    layers: list[LayerSpec]
    provenance: dict = field(default_factory=dict)
    schema: int = SCHEMA

    @property
    def classes(self) -> int:
        return self.layers[-1].out_maps

    def layer(self, name: str) -> LayerSpec:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    def macs(self) -> int:
        return sum(l.macs() for l in self.layers)

    def weight_bits(self) -> int:
        return sum(l.weight_bits() for l in self.layers)

    # -- serialisation -----------------------------------------------------------------------------
    def to_json(self) -> dict:
        layers = []
        for l in self.layers:
            d = {"name": l.name, "kind": l.kind, "in_maps": l.in_maps, "out_maps": l.out_maps,
                 "in_h": l.in_h, "in_w": l.in_w, "kernel": l.kernel, "stride": l.stride,
                 "formats": {k: f.to_dict() for k, f in l.formats.items()}, "activation": l.activation}
            if l.pad:
                d.update(pad=l.pad, pad_code=int(l.pad_code))
            if l.untied:
                d["untied_bias"] = True
            if l.table is not None:
                d["table"] = [list(map(int, t)) for t in l.table]
            if l.source is not None:
                d["source"] = [int(s) for s in l.source]
            layers.append(d)
        c, h, w = self.input_shape
        return {"schema": SCHEMA, "network": self.network,
                "input": {"format": self.input_format.to_dict(), "channels": c, "height": h, "width": w},
                "layers": layers, "provenance": self.provenance}

    def arrays(self) -> dict[str, np.ndarray]:
        arrs = {"input.lut": self.input_lut}
        for l in self.layers:
            for key, a in (("weight", l.weight), ("bias", l.bias), ("lut", l.lut)):
                if a is not None:
                    arrs[f"{l.name}.{key}"] = a
        return {k: np.asarray(v, dtype=np.int64) for k, v in arrs.items()}

    def save(self, out: str | os.PathLike) -> Path:
        """Write ``out/spec.json`` and ``out/weights.npz`` atomically (a temp dir renamed into place)."""
        validate(self)
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a directory")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        tmp.chmod(0o755)
        try:
            (tmp / "spec.json").write_text(json.dumps(self.to_json(), indent=1) + "\n")
            buf = io.BytesIO()
            np.savez_compressed(buf, **self.arrays())
            (tmp / "weights.npz").write_bytes(buf.getvalue())
            old = None
            if out.exists():
                old = out.with_name(f".{out.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out, old)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


def _get(d: dict, key: str, where: str, typ=None, default=...):
    if not isinstance(d, dict) or key not in d:
        if default is not ...:
            return default
        raise UserError(f"{where}: missing field {key!r}")
    v = d[key]
    if typ is int and (not isinstance(v, int) or isinstance(v, bool)):
        raise UserError(f"{where}.{key}: expected an integer, got {v!r}")
    if typ is str and not isinstance(v, str):
        raise UserError(f"{where}.{key}: expected a string, got {v!r}")
    return v


def load(path: str | os.PathLike) -> QuantSpec:
    """Read and validate a spec directory (or its spec.json)."""
    path = Path(path)
    if path.is_file() and path.name == "spec.json":
        path = path.parent
    if not path.is_dir():
        raise UserError(f"spec {path}: no such directory")
    jpath, wpath = path / "spec.json", path / "weights.npz"
    for p in (jpath, wpath):
        if not p.is_file():
            raise UserError(f"spec {path}: missing {p.name}")
    try:
        doc = json.loads(jpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{jpath}: not valid JSON ({e})") from None
    try:
        with np.load(wpath, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise UserError(f"{wpath}: not a readable npz file ({type(e).__name__})") from None
    return from_json(doc, arrays, where=str(jpath))


def from_json(doc: dict, arrays: dict[str, np.ndarray], where: str = "spec.json") -> QuantSpec:
    schema = _get(doc, "schema", where, int)
    if schema > SCHEMA:
        raise UserError(f"{where}: schema version {schema} is newer than this tool supports ({SCHEMA}); upgrade lenet-hw")
    if schema < 1:
        raise UserError(f"{where}: schema version {schema} is not valid")
    network = _get(doc, "network", where, str)
    inp = _get(doc, "input", where)
    in_fmt = QFormat.from_dict(_get(inp, "format", f"{where}: input"), "input.format")

    def arr(key, what, required=True):
        if key not in arrays:
            if not required:
                return None
            raise UserError(f"weights.npz: missing array {key!r} ({what})")
        a = arrays[key]
        if not np.issubdtype(a.dtype, np.integer):
            raise UserError(f"weights.npz: {key} has dtype {a.dtype}, expected integers")
        return a.astype(np.int64)

    raw_layers = _get(doc, "layers", where)
    if not isinstance(raw_layers, list) or not raw_layers:
        raise UserError(f"{where}: 'layers' must be a non-empty list")
    input_lut = arr("input.lut", "input table")
    if schema == 1:  # a 28x28 image padded to `size` with grey level 0: the padding moves into layer 1
        size, pad = _get(inp, "size", f"{where}: input", int), _get(inp, "pad", f"{where}: input", int)
        shape = (1, size - 2 * pad, size - 2 * pad)
        if input_lut.ndim == 1:
            input_lut = input_lut[None]
    else:
        shape = tuple(_get(inp, k, f"{where}: input", int) for k in ("channels", "height", "width"))
    layers = []
    for i, ld in enumerate(raw_layers):
        lw = f"layers[{i}]"
        name = _get(ld, "name", lw, str)
        lw = f"layer {name}"
        kind = _get(ld, "kind", lw, str)
        if kind not in KINDS:
            raise UserError(f"{lw}.kind: unknown kind {kind!r} (one of {', '.join(KINDS)})")
        fd = _get(ld, "formats", lw)
        act = ld.get("activation")
        if act is not None and act not in ACTIVATIONS:
            raise UserError(f"{lw}.activation: unknown function {act!r} (one of {', '.join(ACTIVATIONS)}, or null)")
        if not isinstance(fd, dict):
            raise UserError(f"{lw}.formats: expected an object")
        formats = {k: QFormat.from_dict(v, f"{lw}.formats.{k}") for k, v in fd.items()}
        for k in REQUIRED[kind]:
            if k not in formats:
                raise UserError(f"{lw}.formats: missing format {k!r}")
        kernel = _get(ld, "kernel", lw, int)
        if schema == 1:
            in_h = in_w = _get(ld, "in_size", lw, int)
            stride, lpad, pad_code = (2 if kind == "subsample" else 1), 0, 0
            if i == 0:
                in_h = in_w = shape[1]
                lpad, pad_code = pad, int(input_lut[0, 0])
        else:
            in_h, in_w = _get(ld, "in_h", lw, int), _get(ld, "in_w", lw, int)
            stride = _get(ld, "stride", lw, int, kernel if kind in POOLS else 1)
            lpad, pad_code = _get(ld, "pad", lw, int, 0), _get(ld, "pad_code", lw, int, 0)
        has_bias = "bias" in REQUIRED[kind]
        bias = arr(f"{name}.bias", f"{lw} biases") if has_bias else None
        layers.append(LayerSpec(
            name=name, kind=kind, in_maps=_get(ld, "in_maps", lw, int), out_maps=_get(ld, "out_maps", lw, int),
            in_h=in_h, in_w=in_w, kernel=kernel, formats=formats,
            weight=arr(f"{name}.weight", f"{lw} weights") if kind != "maxpool" else None,
            bias=bias, lut=arr(f"{name}.lut", f"{lw} activation table") if act in LUT_FUNCTIONS else None,
            table=ld.get("table"), source=ld.get("source"), stride=stride, pad=lpad, pad_code=pad_code,
            activation=act))
        if schema == 2 and bool(ld.get("untied_bias", False)) != layers[-1].untied:
            raise UserError(f"{lw}.untied_bias: {ld.get('untied_bias', False)}, but {name}.bias has shape "
                            f"{None if bias is None else bias.shape}")
    spec = QuantSpec(network=network, input_format=in_fmt, input_lut=input_lut, input_shape=shape,
                     layers=layers, provenance=doc.get("provenance", {}), schema=schema)
    validate(spec)
    return spec
