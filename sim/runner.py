"""Run the emitted Verilog of a spec on many images in a real simulator and score it, bit for bit.

``run(spec_dir, images, simulator)`` generates (or reuses) the Verilog, computes the golden vectors
with the emulator, builds the harness (:mod:`sim.harness`) once, splits the images into ``jobs``
shards that run in parallel simulator processes, shows progress while they run (read from the
results files the harnesses write), scores every image (:mod:`sim.scoreboard`) and, on a
mismatch, re-runs the first failing image with the tracer, which names the first diverging layer
and index. A simulator process that dies leaves an error naming the images it finished; the
results of every image scored so far are kept in ``partial.json``.

With an accelerator batch (``batch`` = B > 1, ``dsp``) each accelerator run takes a group of B
images (shards hold whole groups; the last group is padded with blank images, not scored) and
every image reports its run's cycles, checked against the cycle model's cycles per batch.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from model.data import fit_images
from model.progress import Progress
from model.util import UserError, atomic_write_bytes, atomic_write_text

DSP_CHOICES = ("auto", "rtl", "sb_mac16")  # as hw.generate
from .build import SIMULATORS, build, check_simulator, icarus_copy  # noqa: F401  (SIMULATORS: the CLI's list)
from .harness import HARNESS, MAX_BATCH, harness_verilog
from .scoreboard import combine, split_streams

POLL_SECONDS = 0.5


def _spec_key(spec_dir: Path, lanes: int, fuse_pools: bool = False, batch: int = 1, dsp: str = "auto",
              overlap_load: bool = False) -> str:
    """What the emitted Verilog depends on: the spec, the lanes, pool fusion, the accelerator batch
    and its DSP choice, and the generator's own source."""
    import hw

    h = hashlib.sha256()
    for f in ("spec.json", "weights.npz"):
        h.update((spec_dir / f).read_bytes())
    h.update(str(lanes).encode() + (b" fused" if fuse_pools else b"") + (b" overlap" if overlap_load else b""))
    if batch != 1 or dsp != "auto":  # the defaults keep the keys (and builds) of before
        h.update(f" batch {batch} dsp {dsp}".encode())
    for src in sorted(Path(hw.__file__).parent.glob("*.py")):
        h.update(src.name.encode() + src.read_bytes())
    return h.hexdigest()[:16]


def work_name(spec_dir: Path, lanes: int, fuse_pools: bool = False, batch: int = 1, dsp: str = "auto",
              overlap_load: bool = False) -> str:
    """The directory (under ``out``) of a spec's Verilog and simulator builds."""
    return (f"{Path(spec_dir).resolve().name}-L{lanes}" + ("-fused" if fuse_pools else "")
            + ("-overlap" if overlap_load else "")
            + (f"-B{batch}" if batch != 1 else "") + (f"-{dsp}" if dsp != "auto" else ""))


def prepare_verilog(spec, spec_dir: Path, lanes: int, out: Path, program=None, batch: int = 1,
                    dsp: str = "auto") -> tuple[Path, dict]:
    """Generate the Verilog into ``out`` unless the same spec, lanes, batch, dsp and generator made
    what is there. ``program``: the spec compiled for ``lanes``, if the caller has it (not compiled
    again; a program with fused pools is keyed apart)."""
    from hw.generate import generate

    key = _spec_key(spec_dir, lanes, bool(program is not None and program.fused), batch, dsp,
                    bool(program is not None and program.overlap))
    stamp = out / "key.txt"
    mpath = out / "manifest.json"
    if stamp.is_file() and stamp.read_text() == key and mpath.is_file():
        manifest = json.loads(mpath.read_text())
        return out / f"{manifest['top']}.v", manifest
    text, manifest = generate(spec, lanes, program=program, batch=batch, dsp=dsp)
    atomic_write_text(out / f"{manifest['top']}.v", text)
    atomic_write_text(mpath, json.dumps(manifest, indent=1))
    atomic_write_text(stamp, key)
    return out / f"{manifest['top']}.v", manifest


