"""``python -m sim.summary DIR``: the main job's summary from the JSON reports ``make all`` writes.

Reads ``DIR/float.jsonl`` (``python -m model.evaluate --json``, one line per network),
``DIR/quant.jsonl`` (``python -m quantize.evaluate --json``, one line per spec) and
``DIR/sim.jsonl`` (``python -m sim --report``, one line per simulation), prints one short table,
and exits non-zero if a simulation differs from the emulator, misses the cycle model or is missing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from model.util import UserError, cli


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{k}: not a JSON line ({e})") from None
    return out


def summary(reports: Path) -> tuple[str, bool]:
    """The summary text and whether everything the job checks holds."""
    floats, quants, sims = (_lines(reports / f) for f in ("float.jsonl", "quant.jsonl", "sim.jsonl"))
    if not (floats or quants or sims):
        raise UserError(f"{reports}: no reports (float.jsonl, quant.jsonl, sim.jsonl); run make all")
    rows = ["", "summary (build/reports/)", ""]
    for r in floats:
        rows.append(f"  float {r['arch']:<8} test error {100 * r['error_rate']:.2f}% ({r['errors']} of {r['images']:,})")
    for r in quants:
        rows.append(f"  {r['network']} {r['preset']:<6} bit-exact emulator: test error {100 * r['error_rate']:.2f}% "
                    f"({r['errors']} of {r['images']:,})")
    ok = bool(sims)
    for r in sims:
        exact = r["images"] - r["mismatches"]
        good = r["mismatches"] == 0 and r["cycles_match_model"]
        ok &= good
        batch = r.get("batch", 1)
        rows.append(f"  RTL {Path(r['spec']).name} ({r['simulator']}, {r['lanes']} lanes"
                    + (f", batch {batch}" if batch != 1 else "") + f"): {exact:,}/{r['images']:,} "
                    f"images bit-exact, {r['cycles_per_image']} cycles/{'image' if batch == 1 else 'batch'} "
                    f"(model {r['cycles_per_image_model']}), "
                    f"{r['images_per_s']} images/s" + ("" if good else "  <-- FAILED"))
    if not sims:
        rows.append("  RTL: no simulation result (the simulation failed; see its error above)")
    rows.append("")
    rows.append("  all checks passed" if ok else "  SOME CHECKS FAILED")
    return "\n".join(rows), ok


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sim.summary", description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="?", default="build/reports", help="directory of the JSON reports")
    args = p.parse_args(argv)
    text, ok = summary(Path(args.reports))
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
