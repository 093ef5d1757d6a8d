# amaranth: UnusedElaboratable=no
# (tops are built to read their ports and stimulus too, not only to be emitted)
"""Layer-level cocotb testbenches: small Amaranth tops, emitted to Verilog, run in Icarus or Verilator.

``python -m sim.layers [--layer NAME ...] [--simulator icarus|verilator] [--json]``

Each registered *layer top* is a small Amaranth component. :func:`run_layer` emits it with
``amaranth.back.verilog`` (deterministic: same parameters, same bytes), builds it with
``cocotb_tools.runner`` and runs the generic testbench :mod:`sim.tb_layers` on a cycle-by-cycle
schedule of inputs. The expected outputs are computed here, in Python, by the emulator's code only
(``quantize/ops.py``, ``quantize/qformat.py``), written with the inputs to ``golden.npz``; the
testbench drives the inputs, samples the outputs and compares them by integer equality. It never
computes an expected value itself.

The tops (``python -m sim.layers --help`` lists them; one vector is what one expectation checks):

- ``requantize``: ``hw.fixed.requantize``, 10 (source, target) format cases, combinational.
- ``mac``: ``hw.mac.MACLanes``, dot products + bias vs int64 sums wrapped to the acc width.
- ``activation_lut``: requantize to a LUT address + ROM vs ``ops.activation``.
- ``window``: ``hw.window.TileWindow`` alone. A tensor is written through its write port as
  ``hw.program.Layout`` places it; then every tap of every tile of a conv (the accelerator's read
  addresses: tile offset + :func:`conv_tap`, ``compile_spec``'s tap word) and broadcast (dense)
  reads; each lane's word vs the emulator's im2col (``ops._unfold_int``) / flattened input.
- ``conv_tile``, ``subsample``, ``dense``: the window feeding the MAC lanes (:class:`WindowMAC`,
  wired as in the accelerator): a conv layer with a connection table, a 2x2 subsampling (stride-2
  layout, four taps carrying the map's coefficient) and a dense layer (broadcast reads, one
  weight per lane); each (map, tile) or group's accumulators vs ``ops.conv2d`` /
  ``ops.subsample`` / ``ops.dense`` with bias 0 (the accelerator adds it in the drain), wrapped
  by the acc format's ``overflow_codes``. Extreme codes make some accumulators wrap.

These four draw fresh tensors and weights round after round until they have ``n`` vectors. Lanes
of a partial tile (outside the output map) and lanes past the last neuron are left out of the
comparison (``care``); the others must match.

Timing convention (the same as ``ctx.set``/``ctx.get``/``ctx.tick`` in an Amaranth testbench):
cycle ``t``'s inputs are applied in the middle of cycle ``t`` and the outputs are sampled once they
have settled in that same cycle, before the rising edge that ends it. So a component with latency
L shows the result of cycle t's inputs in cycle ``t + L``; a combinational top (no ``clk`` port) has
L = 0 and is stepped without a clock. Cycles start after two cycles of ``rst``; an input not given
in a cycle is 0.

Adding a top takes ~20 lines: a builder, a vectors function and ``register`` (a sketch)::

    def _build_pool(p):
        return MaxPool(lanes=p["lanes"], data_width=p["bits"])

    def _pool_vectors(dut, p, rng, n):
        s = Schedule(dut)
        x = extremes_and_random(rng, QFormat(p["bits"], 0), n * 4).reshape(n, 4)  # min/max codes included
        golden = ...                                             # from quantize.ops only
        for v in range(n):
            c = s.cycle({"i__valid": 1, "i__payload": x[v]})
            s.expect(c + LATENCY, v, {"o__payload": golden[v]})  # ports as named in the Verilog;
        return s                                                 # care=[0/1 per lane] to skip lanes

    register(LayerTop("pool", "max pooling, latency 1", _build_pool, _pool_vectors,
                      {"lanes": 4, "bits": 8}, n=64))

Ports are the component's signature flattened as the Verilog names them (``i__payload``); an
``ArrayLayout`` port takes and returns one value per element (lane); any other layout is one
unsigned integer of its width. ``In`` ports are driven, ``Out`` ports are compared where expected.
The schedule is fixed in advance, so a top must have a known latency (every hw/ component states
it); a top that stalls on ``ready`` would need a monitor that matches output beats instead.

A run writes under ``OUT/NAME/<hash of the Verilog>/``: the Verilog, ``SIM/build-*`` (reused while
the Verilog and options are unchanged) and ``SIM/run/`` (``golden.npz``, ``sim.log``,
``result.json``). ``run_layer(..., params=...)`` overrides a top's defaults (e.g.
``activation_params(spec.layer("C1"))``); ``WAVES=1`` writes a waveform.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from amaranth.hdl import Module, Shape, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from model.util import UserError, atomic_write_bytes, atomic_write_text, cli
from quantize.qformat import QFormat

from .build import SIMULATORS, build, check_simulator, icarus_copy

PERIOD_NS = 10
RESET_CYCLES = 2
OUT = "build/sim-layers"


# --------------------------------------------------------------------------- ports and schedules

@dataclass(frozen=True)
class Port:
    name: str  # as in the Verilog (path joined with "__")
    direction: str  # "in" or "out"
    elem_width: int
    elems: int
    signed: bool
    parts: tuple[str, ...] = ()  # an array of ports: the Verilog port of each element (name__0, ...)

    @property
    def width(self) -> int:
        return self.elem_width * self.elems


def ports_of(component: wiring.Component) -> list[Port]:
    """The component's ports as the emitted Verilog names them, with their element layout."""
    ports = []
    for path, member in component.signature.members.flatten():
        if not member.is_port:
            continue
        shape = member.shape
        # an ArrayLayout is one value per element; any other layout is one raw unsigned value
        elem_shape, elems = (shape.elem_shape, shape.length) if isinstance(shape, ArrayLayout) else (shape, 1)
        elem = Shape.cast(elem_shape)
        direction = "in" if member.flow == In else "out"
        name = "__".join(str(p) for p in path)
        if member.dimensions:  # ``In(shape).array(n)``: one port per element, one logical port here
            parts = tuple("__".join(str(p) for p in (*path, *idx))
                          for idx in itertools.product(*(range(d) for d in member.dimensions)))
            ports.append(Port(name, direction, elem.width, elems * len(parts), elem.signed, parts))
        else:
            ports.append(Port(name, direction, elem.width, elems, elem.signed))
    return ports