def layer_table(prog) -> list[dict]:
    """Per layer of the compiled program, where the drain writes each output (the emulator's flat
    order), so the tracer can rebuild the tensors; ``addrs`` None for the last layer (scores)."""
    from hw.program import output_addresses

    # a fused stage writes its pool's tensor (the conv's output is never stored)
    return [{"name": (lp.pool or lp).name, "addrs": output_addresses(lp, prog)} for lp in prog.layers]


class _Shard:
    """Images ``sel`` of the batch in one simulator process of ``duts`` accelerator copies (each
    running groups of ``batch`` images)."""

    def __init__(self, k: int, sel: np.ndarray, directory: Path, duts: int, golden, model_cycles: int,
                 batch: int = 1, model_first: int | None = None):
        self.k, self.sel, self.directory = k, sel, directory
        self.streams = split_streams(sel, directory / "results.txt", duts, golden.predictions, golden.scores,
                                     model_cycles, batch, model_first)
        self.error: str | None = None

    @property
    def done(self) -> int:
        return sum(s.board.done for s in self.streams)

    def poll(self, *widths) -> None:
        for s in self.streams:
            s.poll(*widths)


def _one_or_all(cycles: list[int]):
    """The cycle count every run took, or the sorted distinct counts when they differ."""
    return int(cycles[0]) if cycles and len(set(cycles)) == 1 else sorted(set(cycles))


def default_duts(simulator: str, images_per_process: int) -> int:
    """Accelerator copies per simulator process (see :mod:`sim.harness`). Icarus: 1. Verilator: each
    copy adds about 3 s to the C++ build and amortises cocotb's per-time-step cost: 4 copies run
    ~1.2 x faster than 1 (measured: 62 -> 72 images/s, 2 processes), 8 ~1.45 x (91 images/s), so 8
    pay only on runs of thousands of images. With an accelerator batch, count its runs (groups)."""
    if simulator != "verilator":
        return 1
    return 8 if images_per_process >= 4000 else 4


