"""``python -m hw.generate --spec DIR [--lanes P] [--batch B] [--dsp auto|rtl|sb_mac16] --out DIR``:
Verilog + a JSON manifest.

The Verilog is a pure function of (spec, lanes, pool fusion, batch, dsp): the same inputs give the
same bytes. It is converted without a platform, so ``--dsp auto`` is ``rtl`` (plain products);
``sb_mac16`` instantiates iCE40 SB_MAC16 blocks (images 2j and 2j + 1 of a batch share one), which
the simulators run with Yosys' model (:func:`hw.dsp.sim_sources`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

from model.util import UserError, atomic_write_text, cli
from quantize import spec as qspec

from .accelerator import Accelerator
from .emit import emit_verilog
from .perf import schedule
from .program import Program, compile_spec


def top_name(spec) -> str:
    preset = str(spec.provenance.get("preset") or "custom")
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{spec.network}_{preset}")


def ports_of(verilog_text: str, name: str) -> list[dict]:
    """Port list (name, direction, width) read back from the emitted module header."""
    start = verilog_text.index(f"module {name}(")
    verilog_text = verilog_text[start:verilog_text.index("endmodule", start)]
    ports = []
    for m in re.finditer(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:signed\s+)?(?:\[(\d+):0\]\s+)?\\?([\w$.]+)\s*;",
                         verilog_text, re.M):
        ports.append({"name": m.group(3), "direction": m.group(1), "width": int(m.group(2) or 0) + 1})
    return ports


DSP_CHOICES = ("auto", "rtl", "sb_mac16")


def generate(spec, lanes: int, name: str | None = None, program: Program | None = None,
             fuse_pools: bool = False, batch: int = 1, dsp: str = "auto",
             overlap_load: bool = False) -> tuple[str, dict]:
    """Return (verilog, manifest) for ``spec`` with ``lanes`` MAC lanes. ``program`` (the spec
    compiled for ``lanes``) is used instead of compiling the spec again; else it is compiled with
    ``fuse_pools`` and ``overlap_load``. ``batch`` images in lockstep and ``dsp`` as in :class:`Accelerator`."""
    if dsp not in DSP_CHOICES:
        raise UserError(f"dsp must be one of {', '.join(DSP_CHOICES)}, got {dsp!r}")
    try:
        prog = program if program is not None else compile_spec(spec, lanes, fuse_pools=fuse_pools,
                                                                        overlap_load=overlap_load)
        dut = Accelerator(spec, lanes, program=prog, batch=batch, dsp=dsp)
        name = name or top_name(spec)
        text = emit_verilog(dut, name)
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    sched = schedule(spec, lanes, program=prog)
    c, h, w = prog.image_shape
    manifest = {
        "top": name, "lanes": lanes, "network": spec.network, "preset": spec.provenance.get("preset"),
        "spec_sha256": spec.provenance.get("checkpoint_sha256"),
        "verilog_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "ports": ports_of(text, name),
        "streams": {"i": f"{prog.image_bytes} uint8 pixels of a {c} x {h} x {w} image, channel by channel, "
                         "each in raster order",
                    "o": f"{prog.output_beats} beats: class, then scores 0..{prog.classes - 1} "
                         "(o__payload: value = low bits, last = top bit)"}
        if batch == 1 else
        {"i": f"{prog.image_bytes} beats of {batch} uint8 pixels (image b in bits 8b..8b+7) of {batch} "
              f"{c} x {h} x {w} images, channel by channel, each in raster order",
         "o": f"{prog.output_beats} beats of {batch} values (value b in bits b*w..b*w+w-1, w = "
              f"{max(prog.score_width, 5)}; last = top bit): the classes, then scores 0..{prog.classes - 1}"},
        "image_shape": [c, h, w], "image_bytes": prog.image_bytes, "classes": prog.classes,
        "output_beats": prog.output_beats, "fused_pools": [f"{lp.name}+{lp.pool.name}" for lp in prog.fused],
        "cycles_per_image": sched["cycles_per_image"], "macs_per_image": sched["macs_per_image"],
        "overlap_load": prog.overlap, "latency_cycles": sched["latency_cycles"],
        **({} if batch == 1 and dsp == "auto" else {"batch": batch, "dsp": dsp, "cycles_per_batch": sched["cycles_per_image"]}),
        "utilisation_ratio": sched["utilisation_ratio"], "cycle_model": sched["layers"],
        "memories": {"feature_banks": lanes, "feature_words_per_bank": prog.fm_words, "feature_width": prog.fm_width,
                     "tile": [prog.R, prog.C],
                     "tap_words": len(prog.tap_words), "dense_words": len(prog.dense_words),
                     "dense_width": lanes * prog.weight_width, "bias_words": len(prog.bias_words),
                     "bias_width": prog.acc_width,
                     "activation_rom": len(prog.lut_rom)},
        "widths": {"weight": prog.weight_width, "feature": prog.fm_width, "acc": prog.acc_width,
                   "score": prog.score_width},
    }
    return text, manifest


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hw.generate", description="Generate the accelerator's Verilog from a QuantSpec.")
    p.add_argument("--spec", required=True, help="QuantSpec directory")
    p.add_argument("--lanes", type=int, default=8, help="parallel MAC lanes (neurons computed at once)")
    p.add_argument("--out", default="build/verilog", help="output directory")
    p.add_argument("--name", default=None, help="top module name (default NETWORK_PRESET)")
    p.add_argument("--fuse-pools", action="store_true", help="run each fusable pool in its conv layer's drain")
    p.add_argument("--overlap-load", action="store_true",
                   help="load each image while the one before runs (its own feature-memory region)")
    p.add_argument("--batch", type=int, default=1,
                   help="images in lockstep (1..64): B pixels per i beat, B values per o beat, the cycles of one image")
    p.add_argument("--dsp", choices=DSP_CHOICES, default="auto",
                   help="the batch's product pairs: sb_mac16 (iCE40 SB_MAC16 Instances), rtl (plain products); "
                        "auto = rtl here (no platform)")
    args = p.parse_args(argv)
    if not 1 <= args.batch <= 64:
        raise UserError(f"--batch must be in 1..64, got {args.batch}")
    spec = qspec.load(args.spec)
    text, manifest = generate(spec, args.lanes, args.name, fuse_pools=args.fuse_pools, batch=args.batch,
                              dsp=args.dsp, overlap_load=args.overlap_load)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    vpath = out / f"{manifest['top']}.v"
    atomic_write_text(vpath, text)
    atomic_write_text(out / f"{manifest['top']}.json", json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {vpath} ({len(text.splitlines()):,} lines, {args.lanes} lanes, "
          + (f"{manifest['cycles_per_image']:,} cycles/image" if args.batch == 1 else
             f"batch {args.batch}, dsp {args.dsp}, {manifest['cycles_per_batch']:,} cycles/batch")
          + f") and {manifest['top']}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