class Schedule:
    """Cycle-by-cycle inputs of a top and the golden outputs expected in given cycles.

    ``cycle({port: value})`` appends a cycle (a value per element for an array port; missing inputs
    are 0) and returns its index; ``expect(cycle, vector, {port: value}, care=None)`` records what
    an output must hold in that cycle and which stimulus vector it belongs to (for the mismatch
    report); ``care`` (one flag per element) leaves elements out of the comparison, e.g. the lanes
    of a partial tile that lie outside the output map. Expectations past the last cycle add idle
    cycles. ``notes`` is free for the vectors function (facts about the stimulus for the tests;
    not written to the golden file).
    """

    def __init__(self, component: wiring.Component):
        self.ports = ports_of(component)
        self._port = {p.name: p for p in self.ports}
        self._inputs: list[dict[str, np.ndarray]] = []
        self._expect: dict[tuple[int, str], tuple[np.ndarray, int, np.ndarray]] = {}
        self.notes: dict = {}

    def _values(self, name: str, value, direction: str) -> np.ndarray:
        p = self._port.get(name)
        if p is None or p.direction != direction:
            names = [q.name for q in self.ports if q.direction == direction]
            raise ValueError(f"no {direction}put port {name!r} (have {', '.join(names)})")
        v = np.asarray(value, dtype=np.int64).reshape(-1)
        if v.size == 1 and p.elems > 1 and np.ndim(value) == 0:
            v = np.full(p.elems, v[0], np.int64)
        if v.size != p.elems:
            raise ValueError(f"port {name}: {v.size} values for {p.elems} elements")
        lo, hi = (-(1 << (p.elem_width - 1)), (1 << (p.elem_width - 1)) - 1) if p.signed else (0, (1 << p.elem_width) - 1)
        if v.min() < lo or v.max() > hi:
            raise ValueError(f"port {name}: value outside {lo}..{hi}")
        return v

    def cycle(self, values: dict | None = None, **kw) -> int:
        values = {**(values or {}), **kw}
        self._inputs.append({k: self._values(k, v, "in") for k, v in values.items()})
        return len(self._inputs) - 1

    def idle(self, cycles: int = 1, values: dict | None = None) -> None:
        for _ in range(cycles):
            self.cycle(values)

    def expect(self, cycle: int, vector: int, values: dict, care=None) -> None:
        for k, v in values.items():
            vals = self._values(k, v, "out")
            mask = np.ones(vals.size, np.int64) if care is None else np.asarray(care, np.int64).reshape(-1)
            if mask.size != vals.size or not mask.any():
                raise ValueError(f"port {k}: care needs {vals.size} flags, at least one set")
            self._expect[(cycle, k)] = (vals, int(vector), (mask != 0).astype(np.int64))

    @property
    def cycles(self) -> int:
        return max([len(self._inputs)] + [c + 1 for c, _ in self._expect])

    @property
    def vectors(self) -> int:
        return len({v for _, v, _ in self._expect.values()})

    def arrays(self) -> dict[str, np.ndarray]:
        """The golden file's contents: ``in.P``/``out.P`` (cycles x elements), ``vec.P`` (vector
        compared in each cycle, -1 for none), ``care.P`` (cycles x elements: 1 where an element is
        compared) and ``meta`` (ports, clocking; JSON)."""
        C = self.cycles
        arrs = {}
        for p in self.ports:
            a = np.zeros((C, p.elems), np.int64)
            if p.direction == "in":
                for c, vals in enumerate(self._inputs):
                    if p.name in vals:
                        a[c] = vals[p.name]
                arrs[f"in.{p.name}"] = a
            else:
                vec, care = np.full(C, -1, np.int64), np.zeros((C, p.elems), np.int64)
                for (c, name), (vals, v, mask) in self._expect.items():
                    if name == p.name:
                        a[c], vec[c], care[c] = vals, v, mask
                arrs[f"out.{p.name}"], arrs[f"vec.{p.name}"], arrs[f"care.{p.name}"] = a, vec, care
        return arrs


