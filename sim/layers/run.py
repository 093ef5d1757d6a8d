# amaranth: UnusedElaboratable=no
# (tops are built to read their ports and stimulus too, not only to be emitted)
"""Build and run a layer top: emit its Verilog, build it (:mod:`sim.build`), run :mod:`sim.tb_layers`
on its schedule, and the ``python -m sim.layers`` command line."""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
from amaranth.lib import wiring

from model.util import UserError, atomic_write_bytes, atomic_write_text, cli

from ..build import SIMULATORS, build, check_simulator, icarus_copy
from .core import LAYERS, get_layer

PERIOD_NS = 10
RESET_CYCLES = 2
OUT = "build/sim-layers"

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
    from . import __doc__ as package_doc

    p = argparse.ArgumentParser(prog="python -m sim.layers", description=package_doc.split("\n\n")[0])
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
