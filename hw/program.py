"""Compile a QuantSpec into the engine's program: memory images and the per-layer schedule.

The accelerator is one MAC engine of ``lanes`` neurons reused layer after layer (ANNA's
time-multiplexing). Each layer runs in one of two modes:

- **conv mode** (convolutions with a spatial output, subsampling): the lanes compute ``lanes``
  consecutive output positions of one output map; every cycle one *tap* (weight, input offset) is
  broadcast to all lanes, and lane q reads its own copy of the feature memory at
  ``base_q + offset``. Subsampling is a 2x2/stride-2 convolution whose four weights are the map's
  coefficient (``c * (a + b + d + e) == c*a + c*b + c*d + c*e`` exactly).
- **dense mode** (C5, F6, the RBF scores): the lanes compute ``lanes`` consecutive output neurons;
  every cycle all lanes read the same input and a word of ``lanes`` weights.

Everything here is plain Python over the spec, shared by the generator (``hw/accelerator.py``)
and the cycle model (``hw/perf.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from quantize.spec import LayerSpec, QuantSpec

from .fixed import MAX_HW_WIDTH

MAX_LANES = 256


@dataclass
class LayerProgram:
    name: str
    mode: str  # "conv" or "dense"
    spec: LayerSpec
    in_base: int  # feature-memory address of the layer's input
    out_base: int  # ... of its output (None for the last layer: scores go to registers)
    in_size: int  # spatial side of the input (conv mode)
    out_size: int
    stride: int
    n_out: int  # conv: positions per map; dense: output neurons
    maps: int  # conv: output maps; dense: 1
    groups: int  # conv: groups per map; dense: groups in all
    taps: list[int]  # taps per group, per map (conv) or [inputs] (dense)
    tap_base: int = 0  # first word in the tap memory (conv) or dense memory (dense)
    bias_base: int = 0  # first word in the bias memory
    lut_base: int = 0  # first entry in the activation ROM
    has_activation: bool = True

    @property
    def group_count(self) -> int:
        return self.maps * self.groups


@dataclass
class Program:
    lanes: int
    layers: list[LayerProgram]
    fm_words: int  # feature memory words (per lane copy)
    fm_width: int  # bits per feature-memory word
    weight_width: int
    acc_width: int
    offset_width: int
    tap_words: list[tuple[int, int]]  # conv taps: (weight code, input offset)
    dense_words: list[list[int]]  # dense: lanes weight codes per word
    bias_words: list[list[int]]  # lanes accumulator-lsb biases per word
    lut_rom: list[int]  # activation ROM (act codes), all layers concatenated
    input_lut: list[int]  # grey level -> input code
    input_size: int
    input_pad: int
    scores: int  # outputs of the last layer
    score_width: int
    info: dict = field(default_factory=dict)


def _check_spec(spec: QuantSpec, lanes: int) -> None:
    if not isinstance(lanes, int) or isinstance(lanes, bool) or not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"lanes must be an integer in 1..{MAX_LANES}, got {lanes!r}")
    for l in spec.layers:
        if l.kind not in ("conv", "subsample", "dense", "rbf"):
            raise ValueError(f"layer {l.name}: the hardware does not know layer kind {l.kind!r}")
        for k, f in l.formats.items():
            if f.width > MAX_HW_WIDTH:
                raise ValueError(f"layer {l.name}: {k} format is {f.width} bits; the generator supports at most {MAX_HW_WIDTH}")
        if l.kind == "conv" and l.out_size > 1 and l.in_maps * l.in_size**2 > 1 << 16:
            raise ValueError(f"layer {l.name}: input too large for the 16-bit offset field")
    if spec.layers[-1].has_activation:
        raise ValueError("the last layer must produce scores (no activation)")
    if spec.input_format.width > MAX_HW_WIDTH:
        raise ValueError(f"input format is {spec.input_format.width} bits; at most {MAX_HW_WIDTH}")


def compile_spec(spec: QuantSpec, lanes: int = 8) -> Program:
    """Lay the spec out for an engine of ``lanes`` lanes. Raises ValueError on what it cannot build."""
    _check_spec(spec, lanes)
    P = lanes
    in_words = spec.input_size**2
    # ping-pong feature buffers A (input image first) and B
    sizes = [in_words] + [l.out_maps * l.out_size**2 for l in spec.layers[:-1]]
    size_a = max(sizes[0::2])
    size_b = max(sizes[1::2]) if len(sizes) > 1 else 0
    bases = [0, size_a]
    layers: list[LayerProgram] = []
    tap_words, dense_words, bias_words, lut_rom = [], [], [], []
    for i, l in enumerate(spec.layers):
        last = i == len(spec.layers) - 1
        in_base, out_base = bases[i % 2], (None if last else bases[(i + 1) % 2])
        conv_mode = (l.kind == "conv" and l.out_size > 1) or l.kind == "subsample"
        b_acc = l.bias_acc().tolist() if l.bias is not None else [0] * l.out_maps
        lp_kw = dict(name=l.name, spec=l, in_base=in_base, out_base=out_base, in_size=l.in_size,
                     out_size=l.out_size, has_activation=l.has_activation,
                     tap_base=len(tap_words) if conv_mode else len(dense_words),
                     bias_base=len(bias_words), lut_base=len(lut_rom))
        hw = l.in_size * l.in_size
        if conv_mode:
            stride = 2 if l.kind == "subsample" else 1
            n = l.out_size**2
            taps = []
            for o in range(l.out_maps):
                if l.kind == "subsample":
                    c = l.source[o] if l.source is not None else o
                    words = [(int(l.weight[o]), c * hw + u * l.in_size + v) for u in range(2) for v in range(2)]
                else:
                    words = [(int(l.weight[o, c, u, v]), c * hw + u * l.in_size + v)
                             for c in l.connections()[o] for u in range(l.kernel) for v in range(l.kernel)]
                tap_words += words
                taps.append(len(words))
                bias_words.append([int(b_acc[o])] * P)
            lp = LayerProgram(mode="conv", stride=stride, n_out=n, maps=l.out_maps, groups=math.ceil(n / P),
                              taps=taps, **lp_kw)
        else:
            w = l.weight.reshape(l.out_maps, -1)
            n_in = w.shape[1]
            groups = math.ceil(l.out_maps / P)
            wp = np.zeros((groups * P, n_in), np.int64)
            wp[: l.out_maps] = w
            bp = np.zeros(groups * P, np.int64)
            bp[: l.out_maps] = b_acc
            for g in range(groups):
                dense_words += wp[g * P:(g + 1) * P].T.tolist()
                bias_words.append(bp[g * P:(g + 1) * P].tolist())
            lp = LayerProgram(mode="dense", stride=1, n_out=l.out_maps, maps=1, groups=groups,
                              taps=[n_in], **lp_kw)
        if l.lut is not None:
            lut_rom += l.lut.tolist()
        layers.append(lp)
    weight_width = max(l.formats["weight"].width for l in spec.layers)
    acc_width = max(l.formats["acc"].width for l in spec.layers)
    fm_width = max([spec.input_format.width] + [l.out_format.width for l in spec.layers[:-1]])
    max_off = max((off for _, off in tap_words), default=0)
    return Program(lanes=P, layers=layers, fm_words=size_a + size_b, fm_width=fm_width,
                   weight_width=weight_width, acc_width=acc_width, offset_width=max(1, max_off.bit_length()),
                   tap_words=tap_words, dense_words=dense_words, bias_words=bias_words, lut_rom=lut_rom,
                   input_lut=spec.input_lut.tolist(), input_size=spec.input_size, input_pad=spec.input_pad,
                   scores=spec.layers[-1].out_maps, score_width=spec.layers[-1].formats["acc"].width,
                   info={"fm_a": size_a, "fm_b": size_b})
