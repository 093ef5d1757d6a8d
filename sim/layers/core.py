# amaranth: UnusedElaboratable=no
# (tops are built to read their ports and stimulus too, not only to be emitted)
"""Ports, schedules and the registry of the layer tops (see :mod:`sim.layers`).

:class:`Schedule` holds a top's cycle-by-cycle inputs and the golden outputs expected in given
cycles; :func:`extremes_and_random` draws stimulus codes; :func:`register` adds a
:class:`LayerTop` to :data:`LAYERS`.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.wiring import In

from model.util import UserError
from quantize.qformat import QFormat

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
