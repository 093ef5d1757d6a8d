"""Compile a QuantSpec into the engine's program: memory images and the per-layer schedule.

The accelerator is one MAC engine of ``lanes`` neurons reused layer after layer (ANNA's
time-multiplexing). Each layer runs in one of two modes:

- **conv mode** (convolutions with a spatial output, subsampling): the lanes compute an R x C
  *tile* of output positions of one output map (``lanes = R * C``, both powers of two, C >= R);
  every cycle one *tap* (weight, input offset) is broadcast to all lanes. Subsampling is a
  2x2/stride-2 convolution whose four weights are the map's coefficient
  (``c * (a + b + d + e) == c*a + c*b + c*d + c*e`` exactly).
- **dense mode** (C5, F6, the RBF scores): the lanes compute ``lanes`` consecutive output neurons;
  every cycle all lanes read the same input and a word of ``lanes`` weights.

The feature memory is one copy split into ``lanes`` banks (see :class:`Layout`): every layer's
input is stored so that the R x C pixels under any tap of any tile sit in R x C different banks,
so all lanes read at once from one copy of the data; :mod:`hw.window` rotates the banks' outputs
onto the lanes. Biases are added in the drain (two's-complement addition is associative, so
``bias + sum`` wrapped equals the emulator's ``sum + bias`` wrapped).

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


def tile_shape(lanes: int) -> tuple[int, int]:
    """(R, C): the lanes as an R x C tile of output positions, R = 2**floor(log2(lanes)/2)."""
    lg = lanes.bit_length() - 1
    return 1 << (lg // 2), 1 << (lg - lg // 2)


def _pow2ceil(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class Layout:
    """Where a layer's input tensor (maps x h x w) lives in the banked feature memory.

    The reader has stride ``s`` (1 or 2). Pixel (c, y, x) has *super* coordinates
    (Y, X) = (y // s, x // s); its bank is ``(Y % R) * C + X % C`` and its word in that bank is
    ``base + c * lh * lw + lrow * lw + lcol`` with ``lrow = (Y // R) * s + y % s`` and
    ``lcol = (X // C) * s + x % s``. ``lw`` is a power of two, so every address is bit slicing.
    For any tap (ky, kx) the R x C output positions of a tile read R x C distinct banks.
    """

    maps: int
    h: int
    w: int
    s: int
    R: int
    C: int
    base: int = 0

    @property
    def lh(self) -> int:
        return -(-(-(-self.h // self.s)) // self.R) * self.s

    @property
    def lw(self) -> int:
        return _pow2ceil(-(-(-(-self.w // self.s)) // self.C) * self.s)

    @property
    def lhw(self) -> int:
        return self.lh * self.lw

    @property
    def words(self) -> int:
        """Words per bank."""
        return self.maps * self.lhw

    def locate(self, c: int, y: int, x: int) -> tuple[int, int]:
        """(bank, word) of pixel (c, y, x)."""
        s, R, C = self.s, self.R, self.C
        Y, X = y // s, x // s
        lrow, lcol = (Y // R) * s + y % s, (X // C) * s + x % s
        return (Y % R) * C + X % C, self.base + c * self.lhw + lrow * self.lw + lcol


@dataclass
class LayerProgram:
    name: str
    mode: str  # "conv" or "dense"
    spec: LayerSpec
    in_layout: Layout  # where the layer reads its input
    out_layout: Layout | None  # where it writes its output (the next layer's in_layout); None: scores
    in_size: int  # spatial side of the input
    out_size: int
    stride: int
    n_out: int  # conv: positions per map; dense: output neurons
    maps: int  # conv: output maps; dense: 1
    groups: int  # conv: tiles per map; dense: groups of lanes neurons
    tiles: tuple[int, int]  # conv: tiles down and across a map
    taps: list[int]  # taps per group, per map (conv) or [inputs] (dense)
    tap_base: int = 0  # first word in the tap memory (conv) or dense memory (dense)
    bias_base: int = 0  # first entry in the bias memory (one per output map (conv) or neuron (dense))
    lut_base: int = 0  # first entry in the activation ROM
    has_activation: bool = True

    @property
    def group_count(self) -> int:
        return self.maps * self.groups


@dataclass
class Program:
    lanes: int
    R: int
    C: int
    layers: list[LayerProgram]
    fm_words: int  # words per feature-memory bank (lanes banks)
    fm_width: int  # bits per feature-memory word
    weight_width: int
    acc_width: int
    offset_width: int
    tap_words: list[tuple[int, int, int, int]]  # conv taps: (weight code, word offset, my, mx)
    dense_words: list[list[int]]  # dense: lanes weight codes per word
    bias_words: list[int]  # accumulator-lsb biases: per output map (conv) or neuron (dense)
    lut_rom: list[int]  # activation ROM (act codes): every distinct layer table once
    input_lut: list[int]  # grey level -> input code
    input_size: int
    input_pad: int
    scores: int  # outputs of the last layer
    score_width: int
    info: dict = field(default_factory=dict)

    @property
    def load_cycles(self) -> int:
        return self.input_size**2

    @property
    def tap_bits(self) -> int:
        """Bits of a conv tap word: weight, word offset, my, mx."""
        return self.weight_width + self.offset_width + (self.R.bit_length() - 1) + (self.C.bit_length() - 1)

    @property
    def weight_word_width(self) -> int:
        """The weight memory's word: ``lanes`` dense weights or one conv tap, whichever is wider."""
        return max(self.lanes * self.weight_width, self.tap_bits)

    def weight_words(self) -> list[int]:
        """The weight memory's image: the dense words (address 0 on), then the conv taps."""
        ww, offw, myw = self.weight_width, self.offset_width, self.R.bit_length() - 1
        m = (1 << ww) - 1
        dense = [sum((int(v) & m) << (q * ww) for q, v in enumerate(word)) for word in self.dense_words]
        taps = [(w & m) | (off << ww) | (my << (ww + offw)) | (mx << (ww + offw + myw))
                for w, off, my, mx in self.tap_words]
        return dense + taps

    def weight_bytes(self) -> bytes:
        """The weight memory's image as the loader takes it: each word little-endian in
        ``ceil(weight_word_width / 8)`` bytes, word 0 first."""
        nb = -(-self.weight_word_width // 8)
        return b"".join(w.to_bytes(nb, "little") for w in self.weight_words())


def _check_spec(spec: QuantSpec, lanes: int) -> None:
    if not isinstance(lanes, int) or isinstance(lanes, bool) or not 1 <= lanes <= MAX_LANES or lanes & (lanes - 1):
        raise ValueError(f"lanes must be a power of two in 1..{MAX_LANES}, got {lanes!r}")
    for l in spec.layers:
        if l.kind not in ("conv", "subsample", "dense", "rbf"):
            raise ValueError(f"layer {l.name}: the hardware does not know layer kind {l.kind!r}")
        for k, f in l.formats.items():
            if f.width > MAX_HW_WIDTH:
                raise ValueError(f"layer {l.name}: {k} format is {f.width} bits; the generator supports at most {MAX_HW_WIDTH}")
        if l.kind == "subsample" and l.kernel != 2:
            raise ValueError(f"layer {l.name}: the hardware subsamples 2x2 only, got {l.kernel}x{l.kernel}")
    if spec.layers[-1].has_activation:
        raise ValueError("the last layer must produce scores (no activation)")
    if spec.input_format.width > MAX_HW_WIDTH:
        raise ValueError(f"input format is {spec.input_format.width} bits; at most {MAX_HW_WIDTH}")


def _is_conv_mode(l: LayerSpec) -> bool:
    return (l.kind == "conv" and l.out_size > 1) or l.kind == "subsample"


def compile_spec(spec: QuantSpec, lanes: int = 8) -> Program:
    """Lay the spec out for an engine of ``lanes`` lanes. Raises ValueError on what it cannot build."""
    _check_spec(spec, lanes)
    P = lanes
    R, C = tile_shape(P)
    L = spec.layers
    # each layer's input layout (stride of its reader); ping-pong buffers A (even layers) and B
    shapes = [(1, spec.input_size)] + [(l.out_maps, l.out_size) for l in L[:-1]]
    strides = [2 if l.kind == "subsample" else 1 for l in L]
    raw = [Layout(m, n, n, s if _is_conv_mode(l) else 1, R, C) for (m, n), s, l in zip(shapes, strides, L)]
    for i, l in enumerate(L[:-1]):
        if not _is_conv_mode(l) and raw[i + 1].lhw != 1:
            raise ValueError(f"layer {l.name}: a dense layer must feed 1x1 maps")
    if _is_conv_mode(L[-1]):
        raise ValueError(f"layer {L[-1].name}: the last layer must be dense (its outputs are the scores)")
    size_a = max(lay.words for lay in raw[0::2])
    size_b = max((lay.words for lay in raw[1::2]), default=0)
    layouts = [Layout(lay.maps, lay.h, lay.w, lay.s, R, C, 0 if i % 2 == 0 else size_a) for i, lay in enumerate(raw)]
    layers: list[LayerProgram] = []
    tap_words, dense_words, bias_words, lut_rom = [], [], [], []
    lut_seen: dict[tuple, int] = {}
    for i, l in enumerate(L):
        last = i == len(L) - 1
        lin, lout = layouts[i], (None if last else layouts[i + 1])
        conv_mode = _is_conv_mode(l)
        b_acc = l.bias_acc().tolist() if l.bias is not None else [0] * l.out_maps
        lp_kw = dict(name=l.name, spec=l, in_layout=lin, out_layout=lout, in_size=l.in_size,
                     out_size=l.out_size, has_activation=l.has_activation,
                     tap_base=len(tap_words) if conv_mode else len(dense_words),
                     bias_base=len(bias_words), lut_base=len(lut_rom))
        bias_words += [int(b) for b in b_acc]
        if conv_mode:
            S = lin.s
            K = l.kernel

            def tap(w, c, ky, kx):
                k1y, k0y, k1x, k0x = ky // S, ky % S, kx // S, kx % S
                qy, my, qx, mx = k1y // R, k1y % R, k1x // C, k1x % C
                off = c * lin.lhw + (qy * S + k0y) * lin.lw + qx * S + k0x
                return (int(w), off, my, mx)

            taps = []
            for o in range(l.out_maps):
                if l.kind == "subsample":
                    c = l.source[o] if l.source is not None else o
                    words = [tap(l.weight[o], c, u, v) for u in range(K) for v in range(K)]
                else:
                    words = [tap(l.weight[o, c, u, v], c, u, v)
                             for c in l.connections()[o] for u in range(K) for v in range(K)]
                tap_words += words
                taps.append(len(words))
            ty, tx = -(-l.out_size // R), -(-l.out_size // C)
            lp = LayerProgram(mode="conv", stride=S, n_out=l.out_size**2, maps=l.out_maps, groups=ty * tx,
                              tiles=(ty, tx), taps=taps, **lp_kw)
        else:
            w = l.weight.reshape(l.out_maps, -1)
            n_in = w.shape[1]
            if n_in != lin.maps * lin.h * lin.w:
                raise ValueError(f"layer {l.name}: {n_in} inputs but its input holds {lin.maps * lin.h * lin.w}")
            groups = math.ceil(l.out_maps / P)
            wp = np.zeros((groups * P, n_in), np.int64)
            wp[: l.out_maps] = w
            for g in range(groups):
                dense_words += wp[g * P:(g + 1) * P].T.tolist()
            lp = LayerProgram(mode="dense", stride=1, n_out=l.out_maps, maps=1, groups=groups, tiles=(0, 0),
                              taps=[n_in], **lp_kw)
        if l.lut is not None:  # identical tables (the usual case: one squash) are stored once
            key = tuple(l.lut.tolist())
            if key not in lut_seen:
                lut_seen[key] = len(lut_rom)
                lut_rom += list(key)
            lp.lut_base = lut_seen[key]
        layers.append(lp)
    weight_width = max(l.formats["weight"].width for l in L)
    acc_width = max(l.formats["acc"].width for l in L)
    fm_width = max([spec.input_format.width] + [l.out_format.width for l in L[:-1]])
    max_off = max((t[1] for t in tap_words), default=0)
    return Program(lanes=P, R=R, C=C, layers=layers, fm_words=max(1, size_a + size_b), fm_width=fm_width,
                   weight_width=weight_width, acc_width=acc_width, offset_width=max(1, max_off.bit_length()),
                   tap_words=tap_words, dense_words=dense_words, bias_words=bias_words, lut_rom=lut_rom,
                   input_lut=spec.input_lut.tolist(), input_size=spec.input_size, input_pad=spec.input_pad,
                   scores=L[-1].out_maps, score_width=L[-1].formats["acc"].width,
                   info={"fm_a": size_a, "fm_b": size_b})


def output_addresses(lp: LayerProgram, program: Program) -> list[int] | None:
    """For each flat index of the layer's output tensor (emulator order), the drain's write address
    ``bank * 2**AW + word`` (``AW`` = :func:`addr_width`); None for the last layer (scores)."""
    if lp.out_layout is None:
        return None
    aw = addr_width(program)
    n = lp.spec.out_size
    return [(b << aw) | a for c in range(lp.spec.out_maps) for y in range(n) for x in range(n)
            for b, a in [lp.out_layout.locate(c, y, x)]]


def addr_width(program: Program) -> int:
    """Bits of a word address inside one feature-memory bank."""
    return max(1, (program.fm_words - 1).bit_length())
