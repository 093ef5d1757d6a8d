"""cocotb testbench for the emitted accelerator: a batch of images, then the scoreboard.

Run by :mod:`sim.runner` (``python -m sim``). The driver and the monitor are Verilog
(:mod:`sim.harness`): they stream the images from a file and write one results line per image, so
Python is not woken per pixel, per beat or per image. This test resets the harness, starts the
batch, waits for ``finished`` and then scores every image against the emulator's golden vectors
(:class:`sim.scoreboard.Scoreboard`, integer equality); it fails if any image differs.

``$LENET_SIM_CONFIG`` names a JSON file: ``count``, ``duts``, ``batch`` (images per accelerator run), ``results`` (the harness' files), ``golden``
(.npz: ``predictions``, ``scores`` and each layer's tensor), ``result`` (where to write the
summary), ``beats``, ``score_width``, ``payload_width``, ``model_cycles``, and with ``trace`` the
layers' write addresses for the tracer (one image: it records every feature-memory write).
"""
from __future__ import annotations

import json
import os

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, RisingEdge, Timer

from sim.scoreboard import combine, split_streams

POLL_NS = 100_000  # 10,000 cycles of the harness' 10 ns clock


class Tracer:
    """Records every feature-memory write of the activation drain: each layer's output tensor."""

    def __init__(self, dut, layers: list[dict], batch: int = 1):
        self.dut, self.layers, self.batch = dut, layers, batch
        self.writes: list[tuple[int, int]] = []

    def drain(self):
        """(write enable, address, data) of the drain of the first accelerator copy's image 0 (a trace
        runs one image): harness stream s0, its accelerator ``dut``, the engine (hw/engine.py) and its
        activation drain ``act``; with an accelerator batch one drain serves every image and its data
        port is per image (``wdata__0``: image 0's)."""
        act = self.dut.s0.dut.engine.act
        return act.we, act.waddr, act.wdata if self.batch == 1 else getattr(act, "wdata__0")

    async def run(self):
        we, waddr, wdata = self.drain()
        while True:
            await FallingEdge(self.dut.clk)
            if int(we.value):
                self.writes.append((int(waddr.value), wdata.value.to_signed()))

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
    golden = np.load(cfg["golden"])
    dut.rst.value = 1
    dut.start.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    tracer = Tracer(dut, cfg["layers"], cfg.get("batch", 1)) if cfg.get("trace") else None
    trace_task = cocotb.start_soon(tracer.run()) if tracer else None
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0
    # poll instead of awaiting RisingEdge(finished): a value-change callback makes Verilator's cocotb
    # loop check the signal after every evaluation (about 3 x slower); a timer costs one wake-up per
    # POLL_NS of simulated time (a few per image)
    while not int(dut.finished.value):
        await Timer(POLL_NS, "ns")
    if trace_task:
        trace_task.cancel()

    # copy d of the accelerator ran images d, d + duts, ... (with an accelerator batch B: groups of B);
    # its lines are in results.d
    n = cfg["count"]
    streams = split_streams(np.arange(n), cfg["results"], cfg["duts"], golden["predictions"], golden["scores"],
                            cfg["model_cycles"], cfg.get("batch", 1), cfg.get("model_first"))
    for s in streams:
        s.poll(cfg["beats"], cfg["score_width"], cfg["payload_width"])
    results = combine(streams, n)
    if tracer:
        traced = tracer.tensors()
        results["trace"] = first_divergence(traced, {name: golden[name][0].reshape(-1) for name in traced})
    with open(cfg["result"], "w") as f:
        json.dump(results, f)
    assert results["images"] == n, f"{results['images']} of {n} images reported"
    assert results["mismatches"] == 0, \
        f"{results['mismatches']} images differ from the emulator; first: {results['first_mismatch']}"
