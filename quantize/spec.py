"""The QuantSpec: the one contract between the emulator and the hardware generator.

On disk a spec is a directory with ``spec.json`` (schema version, network, per-layer formats,
provenance) and ``weights.npz`` (integer weights, biases, lookup tables). See docs/quantspec.md.
:func:`load` validates everything and names the first bad field.
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

from model.lenet import out_side
from model.util import UserError

from .qformat import QFormat

SCHEMA = 1
KINDS = ("conv", "subsample", "dense", "rbf")
#: formats each layer kind must carry ("index"/"act" only when the layer has an activation)
REQUIRED = {
    "conv": ("input", "weight", "bias", "acc"),
    "dense": ("input", "weight", "bias", "acc"),
    "subsample": ("input", "weight", "bias", "acc"),
    "rbf": ("input", "weight", "acc"),
}
ACT_FORMATS = ("index", "act")


@dataclass
class LayerSpec:
    name: str
    kind: str
    in_maps: int
    out_maps: int
    in_size: int
    kernel: int
    formats: dict[str, QFormat]
    weight: np.ndarray  # int64 codes; conv O x C x K x K (0 outside the table), dense/rbf O x I, subsample O
    bias: np.ndarray | None  # int64 codes of the bias format, O
    lut: np.ndarray | None = None  # int64 codes of the act format, 2**index.width entries
    table: list[list[int]] | None = None  # conv: out map -> input maps
    source: list[int] | None = None  # subsample: out map -> input map

    @property
    def out_size(self) -> int:
        return out_side(self.kind, self.in_size, self.kernel)

    @property
    def has_activation(self) -> bool:
        return self.lut is not None

    @property
    def out_format(self) -> QFormat:
        return self.formats["act"] if self.has_activation else self.formats["acc"]

    def bias_acc(self) -> np.ndarray:
        """Bias codes moved to the accumulator's lsb (exact left shift)."""
        if self.bias is None:
            return np.zeros(self.out_maps, np.int64)
        return self.bias.astype(np.int64) << (self.formats["acc"].frac - self.formats["bias"].frac)

    def connections(self) -> list[list[int]]:
        if self.table is not None:
            return self.table
        return [list(range(self.in_maps))] * self.out_maps

    def macs(self) -> int:
        n = self.out_size**2
        if self.kind == "conv":
            return n * sum(len(t) for t in self.connections()) * self.kernel**2
        if self.kind == "subsample":
            return n * self.out_maps
        return self.in_maps * self.out_maps

    def weight_bits(self) -> int:
        """Bits of weight memory: real weights (table entries only), biases, coefficients."""
        if self.kind == "rbf":
            return 0
        if self.kind == "conv":
            n = sum(len(t) for t in self.connections()) * self.kernel**2
        else:
            n = self.weight.size
        return n * self.formats["weight"].width + self.out_maps * self.formats["bias"].width


@dataclass
class QuantSpec:
    network: str
    input_format: QFormat
    input_lut: np.ndarray  # 256 int64 codes: grey level -> input code
    input_size: int
    input_pad: int
    layers: list[LayerSpec]
    provenance: dict = field(default_factory=dict)
    schema: int = SCHEMA

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
                 "in_size": l.in_size, "kernel": l.kernel,
                 "formats": {k: f.to_dict() for k, f in l.formats.items()},
                 "activation": "scaled_tanh" if l.has_activation else None}
            if l.table is not None:
                d["table"] = [list(map(int, t)) for t in l.table]
            if l.source is not None:
                d["source"] = [int(s) for s in l.source]
            layers.append(d)
        return {"schema": self.schema, "network": self.network,
                "input": {"format": self.input_format.to_dict(), "size": self.input_size, "pad": self.input_pad},
                "layers": layers, "provenance": self.provenance}

    def arrays(self) -> dict[str, np.ndarray]:
        arrs = {"input.lut": self.input_lut}
        for l in self.layers:
            arrs[f"{l.name}.weight"] = l.weight
            if l.bias is not None:
                arrs[f"{l.name}.bias"] = l.bias
            if l.lut is not None:
                arrs[f"{l.name}.lut"] = l.lut
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


