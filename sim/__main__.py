"""``python -m sim --spec DIR [--images N | all | FILE.npy] [--split own|mnist|usps|digits480]
[--simulator verilator|icarus] [--batch B] [--dsp auto|rtl|sb_mac16] [--jobs J] [--json]``

Runs the emitted Verilog of a QuantSpec on its network's test digits (MNIST's, fitted to the spec's
input shape; the 1989 networks' own splits, see model.usps) or a uint8 N x C x H x W .npy in a real
simulator and compares class and scores with the emulator, bit for bit. Progress (images done,
images/s, mismatches so far) goes to stderr: a bar on a terminal, a plain line every 10 s otherwise.
"""
from __future__ import annotations

import argparse
import json
import os

from model.util import UserError, cli
from tasks import executor

from .harness import MAX_BATCH
from .runner import DSP_CHOICES, SIMULATORS, run



def _apply_config(args) -> None:
    """Fill in lanes, batch, pool fusion, load overlap and DSP pairs: from ``--config TARGET`` (its
    shipped configuration for the spec's preset), else the defaults; explicit options win."""
    ship = {"lanes": 8, "batch": 1, "fuse_pools": False, "overlap_load": False}
    dsp = "auto"
    if args.config is not None:
        from hw.targets import TARGETS, shipped, sim_dsp
        from quantize import spec as qspec

        if args.config not in TARGETS:
            raise UserError(f"--config {args.config!r}: choose one of {', '.join(TARGETS)}")
        ship = shipped(args.config, qspec.load(args.spec).provenance.get("preset"))
    args.lanes = args.lanes if args.lanes is not None else ship["lanes"]
    args.batch = args.batch if args.batch is not None else ship["batch"]
    if args.config is not None:
        dsp = sim_dsp(args.config, args.batch)
    args.fuse_pools = args.fuse_pools or ship["fuse_pools"]
    args.overlap_load = args.overlap_load or ship["overlap_load"]
    args.dsp = args.dsp or dsp


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sim", description=__doc__.split("\n\n")[1])
    p.add_argument("--spec", required=True, help="QuantSpec directory")
    p.add_argument("--images", default="100",
                   help="N (the first N test digits of --split), all (every one), or a uint8 .npy file "
                        "(N x C x H x W, the spec's input)")
    p.add_argument("--split", default="own",
                   help="the test digits: own (default: the network's: the 2,007-digit USPS stand-in for zip1989, "
                        "the 160-digit set for net1..net5, MNIST's 10,000 otherwise), mnist, usps or digits480")
    p.add_argument("--simulator", default=os.environ.get("SIM") or "verilator",
                   help="verilator (default, or $SIM) or icarus")
    p.add_argument("--lanes", type=int, default=None, help="MAC lanes (default 8, or --config's)")
    p.add_argument("--config", default=None, metavar="TARGET",
                   help="simulate TARGET's shipped configuration for this spec (hw.targets.SHIPPED: lanes, batch, "
                        "fused pools, overlapped load; on iCE40 the SB_MAC16 pairs of a batch); explicit "
                        "--lanes/--batch/--fuse-pools/--overlap-load/--dsp add to it")
    p.add_argument("--fuse-pools", action="store_true",
                   help="compile with each fusable pool in its conv layer's drain (hw.program.compile_spec)")
    p.add_argument("--overlap-load", action="store_true",
                   help="compile with each image loaded while the one before runs (hw.program.compile_spec); "
                        "each process's first image then takes the model's latency, the others its cycles/image")
    p.add_argument("--batch", type=int, default=None,
                   help="images per accelerator run, in lockstep (1..64; default 1): groups of B images, the last "
                        "padded with blank ones (not scored); cycles per batch = the model's for one image")
    p.add_argument("--dsp", choices=DSP_CHOICES, default=None,
                   help="the batch's product pairs: sb_mac16 (iCE40 SB_MAC16 Instances, simulated with Yosys' "
                        "model) or rtl; auto = rtl (the Verilog has no platform)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="simulator processes in parallel (images split between them; default: up to 2)")
    p.add_argument("--duts", type=int, default=None,
                   help="accelerator copies per simulator process (default: 4 or 8 in Verilator, 1 in Icarus)")
    p.add_argument("--waves", action="store_true", help="write a waveform (FST, with Icarus or Verilator)")
    p.add_argument("--data", default=None, help="MNIST directory")
    p.add_argument("--out", default="build/sim")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    executor.add_arguments(p)
    p.add_argument("--shards", type=int, default=None,
                   help="--executor dask: tasks to split the images into (default 2 per worker, at most 2,000 "
                        "images each)")
    p.add_argument("--report", default=None, metavar="FILE",
                   help="append the result as one JSON line to FILE (read by python -m sim.summary)")
    args = p.parse_args(argv)
    if args.simulator not in SIMULATORS:
        raise UserError(f"unknown --simulator {args.simulator!r} (icarus or verilator)")
    if not os.path.isdir(args.spec):
        raise UserError(f"--spec {args.spec}: no such directory (make quantize builds build/quant/lenet5-q8)")
    _apply_config(args)
    if not 1 <= args.batch <= MAX_BATCH:
        raise UserError(f"--batch must be in 1..{MAX_BATCH} (images per accelerator run), got {args.batch}")
    if not os.path.isdir(args.spec):
        raise UserError(f"--spec {args.spec}: no such directory (make quantize builds build/quant/lenet5-q8)")
    from quantize import spec as qspec

    if args.images.isdigit() or args.images == "all":
        n = None if args.images == "all" else int(args.images)
        if n is not None and n < 1:
            raise UserError("--images must be at least 1")
        from quantize.evaluate import test_images

        images = test_images(qspec.load(args.spec), args.split, args.data)[1].images[:n]
    else:
        from quantize.run import load_images

        images = load_images(args.images, qspec.load(args.spec).input_shape)
    if args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    if args.duts is not None and not 1 <= args.duts <= 64:
        raise UserError("--duts must be in 1..64")
    if args.shards is not None and args.shards < 1:
        raise UserError("--shards must be at least 1")
    if args.executor == "local" and not args.scheduler:
        res = run(args.spec, images, args.simulator, args.lanes, args.waves, args.out, jobs=args.jobs,
                  progress=not args.quiet, duts=args.duts, fuse_pools=args.fuse_pools, batch=args.batch, dsp=args.dsp,
                  overlap_load=args.overlap_load)
    else:
        from .shards import run_distributed

        with executor.make(args.executor, args.scheduler, args.jobs) as ex:  # local + --scheduler: refused
            res = run_distributed(args.spec, images, args.simulator, args.lanes, ex, args.out, duts=args.duts,
                                  shards=args.shards, progress=not args.quiet, fuse_pools=args.fuse_pools,
                                  batch=args.batch, dsp=args.dsp, overlap_load=args.overlap_load)
    if args.report:
        os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
        with open(args.report, "a") as f:
            f.write(json.dumps(res) + "\n")
    if args.json:
        print(json.dumps(res))
    else:
        batch = res.get("batch", 1)
        cycles = (f"{res['cycles_per_image']} cycles/image (model {res['cycles_per_image_model']}), " if batch == 1 else
                  f"batch {batch} (dsp {res['dsp']}, {res['runs']} runs): {res['cycles_per_batch']} cycles/batch "
                  f"(model {res['cycles_per_batch_model']}), ")
        print(f"{res['simulator']}: {res['images'] - res['mismatches']}/{res['images']} images bit-exact, {cycles}"
              f"{res['images_per_s']} images/s ({res['cycles_per_s']:,} cycles/s) with {res['jobs']} process{'es' if res['jobs'] != 1 else ''}"
              + (f" ({res['shards']} shards on Dask)" if res.get("executor") == "dask" else "") + ", "
              f"{res['sim_seconds']} s + {res['build_seconds']} s build")
        if res["first_mismatch"]:
            print("first mismatch: " + json.dumps(res["first_mismatch"]))
    return 1 if res["mismatches"] or not res["cycles_match_model"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
