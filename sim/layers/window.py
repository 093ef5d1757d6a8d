# amaranth: UnusedElaboratable=no
# (tops are built to read their ports and stimulus too, not only to be emitted)
"""The tile window (``hw.window.TileWindow``) as a layer top, and the window feeding the MAC lanes
(:class:`WindowMAC`) that the datapath tops (:mod:`sim.layers.datapath`) drive; the stimulus
helpers they share (layouts, tap words, tile reads, feature maps written through the port)."""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.wiring import In, Out

from quantize.qformat import QFormat

from .arith import MAC_LATENCY
from .core import LayerTop, Schedule, extremes_and_random, register

# --------------------------------------------------------------------------- 4. tile window and the MAC lanes behind it
#
# The conv-mode datapath of the accelerator in pieces: the banked feature memory with its tile
# crossbar (hw/window.py) alone, then feeding the MAC lanes (hw/mac.py) over conv, subsampling
# and dense schedules. The input tensors go in through the write port, laid out by
# hw.layout.Layout; the read addresses are the accelerator's (tile offset + the tap word of
# compile_spec); the golden values come from quantize.ops (the emulator's im2col, conv2d,
# subsample and dense kernels), accumulators wrapped by the acc format as the emulator does.

WINDOW_LATENCY = 2  # read inputs in cycle t -> x in cycle t + 2 (hw/window.py)
WINDOW_MAC_LATENCY = WINDOW_LATENCY + MAC_LATENCY  # read in cycle t -> acc in cycle t + 4
WINDOW_READ = ("base", "row_carry", "col_carry", "my", "mx0", "dense", "bank")
WINDOW_PORTS = WINDOW_READ + ("we", "waddr", "wdata")