def _get(d: dict, key: str, where: str, typ=None):
    if not isinstance(d, dict) or key not in d:
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

    def arr(key, what):
        if key not in arrays:
            raise UserError(f"weights.npz: missing array {key!r} ({what})")
        a = arrays[key]
        if not np.issubdtype(a.dtype, np.integer):
            raise UserError(f"weights.npz: {key} has dtype {a.dtype}, expected integers")
        return a.astype(np.int64)

    layers = []
    raw_layers = _get(doc, "layers", where)
    if not isinstance(raw_layers, list) or not raw_layers:
        raise UserError(f"{where}: 'layers' must be a non-empty list")
    for i, ld in enumerate(raw_layers):
        lw = f"layers[{i}]"
        name = _get(ld, "name", lw, str)
        lw = f"layer {name}"
        kind = _get(ld, "kind", lw, str)
        if kind not in KINDS:
            raise UserError(f"{lw}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
        fd = _get(ld, "formats", lw)
        act = ld.get("activation")
        if act not in (None, "scaled_tanh"):
            raise UserError(f"{lw}.activation: unknown function {act!r}")
        needed = REQUIRED[kind] + (ACT_FORMATS if act else ())
        formats = {k: QFormat.from_dict(_get(fd, k, f"{lw}.formats"), f"{lw}.formats.{k}") for k in needed}
        layers.append(LayerSpec(
            name=name, kind=kind,
            in_maps=_get(ld, "in_maps", lw, int), out_maps=_get(ld, "out_maps", lw, int),
            in_size=_get(ld, "in_size", lw, int), kernel=_get(ld, "kernel", lw, int), formats=formats,
            weight=arr(f"{name}.weight", f"{lw} weights"),
            bias=arr(f"{name}.bias", f"{lw} biases") if kind != "rbf" else None,
            lut=arr(f"{name}.lut", f"{lw} activation table") if act else None,
            table=ld.get("table"), source=ld.get("source"),
        ))
    spec = QuantSpec(network=network, input_format=in_fmt, input_lut=arr("input.lut", "input table"),
                     input_size=_get(inp, "size", f"{where}: input", int),
                     input_pad=_get(inp, "pad", f"{where}: input", int),
                     layers=layers, provenance=doc.get("provenance", {}), schema=schema)
    validate(spec)
    return spec


def validate(spec: QuantSpec) -> None:
    """Check shapes, format relations and that every integer fits its format; name the first bad field."""
    if spec.input_lut.shape != (256,):
        raise UserError(f"input.lut: shape {spec.input_lut.shape}, expected (256,)")
    if not spec.input_format.contains(spec.input_lut):
        raise UserError(f"input.lut: codes do not fit the input format {spec.input_format}")
    if spec.input_size - 2 * spec.input_pad != 28:
        raise UserError(f"input: size {spec.input_size} with pad {spec.input_pad} does not hold a 28x28 image")
    prev_fmt, prev_maps, prev_size = spec.input_format, 1, spec.input_size
    names = set()
    for i, l in enumerate(spec.layers):
        w = f"layer {l.name}"
        if l.name in names:
            raise UserError(f"{w}: duplicate layer name")
        names.add(l.name)
        for key in ("in_maps", "out_maps", "in_size", "kernel"):
            if getattr(l, key) < 1:
                raise UserError(f"{w}.{key}: must be positive, got {getattr(l, key)}")
        f = l.formats
        if f["input"] != prev_fmt:
            raise UserError(f"{w}.formats.input: {f['input']} differs from the previous layer's output {prev_fmt}")
        flat_in = prev_maps * prev_size * prev_size
        if l.kind in ("dense", "rbf"):
            if l.in_maps != flat_in:
                raise UserError(f"{w}.in_maps: {l.in_maps}, but the previous layer gives {flat_in} values")
        elif l.in_maps != prev_maps or l.in_size != prev_size:
            raise UserError(f"{w}: input {l.in_maps}@{l.in_size}x{l.in_size} does not match the previous output {prev_maps}@{prev_size}x{prev_size}")
        if f["acc"].frac != f["input"].frac + f["weight"].frac:
            raise UserError(f"{w}.formats.acc: frac {f['acc'].frac} must equal input.frac + weight.frac = {f['input'].frac + f['weight'].frac}")
        if "bias" in f and f["bias"].frac > f["acc"].frac:
            raise UserError(f"{w}.formats.bias: frac {f['bias'].frac} exceeds acc.frac {f['acc'].frac}")
        if f["acc"].overflow != "WRAP" or not f["acc"].signed:
            raise UserError(f"{w}.formats.acc: the accumulator must be signed with WRAP overflow")
        if l.kind == "conv":
            shape = (l.out_maps, l.in_maps, l.kernel, l.kernel)
            if l.out_size < 1:
                raise UserError(f"{w}.kernel: {l.kernel} larger than the input {l.in_size}")
            if l.table is not None:
                if (not isinstance(l.table, list) or len(l.table) != l.out_maps
                        or any(not isinstance(t, list) or not t or any(not isinstance(m, int) or not 0 <= m < l.in_maps for m in t) for t in l.table)):
                    raise UserError(f"{w}.table: expected {l.out_maps} lists of input maps in 0..{l.in_maps - 1}")
        elif l.kind == "subsample":
            shape = (l.out_maps,)
            if l.kernel != 2:
                raise UserError(f"{w}.kernel: subsampling is 2x2, got {l.kernel}")
            src = l.source if l.source is not None else list(range(l.out_maps))
            if len(src) != l.out_maps or any(not isinstance(s, int) or not 0 <= s < l.in_maps for s in src):
                raise UserError(f"{w}.source: expected {l.out_maps} input map numbers in 0..{l.in_maps - 1}")
            if l.source is None and l.in_maps != l.out_maps:
                raise UserError(f"{w}.source: needed when in_maps != out_maps")
        else:
            shape = (l.out_maps, l.in_maps)
        if l.weight.shape != shape:
            raise UserError(f"{w}.weight: shape {l.weight.shape}, expected {shape}")
        if not f["weight"].contains(l.weight):
            bad = l.weight[(l.weight < f['weight'].code_min) | (l.weight > f['weight'].code_max)].flat[0]
            raise UserError(f"{w}.weight: code {bad} does not fit {f['weight']}")
        if l.kind == "conv" and l.table is not None:
            mask = np.zeros((l.out_maps, l.in_maps), bool)
            for o, t in enumerate(l.table):
                mask[o, t] = True
            if np.any(l.weight[~mask] != 0):
                raise UserError(f"{w}.weight: non-zero weights outside the connection table")
        if l.kind == "rbf" and not np.all(np.abs(l.weight) == 1):
            raise UserError(f"{w}.weight: RBF centres must be +-1")
        if l.bias is not None:
            if l.bias.shape != (l.out_maps,):
                raise UserError(f"{w}.bias: shape {l.bias.shape}, expected ({l.out_maps},)")
            if not f["bias"].contains(l.bias):
                raise UserError(f"{w}.bias: codes do not fit {f['bias']}")
        if l.lut is not None:
            n = 1 << f["index"].width
            if f["index"].width > 16:
                raise UserError(f"{w}.formats.index: {f['index'].width}-bit lookup table is too large (at most 16 bits)")
            if l.lut.shape != (n,):
                raise UserError(f"{w}.lut: shape {l.lut.shape}, expected ({n},) for a {f['index'].width}-bit index")
            if not f["act"].contains(l.lut):
                raise UserError(f"{w}.lut: entries do not fit {f['act']}")
        if i != len(spec.layers) - 1 and l.lut is None:
            raise UserError(f"layer {l.name}: only the last layer may omit the activation")
        prev_fmt, prev_maps, prev_size = l.out_format, l.out_maps, l.out_size
