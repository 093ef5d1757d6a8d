"""Cycle model of the accelerator, derived from the compiled program alone (``hw/program.py``).

One image, streams never stalling::

    LOAD      C * Hp * Wp  one feature-memory write per cycle over the padded input (an overlapped
                           program, ``--overlap-load``: hidden under the previous image, except
                           for the first image of a stream)
    per layer:
      INIT             1  layer registers
      FILL      border    the padding of the layer's input (none for the first layer: LOAD writes it)
      ISSUE          sum of taps over the layer's groups (one tap per cycle, all lanes at once; a
                           conv map's taps of weight 0 are not issued: they add nothing)
      WAIT           sum over groups after the first of max(0, D - taps): a group of fewer taps
                           than its drain's D turns waits for the drain (one turn per cycle) to keep
                           up; D = lanes, or with a fused pool lanes + 3 + (R/k)(C/k)
                           (:func:`hw.program.drain_turns`)
      GAP        D* + 7  the last group's drain lands before the next layer reads (D* = the
                           program's longest drain: lanes + 7 without fused pools)
    FINISH             1
    OUTPUT   1 + classes  the class, then one score per class
    DONE               1

A group is an R x C tile of output positions of one map (conv mode; ceil(h/R) * ceil(w/C) tiles
per map, or wrapped, ceil(ceil(h/R) * w / C) groups: :mod:`hw.wrap`) or ``lanes`` neurons (dense mode); its taps are the map's weights (conv: table inputs x
K x K; pools: k x k) or the layer's inputs. A pool fused into its conv's drain
(``compile_spec(..., fuse_pools=True)``) is no layer here: it costs its conv's longer drain only.
"""
from __future__ import annotations

import argparse
import json

from model.util import UserError, cli

from .program import Program, compile_spec, drain_turns, layer_gap


def layer_cycles(lp, lanes: int, gap: int | None = None) -> dict:
    """One layer's cycles; ``gap`` = INIT + GAP (default :func:`layer_gap` of ``lanes``)."""
    gap = layer_gap(lanes) if gap is None else gap
    group_taps = lp.group_taps
    issue = sum(group_taps)
    d = drain_turns(lp, lanes)
    wait = sum(max(0, d - t) for t in group_taps[1:])
    macs = lp.spec.macs() + (lp.pool.spec.macs() if lp.pool else 0)
    return {"layer": lp.name + (f"+{lp.pool.name}" if lp.pool else ""), "mode": lp.mode, "groups": len(group_taps),
            "issue": issue, "wait": wait, "drain": d,
            "fill": lp.fill_count, "overhead": gap, "macs": macs,  # INIT (1) + GAP
            "macs_skipped": lp.zero_taps * lp.n_out,  # zero weights: taps not issued
            "cycles": lp.fill_count + issue + wait + gap}


def program_schedule(prog: Program, macs: int) -> dict:
    lanes = prog.lanes
    per_layer = [layer_cycles(lp, lanes, prog.gap) for lp in prog.layers]
    latency = prog.load_cycles + sum(l["cycles"] for l in per_layer) + 1 + prog.output_beats + 1
    # overlapped: the next image loads while this one runs, and starts right after DONE
    total = latency - prog.load_cycles if prog.overlap else latency
    ideal = max(macs, 1) / lanes
    return {"lanes": lanes, "cycles_per_image": total, "latency_cycles": latency, "overlap": prog.overlap,
            "macs_per_image": macs, "macs_skipped": sum(l["macs_skipped"] for l in per_layer),
            "fm_words": prog.fm_words,
            "fused": [f"{lp.name}+{lp.pool.name}" for lp in prog.fused],
            "ideal_cycles": round(ideal, 1), "utilisation_ratio": round(total / ideal, 4),
            "mac_cycles": sum(l["issue"] for l in per_layer), "layers": per_layer}


def schedule(spec, lanes: int, program: Program | None = None, fuse_pools: bool = False,
             overlap_load: bool = False) -> dict:
    prog = program if program is not None else compile_spec(spec, lanes, fuse_pools=fuse_pools,
                                                             overlap_load=overlap_load)
    return program_schedule(prog, spec.macs())


def cycles_per_image(spec, lanes: int, program: Program | None = None, fuse_pools: bool = False,
                     overlap_load: bool = False) -> int:
    """Cycles per image of a stream of images, streams never stalling: from the first loading cycle
    to ``done`` for one image; an overlapped program (``Program.overlap``) takes each image after the
    first in that many fewer cycles than :func:`latency_cycles`, its load hidden under the previous image."""
    return schedule(spec, lanes, program, fuse_pools, overlap_load)["cycles_per_image"]


def latency_cycles(spec, lanes: int, program: Program | None = None, fuse_pools: bool = False,
                   overlap_load: bool = False) -> int:
    """Cycles from the first loading cycle to ``done`` for an image that starts with the accelerator
    idle (the first of a stream; with an overlapped program the same as ``cycles_per_image`` plus
    the load)."""
    return schedule(spec, lanes, program, fuse_pools, overlap_load)["latency_cycles"]


@cli
def main(argv=None):
    from quantize import spec as qspec

    p = argparse.ArgumentParser(prog="python -m hw.perf", description="Cycle model of the accelerator.")
    p.add_argument("--spec", required=True)
    p.add_argument("--lanes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--fmax", type=float, default=None, help="MHz, to print images/s")
    p.add_argument("--fuse-pools", action="store_true", help="run each fusable pool in its conv layer's drain")
    p.add_argument("--batch", type=int, default=1, help="images in lockstep: the cycles are per batch, images/s x B")
    p.add_argument("--overlap-load", action="store_true",
                   help="load the next image while the current one runs (its own feature-memory region)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.batch <= 64:
        raise UserError(f"--batch must be 1..64, got {args.batch}")
    spec = qspec.load(args.spec)
    rows = []
    for n in args.lanes:
        try:
            s = schedule(spec, n, fuse_pools=args.fuse_pools, overlap_load=args.overlap_load)
        except ValueError as e:
            raise UserError(str(e)) from None
        s["batch"], s["macs_per_cycle"] = args.batch, n * args.batch  # per image: the cycles of one image
        if args.fmax:
            s["images_per_s"] = round(args.batch * args.fmax * 1e6 / s["cycles_per_image"], 1)
        rows.append(s)
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0]))
    else:
        for s in rows:
            print(f"lanes {s['lanes']:3}" + (f" x batch {args.batch}" if args.batch > 1 else "")
                  + f": {s['cycles_per_image']:8,} cycles/" + ("batch" if args.batch > 1 else "image")
                  + f", {s['macs_per_image']:,} MACs"
                  + (f" ({s['macs_skipped']:,} of weight 0 skipped)" if s["macs_skipped"] else "") + ", "
                  f"{s['cycles_per_image'] / s['ideal_cycles']:.3f} x MACs/lanes, {s['fm_words']:,} feature words/bank"
                  + (f", fused {' '.join(s['fused'])}" if s["fused"] else "")
                  + (f", load overlapped (first image {s['latency_cycles']:,})" if s["overlap"] else "")
                  + (f", {s['images_per_s']:,.0f} images/s at {args.fmax} MHz" if args.fmax else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