def conv_tap(layout, w: int, c: int, ky: int, kx: int) -> tuple[int, int, int, int, int, int]:
    """The tap word (weight, off0, my, mx0, off1, mx1) of tap (c, ky, kx) of a conv-mode layer
    reading its input from ``layout`` (a :class:`hw.layout.Layout`): ``compile_spec``'s arithmetic
    (``hw.wrap.tap_fields``), written out again so that a stimulus needs no QuantSpec (a test
    holds the two equal). Tiles: a row that carries reads the next tile row, s * lw words on.
    Wrapped (``layout.pitch`` W'): t = a * W' + kx, a = ky // R or one more where the row carries."""
    S, R, C = layout.s, layout.R, layout.C
    if layout.pitch:
        t0 = (ky // R) * layout.pitch + kx
        t1 = t0 + layout.pitch
        return int(w), c * layout.lhw + t0 // C, ky % R, t0 % C, c * layout.lhw + t1 // C, t1 % C
    k1y, k0y, k1x, k0x = ky // S, ky % S, kx // S, kx % S
    qy, my, qx, mx = k1y // R, k1y % R, k1x // C, k1x % C
    off = c * layout.lhw + (qy * S + k0y) * layout.lw + qx * S + k0x
    return int(w), off, my, mx, off + S * layout.lw, mx


def tile_read(layout, ty: int, tx: int, tap: tuple) -> dict:
    """The window's read inputs for ``tap`` (a tap word) over tile (ty, tx) of a tiled layout, as
    the accelerator presents them: ``base[rc + 2 cc] = first + (off1 if rc else off0) + cc * s``
    with ``first = layout.base + ty * s * lw + tx * s``; bank row r carries if r < my, bank column
    c if c < mx0 (mx1 = mx0: tiles); ``dense = 0``."""
    _, off0, my, mx0, off1, _ = tap
    S, R, C = layout.s, layout.R, layout.C
    first = layout.base + ty * S * layout.lw + tx * S
    mask = (1 << max(1, (layout.base + layout.words - 1).bit_length())) - 1  # the window's address width
    base = [(first + (off1 if rc else off0) + cc * S) & mask for cc in range(2) for rc in range(2)]
    cols = sum(1 << c for c in range(C) if c < mx0)
    return {"base": base, "row_carry": sum(1 << r for r in range(R) if r < my), "col_carry": [cols, cols],
            "my": my, "mx0": mx0, "dense": 0}


def wrapped_read(layout, W: int, group: int, tap: tuple) -> dict:
    """The window's read inputs for ``tap`` over wrapped group ``group`` (:mod:`hw.wrap`) of a layer
    whose output is W wide, reading ``layout`` (strip pitch W'), as the sequencer presents them. The
    group starts at strip s0, column x0 = divmod(group * C, W), at word first = layout.base + group
    + s0 * m, m = (W' - W) / C; ``base[rc + 2 cc + 4 w] = first + (off1 if rc else off0) + cc + w *
    m``. Bank row r carries if r < my; in a row rotated by mx (mx1 if it carries, else mx0) bank
    column c carries if c < mx, and wraps if its lane, column (c - mx) % C of the group, lies past
    the strip's end (x0 + that >= W): it reads m words on, in the next strip."""
    _, off0, my, mx0, off1, mx1 = tap
    R, C = layout.R, layout.C
    m = (layout.pitch - W) // C
    s0, x0 = divmod(group * C, W)
    first = layout.base + group + s0 * m
    mask = (1 << max(1, (layout.base + layout.words - 1).bit_length())) - 1  # the window's address width
    base = [(first + (off1 if rc else off0) + cc + w * m) & mask for w in range(2) for cc in range(2) for rc in range(2)]
    mxs = (mx0, mx1)
    return {"base": base, "row_carry": sum(1 << r for r in range(R) if r < my),
            "col_carry": [sum(1 << c for c in range(C) if c < mx) for mx in mxs],
            "wrap": [sum(1 << c for c in range(C) if (c - mx) % C >= W - x0) for mx in mxs],
            "my": my, "mx0": mx0, "mx1": mx1, "dense": 0}


def _layout(p):
    """The input's layout: tiles, or with ``p["wrapped"]`` the strip pitch of a stride-1 K x K conv."""
    from hw.layout import Layout
    from hw.program import tile_shape
    from hw.wrap import pitch

    R, C = tile_shape(p["lanes"])
    maps, h, w = p["shape"]
    wp = pitch(w - p["kernel"] + 1, w, C) if p.get("wrapped") else 0
    return Layout(maps, h, w, p.get("stride", 1), R, C, p.get("base", 0), 0, wp)


def _window_words(p) -> int:
    lay = _layout(p)
    return lay.base + lay.words


def _garbage_read(rng, win) -> dict:
    """Read inputs of a cycle whose output nobody compares (writes, idle cycles)."""
    read = {"base": rng.integers(0, win.words, 8 if getattr(win, "wrapped", False) else 4),
            "row_carry": rng.integers(0, 1 << win.R), "col_carry": rng.integers(0, 1 << win.C, 2),
            "my": rng.integers(0, win.R), "mx0": rng.integers(0, win.C), "dense": rng.integers(0, 2),
            "bank": rng.integers(0, win.P)}
    if getattr(win, "wrapped", False):
        read |= {"wrap": rng.integers(0, 1 << win.C, 2), "mx1": rng.integers(0, win.C)}
    return read


def _feature_maps(rng, fmt: QFormat, shape, saturate: float = 0.0) -> np.ndarray:
    """Codes of a maps x h x w tensor: every extreme somewhere, the rest uniform; ``saturate`` (a
    fraction) sets that share of each map, a block, to ``code_min`` (where code_min weights make
    the sums wrap)."""
    x = extremes_and_random(rng, fmt, int(np.prod(shape)))
    rng.shuffle(x)
    x = x.reshape(shape)
    if saturate:
        _, h, w = shape
        bh, bw = max(1, round(h * saturate ** 0.5)), max(1, round(w * saturate ** 0.5))
        y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        x[:, y0:y0 + bh, x0:x0 + bw] = fmt.code_min
    return x


def _write_maps(s: Schedule, layout, win, x: np.ndarray, rng, extra=None) -> None:
    """``x`` into ``layout`` through the write port, one pixel per cycle in random order (the
    drain's order is not the reader's); the read inputs meanwhile are garbage."""
    for flat in rng.permutation(x.size):
        c, y, xx = (int(i) for i in np.unravel_index(flat, x.shape))
        bank, word = layout.locate(c, y, xx)
        s.cycle({"we": 1, "waddr": (bank << win.addr_width) | word, "wdata": x[c, y, xx]}
                | _garbage_read(rng, win) | (extra() if extra else {}))


def _tiles(out_h: int, out_w: int, R: int, C: int):
    """(ty, tx, care) of every tile, row-major; ``care`` flags the lanes inside the output."""
    for ty in range(-(-out_h // R)):
        for tx in range(-(-out_w // C)):
            care = [int(ty * R + dy < out_h and tx * C + dx < out_w) for dy in range(R) for dx in range(C)]
            yield ty, tx, care


def _groups(lay, out_h: int, out_w: int):
    """(group, lane positions, care) of every group of a conv output: tiles (a group is (ty, tx)),
    or wrapped groups if ``lay`` has a strip pitch (a group is its index; lane (dy, dx) computes
    strip-linear column group * C + dx, row dy of that strip)."""
    from hw.wrap import wrapped_groups

    R, C = lay.R, lay.C
    if not lay.pitch:
        for ty, tx, care in _tiles(out_h, out_w, R, C):
            yield (ty, tx), [(ty * R + dy, tx * C + dx) for dy in range(R) for dx in range(C)], care
        return
    for g in range(wrapped_groups(out_h, out_w, R, C)):
        pos = [(s * R + dy, x) for dy in range(R) for s, x in [divmod(g * C + dx, out_w) for dx in range(C)]]
        yield g, pos, [int(y < out_h) for y, _ in pos]


def _window_vectors(dut, p, rng, n):
    """Rounds of: a fresh input tensor written through the write port (random order, garbage on
    the read port), then, shuffled together, the reads of every tap (c, ky, kx) of every tile of
    the conv output and ``dense_reads`` broadcast reads of random inputs (garbage on the unused
    read inputs). One vector = one read.
    Golden: a tile read gives lane (dy, dx) the column of the emulator's im2col
    (``quantize.ops._unfold_int``) at tap (c, ky, kx) and output position (ty*R + dy, tx*C + dx),
    compared for the lanes inside the output; a dense read gives every lane the input at that
    index of the emulator's flattened dense input."""
    import torch

    from quantize import ops

    s = Schedule(dut)
    lay, K, fmt = _layout(p), p["kernel"], QFormat(p["bits"], 0)
    oh, ow = lay.h - K + 1, lay.w - K + 1
    v = 0
    s.notes.update(tile_reads=0, dense_reads=0, partial_tiles=0)
    while v < n:
        x = _feature_maps(rng, fmt, (lay.maps, lay.h, lay.w))
        cols = ops._unfold_int(torch.from_numpy(x)[None], K)[0].numpy()  # maps*K*K x oh*ow
        flat = x.reshape(-1)  # the dense layers' input order (quantize/emulator.py)
        _write_maps(s, lay, dut, x, rng)
        reads = [("tile", group, tuple(pos), tuple(care), c, ky, kx) for group, pos, care in _groups(lay, oh, ow)
                 for c in range(lay.maps) for ky in range(K) for kx in range(K)]
        reads += [("dense", int(i)) for i in rng.integers(0, x.size, p["dense_reads"])]
        for k in rng.permutation(len(reads)):
            if v == n:
                break
            r = reads[k]
            if r[0] == "tile":
                _, group, pos, care, c, ky, kx = r
                word = conv_tap(lay, 0, c, ky, kx)
                inputs = (wrapped_read(lay, ow, group, word) if lay.pitch else tile_read(lay, *group, word)) \
                    | {"bank": rng.integers(0, dut.P)}
                tap = (c * K + ky) * K + kx
                gold = [cols[tap, y * ow + x] if ok else 0 for (y, x), ok in zip(pos, care)]
                s.notes["tile_reads"] += 1
                s.notes["partial_tiles"] += not all(care)
            else:
                bank, word = lay.locate(*(int(i) for i in np.unravel_index(r[1], x.shape)))
                inputs = _garbage_read(rng, dut) | {"base": [word] * dut.bases, "row_carry": 0, "col_carry": [0, 0],
                                                    "dense": 1, "bank": bank}
                if dut.wrapped:
                    inputs["wrap"] = [0, 0]
                gold, care = [flat[r[1]]] * dut.P, None
                s.notes["dense_reads"] += 1
            c0 = s.cycle(inputs)
            s.expect(c0 + WINDOW_LATENCY, v, {"x": gold}, care)
            v += 1
    return s


def _build_window(p):
    from hw.program import tile_shape
    from hw.window import TileWindow

    return TileWindow(*tile_shape(p["lanes"]), _window_words(p), p["bits"], wrapped=p.get("wrapped", False))


register(LayerTop(
    "window", "hw.window.TileWindow, 2x4 lanes: writes through the port, then every tap of every tile of a 5x5 conv "
    "over 2 maps of 8x8 and broadcast reads, latency 2",
    _build_window, _window_vectors, {"lanes": 8, "shape": (2, 8, 8), "kernel": 5, "stride": 1, "base": 3, "bits": 8,
                                     "dense_reads": 28}, n=256))

register(LayerTop(
    "window_wrapped", "hw.window.TileWindow in wrapped groups (hw/wrap.py), 2x4 lanes: a 5x5 conv over 2 maps of "
    "14x14 (output 10 wide, strip pitch 14), each group running on into the next strip, and broadcast reads",
    _build_window, _window_vectors, {"lanes": 8, "shape": (2, 14, 14), "kernel": 5, "stride": 1, "base": 3, "bits": 8,
                                     "dense_reads": 28, "wrapped": True}, n=256))


class WindowMAC(wiring.Component):
    """:class:`hw.window.TileWindow` feeding :class:`hw.mac.MACLanes`, wired as in the accelerator:
    lane q's pixel ``window.x[q]`` is ``mac.x[q]``; ``w``, ``valid`` and ``first`` are registered
    twice (the window's latency) so that they meet the pixels read in their cycle; the bias is 0
    (the accelerator adds it in the drain). The window's read and write ports are this top's.

    Latency: a read presented in cycle t is in ``acc`` from cycle t + 4."""

    def __init__(self, R: int, C: int, words: int, data_width: int, weight_width: int, acc_width: int):
        from hw.mac import MACLanes
        from hw.window import TileWindow

        self.window = TileWindow(R, C, words, data_width)
        self.mac = MACLanes(R * C, weight_width, data_width, acc_width)
        self.R, self.C, self.P, self.words, self.addr_width = R, C, R * C, words, self.window.addr_width
        members = {name: self.window.signature.members[name] for name in WINDOW_PORTS}  # arrays too
        members |= {"valid": In(1), "first": In(1), "w": In(ArrayLayout(signed(weight_width), R * C)),
                    "acc": Out(ArrayLayout(signed(acc_width), R * C))}
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.window = win = self.window
        m.submodules.mac = mac = self.mac
        for name in WINDOW_PORTS:  # an array port is a list of signals
            dst, src = getattr(win, name), getattr(self, name)
            m.d.comb += [d.eq(v) for d, v in zip(dst, src)] if isinstance(dst, list) else dst.eq(src)
        w, valid, first = self.w, self.valid, self.first
        for k in range(WINDOW_LATENCY):
            w_k = Signal(ArrayLayout(signed(self.mac.weight_width), self.P), name=f"w_d{k + 1}")
            valid_k, first_k = Signal(name=f"valid_d{k + 1}"), Signal(name=f"first_d{k + 1}")
            m.d.sync += [w_k.eq(w), valid_k.eq(valid), first_k.eq(first)]
            w, valid, first = w_k, valid_k, first_k
        m.d.comb += [mac.valid.eq(valid), mac.first.eq(first), mac.max.eq(0)]  # sums, not max-pooling
        for q in range(self.P):
            m.d.comb += [mac.x[q].eq(win.x[q]), mac.w[q].eq(w[q]), mac.bias[q].eq(0), self.acc[q].eq(mac.acc[q])]
        return m


def _build_window_mac(p):
    from hw.program import tile_shape

    return WindowMAC(*tile_shape(p["lanes"]), _window_words(p), p["bits"], p["weight_width"], p["acc_width"])
