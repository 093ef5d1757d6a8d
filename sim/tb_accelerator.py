"""cocotb testbench for the emitted accelerator: driver, monitor, scoreboard.

Run by :mod:`sim.runner` (``python -m sim``); configuration comes from the JSON file named by
``$LENET_SIM_CONFIG``: the images (.npy), the golden vectors from the emulator (.npz, written by
``quantize.run``), the manifest of the Verilog, where to write the results, and whether to trace.
The scoreboard compares by integer equality only; expected values come only from the golden file.
"""
from __future__ import annotations

import json
import os

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, RisingEdge

class Driver:
    """Hands one 28x28 image to the harness, which streams it into ``i`` at full rate."""

    def __init__(self, dut):
        self.dut = dut

    async def send(self, image: np.ndarray) -> None:
        self.dut.image.value = int.from_bytes(np.ascontiguousarray(image, dtype=np.uint8).tobytes(), "little")
        self.dut.start.value = 1
        await RisingEdge(self.dut.clk)
        self.dut.start.value = 0


class Monitor:
    """Waits for ``done``; returns the 11 output beats (class, ten scores) and the busy cycles."""

    def __init__(self, dut, score_width: int, payload_width: int):
        self.dut, self.sw, self.pw = dut, score_width, payload_width

    def _value(self, raw: int) -> int:
        v = raw & ((1 << self.sw) - 1)
        return v - (1 << self.sw) if v >> (self.sw - 1) else v

    async def collect(self) -> tuple[list[int], int]:
        await RisingEdge(self.dut.finished)
        raw = int(self.dut.beats.value)
        beats = [self._value(raw >> (k * self.pw)) for k in range(11)]
        return beats, int(self.dut.cycles.value)


class Tracer:
    """Records every feature-memory write of the activation drain: each layer's output tensor."""

    def __init__(self, dut, layers: list[dict]):
        self.dut, self.layers = dut, layers
        self.writes: list[tuple[int, int]] = []

    async def run(self):
        act = self.dut.dut.act
        while True:
            await FallingEdge(self.dut.clk)
            if int(act.we.value):
                self.writes.append((int(act.waddr.value), act.wdata.value.to_signed()))

    def tensors(self) -> dict[str, np.ndarray]:
        """Each layer's output in the emulator's flat order; the writes come layer after layer."""
        out, i = {}, 0
        for l in self.layers:
            if l["addrs"] is None:
                continue
            where = {a: j for j, a in enumerate(l["addrs"])}
            t = np.zeros(len(l["addrs"]), np.int64)
            for addr, v in self.writes[i:i + len(l["addrs"])]:
                if addr in where:
                    t[where[addr]] = v
            out[l["name"]] = t
            i += len(l["addrs"])
        return out


def first_divergence(traced: dict, golden: dict) -> dict | None:
    """The first layer (in network order) and flat index where the RTL differs from the emulator."""
    for name, got in traced.items():
        exp = golden[name]
        bad = np.flatnonzero(got != exp)
        if len(bad):
            j = int(bad[0])
            return {"layer": name, "index": j, "expected": int(exp[j]), "actual": int(got[j])}
    return None


@cocotb.test()
async def accelerator_matches_emulator(dut):
    with open(os.environ["LENET_SIM_CONFIG"]) as f:
        cfg = json.load(f)
    images = np.load(cfg["images"])
    golden = np.load(cfg["golden"])
    dut.rst.value = 1
    dut.start.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    driver, monitor = Driver(dut), Monitor(dut, cfg["score_width"], cfg["payload_width"])
    results = {"classes": [], "scores": [], "cycles": [], "mismatches": 0, "first_mismatch": None}
    trace_images = set(cfg.get("trace_images", []))
    for n, img in enumerate(images):
        tracer = Tracer(dut, cfg["layers"]) if n in trace_images else None
        trace_task = cocotb.start_soon(tracer.run()) if tracer else None
        collect = cocotb.start_soon(monitor.collect())
        await driver.send(img)
        beats, cycles = await collect
        if trace_task:
            trace_task.cancel()
        cls, scores = beats[0], beats[1:]
        results["classes"].append(cls)
        results["scores"].append(scores)
        results["cycles"].append(cycles)
        # scoreboard: integer equality against the emulator's golden vectors
        exp_cls = int(golden["predictions"][n])
        exp_scores = [int(v) for v in golden["scores"][n]]
        if cls != exp_cls or scores != exp_scores:
            results["mismatches"] += 1
            if results["first_mismatch"] is None:
                k = next((j for j in range(len(scores)) if scores[j] != exp_scores[j]), None)
                results["first_mismatch"] = {
                    "image": n, "class": {"expected": exp_cls, "actual": cls},
                    "score_index": k, "expected": exp_scores[k] if k is not None else None,
                    "actual": scores[k] if k is not None else None}
        if tracer:
            traced = tracer.tensors()
            results.setdefault("traces", {})[str(n)] = first_divergence(
                traced, {name: golden[name][n].reshape(-1) for name in traced})
        await RisingEdge(dut.clk)
    with open(cfg["result"], "w") as f:
        json.dump(results, f)