def run(spec_dir, images: np.ndarray, simulator: str = "icarus", lanes: int = 8, waves: bool = False,
        out: str | os.PathLike = "build/sim", trace_on_mismatch: bool = True, verilog: Path | None = None,
        jobs: int = 1, progress: bool = False, duts: int | None = None, fuse_pools: bool = False,
        overlap_load: bool = False,
        batch: int = 1, dsp: str = "auto") -> dict:
    """Simulate ``images`` (uint8, the spec's C x H x W input, or what
    :func:`model.data.fit_images` adapts to it, e.g. MNIST digits) and compare with the emulator.
    ``jobs`` simulator processes of ``duts`` accelerator copies each (default:
    :func:`default_duts`). ``progress`` shows a bar on a terminal, periodic lines otherwise.
    ``fuse_pools``: the spec compiled with its fusable pools in their conv layers' drains;
    ``overlap_load``: with each image loaded while the one before runs (each copy's first image then
    takes :func:`hw.perf.latency_cycles`, the others :func:`hw.perf.cycles_per_image`).
    ``batch`` = B: an accelerator of B images in lockstep (``Accelerator(batch=B, dsp=dsp)``;
    ``dsp``: auto = rtl without a platform, or sb_mac16 Instances, simulated with Yosys' model):
    each run takes a group of B consecutive images of a shard, the last group padded with blank
    images that are not scored; every image reports its run's cycles, which must equal the cycle
    model's (per run, as for one image)."""
    from hw.perf import schedule
    from hw.program import compile_spec
    from quantize import spec as qspec
    from quantize.emulator import Emulator

    check_simulator(simulator)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH:
        raise UserError(f"batch must be in 1..{MAX_BATCH}, got {batch!r}")
    if dsp not in DSP_CHOICES:
        raise UserError(f"dsp must be one of {', '.join(DSP_CHOICES)}, got {dsp!r}")
    spec_dir = Path(spec_dir)
    spec = qspec.load(spec_dir)
    images = fit_images(np.asarray(images), spec.input_shape)  # before any build: bad input fails at once
    try:
        # one compiled program for the Verilog, the cycle model and the tracer
        prog = compile_spec(spec, lanes, fuse_pools=fuse_pools, overlap_load=overlap_load)
    except ValueError as e:
        raise UserError(str(e)) from None
    work = Path(out) / work_name(spec_dir, lanes, fuse_pools, batch, dsp, overlap_load)
    vpath, manifest = prepare_verilog(spec, spec_dir, lanes, work, program=prog, batch=batch, dsp=dsp)
    if verilog is not None:  # a given (e.g. deliberately corrupted) copy of the Verilog
        vpath = Path(verilog)
    if simulator == "icarus":
        vpath = icarus_copy(vpath)
    run_dir = work / simulator
    pw = next(p["width"] for p in manifest["ports"] if p["name"] == "o__payload")
    beats, sw = prog.output_beats, manifest["widths"]["score"]
    widths = (beats, sw, pw)
    n_groups = -(-len(images) // batch)  # accelerator runs
    jobs = max(1, min(jobs, n_groups))
    per_process = -(-n_groups // jobs)
    duts = max(1, min(duts or default_duts(simulator, per_process), per_process))
    emulator = Emulator(spec)
    golden = emulator.run(images, keep=False)  # classes and scores; the layers' tensors only for a trace
    sched = schedule(spec, lanes, program=prog)
    model, model_first = sched["cycles_per_image"], sched["latency_cycles"]

    def harness(n_duts: int) -> Path:
        hpath = work / f"{HARNESS}_x{n_duts}.v"
        htext = harness_verilog(manifest["top"], pw, prog.image_bytes, beats, n_duts, batch=batch)
        if not hpath.is_file() or hpath.read_text() != htext:
            atomic_write_text(hpath, htext)
        return hpath

    t0 = time.perf_counter()
    tb = build(simulator, [harness(duts), vpath], HARNESS, run_dir, waves=waves)
    build_s = time.perf_counter() - t0

    def simulate(sel: np.ndarray, test_dir: Path, n_duts: int, bench, trace: bool = False) -> str | None:
        """Run the testbench on images[sel] in its own directory; golden vectors for exactly those."""
        test_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*test_dir.glob("results.txt*"), test_dir / "result.json"]:
            stale.unlink(missing_ok=True)
        # N x C x H x W, C-contiguous: each image channel by channel in raster order, the stream's order
        atomic_write_bytes(test_dir / "images.bin", np.ascontiguousarray(images[sel], dtype=np.uint8).tobytes())
        buf = io.BytesIO()
        tensors = emulator.run(images[sel]).tensors if trace else {}
        np.savez(buf, **tensors, scores=golden.scores[sel], predictions=golden.predictions[sel])
        atomic_write_bytes(test_dir / "golden.npz", buf.getvalue())
        cfg = {"count": len(sel), "duts": n_duts, **({"batch": batch} if batch != 1 else {}),
               "results": str((test_dir / "results.txt").resolve()),
               "golden": str((test_dir / "golden.npz").resolve()), "result": str((test_dir / "result.json").resolve()),
               "beats": beats, "score_width": sw, "payload_width": pw, "model_cycles": model,
               "model_first": model_first,
               "trace": trace, "layers": layer_table(prog) if trace else []}
        atomic_write_text(test_dir / "config.json", json.dumps(cfg))
        plusargs = [f"+images={(test_dir / 'images.bin').resolve()}", f"+results={(test_dir / 'results.txt').resolve()}",
                    f"+count={len(sel)}"]
        return bench.run_test("sim.tb_accelerator", test_dir, env={"LENET_SIM_CONFIG": str((test_dir / "config.json").resolve())},
                              plusargs=plusargs)

    # shards of consecutive images (whole groups of the accelerator batch: only the last group of
    # all is short) run in parallel simulator processes, one build shared
    shards = [_Shard(k, np.arange(g[0] * batch, min((g[-1] + 1) * batch, len(images))), run_dir / f"shard{k}",
                     duts, golden, model, batch, model_first)
              for k, g in enumerate(np.array_split(np.arange(n_groups), jobs))]
    bar = Progress(len(images), "image", f"sim {spec_dir.name} {simulator}", enabled=progress)
    stop = threading.Event()
    streams = [st for s in shards for st in s.streams]

    def watch() -> None:
        while not stop.wait(POLL_SECONDS):
            for s in shards:
                s.poll(*widths)
            bar.set(sum(s.done for s in shards), mismatches=sum(st.board.mismatches for st in streams))

    watcher = threading.Thread(target=watch, daemon=True)
    t1 = time.perf_counter()
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=jobs) as ex:
            errors = list(ex.map(lambda s: simulate(s.sel, s.directory, duts, tb), shards))
    except KeyboardInterrupt:  # Ctrl-C reaches the simulators too: score what they finished, keep it
        errors = ["interrupted"] * len(shards)
    finally:
        stop.set()
        watcher.join()
    sim_s = time.perf_counter() - t1
    for s, err in zip(shards, errors):
        s.poll(*widths)
        s.error = err or (None if s.done == len(s.sel) else f"the {simulator} run ended after {s.done} of {len(s.sel)} images")
    bar.set(sum(s.done for s in shards), mismatches=sum(st.board.mismatches for st in streams))
    bar.close()

    scored = combine(streams, len(images))
    done, cycles, first, classes = scored["images"], scored["cycles"], scored["first_mismatch"], scored["classes"]
    runs = scored["run_cycles"]
    # cycles_per_image: what each image reported, its accelerator run's cycles (with a batch: the
    # batch's), after each copy's first run (which with an overlapped load takes its latency)
    steady = scored["steady_cycles"] or cycles
    result = {"spec": str(spec_dir), "simulator": simulator, "lanes": lanes, "fuse_pools": fuse_pools,
              "overlap_load": prog.overlap, "images": done,
              "mismatches": scored["mismatches"], "first_mismatch": first,
              "cycles_per_image": _one_or_all(steady),
              "cycles_per_image_model": model, "cycles_match_model": bool(cycles) and scored["cycles_match_model"],
              "latency_cycles": sorted(set(scored["first_cycles"])), "latency_cycles_model": model_first,
              "sim_seconds": round(sim_s, 2), "build_seconds": round(build_s, 2),
              "images_per_s": round(done / sim_s, 2) if sim_s else None,
              "cycles_per_s": round(sum(runs) / sim_s) if sim_s else None,
              "jobs": jobs, "duts": duts, "verilog": str(vpath)}
    if batch != 1 or dsp != "auto":
        result.update(batch=batch, dsp=dsp, runs=len(runs),
                      cycles_per_batch=_one_or_all(scored["steady_run_cycles"] or runs),
                      cycles_per_batch_model=model)
    failed = [s for s in shards if s.error]
    if failed:
        partial = run_dir / "partial.json"
        atomic_write_text(partial, json.dumps({**result, "images_requested": len(images),
                                               "classes": classes}))
        s = failed[0]
        raise UserError(f"{s.error}: images {int(s.sel[0])}..{int(s.sel[-1])} (process {s.k}) stopped after "
                        f"{s.done}; the {done} of {len(images)} images scored so far "
                        f"({result['mismatches']} mismatches) are in {partial}")
    if first is not None and trace_on_mismatch:
        n = first["image"]
        traced = build(simulator, [harness(1), vpath], HARNESS, run_dir / "trace", public=True)
        err = simulate(np.array([n]), run_dir / "trace" / "run", 1, traced, trace=True)
        tpath = run_dir / "trace" / "run" / "result.json"
        if err or not tpath.is_file():
            raise UserError(f"the tracer run of image {n} failed ({err or 'no result'}); see {tpath.parent / 'sim.log'}")
        first["trace"] = json.loads(tpath.read_text()).get("trace")
    if waves:
        cand = sorted(run_dir.rglob("*.fst")) + sorted(run_dir.rglob("*.vcd"))
        result["waves"] = str(cand[0]) if cand else None
    atomic_write_text(run_dir / "result.json", json.dumps({**result, "classes": classes}))
    return result
