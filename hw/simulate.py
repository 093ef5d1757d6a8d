"""Run the generated accelerator in Amaranth's simulator: ``rtl_accelerator(spec, lanes, images)``.

Used by the tests (against the emulator, bit-exact) and handy for debugging; the cocotb
testbenches in ``sim/`` run the emitted Verilog instead.
"""
from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from model.data import fit_images

from .accelerator import Accelerator


def rtl_accelerator(spec, lanes: int, images: np.ndarray, vcd: str | None = None, max_cycles: int = 10_000_000,
                    weights: str = "rom", batch: int = 1, fuse_pools: bool = False, overlap_load: bool = False):
    """Stream each image in (uint8, the spec's input shape, or MNIST digits that
    :func:`model.data.fit_images` adapts); return (classes N, scores N x classes, cycles per image N).

    With ``weights="load"`` the weight memory starts empty and the weight image is streamed
    through ``wl`` first, one byte per cycle. With ``batch`` = B the images go in B at a time (the
    last group padded with blank images, whose results are dropped); cycles are per group.
    ``fuse_pools``: compile the spec with its fusable pools in their conv layers' drains;
    ``overlap_load``: with the next image's load under the current one (``hw.program.compile_spec``).
    The images stream back to back: the first group's cycles are :func:`hw.perf.latency_cycles`,
    the others' :func:`hw.perf.cycles_per_image`."""
    from .program import compile_spec

    images = fit_images(np.asarray(images), spec.input_shape)
    dut = Accelerator(spec, lanes, weights=weights, batch=batch,
                      program=compile_spec(spec, lanes, fuse_pools=fuse_pools, overlap_load=overlap_load))
    n_images = len(images)
    if batch > 1 and len(images) % batch:
        images = np.concatenate([images, np.zeros((batch - len(images) % batch,) + images.shape[1:], images.dtype)])
    groups = images.reshape(-1, batch, *images.shape[1:])
    classes, scores, cycles = [], [], []

    async def testbench(ctx):
        ctx.set(dut.o.ready, 1)
        if weights == "load":
            data = dut.weight_load_data()
            assert len(data) == dut.weight_load_bytes
            ctx.set(dut.wl.valid, 1)
            for b in data:
                ctx.set(dut.wl.payload, b)
                await ctx.tick().until(dut.wl.ready)
            ctx.set(dut.wl.valid, 0)
        # every group's pixels back to back: the next image waits on ``i`` while one runs (an
        # overlapped program takes it early); a group's cycles are the busy cycles since the last done
        flat = groups.reshape(len(groups), batch, -1).astype(np.int64)
        feed = [int(sum(int(flat[g, b, k]) << (8 * b) for b in range(batch)))
                for g in range(len(groups)) for k in range(flat.shape[2])]
        beats, n, busy_cycles = [], 0, 0
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, feed[0])
        while len(cycles) < len(groups):
            accepted = ctx.get(dut.i.valid) and ctx.get(dut.i.ready)
            out = ctx.get(dut.o.valid) and ctx.get(dut.o.ready)
            busy = ctx.get(dut.busy)
            done = ctx.get(dut.done)
            if out:
                beats.append(ctx.get(dut.o.payload.value))
            await ctx.tick()
            busy_cycles += busy
            if accepted:
                n += 1
                if n < len(feed):
                    ctx.set(dut.i.payload, feed[n])
                else:
                    ctx.set(dut.i.valid, 0)
            if done:
                if batch == 1:
                    classes.append(beats[0])
                    scores.append(beats[1:])
                else:
                    classes.extend(beats[0])
                    scores.extend([beat[b] for beat in beats[1:]] for b in range(batch))
                cycles.append(busy_cycles)
                beats, busy_cycles = [], 0
            if busy_cycles > max_cycles:
                raise RuntimeError("accelerator did not finish")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return np.array(classes[:n_images]), np.array(scores[:n_images], dtype=np.int64), np.array(cycles)
