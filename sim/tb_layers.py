"""Generic cocotb testbench for the layer tops of :mod:`sim.layers`: driver, monitor, scoreboard.

The golden file (.npz) is named by ``$LENET_LAYER_GOLDEN`` or the plusarg ``+golden=PATH``; the
result (JSON) goes to ``$LENET_LAYER_RESULT`` (default: ``result.json`` beside the golden file).
The file holds, per input port, the value of every cycle (``in.P``); per output port, the expected
value (``out.P``), the stimulus vector it belongs to, or -1 where nothing is compared (``vec.P``),
and which elements are compared (``care.P``, 1/0 per element; every element when absent); and
``meta`` (ports, clocking). Everything expected comes from that file, computed by
the emulator's code; this module only drives, samples and compares integers.

Cycle t: the driver applies cycle t's inputs at the falling clock edge, the monitor samples the
outputs once they have settled (``ReadOnly``), before the rising edge that ends the cycle. A top
without ``clk`` (combinational) is stepped every period instead.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge, Timer


def _pack(row: np.ndarray, elem_width: int) -> int:
    mask = (1 << elem_width) - 1
    raw = 0
    for k, v in enumerate(row.tolist()):
        raw |= (int(v) & mask) << (k * elem_width)
    return raw


def _handles(dut, p: dict) -> list:
    """The Verilog ports of one logical port: itself, or one per element for an array of ports."""
    return [getattr(dut, n) for n in (p.get("parts") or [p["name"]])]


class Driver:
    """Applies one cycle of inputs (every ``In`` port, elements packed little-endian, or one element
    per Verilog port for an array of ports)."""

    def __init__(self, dut, ports: list[dict], golden):
        self.handles, self.rows = [], []
        # packed once up front: the per-cycle work is one write per Verilog port
        for p in ports:
            hs = _handles(dut, p)
            rows = golden[f"in.{p['name']}"]
            if len(hs) == 1:
                self.handles.append(hs[0])
                self.rows.append([_pack(row, p["elem_width"]) for row in rows])
            else:
                for k, h in enumerate(hs):
                    self.handles.append(h)
                    self.rows.append([_pack(row[k:k + 1], p["elem_width"]) for row in rows])

    def idle(self) -> None:
        for h in self.handles:
            h.value = 0

    def apply(self, cycle: int) -> None:
        for h, rows in zip(self.handles, self.rows):
            h.value = rows[cycle]


class Monitor:
    """Samples every ``Out`` port and unpacks it into elements (None for an element with an X/Z
    bit: an element nobody compares, e.g. a lane reading past a memory, may be X)."""

    def __init__(self, dut, ports: list[dict]):
        self.ports = ports
        self.handles = [_handles(dut, p) for p in ports]

    def sample(self) -> dict[str, list]:
        out = {}
        for p, hs in zip(self.ports, self.handles):
            # a LogicArray, or a Logic for a 1-bit port; most significant bit (last element) first
            bits = "".join(str(h.value) for h in reversed(hs))
            w, n = p["elem_width"], p["elems"]
            if not bits.strip("01"):
                raw = int(bits, 2)
                vals = [(raw >> (k * w)) & ((1 << w) - 1) for k in range(n)]
            else:
                elems = [bits[len(bits) - (k + 1) * w:len(bits) - k * w] for k in range(n)]
                vals = [None if e.strip("01") else int(e, 2) for e in elems]
            if p["signed"]:
                vals = [x - (1 << w) if x is not None and x >> (w - 1) else x for x in vals]
            out[p["name"]] = vals
        return out


class Scoreboard:
    """Integer equality against the golden outputs, in the cycles the golden file marks."""

    def __init__(self, ports: list[dict], golden):
        self.ports = ports
        self.expected = {p["name"]: golden[f"out.{p['name']}"].tolist() for p in ports}
        self.vector = {p["name"]: golden[f"vec.{p['name']}"].tolist() for p in ports}
        # golden files written before ``care`` existed compare every element
        self.care = {p["name"]: golden[f"care.{p['name']}"].tolist() if f"care.{p['name']}" in golden.files else None
                     for p in ports}
        self.compared = 0
        self.mismatches = 0
        self.bad_vectors: set[int] = set()
        self.first = None

    def check(self, cycle: int, sample: dict[str, list]) -> None:
        for p in self.ports:
            name = p["name"]
            vec = self.vector[name][cycle]
            if vec < 0:
                continue
            exp = self.expected[name][cycle]
            got = sample[name]
            care = self.care[name][cycle] if self.care[name] is not None else [1] * len(exp)
            for lane, (e, a, k) in enumerate(zip(exp, got, care)):
                if not k:
                    continue
                self.compared += 1
                if a is None or a != e:
                    self.mismatches += 1
                    self.bad_vectors.add(vec)
                    if self.first is None:
                        self.first = {"vector": vec, "cycle": cycle, "port": name, "lane": lane,
                                      "expected": e, "actual": "X" if a is None else a}


def _golden_path() -> str:
    plus = getattr(cocotb, "plusargs", {}) or {}
    path = plus.get("golden") or os.environ.get("LENET_LAYER_GOLDEN")
    if not path:
        raise RuntimeError("no golden file: set LENET_LAYER_GOLDEN or +golden=PATH")
    return path


@cocotb.test()
async def layer_matches_golden(dut):
    path = _golden_path()
    golden = np.load(path)
    meta = json.loads(str(golden["meta"]))
    ins = [p for p in meta["ports"] if p["direction"] == "in"]
    outs = [p for p in meta["ports"] if p["direction"] == "out"]
    driver, monitor, scoreboard = Driver(dut, ins, golden), Monitor(dut, outs), Scoreboard(outs, golden)
    period = meta["period_ns"]

    driver.idle()
    if meta["clocked"]:
        cocotb.start_soon(Clock(dut.clk, period, unit="ns").start())
        if meta["has_rst"]:
            dut.rst.value = 1
        for _ in range(meta["reset_cycles"]):
            await RisingEdge(dut.clk)

    def step():
        return FallingEdge(dut.clk) if meta["clocked"] else Timer(period, unit="ns")

    for cycle in range(meta["cycles"]):
        await step()
        if cycle == 0 and meta["clocked"] and meta["has_rst"]:
            dut.rst.value = 0
        driver.apply(cycle)
        await ReadOnly()
        scoreboard.check(cycle, monitor.sample())

    result = {"cycles": meta["cycles"], "compared": scoreboard.compared, "mismatches": scoreboard.mismatches,
              "mismatched_vectors": len(scoreboard.bad_vectors), "first_mismatch": scoreboard.first}
    out = os.environ.get("LENET_LAYER_RESULT") or str(Path(path).with_name("result.json"))
    with open(out, "w") as f:
        json.dump(result, f)