def extremes_and_random(rng: np.random.Generator, fmt: QFormat, n: int, extra=(), focus: tuple[int, int] | None = None
                        ) -> np.ndarray:
    """``n`` codes of ``fmt``: its extremes (min, max, min + 1, max - 1, 0, +-1), then ``extra``
    (clipped into range), then random codes: uniform over the format, or half of them uniform over
    ``focus`` (lo, hi), e.g. the part of the range that does not saturate."""
    lo, hi = fmt.code_min, fmt.code_max
    special = [lo, hi, lo + 1, hi - 1, 0, 1] + ([-1] if fmt.signed else []) + [int(e) for e in extra]
    special = np.clip(np.array(special, np.int64), lo, hi)
    k = max(0, n - len(special))
    rnd = rng.integers(lo, hi, size=k, endpoint=True)
    if focus is not None:
        f_lo, f_hi = max(lo, int(focus[0])), min(hi, int(focus[1]))
        rnd[: k // 2] = rng.integers(f_lo, max(f_lo, f_hi), size=k // 2, endpoint=True)
        rng.shuffle(rnd)
    return np.concatenate([special, rnd])[:n]


# --------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class LayerTop:
    """One registered top: ``build(params) -> Component`` and ``vectors(dut, params, rng, n) ->
    Schedule`` (stimulus and golden outputs from quantize code); ``defaults`` are its params."""

    name: str
    summary: str
    build: Callable[[dict], wiring.Component]
    vectors: Callable[[wiring.Component, dict, np.random.Generator, int], Schedule]
    defaults: dict = field(default_factory=dict)
    n: int = 200  # default number of stimulus vectors


LAYERS: dict[str, LayerTop] = {}


def register(top: LayerTop) -> LayerTop:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", top.name):
        raise ValueError(f"layer top name {top.name!r}: lowercase letters, digits and _ only")
    LAYERS[top.name] = top
    return top


def get_layer(name: str) -> LayerTop:
    if name not in LAYERS:
        raise UserError(f"unknown layer top {name!r} (one of {', '.join(LAYERS)})")
    return LAYERS[name]


# --------------------------------------------------------------------------- 1. requantize

class RequantizeTop(wiring.Component):
    """Several ``hw.fixed.requantize`` instances side by side, one per (source, target) case:
    ``o{k}, c{k} = requantize(i{k})`` (code and clipped flag). Latency 0 (combinational)."""

    def __init__(self, cases: list[tuple[QFormat, QFormat]]):
        from hw.fixed import shape_of

        self.cases = list(cases)
        members = {}
        for k, (src, dst) in enumerate(self.cases):
            members |= {f"i{k}": In(signed(src.width)), f"o{k}": Out(shape_of(dst)), f"c{k}": Out(1)}
        super().__init__(members)

    def elaborate(self, platform):
        from hw.fixed import requantize

        m = Module()
        for k, (src, dst) in enumerate(self.cases):
            code, clipped = requantize(getattr(self, f"i{k}"), src.frac, dst)
            m.d.comb += [getattr(self, f"o{k}").eq(code), getattr(self, f"c{k}").eq(clipped)]
        return m


#: (source, target): every rounding mode, SAT and WRAP, right and left shifts, an unsigned target;
#: only the source's width and frac matter
REQUANTIZE_CASES = (
    (QFormat(20, 12, True, "TRN", "WRAP"), QFormat(8, 6, True, "RND_CONV", "SAT")),  # q8 acc -> state
    (QFormat(16, 8), QFormat(8, 4, True, "TRN", "WRAP")),
    (QFormat(12, 4), QFormat(6, 1, True, "RND_INF", "SAT")),
    (QFormat(12, 6), QFormat(6, 2, True, "TRN_ZERO", "WRAP")),
    (QFormat(14, 3), QFormat(10, 5, True, "RND", "SAT")),  # left shift
    (QFormat(16, 10), QFormat(8, 4, False, "RND_MIN_INF", "SAT")),  # unsigned target
    (QFormat(12, 5), QFormat(5, 0, True, "RND_CONV_ODD", "WRAP")),
    (QFormat(12, 8), QFormat(6, 3, True, "TRN_INF", "SAT")),
    (QFormat(12, 8), QFormat(6, 3, True, "TRN_AWAY", "WRAP")),
    (QFormat(24, 16), QFormat(10, 7, True, "RND_ZERO", "SAT")),
)


def _requantize_stimulus(rng, src: QFormat, dst: QFormat, n: int) -> np.ndarray:
    """Source codes: extremes, ties and their neighbours, the edges of the target range (where
    saturation or wrapping starts), then random."""
    s = src.frac - dst.frac
    extra = []
    if s > 0:
        for k in rng.integers(src.code_min >> s, src.code_max >> s, size=6):
            extra += [(int(k) << s) + (1 << (s - 1)) + d for d in (-1, 0, 1)]  # ties of both parities
    def at_src(code):
        return code << s if s >= 0 else code >> -s

    for edge in (dst.code_min, dst.code_max, dst.code_max + 1, dst.code_min - 1):
        extra += [at_src(edge) + d for d in (-2, -1, 0, 1, 2)]
    # half the random codes around the target's range (a margin of a quarter of it each side)
    span = at_src(dst.code_max - dst.code_min + 1)
    return extremes_and_random(rng, src, n, extra, focus=(at_src(dst.code_min) - span // 4, at_src(dst.code_max) + span // 4))


def _requantize_vectors(dut, p, rng, n):
    from quantize.qformat import shift_round

    s = Schedule(dut)
    cases = p["cases"]
    x = [_requantize_stimulus(rng, src, dst, n) for src, dst in cases]
    gold = []
    for (src, dst), xs in zip(cases, x):
        code, _ = dst.requantize(xs, src.frac)
        r = shift_round(xs, src.frac - dst.frac, dst.rounding)
        gold.append((code, ((r < dst.code_min) | (r > dst.code_max)).astype(np.int64)))
    for v in range(n):
        c = s.cycle({f"i{k}": x[k][v] for k in range(len(cases))})
        s.expect(c, v, {f"o{k}": gold[k][0][v] for k in range(len(cases))}
                 | {f"c{k}": gold[k][1][v] for k in range(len(cases))})
    return s


register(LayerTop("requantize", "hw.fixed.requantize, 10 (source, target) format cases, latency 0",
                  lambda p: RequantizeTop(p["cases"]), _requantize_vectors, {"cases": REQUANTIZE_CASES}, n=200))


# --------------------------------------------------------------------------- 2. MAC lanes

MAC_LATENCY = 2  # inputs in cycle t are in acc from cycle t + 2 (hw/mac.py)


def _build_mac(p):
    from hw.mac import MACLanes

    return MACLanes(p["lanes"], p["weight_width"], p["data_width"], p["acc_width"])


def _mac_vectors(dut, p, rng, n):
    """``n`` dot products of 1..8 taps per lane, mostly back to back (``first`` on the first tap,
    no idle cycle), sometimes after idle cycles with garbage on the data inputs. A third of the
    groups use only the extreme codes (products and biases at the limits: the accumulator wraps),
    a third small biases (the products decide), a third uniform codes.
    Golden: int64 dot product + bias, wrapped to ``acc_width`` by ``quantize.qformat.wrap``."""
    from quantize.qformat import wrap

    s = Schedule(dut)
    P = p["lanes"]
    wf, xf, af = (QFormat(p[k], 0) for k in ("weight_width", "data_width", "acc_width"))

    def draw(fmt, size, mode="random"):
        if mode == "extreme":
            return rng.choice([fmt.code_min, fmt.code_max, fmt.code_min + 1, fmt.code_max - 1, 0], size=size)
        if mode == "small":  # a bias well inside the range: the products decide the result
            return rng.integers(-(1 << (fmt.width // 2)), 1 << (fmt.width // 2), size=size, endpoint=True)
        return rng.integers(fmt.code_min, fmt.code_max, size=size, endpoint=True)

    for v in range(n):
        if v and rng.random() < 0.25:  # idle cycles: valid low, whatever else on the inputs
            for _ in range(int(rng.integers(1, 3))):
                s.cycle(valid=0, first=int(rng.integers(0, 2)), w=draw(wf, P), x=draw(xf, P), bias=draw(af, P))
        taps = 1 if v % 7 == 3 else int(rng.integers(1, 9))
        mode = "extreme" if v < 2 else ("random", "extreme", "small")[v % 3]
        w, x = draw(wf, (taps, P), "random" if mode == "small" else mode), draw(xf, (taps, P), "random" if mode == "small" else mode)
        b = draw(af, P, mode)
        gold = wrap((w.astype(np.int64) * x).sum(0) + b, af.width, True)
        for t in range(taps):  # the bias input only counts with ``first``: garbage on the other taps
            c = s.cycle(valid=1, first=int(t == 0), w=w[t], x=x[t], bias=b if t == 0 else draw(af, P))
        s.expect(c + MAC_LATENCY, v, {"acc": gold})
    return s


register(LayerTop("mac", "hw.mac.MACLanes, 4 lanes, 8-bit weights and data, 24-bit wrapping accumulators",
                  _build_mac, _mac_vectors, {"lanes": 4, "weight_width": 8, "data_width": 8, "acc_width": 24}, n=150))


# --------------------------------------------------------------------------- 3. activation LUT

class ActivationLUT(wiring.Component):
    """``y = lut[requantize(acc -> index) - index.code_min]``: the address from ``hw.fixed``, the
    table in a ROM (``amaranth.lib.memory.Memory``, synchronous read). Latency 1, one value per cycle."""

    def __init__(self, acc: QFormat, index: QFormat, act: QFormat, lut):
        from hw.fixed import shape_of

        lut = [int(v) for v in np.asarray(lut).reshape(-1)]
        if len(lut) != 1 << index.width:
            raise ValueError(f"lut: {len(lut)} entries, expected {1 << index.width} for a {index.width}-bit index")
        if not act.contains(lut):
            raise ValueError(f"lut: entries do not fit {act}")
        self.acc_fmt, self.index, self.act, self.lut = acc, index, act, lut
        super().__init__({"acc": In(signed(acc.width)), "y": Out(shape_of(act))})

    def elaborate(self, platform):
        from hw.fixed import requantize, shape_of

        m = Module()
        m.submodules.rom = rom = Memory(shape=shape_of(self.act), depth=len(self.lut), init=self.lut)
        rp = rom.read_port()
        idx, _ = requantize(self.acc, self.acc_fmt.frac, self.index)
        addr = Signal(self.index.width)
        m.d.comb += [addr.eq((idx - self.index.code_min).as_unsigned()), rp.addr.eq(addr), self.y.eq(rp.data)]
        return m


def activation_params(layer) -> dict:
    """Params of the ``activation_lut`` top from a QuantSpec layer (its acc/index/act formats and LUT)."""
    f = layer.formats
    return {"acc": f["acc"], "index": f["index"], "act": f["act"], "lut": layer.lut}


def _activation_lut(p) -> np.ndarray:
    if p.get("lut") is not None:
        return np.asarray(p["lut"], np.int64)
    from quantize.calibrate import squash_table

    return squash_table(p["index"], p["act"])


def _activation_vectors(dut, p, rng, n):
    """Accumulators: the acc extremes (saturated addresses), the edges of the LUT address range
    and just past them, ties, random. Golden: ``quantize.ops.activation``; latency 1, back to back."""
    from quantize import ops

    s = Schedule(dut)
    a, ix = p["acc"], p["index"]
    sh = a.frac - ix.frac
    extra = []
    for edge in (ix.code_min, ix.code_max, 0):
        e = edge << sh if sh >= 0 else edge >> -sh
        extra += [e + d for d in range(-3, 4)]
    if sh > 0:
        extra += [(int(k) << sh) + (1 << (sh - 1)) for k in rng.integers(ix.code_min, ix.code_max, size=6)]
    span = (ix.code_max - ix.code_min + 1) << sh if sh >= 0 else (ix.code_max - ix.code_min + 1) >> -sh
    lo = ix.code_min << sh if sh >= 0 else ix.code_min >> -sh
    acc = extremes_and_random(rng, a, n, extra, focus=(lo - span // 8, lo + span + span // 8))
    y = ops.activation(acc, a.frac, ix, _activation_lut(p))[0].numpy()
    for v in range(n):
        c = s.cycle(acc=acc[v])
        s.expect(c + 1, v, {"y": y[v]})
    return s


register(LayerTop(
    "activation_lut", "hw.fixed.requantize to a 10-bit LUT address + ROM (1.7159 tanh(2a/3)), latency 1",
    lambda p: ActivationLUT(p["acc"], p["index"], p["act"], _activation_lut(p)), _activation_vectors,
    {"acc": QFormat(20, 12, True, "TRN", "WRAP"), "index": QFormat(10, 7, True, "RND_CONV", "SAT"),
     "act": QFormat(8, 6, True, "RND_CONV", "SAT"), "lut": None}, n=200))


# --------------------------------------------------------------------------- 4. tile window and the MAC lanes behind it
#
# The conv-mode datapath of the accelerator in pieces: the banked feature memory with its tile
# crossbar (hw/window.py) alone, then feeding the MAC lanes (hw/mac.py) over conv, subsampling
# and dense schedules. The input tensors go in through the write port, laid out by
# hw.program.Layout; the read addresses are the accelerator's (tile offset + the tap word of
# compile_spec); the golden values come from quantize.ops (the emulator's im2col, conv2d,
# subsample and dense kernels), accumulators wrapped by the acc format as the emulator does.

WINDOW_LATENCY = 2  # read inputs in cycle t -> x in cycle t + 2 (hw/window.py)
WINDOW_MAC_LATENCY = WINDOW_LATENCY + MAC_LATENCY  # read in cycle t -> acc in cycle t + 4
WINDOW_READ = ("base", "adj_row", "adj_col", "my", "mx", "dense", "bank")
WINDOW_PORTS = WINDOW_READ + ("we", "waddr", "wdata")


def conv_tap(layout, w: int, c: int, ky: int, kx: int) -> tuple[int, int, int, int]:
    """The tap word (weight, word offset, my, mx) of tap (c, ky, kx) of a conv-mode layer reading
    its input from ``layout`` (a :class:`hw.program.Layout`): ``compile_spec``'s arithmetic,
    written out again so that a stimulus needs no QuantSpec (a test holds the two equal)."""
    S, R, C = layout.s, layout.R, layout.C
    k1y, k0y, k1x, k0x = ky // S, ky % S, kx // S, kx % S
    qy, my, qx, mx = k1y // R, k1y % R, k1x // C, k1x % C
    return int(w), c * layout.lhw + (qy * S + k0y) * layout.lw + qx * S + k0x, my, mx


def tile_read(layout, ty: int, tx: int, tap: tuple[int, int, int, int]) -> dict:
    """The window's read inputs for ``tap`` (a tap word) over tile (ty, tx), as the accelerator
    presents them: ``base = layout.base + ty * s * lw + tx * s + off``, ``adj_row = s * lw``,
    ``adj_col = s``, ``dense = 0``."""
    _, off, my, mx = tap
    S = layout.s
    return {"base": layout.base + ty * S * layout.lw + tx * S + off, "adj_row": S * layout.lw, "adj_col": S,
            "my": my, "mx": mx, "dense": 0}


def _layout(p):
    from hw.program import Layout, tile_shape

    R, C = tile_shape(p["lanes"])
    maps, h, w = p["shape"]
    return Layout(maps, h, w, p.get("stride", 1), R, C, p.get("base", 0))


def _window_words(p) -> int:
    lay = _layout(p)
    return lay.base + lay.words


def _garbage_read(rng, win) -> dict:
    """Read inputs of a cycle whose output nobody compares (writes, idle cycles)."""
    return {"base": rng.integers(0, win.words), "adj_row": rng.integers(0, win.words), "adj_col": rng.integers(0, win.words),
            "my": rng.integers(0, win.R), "mx": rng.integers(0, win.C), "dense": rng.integers(0, 2),
            "bank": rng.integers(0, win.P)}


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
    R, C = lay.R, lay.C
    oh, ow = lay.h - K + 1, lay.w - K + 1
    v = 0
    s.notes.update(tile_reads=0, dense_reads=0, partial_tiles=0)
    while v < n:
        x = _feature_maps(rng, fmt, (lay.maps, lay.h, lay.w))
        cols = ops._unfold_int(torch.from_numpy(x)[None], K)[0].numpy()  # maps*K*K x oh*ow
        flat = x.reshape(-1)  # the dense layers' input order (quantize/emulator.py)
        _write_maps(s, lay, dut, x, rng)
        reads = [("tile", ty, tx, tuple(care), c, ky, kx) for ty, tx, care in _tiles(oh, ow, R, C)
                 for c in range(lay.maps) for ky in range(K) for kx in range(K)]
        reads += [("dense", int(i)) for i in rng.integers(0, x.size, p["dense_reads"])]
        for k in rng.permutation(len(reads)):
            if v == n:
                break
            r = reads[k]
            if r[0] == "tile":
                _, ty, tx, care, c, ky, kx = r
                inputs = tile_read(lay, ty, tx, conv_tap(lay, 0, c, ky, kx)) | {"bank": rng.integers(0, dut.P)}
                tap = (c * K + ky) * K + kx
                gold = [cols[tap, (ty * R + dy) * ow + tx * C + dx] if care[dy * C + dx] else 0
                        for dy in range(R) for dx in range(C)]
                s.notes["tile_reads"] += 1
                s.notes["partial_tiles"] += not all(care)
            else:
                bank, word = lay.locate(*(int(i) for i in np.unravel_index(r[1], x.shape)))
                inputs = _garbage_read(rng, dut) | {"base": word, "dense": 1, "bank": bank}
                gold, care = [flat[r[1]]] * dut.P, None
                s.notes["dense_reads"] += 1
            c0 = s.cycle(inputs)
            s.expect(c0 + WINDOW_LATENCY, v, {"x": gold}, care)
            v += 1
    return s


def _build_window(p):
    from hw.program import tile_shape
    from hw.window import TileWindow

    return TileWindow(*tile_shape(p["lanes"]), _window_words(p), p["bits"])


register(LayerTop(
    "window", "hw.window.TileWindow, 2x4 lanes: writes through the port, then every tap of every tile of a 5x5 conv "
    "over 2 maps of 8x8 and broadcast reads, latency 2",
    _build_window, _window_vectors, {"lanes": 8, "shape": (2, 8, 8), "kernel": 5, "stride": 1, "base": 3, "bits": 8,
                                     "dense_reads": 28}, n=256))


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
        members = {name: In(self.window.signature.members[name].shape) for name in WINDOW_PORTS}
        members |= {"valid": In(1), "first": In(1), "w": In(ArrayLayout(signed(weight_width), R * C)),
                    "acc": Out(ArrayLayout(signed(acc_width), R * C))}
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.window = win = self.window
        m.submodules.mac = mac = self.mac
        m.d.comb += [getattr(win, name).eq(getattr(self, name)) for name in WINDOW_PORTS]
        w, valid, first = self.w, self.valid, self.first
        for k in range(WINDOW_LATENCY):
            w_k = Signal(ArrayLayout(signed(self.mac.weight_width), self.P), name=f"w_d{k + 1}")
            valid_k, first_k = Signal(name=f"valid_d{k + 1}"), Signal(name=f"first_d{k + 1}")
            m.d.sync += [w_k.eq(w), valid_k.eq(valid), first_k.eq(first)]
            w, valid, first = w_k, valid_k, first_k
        m.d.comb += [mac.valid.eq(valid), mac.first.eq(first)]
        for q in range(self.P):
            m.d.comb += [mac.x[q].eq(win.x[q]), mac.w[q].eq(w[q]), mac.bias[q].eq(0), self.acc[q].eq(mac.acc[q])]
        return m


def _build_window_mac(p):
    from hw.program import tile_shape

    return WindowMAC(*tile_shape(p["lanes"]), _window_words(p), p["bits"], p["weight_width"], p["acc_width"])


def _formats(p) -> tuple[QFormat, QFormat, QFormat]:
    """(data, weight, acc) formats; the accumulator wraps (two's complement), as in hw/mac.py."""
    return QFormat(p["bits"], 0), QFormat(p["weight_width"], 0), QFormat(p["acc_width"], 0, True, "TRN", "WRAP")


def _x_max_abs(fmt: QFormat) -> int:
    return max(-fmt.code_min, fmt.code_max)


def _idle(s: Schedule, dut, rng, wf: QFormat) -> None:
    """Sometimes (one time in five) one or two cycles with ``valid`` low and garbage elsewhere."""
    if rng.random() < 0.2:
        for _ in range(int(rng.integers(1, 3))):
            s.cycle(_garbage_read(rng, dut) | {"valid": 0, "first": rng.integers(0, 2),
                                               "w": rng.integers(wf.code_min, wf.code_max, dut.P, endpoint=True)})


def _run_tiles(s: Schedule, dut, rng, wf, lay, out_hw, maps_taps, exact, wrapped, v: int, n: int) -> int:
    """Every tile of every output map: the map's taps back to back (``first`` on the first; one
    weight broadcast to all lanes), the accumulators expected 4 cycles after the last tap, on the
    lanes inside the output. Returns the next vector index."""
    R, C = lay.R, lay.C
    for o, taps in enumerate(maps_taps):
        for ty, tx, care in _tiles(*out_hw, R, C):
            if v == n:
                return v
            _idle(s, dut, rng, wf)
            for t, (c, ky, kx, w) in enumerate(taps):
                c0 = s.cycle(tile_read(lay, ty, tx, conv_tap(lay, w, c, ky, kx))
                             | {"bank": rng.integers(0, dut.P), "valid": 1, "first": int(t == 0), "w": w})
            lanes = [(ty * R + dy, tx * C + dx) for dy in range(R) for dx in range(C)]
            gold = [wrapped[o, y, x] if k else 0 for (y, x), k in zip(lanes, care)]
            s.expect(c0 + WINDOW_MAC_LATENCY, v, {"acc": gold}, care)
            s.notes["wrapped"] += sum(int(exact[o, y, x] != wrapped[o, y, x]) for (y, x), k in zip(lanes, care) if k)
            s.notes["partial_tiles"] += not all(care)
            v += 1
    return v


def _conv_tile_vectors(dut, p, rng, n):
    """Rounds of: a fresh input tensor written through the write port (every other round with a
    saturated block at code_min), fresh weights (even maps: extremes and uniform codes; odd maps:
    mostly code_min, so the sums over the saturated block wrap), then for each output map of
    ``table`` (its input maps, as a LeNet connection table) and each tile, the map's taps back to
    back as ``compile_spec`` orders them (c, ky, kx), with idle cycles now and then. One vector =
    one (map, tile) accumulation.
    Golden: ``quantize.ops.conv2d`` (bias 0; the accelerator adds it in the drain) wrapped by the
    acc format's ``overflow_codes``, on the lanes inside the output."""
    from quantize import ops

    s = Schedule(dut)
    lay, K, table = _layout(p), p["kernel"], p["table"]
    df, wf, af = _formats(p)
    out_hw = (lay.h - K + 1, lay.w - K + 1)
    v, rnd = 0, 0
    s.notes.update(wrapped=0, partial_tiles=0, weights=set(), data=set())
    while v < n:
        x = _feature_maps(rng, df, (lay.maps, lay.h, lay.w), saturate=0.3 if rnd % 2 else 0.0)
        wt = np.zeros((len(table), lay.maps, K, K), np.int64)  # unconnected maps: weight 0, as in the spec
        for o, conn in enumerate(table):
            k = len(conn) * K * K
            if o % 2 == 0:
                vals = extremes_and_random(rng, wf, k)
                rng.shuffle(vals)
            else:
                vals = np.where(rng.random(k) < 0.85, wf.code_min, rng.integers(wf.code_min, wf.code_max, k, endpoint=True))
            wt[o, list(conn)] = vals.reshape(len(conn), K, K)
        exact = ops.conv2d(x[None], wt, np.zeros(len(table), np.int64), _x_max_abs(df))[0].numpy().astype(np.int64)
        wrapped, _ = af.overflow_codes(exact)
        _write_maps(s, lay, dut, x, rng, lambda: {"valid": 0})
        taps = [[(c, ky, kx, int(wt[o, c, ky, kx])) for c in conn for ky in range(K) for kx in range(K)]
                for o, conn in enumerate(table)]
        v = _run_tiles(s, dut, rng, wf, lay, out_hw, taps, exact, wrapped, v, n)
        s.notes["weights"] |= set(np.unique(wt).tolist())
        s.notes["data"] |= set(np.unique(x).tolist())
        rnd += 1
    return s


register(LayerTop(
    "conv_tile", "TileWindow -> MACLanes (2x4 lanes): 5x5 conv over 2 maps of 10x10 with a connection table, "
    "partial tiles, 18-bit wrapping accumulators, latency 4",
    _build_window_mac, _conv_tile_vectors,
    {"lanes": 8, "shape": (2, 10, 10), "kernel": 5, "stride": 1, "base": 5, "table": ((0, 1), (1,)), "bits": 8,
     "weight_width": 8, "acc_width": 18}, n=48))


def _subsample_vectors(dut, p, rng, n):
    """Rounds of: a fresh input tensor (every other round with a saturated block) written into a
    stride-2 layout, per-map coefficients (uniform, one of them code_min or code_max in turn), then
    for each output map (input map ``source[j]``) and tile the four taps of the 2x2 window, each
    carrying the map's coefficient (as ``compile_spec`` compiles subsampling). One vector = one
    (map, tile) accumulation.
    Golden: ``quantize.ops.subsample`` (bias 0) wrapped by the acc format, lanes inside the output."""
    from quantize import ops

    s = Schedule(dut)
    lay, source = _layout(p), p["source"]
    df, wf, af = _formats(p)
    O = len(source)
    out_hw = (lay.h // 2, lay.w // 2)
    v, rnd = 0, 0
    s.notes.update(wrapped=0, partial_tiles=0, weights=set(), data=set())
    while v < n:
        x = _feature_maps(rng, df, (lay.maps, lay.h, lay.w), saturate=0.3 if rnd % 2 else 0.0)
        coef = rng.integers(wf.code_min, wf.code_max, O, endpoint=True)
        coef[rnd % O] = (wf.code_min, wf.code_max)[(rnd // O) % 2]
        exact = ops.subsample(x[None], coef, np.zeros(O, np.int64), _x_max_abs(df), source)[0].numpy().astype(np.int64)
        wrapped, _ = af.overflow_codes(exact)
        _write_maps(s, lay, dut, x, rng, lambda: {"valid": 0})
        taps = [[(source[j], u, w_, int(coef[j])) for u in range(2) for w_ in range(2)] for j in range(O)]
        v = _run_tiles(s, dut, rng, wf, lay, out_hw, taps, exact, wrapped, v, n)
        s.notes["weights"] |= set(coef.tolist())
        s.notes["data"] |= set(np.unique(x).tolist())
        rnd += 1
    return s


register(LayerTop(
    "subsample", "TileWindow (stride-2 layout) -> MACLanes (2x4 lanes): 2x2 subsampling of 2 maps of 12x12 "
    "(source maps swapped), partial tiles, 16-bit wrapping accumulators, latency 4",
    _build_window_mac, _subsample_vectors,
    {"lanes": 8, "shape": (2, 12, 12), "stride": 2, "base": 0, "source": (1, 0), "bits": 8, "weight_width": 8,
     "acc_width": 16}, n=36))


def _dense_vectors(dut, p, rng, n):
    """Rounds of: a fresh input tensor (``shape``, flattened in the emulator's order; every other
    round three quarters of it at code_min) written through the write port, a fresh ``outputs`` x
    inputs weight matrix (extremes and uniform codes; every third row all code_min, whose sums wrap
    on the saturated rounds), padded with zero rows to whole groups as ``compile_spec`` does; then
    for each group of ``lanes`` neurons the inputs one per cycle, read in dense mode (every lane
    gets the same input) with one weight per lane. One vector = one group.
    Golden: ``quantize.ops.dense`` (bias 0) wrapped by the acc format, the lanes holding a neuron."""
    from quantize import ops

    s = Schedule(dut)
    lay, O = _layout(p), p["outputs"]
    df, wf, af = _formats(p)
    P = dut.P
    I = lay.maps * lay.h * lay.w
    groups = -(-O // P)
    v, rnd = 0, 0
    s.notes.update(wrapped=0, partial_groups=0, weights=set(), data=set())
    while v < n:
        x = _feature_maps(rng, df, (lay.maps, lay.h, lay.w))
        flat = x.reshape(-1)  # a view: the saturation below lands in x too
        if rnd % 2:
            flat[rng.permutation(I)[: 3 * I // 4]] = df.code_min
        w = np.zeros((groups * P, I), np.int64)
        for o in range(O):
            w[o] = wf.code_min if o % 3 == 2 else rng.permutation(extremes_and_random(rng, wf, I))
        exact = ops.dense(flat[None], w[:O], np.zeros(O, np.int64), _x_max_abs(df))[0].numpy().astype(np.int64)
        wrapped, _ = af.overflow_codes(exact)
        _write_maps(s, lay, dut, x, rng, lambda: {"valid": 0})
        for g in range(groups):
            if v == n:
                break
            _idle(s, dut, rng, wf)
            for i in range(I):
                bank, word = lay.locate(*(int(k) for k in np.unravel_index(i, x.shape)))
                c0 = s.cycle(_garbage_read(rng, dut) | {"base": word, "dense": 1, "bank": bank, "valid": 1,
                                                        "first": int(i == 0), "w": w[g * P:(g + 1) * P, i]})
            care = [int(g * P + q < O) for q in range(P)]
            gold = [wrapped[g * P + q] if k else 0 for q, k in enumerate(care)]
            s.expect(c0 + WINDOW_MAC_LATENCY, v, {"acc": gold}, care)
            s.notes["wrapped"] += sum(int(exact[g * P + q] != wrapped[g * P + q]) for q, k in enumerate(care) if k)
            s.notes["partial_groups"] += not all(care)
            v += 1
        s.notes["weights"] |= set(np.unique(w[:O]).tolist())
        s.notes["data"] |= set(np.unique(x).tolist())
        rnd += 1
    return s


register(LayerTop(
    "dense", "TileWindow broadcast reads -> MACLanes (2x2 lanes): 14 neurons over 20 inputs (5 maps of 2x2) in "
    "groups of 4, one weight per lane, 18-bit wrapping accumulators, latency 4",
    _build_window_mac, _dense_vectors,
    {"lanes": 4, "shape": (5, 2, 2), "base": 2, "outputs": 14, "bits": 8, "weight_width": 8, "acc_width": 18}, n=32))


# --------------------------------------------------------------------------- build and run

def emit(name: str, component: wiring.Component) -> str:
    from amaranth.back import verilog

    return verilog.convert(component, name=f"layer_{name}", emit_src=False)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


def run_layer(name: str, simulator: str = "icarus", n: int | None = None, seed: int = 0, params: dict | None = None,
              out: str | os.PathLike = OUT, waves: bool | None = None,
              tamper: Callable[[dict[str, np.ndarray]], None] | None = None) -> dict:
    """Simulate the layer top ``name`` on ``n`` random vectors (``seed``) and compare with the golden
    outputs of the emulator's code.

    ``params`` override the top's defaults; ``tamper`` may edit the golden arrays before they are
    written (to prove that the checker fails). Returns a dict with ``layer``, ``vectors``,
    ``mismatches`` (compared values that differ), ``first_mismatch`` (vector, cycle, port, lane,
    expected, actual; None when bit-exact) and timings.
    """
    top = get_layer(name)
    check_simulator(simulator)
    if n is not None and (not isinstance(n, int) or n < 1):
        raise UserError(f"number of vectors must be at least 1, got {n!r}")
    waves = os.environ.get("WAVES", "0") == "1" if waves is None else waves
    p = {**top.defaults, **(params or {})}
    dut = top.build(p)
    sched = top.vectors(dut, p, np.random.default_rng(seed), n or top.n)
    arrs = sched.arrays()
    text = emit(name, dut)
    clocked = re.search(r"^\s*input\s+clk\s*;", text, re.M) is not None
    has_rst = re.search(r"^\s*input\s+rst\s*;", text, re.M) is not None
    # one directory per Verilog text: changed parameters never reuse a stale build
    work = Path(out) / name / hashlib.sha256(text.encode()).hexdigest()[:12]
    vpath = work / f"layer_{name}.v"
    _write_if_changed(vpath, text)
    if simulator == "icarus":
        vpath = icarus_copy(vpath)
    sim_dir = work / simulator
    t0 = time.perf_counter()
    # the testbench drives and reads the layer top's ports: every signal visible (public)
    tb = build(simulator, [vpath], f"layer_{name}", sim_dir, public=True, waves=waves)
    build_dir = tb.directory
    build_s = time.perf_counter() - t0

    run_dir = sim_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"layer": name, "ports": [asdict(q) for q in sched.ports], "clocked": clocked, "has_rst": has_rst,
            "period_ns": PERIOD_NS, "reset_cycles": RESET_CYCLES, "cycles": sched.cycles}
    if tamper is not None:
        tamper(arrs)
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrs)
    golden = run_dir / "golden.npz"
    atomic_write_bytes(golden, buf.getvalue())
    result_path = run_dir / "result.json"
    if result_path.exists():
        result_path.unlink()
    t1 = time.perf_counter()
    err = tb.run_test("sim.tb_layers", run_dir, env={"LENET_LAYER_GOLDEN": str(golden.resolve()),
                                                     "LENET_LAYER_RESULT": str(result_path.resolve())})
    if err:
        raise UserError(f"layer {name}: {err}; see {run_dir / 'sim.log'}")
    sim_s = time.perf_counter() - t1
    if not result_path.is_file():
        raise UserError(f"layer {name}: the simulation produced no result; see {run_dir / 'sim.log'}")
    res = json.loads(result_path.read_text())
    result = {"layer": name, "simulator": simulator, "vectors": sched.vectors, "cycles": res["cycles"],
              "compared": res["compared"], "mismatches": res["mismatches"], "first_mismatch": res["first_mismatch"],
              "seed": seed, "build_seconds": round(build_s, 2), "sim_seconds": round(sim_s, 2), "verilog": str(vpath)}
    if waves:
        # Icarus writes into the build directory, Verilator into the run directory
        cand = [f for d in (run_dir, build_dir) for ext in ("*.fst", "*.vcd") for f in sorted(d.glob(ext))]
        result["waves"] = str(cand[0]) if cand else None
    return result


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sim.layers", description=__doc__.split("\n\n")[0])
    p.add_argument("--layer", nargs="+", default=None, metavar="NAME", help=f"layer tops (default all: {', '.join(LAYERS)})")
    p.add_argument("--simulator", default=os.environ.get("SIM", "icarus"), help="icarus (default) or verilator")
    p.add_argument("--n", type=int, default=None, help="stimulus vectors per layer (default: the top's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=OUT)
    p.add_argument("--json", action="store_true", help="one JSON object per layer")
    args = p.parse_args(argv)
    if args.simulator not in SIMULATORS:
        raise UserError(f"unknown --simulator {args.simulator!r} (icarus or verilator)")
    if args.n is not None and args.n < 1:
        raise UserError("--n must be at least 1")
    names = args.layer or list(LAYERS)
    for n in names:
        get_layer(n)  # every name checked before any build
    check_simulator(args.simulator)
    failed = 0
    for n in names:
        res = run_layer(n, args.simulator, args.n, args.seed, out=args.out)
        failed += res["mismatches"] > 0
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print(f"{n}: {res['simulator']}, {res['vectors']} vectors, {res['compared']} values compared, "
                  f"{res['mismatches']} mismatches ({res['sim_seconds']} s)", flush=True)
            if res["first_mismatch"]:
                print("  first mismatch: " + json.dumps(res["first_mismatch"]), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
