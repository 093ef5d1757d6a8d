"""``python -m hw.synth_report``: the table of synthesis results (README, ``make synth``).

Reads ``python -m hw.synth --json`` lines from stdin (or the ``result.json`` files under
``--results DIR``) and writes a Markdown table and the same rows as JSON next to it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.util import UserError, atomic_write_text, cli

COLUMNS = [("target", "target"), ("preset", "spec"), ("lanes", "lanes"), ("batch", "batch"), ("luts", "LUT4"), ("ffs", "FF"),
           ("dsps", "DSP"), ("brams", "BRAM"), ("sprams", "SPRAM"), ("clock_mhz", "clock MHz (met)"),
           ("fmax_mhz", "Fmax MHz"), ("cycles_per_image", "cycles/image"), ("images_per_s", "images/s")]


def load_results(lines=None, results_dir=None) -> list[dict]:
    rows = []
    if results_dir is not None:
        rows = [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("*/*/result.json"))]
    for line in lines or []:
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return [r for r in rows if r.get("cycles_per_image")]


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, float):
        return f"{v:,.1f}" if v >= 100 else f"{v:g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(rows: list[dict]) -> str:
    L = ["| " + " | ".join(h for _, h in COLUMNS) + " | design |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        kind = "board top (UART)" if r.get("board") else "core"
        L.append("| " + " | ".join(_cell(r.get(k)) for k, _ in COLUMNS) + f" | {kind} |")
    return "\n".join(L) + "\n"


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hw.synth_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=None, help="read build/synth-style result.json files from this directory")
    p.add_argument("--out", default="build/reports/synth.md")
    args = p.parse_args(argv)
    rows = load_results(None if args.results else sys.stdin.readlines(), args.results)
    if not rows:
        raise UserError("no synthesis results (run python -m hw.synth ... --json)")
    out = Path(args.out)
    text = "# Synthesis results\n\n" + markdown(rows)
    atomic_write_text(out, text)
    atomic_write_text(out.with_suffix(".json"), json.dumps(rows, indent=1) + "\n")
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
