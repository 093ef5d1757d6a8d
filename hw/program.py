"""Compile a QuantSpec into the engine's program: memory images and the per-layer schedule.

The accelerator is one MAC engine of ``lanes`` neurons reused layer after layer (ANNA's
time-multiplexing). Each layer runs in one of two modes:

- **conv mode** (every layer with a spatial output: conv, local, the pools): the lanes compute an
  R x C *tile* of output positions of one output map (``lanes = R * C``, both powers of two,
  C >= R); every cycle one *tap* (weight, input offset) goes to all lanes. A shared-weight layer
  (conv, pools) replays its map's taps for every tile; a locally connected layer has a tap list
  per tile whose words carry one weight per lane. Pools are k x k / stride k convolutions: the
  sum pools multiply by the map's coefficient (``c * (a + b) == c*a + c*b`` exactly), max-pool
  taps have weight 1 and the lanes keep the maximum instead of the sum. A stride-1 conv whose
  output width C does not divide runs in *wrapped* groups instead (:mod:`hw.wrap`): the strips of
  R output rows laid end to end, C columns of them a group.
- **dense mode** (dense, rbf, and a conv/local layer whose output is 1x1, like LeNet-5's C5): the
  lanes compute ``lanes`` consecutive output neurons; every cycle all lanes read the same input
  and a word of ``lanes`` weights.

The feature memory is one copy split into ``lanes`` banks (:mod:`hw.layout`); each layer's input
is laid out for its stride and padding. The loader writes the first layer's padding; the padding
of a later layer's input is written from the *fill* list (border addresses) before the layer
starts. Biases are added in the drain, one per map or, for a dense layer or untied biases, one
per lane (two's-complement addition is associative, so ``bias + sum`` wrapped equals the
emulator's ``sum + bias`` wrapped).

Everything here (and in :mod:`hw.layer_words`, each layer's taps, weights and biases) is plain
Python over the spec, shared by the generator (``hw/accelerator.py``),
the cycle model (``hw/perf.py``) and the testbenches.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from quantize.qformat import QFormat
from quantize.spec import LayerSpec, QuantSpec

from .fixed import MAX_HW_WIDTH
from .layout import Layout, log2

MAX_LANES = 256
MAX_STRIDE = 3


def tile_shape(lanes: int) -> tuple[int, int]:
    """(R, C): the lanes as an R x C tile of output positions: 1 x lanes up to 2 lanes, else
    R = 2**max(1, floor((log2(lanes) - 1) / 2)), so C = 2R or 4R (wide tiles: wrapped groups,
    :mod:`hw.wrap`, take the column padding away, not the row padding; R >= 2 fuses 2 x 2 pools)."""
    lg = lanes.bit_length() - 1
    r = 0 if lg < 2 else max(1, (lg - 1) // 2)
    return 1 << r, 1 << (lg - r)


#: idle drain turns of a fused group between its last lane and its first pool window: the last
#: lane's state reaches the window registers 3 cycles after its turn (bias, sum, ROM stages)
POOL_LATENCY = 3


def layer_gap(lanes: int, drain: int | None = None) -> int:
    """Idle cycles between a layer's last tap and the next layer's first (GAP + INIT): the drain of
    the last group (capture 6 cycles after the tap, ``drain`` turns (default: lanes), bias, sum
    and ROM stages) must land before the next layer reads, and the last score before OUTPUT."""
    return (lanes if drain is None else drain) + 8


def is_dense_mode(l: LayerSpec) -> bool:
    """Dense, rbf, and a conv/local layer that reads its whole unpadded input into a 1x1 output."""
    if l.kind in ("dense", "rbf"):
        return True
    return (l.kind in ("conv", "local") and l.pad == 0 and l.out_h == l.out_w == 1
            and l.in_h == l.in_w == l.kernel)


@dataclass
class LayerProgram:
    name: str
    mode: str  # "conv" or "dense"
    spec: LayerSpec
    in_layout: Layout  # where the layer reads its input
    out_layout: Layout | None  # where it writes its output (the next layer's in_layout); None: scores
    out_h: int
    out_w: int
    maps: int  # conv: output maps; dense: 1
    groups: int  # conv: tiles per map; dense: groups of lanes neurons
    tiles: tuple[int, int]  # conv: tiles down and across a map
    taps: list[int]  # taps per group, per map (conv) or [inputs] (dense)
    n_out: int  # conv: positions per map; dense: output neurons
    op: str = "sum"  # "sum" (multiply-accumulate) or "max" (max-pool)
    shared: bool = True  # conv mode: every tile replays the map's taps (False: local, a list per tile)
    bias_per_lane: bool = False  # one bias per lane (dense, untied) instead of one per map
    out_fn: str = "lut"  # "lut", "relu", "linear" (requantize only) or "score" (the last layer)
    acc_format: QFormat | None = None
    tap_base: int = 0  # first word in the weight memory
    bias_base: int = 0
    lut_base: int = 0
    fill_base: int = 0  # first entry of this layer's input border in the fill list
    fill_count: int = 0
    # a pool fused into this conv-mode layer's drain (fuse_pools): the pool's own program (its
    # out_layout is this layer's, its tiles this layer's; no taps); None: states go to memory
    pool: LayerProgram | None = None
    coef_base: int = 0  # a fused pool: its first per-map coefficient in Program.coef_words
    pool_mul_cycles: int = 1  # a fused pool: drain turns per window (its coefficient multiply)
    zero_taps: int = 0  # conv: taps of zero weight not issued, over all maps (each skips n_out MACs)
    wrap: int = 0  # wrapped groups (hw/wrap.py): the output width W the groups run on at; 0: tiles
    wrap_skip: int = 0  # wrapped: words a lane past a strip's end reads further on, (W' - W) / C

    @property
    def stride(self) -> int:
        return self.in_layout.s

    @property
    def group_count(self) -> int:
        return self.maps * self.groups

    @property
    def group_taps(self) -> list[int]:
        """The taps of each group in issue order: conv, every tile of a map replays its taps; dense,
        every group reads all the inputs."""
        return [t for t in self.taps for _ in range(self.groups)] if self.mode == "conv" else self.taps * self.groups

    @property
    def has_activation(self) -> bool:
        return self.out_fn != "score"


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
    tap_shift: int  # bit of a tap word where the tap fields (offset, my, mx) start
    tap_words: list[tuple]  # conv mode: (weight code or lanes codes, off0, my, mx0, off1, mx1) (hw.wrap.tap_fields)
    dense_words: list[list[int]]  # dense: lanes weight codes per word
    bias_words: list[int]  # accumulator-lsb biases
    lut_rom: list[int]  # activation ROM (act codes): every distinct layer table once
    fill_words: list[int]  # feature-memory write addresses (bank << addr_width | word) of padding
    input_lut: list[int]  # channel * 256 + grey level -> input code
    image_shape: tuple[int, int, int]  # channels, height, width of the image streamed in
    input_layout: Layout
    input_pad_code: int
    classes: int
    score_width: int
    info: dict = field(default_factory=dict)
    coef_words: list[int] = field(default_factory=list)  # fused pools: one coefficient per map (max-pool: 1)
    pool_mul_cycles: int = 1  # fused pools: 1 (one product per turn) or the serial multiplier's steps
    overlap: bool = False  # the loader takes the next image while layers 1.. run (its input region is its own)

    @property
    def fused(self) -> list[LayerProgram]:
        """The conv-mode layers with a fused pool, in network order."""
        return [lp for lp in self.layers if lp.pool is not None]

    @property
    def gap(self) -> int:
        """GAP + INIT cycles after every layer: :func:`layer_gap` of the longest drain."""
        return layer_gap(self.lanes, max(drain_turns(lp, self.lanes) for lp in self.layers))

    @property
    def output_beats(self) -> int:
        """Beats of the output stream: the class, then one score per class."""
        return 1 + self.classes

    @property
    def image_bytes(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    @property
    def load_cycles(self) -> int:
        lay = self.input_layout
        return lay.maps * lay.h * lay.w

    @property
    def tap_bits(self) -> int:
        """Bits of a conv tap word: weight(s), off0, off1, my, mx0, mx1 (:meth:`weight_words`)."""
        return self.tap_shift + 2 * self.offset_width + log2(self.R) + 2 * log2(self.C)

    @property
    def wrapped(self) -> bool:
        """True if a layer runs in wrapped groups (:mod:`hw.wrap`)."""
        return any(lp.wrap for lp in self.layers)

    @property
    def weight_word_width(self) -> int:
        """The weight memory's word: ``lanes`` dense weights or one conv tap, whichever is wider."""
        return max(self.lanes * self.weight_width, self.tap_bits)

    def weight_words(self) -> list[int]:
        """The weight memory's image: the dense words (address 0 on), then the conv taps: from bit
        ``tap_shift`` on, off0, off1, my, mx0, mx1."""
        ww, offw, myw, mxw, sh = self.weight_width, self.offset_width, log2(self.R), log2(self.C), self.tap_shift
        m = (1 << ww) - 1

        def pack(ws):
            return sum((int(v) & m) << (q * ww) for q, v in enumerate(ws))

        dense = [pack(word) for word in self.dense_words]
        taps = [pack(w if isinstance(w, list) else [w]) | ((off0 | off1 << offw | my << 2 * offw
                                                             | mx0 << (2 * offw + myw) | mx1 << (2 * offw + myw + mxw)) << sh)
                for w, off0, my, mx0, off1, mx1 in self.tap_words]
        return dense + taps

    def weight_bytes(self) -> bytes:
        """The weight memory's image as the loader takes it: each word little-endian in
        ``ceil(weight_word_width / 8)`` bytes, word 0 first."""
        nb = -(-self.weight_word_width // 8)
        return b"".join(w.to_bytes(nb, "little") for w in self.weight_words())


def drain_turns(lp: LayerProgram, lanes: int) -> int:
    """Cycles the drain spends on one group of ``lp`` (the one home of this number: the cycle
    model's and the sequencer's waits, the gap): ``lanes`` turns, one per lane; a fused pool adds
    :data:`POOL_LATENCY` idle turns and ``pool_mul_cycles`` turns per pool window of the tile,
    (R/k) x (C/k) windows."""
    from .fuse import pool_windows

    if lp.pool is None:
        return lanes
    return lanes + POOL_LATENCY + pool_windows(lp, lanes) * lp.pool_mul_cycles


def _check_spec(spec: QuantSpec, lanes: int) -> None:
    if not isinstance(lanes, int) or isinstance(lanes, bool) or not 1 <= lanes <= MAX_LANES or lanes & (lanes - 1):
        raise ValueError(f"lanes must be a power of two in 1..{MAX_LANES}, got {lanes!r}")
    dense_seen = None
    for l in spec.layers:
        for k, f in l.formats.items():
            if f.width > MAX_HW_WIDTH:
                raise ValueError(f"layer {l.name}.formats.{k}: {f.width} bits; the generator supports at most {MAX_HW_WIDTH}")
        if l.stride > MAX_STRIDE:
            raise ValueError(f"layer {l.name}.stride: {l.stride}; the hardware reads at stride 1..{MAX_STRIDE}")
        if dense_seen and not is_dense_mode(l):
            raise ValueError(f"layer {l.name}: a spatial layer after the dense layer {dense_seen} (the hardware "
                             "keeps dense outputs as a vector)")
        if is_dense_mode(l):
            dense_seen = l.name
    last = spec.layers[-1]
    if not is_dense_mode(last) and (last.out_h, last.out_w) != (1, 1):
        raise ValueError(f"layer {last.name}: the last layer's output must be 1x1 per class (its outputs are the scores)")
    if spec.input_format.width > MAX_HW_WIDTH:
        raise ValueError(f"input.format: {spec.input_format.width} bits; at most {MAX_HW_WIDTH}")


def _out_fn(l: LayerSpec, last: bool) -> str:
    if last:
        return "score"
    if l.has_lut:
        return "lut"
    return "relu" if l.activation == "relu" else "linear"


def _acc_format(l: LayerSpec, weight_width: int) -> QFormat:
    """The accumulator format; a max-pool's holds its input codes (times a weight of 1)."""
    if l.kind == "maxpool":
        f = l.formats["input"]
        return QFormat(f.width + weight_width, f.frac, True, "TRN", "WRAP")
    return l.formats["acc"]


def _layouts(spec: QuantSpec, R: int, C: int, keep: list[int] | None = None, overlap: bool = False,
             wrapped: set[int] = frozenset()) -> list[Layout]:
    """Each kept layer's input layout (stride and padding of its reader; a reader in ``wrapped``
    groups gets a strip pitch, :func:`hw.wrap.pitch`); ping-pong buffers A (even kept layers) from
    word 0 and B (odd) after A. ``keep``: the spec's layers that run on the MACs (default all); a
    fused pool's input (its conv's output) is never stored. ``overlap``: the image (layer 0's
    input) has a region of its own from word 0, A and B follow it."""
    from .wrap import pitch

    L = spec.layers
    keep = list(range(len(L))) if keep is None else keep
    shapes = [spec.input_shape if i == 0 else L[i - 1].out_shape for i in keep]
    raw = [Layout(m, h + 2 * l.pad, w + 2 * l.pad, 1 if is_dense_mode(l) else l.stride, R, C, 0, l.pad,
                  pitch(l.out_w, w + 2 * l.pad, C) if i in wrapped else 0)
           for (m, h, w), i, l in zip(shapes, keep, [L[i] for i in keep])]
    first = raw[0].words if overlap else 0
    size_a = max([lay.words for lay in raw[2 if overlap else 0::2]] + [0])
    bases = [0] + [first + (0 if i % 2 == 0 else size_a) for i in range(1, len(raw))]
    return [Layout(lay.maps, lay.h, lay.w, lay.s, R, C, base, lay.pad, lay.pitch) for lay, base in zip(raw, bases)]


def compile_spec(spec: QuantSpec, lanes: int = 8, fuse_pools: bool = False, pool_multiplier: str = "auto",
                 overlap_load: bool = False) -> Program:
    """Lay the spec out for an engine of ``lanes`` lanes. Raises ValueError on what it cannot build.

    ``fuse_pools``: every pool that :func:`hw.fuse.fusable` allows runs in its conv layer's drain
    (no layer of its own, its input never stored); ``Program.layers`` then lists the other layers.
    ``pool_multiplier``: how the drain multiplies a pool window by its coefficient
    (:func:`hw.fuse.mul_cycles`: "serial", "parallel" or "auto").
    ``overlap_load``: the input gets a region of its own in the feature memory, and the loader takes
    the next image while layers 1.. of the current one run (``Program.overlap``), where the load
    surely finishes in the cycles those layers leave the write port free (:func:`load_fits`);
    otherwise the program loads between images as without it."""
    from .fuse import MULTIPLIERS, fusable, fuse_pool, mul_cycles
    from .layer_words import conv_layer, dense_layer
    from .wrap import wraps

    if pool_multiplier not in MULTIPLIERS:
        raise ValueError(f"pool_multiplier must be one of {', '.join(MULTIPLIERS)}, got {pool_multiplier!r}")
    _check_spec(spec, lanes)
    P = lanes
    R, C = tile_shape(P)
    L = spec.layers
    fuse = {i + 1 for i in range(len(L) - 2) if fuse_pools and fusable(L[i], L[i + 1], P)}
    keep = [i for i in range(len(L)) if i not in fuse]
    wrapped = {i for i in keep if wraps(L[i], R, C, L[i + 1].kernel if i + 1 in fuse else None)}
    overlap = overlap_load and len(keep) > 1
    layouts = _layouts(spec, R, C, keep, overlap, wrapped)
    fm_words = max(1, max(lay.base + lay.words for lay in layouts))
    fm_in = layouts[0].words if overlap else 0  # the image's own region (overlap), then A, then B
    size_a = layouts[1].base - fm_in if len(layouts) > 1 else fm_words  # buffer A: the even layers' inputs
    aw = max(1, (fm_words - 1).bit_length())
    # weights are signed in the lanes: an unsigned weight format takes one more bit
    weight_width = max([l.formats["weight"].width + (not l.formats["weight"].signed) for l in L
                        if "weight" in l.formats] + [2])
    tap_shift = P * weight_width if any(l.kind == "local" and not is_dense_mode(l) for l in L) else weight_width
    layers: list[LayerProgram] = []
    tap_words, dense_words, bias_words, lut_rom, fill_words = [], [], [], [], []
    lut_seen: dict[tuple, int] = {}
    coef_words: list[int] = []
    for j, i in enumerate(keep):
        l = L[i]
        last = i == len(L) - 1
        lin, lout = layouts[j], (None if last else layouts[j + 1])
        dense = is_dense_mode(l)
        kw = dict(name=l.name, spec=l, in_layout=lin, out_layout=lout, out_h=l.out_h, out_w=l.out_w,
                  out_fn=_out_fn(l, last), acc_format=_acc_format(l, weight_width),
                  tap_base=len(dense_words) if dense else len(tap_words), bias_base=len(bias_words))
        if i > 0 and lin.pad:  # the loader pads the first layer's input; the fill list the others'
            kw.update(fill_base=len(fill_words), fill_count=len(lin.border()))
            for c, y, x in lin.border():
                b, a = lin.locate(c, y, x)
                fill_words.append((b << aw) | a)
        if dense:
            lp = dense_layer(l, lin, P, dense_words, bias_words, kw)
        else:
            lp = conv_layer(l, lin, R, C, tap_words, bias_words, kw)
        if i + 1 in fuse:
            fuse_pool(lp, L[i + 1], _acc_format(L[i + 1], weight_width), bias_words, coef_words)
        for stage in [lp] + ([lp.pool] if lp.pool else []):
            if stage.spec.lut is not None:  # identical tables (the usual case: one squash) are stored once
                key = tuple(stage.spec.lut.tolist())
                if key not in lut_seen:  # at a multiple of its power-of-two size: the drain ORs the base in
                    lut_rom += [0] * (-len(lut_rom) % (1 << (len(key) - 1).bit_length()))
                    lut_seen[key] = len(lut_rom)
                    lut_rom += list(key)
                stage.lut_base = lut_seen[key]
        layers.append(lp)
    fused = [lp for lp in layers if lp.pool is not None]
    mul = mul_cycles(fused, P, weight_width, pool_multiplier)
    for lp in fused:
        lp.pool_mul_cycles = mul
    acc_width = max(st.acc_format.width for lp in layers for st in [lp] + ([lp.pool] if lp.pool else []))
    # a bias wider than the accumulator is taken modulo 2**acc_width: the drain's sum wraps to the
    # layer's accumulator width anyway, and (a + b) mod 2**n only depends on b mod 2**n
    half = 1 << (acc_width - 1)
    bias_words = [((b + half) % (2 * half)) - half for b in bias_words]
    # the feature memory is signed: an unsigned state (ReLU) takes one more bit
    fm_width = max(f.width + (not f.signed) for f in [spec.input_format] + [l.out_format for l in L[:-1]])
    max_off = max((max(t[1], t[4]) for t in tap_words), default=0)
    l0 = L[0]
    prog = Program(lanes=P, R=R, C=C, layers=layers, fm_words=fm_words, fm_width=fm_width,
                   weight_width=weight_width, acc_width=acc_width, offset_width=max(1, max_off.bit_length()),
                   tap_shift=tap_shift, tap_words=tap_words, dense_words=dense_words, bias_words=bias_words,
                   lut_rom=lut_rom, fill_words=fill_words, input_lut=spec.input_lut.reshape(-1).tolist(),
                   image_shape=tuple(spec.input_shape), input_layout=layouts[0],
                   input_pad_code=int(l0.pad_code) if l0.pad else 0, classes=spec.classes,
                   score_width=L[-1].formats["acc"].width,
                   info={"fm_in": fm_in, "fm_a": size_a, "fm_b": fm_words - fm_in - size_a}, coef_words=coef_words,
                   pool_mul_cycles=mul if fused else 1, overlap=overlap)
    if overlap and not load_fits(prog):
        return compile_spec(spec, lanes, fuse_pools, pool_multiplier, overlap_load=False)
    return prog


def load_fits(prog: Program) -> bool:
    """True if an overlapped load surely ends before the image it loads is due. The loader writes
    only while the drain is quiet (the sequencer: from D + 3 cycles after a group's capture, D the
    longest drain): every group of layers 1.. (taps, plus its wait for the drain) leaves at least
    its length less D + 4 such cycles, and they must hold the load's cycles."""
    P = prog.lanes
    d = max(drain_turns(lp, P) for lp in prog.layers)
    free = 0
    for lp in prog.layers[1:]:
        free += sum(max(0, t + max(0, drain_turns(lp, P) - t) - (d + 4)) for t in lp.group_taps)
    return free >= prog.load_cycles + 2


def output_addresses(lp: LayerProgram, program: Program) -> list[int] | None:
    """For each flat index of the layer's output tensor (emulator order), the drain's write address
    ``bank * 2**AW + word`` (``AW`` = :func:`addr_width`); None for the last layer (scores)."""
    lp = lp.pool or lp  # a fused stage writes its pool's output, never the conv's
    lay = lp.out_layout
    if lay is None:
        return None
    aw, p = addr_width(program), lay.pad
    return [(b << aw) | a for c in range(lp.spec.out_maps) for y in range(lp.out_h) for x in range(lp.out_w)
            for b, a in [lay.locate(c, y + p, x + p)]]


def addr_width(program: Program) -> int:
    """Bits of a word address inside one feature-memory bank."""
    return max(1, (program.fm_words - 1).bit_length())
