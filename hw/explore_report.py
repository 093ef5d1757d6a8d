"""The grid and the report of ``python -m hw.explore``.

The grid: JSON, ``spec``/``target``/``lanes``/``batch``/``freq`` lists (their product; ``groups``: a
list of such products, their union), ``seed``, ``sim_images``; checked before anything runs. The
report: report.md, results.json, results.csv, PNG plots per target (images/s against LUT4 and
against block RAM, the Pareto front marked), failures with their reason and the task times with an
estimate of the wall time on a 16-worker cluster."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from model.util import UserError, atomic_path, atomic_write_text, load_json_object  # noqa: E402

# -- the grid ----------------------------------------------------------------------------------------
POINT_KEYS = ("spec", "target", "lanes", "batch", "freq", "fuse_pools", "overlap_load")
GRID_KEYS = set(POINT_KEYS) | {"seed", "sim_images", "groups"}
#: ``make explore``: 15 points around the shipped configurations (:data:`hw.targets.SHIPPED`), which are
#: all in it; what they take is in the README (docs/cluster.md)
Q8, ANNA = "build/quant/lenet5-q8", "build/quant/lenet5-anna"
_FAST = {"fuse_pools": [True], "overlap_load": [True]}
DEFAULT_GRID = {
    "seed": 1,
    "sim_images": 100,
    "groups": [
        # iCE40 UP5K board top: 8 SB_MAC16 (two 8x8 products each), 30 block RAMs, the weights in the 4 SPRAMs
        {"spec": [Q8], "target": ["ice40-up5k"], "lanes": [8], "batch": [1, 2], "freq": [29.25], **_FAST},
        {"spec": [Q8], "target": ["ice40-up5k"], "lanes": [8], "freq": [29.25]},  # what fusing and overlapping buy
        {"spec": [Q8], "target": ["ice40-up5k"], "lanes": [4, 16], "freq": [29.25], **_FAST},
        {"spec": [ANNA], "target": ["ice40-up5k"], "lanes": [8], "batch": [2, 3], "freq": [29], **_FAST},
        # ECP5-25F (28 multipliers, 56 block RAMs): more lanes against a batch of 2 (shipped at 70 MHz)
        {"spec": [Q8], "target": ["ecp5-25k"], "lanes": [8], "freq": [75]},
        {"spec": [Q8, ANNA], "target": ["ecp5-25k"], "lanes": [16, 32], "freq": [50], **_FAST},
        {"spec": [Q8], "target": ["ecp5-25k"], "lanes": [8], "batch": [2], "freq": [50, 70], **_FAST},
        # ECP5-85F: the shipped batch of 19 images x 8 lanes (152 of its 156 multipliers)
        {"spec": [Q8], "target": ["ecp5-85k"], "lanes": [8], "batch": [19], "freq": [59], **_FAST},
    ],
}


def _list(v):
    return v if isinstance(v, list) else [v]


def parse_ints(text: str, flag: str) -> list[int]:
    """``1,2,4,8``: positive integers."""
    out = []
    for part in str(text).split(","):
        try:
            v = int(part.strip())
        except ValueError:
            v = None
        if v is None or v < 1:
            raise UserError(f"{flag} {text}: {part.strip()!r} is not a positive integer")
        out.append(v)
    return out


def check_lanes(values, flag="lanes") -> list[int]:
    from .program import MAX_LANES

    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UserError(f"{flag}: {v!r} is not a positive integer")
        if v > MAX_LANES or v & (v - 1):
            raise UserError(f"{flag}: {v} lanes; lanes must be a power of two in 1..{MAX_LANES}")
    if not values:
        raise UserError(f"{flag}: no values")
    return list(values)


def check_batch(values, flag="batch") -> list[int]:
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UserError(f"{flag}: {v!r} is not a positive integer")
    if not values:
        raise UserError(f"{flag}: no values")
    return list(values)


def parse_freqs(text: str) -> list[float | None]:
    """``27,50`` MHz; ``board``: the board's oscillator (no PLL)."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if part in ("board", "default"):
            out.append(None)
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise UserError(f"--freq {text}: {part!r} is not a clock in MHz (or 'board')") from None
    return check_freqs(out, "--freq")


def check_freqs(values, flag="freq") -> list[float | None]:
    for v in values:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1000):
            raise UserError(f"{flag}: {v!r} is not a clock in MHz (0 < f <= 1000, or null for the board's)")
    if not values:
        raise UserError(f"{flag}: no values")
    return [None if v is None else float(v) for v in values]


def check_targets(values, flag="target") -> list[str]:
    from .targets import TARGETS

    for t in values:
        if t not in TARGETS:
            raise UserError(f"{flag}: unknown target {t!r}; choose from {', '.join(TARGETS)}")
    if not values:
        raise UserError(f"{flag}: no values")
    return list(values)


def load_grid(path: str | None) -> dict:
    """The grid of a JSON file (the default grid without one), checked: one line on a bad key or value."""
    grid = DEFAULT_GRID if path is None else load_json_object(path, "--grid")
    where = "default grid" if path is None else f"--grid {path}"
    groups = grid.get("groups")
    for g in [grid] + (groups if isinstance(groups, list) else []):
        if not isinstance(g, dict):
            raise UserError(f"{where}: each of groups must be an object")
        unknown = set(g) - (GRID_KEYS if g is grid else set(POINT_KEYS))
        if unknown:
            known = GRID_KEYS if g is grid else POINT_KEYS
            raise UserError(f"{where}: unknown key {sorted(unknown)[0]!r} "
                            f"({'known' if g is grid else 'a group takes'}: {', '.join(sorted(known))})")
    if groups is not None and (not isinstance(groups, list) or not groups):
        raise UserError(f"{where}: groups must be a non-empty list of objects")
    out = {"seed": grid.get("seed", 1), "sim_images": grid.get("sim_images", 0), "groups": []}
    for key in ("seed", "sim_images"):
        v = out[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise UserError(f"{where}: {key} = {v!r} must be a non-negative integer")
    top = {k: grid[k] for k in POINT_KEYS if k in grid}
    for g in groups or [{}]:
        out["groups"].append(check_group({**top, **g}, where))
    return out


def check_bools(values, flag) -> list[bool]:
    if not values or not all(isinstance(v, bool) for v in values):
        raise UserError(f"{flag}: {values!r} is not a list of true/false")
    return list(values)


def check_group(g: dict, where: str) -> dict:
    g = {"batch": [1], "freq": [None], "fuse_pools": [False], "overlap_load": [False],
         **{k: _list(v) for k, v in g.items()}}
    for key in ("spec", "target", "lanes"):
        if key not in g:
            raise UserError(f"{where}: no {key} (a list, at the top or in every group)")
    if not g["spec"] or not all(isinstance(s, str) and s for s in g["spec"]):
        raise UserError(f"{where}: spec must be a list of spec directories")
    return {"spec": g["spec"], "target": check_targets(g["target"], f"{where}: target"),
            "lanes": check_lanes(g["lanes"], f"{where}: lanes"), "batch": check_batch(g["batch"], f"{where}: batch"),
            "freq": check_freqs(g["freq"], f"{where}: freq"),
            "fuse_pools": check_bools(g["fuse_pools"], f"{where}: fuse_pools"),
            "overlap_load": check_bools(g["overlap_load"], f"{where}: overlap_load")}


def estimate(tasks: list[dict], workers: int = 16) -> dict:
    """Wall time of the tasks on ``workers`` workers: per phase, (sum of task times) / workers, at least
    the longest task; the phases (synthesis, then simulation) add up."""
    out = {"workers": workers, "phases": {}}
    for phase in ("synth", "sim"):
        ts = [t["seconds"] for t in tasks if t["task"] == phase and t.get("seconds")]
        if ts:
            out["phases"][phase] = {"tasks": len(ts), "sum_seconds": round(sum(ts), 1), "longest_seconds": max(ts),
                                    "seconds": round(max(sum(ts) / workers, max(ts)), 1)}
    out["seconds"] = round(sum(p["seconds"] for p in out["phases"].values()), 1)
    out["sum_seconds"] = round(sum(p["sum_seconds"] for p in out["phases"].values()), 1)
    return out


# -- the report --------------------------------------------------------------------------------------

CSV_FIELDS = ["spec_name", "target", "lanes", "batch", "fuse_pools", "overlap_load", "freq", "clock_mhz", "fmax_mhz", "timing_met", "luts", "ffs",
              "logic_cells", "dsps", "brams", "sprams", "macs", "cycles_per_image", "images_per_s",
              "images_per_s_at_fmax", "pareto_luts", "pareto_brams", "sim_images", "sim_bit_exact", "sim_mismatches",
              "synth_seconds", "pnr_seconds", "seconds", "sim_seconds", "failed", "failure", "key", "spec_sha",
              "spec_path", "bitstream"]
#: (row key, axis label): the resources the fronts are taken over
AXES = {"luts": "LUT4", "brams": "block RAM"}
_BRAM = {"ice40": "EBR, 4 kbit", "ecp5": "DP16KD, 18 kbit"}


def pareto(rows: list[dict], cost: str) -> list[int]:
    """Indices of ``rows`` not dominated in (images/s up, ``cost`` down), by increasing cost."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i][cost], -rows[i]["images_per_s"]))
    front, best = [], float("-inf")
    for i in order:
        if rows[i]["images_per_s"] > best:
            front.append(i)
            best = rows[i]["images_per_s"]
    return front


def built(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r.get("failed")]


def mark_fronts(rows: list[dict]) -> dict:
    """``pareto_luts``/``pareto_brams`` on every row (per target); {target: {axis: [rows]}}."""
    fronts = {}
    for r in rows:
        r["pareto_luts"] = r["pareto_brams"] = False
    for t in dict.fromkeys(r["target"] for r in rows):
        ok = [r for r in built(rows) if r["target"] == t and r.get("luts") is not None and r.get("brams") is not None]
        fronts[t] = {}
        for axis in AXES:
            front = [ok[i] for i in pareto(ok, axis)]
            for r in front:
                r[f"pareto_{axis}"] = True
            fronts[t][axis] = front
    return fronts


def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _short(r: dict) -> str:
    return f"L{r['lanes']}" + (f" B{r['batch']}" if r["batch"] > 1 else "") + f" {r['clock_mhz']:g} MHz" + design_tag(r)


def design_tag(r: dict) -> str:
    """`` fused``, `` overlapped``: how a point's layers run (nothing for each layer on its own)."""
    return (" fused" if r.get("fuse_pools") else "") + (" overlapped" if r.get("overlap_load") else "")


def plot(rows: list[dict], target: str, axis: str, front: list[dict], path: Path) -> None:
    from .targets import TARGETS

    t = TARGETS[target]
    fig, ax = plt.subplots(figsize=(7, 4.4))
    specs = list(dict.fromkeys(r["spec_name"] for r in rows))
    for k, s in enumerate(specs):
        mine = [r for r in rows if r["spec_name"] == s]
        ax.scatter([r[axis] for r in mine], [r["images_per_s"] for r in mine], s=30, color=f"C{k}", label=s, zorder=3)
        for r in mine:  # one spec's labels above its points, the next one's below (equal points stay readable)
            ax.annotate(_short(r), (r[axis], r["images_per_s"]), fontsize=7, color=f"C{k}",
                        xytext=(5, 4 - 12 * (k % 2)), textcoords="offset points")
    front = sorted(front, key=lambda r: r[axis])
    ax.plot([r[axis] for r in front], [r["images_per_s"] for r in front], "r--", lw=1, zorder=2)
    ax.scatter([r[axis] for r in front], [r["images_per_s"] for r in front], s=130, facecolors="none",
               edgecolors="red", lw=1.4, label="Pareto front", zorder=4)
    cap = t.capacity["DP16KD" if t.family == "ecp5" else "ICESTORM_RAM"] if axis == "brams" else \
        t.capacity["TRELLIS_COMB" if t.family == "ecp5" else "ICESTORM_LC"]
    ax.set_ylim(0, max(r["images_per_s"] for r in rows) * 1.15)
    ax.set_xlim(0, max(r[axis] for r in rows) * 1.3)
    what = f"{AXES[axis]}" + (f" ({_BRAM[t.family]})" if axis == "brams" else "")
    ax.set_xlabel(f"{what}; the device has {cap:,}" + (" logic cells" if axis == "luts" and t.family == "ice40" else ""))
    ax.set_ylabel("images/s (at the clock asked and met)")
    ax.set_title(f"{target}: images/s against {AXES[axis]}")
    ax.legend(fontsize=8, loc="lower right")
    _savefig(fig, path)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v.is_integer():
            v = int(v)
        else:
            return f"{v:,.1f}" if abs(v) >= 100 else f"{v:g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _sim(r: dict) -> str:
    s = r.get("sim")
    if not s:
        return "-"
    if s.get("failed"):
        return f"failed: {s['failed']}"
    return f"{s['bit_exact']:,}/{s['images']:,}"


def flat(r: dict) -> dict:
    s = r.get("sim") or {}
    return {**r, "sim_images": s.get("images"), "sim_bit_exact": s.get("bit_exact"),
            "sim_mismatches": s.get("mismatches"), "sim_seconds": s.get("seconds")}


def task_lines(tasks: list[dict]) -> list[str]:
    out = []
    for t in sorted(tasks, key=lambda t: -(t["seconds"] or 0)):
        sec = "-" if t["seconds"] is None else f"{t['seconds']:,.1f}"
        tail = (" (cached)" if t["cached"] else "") + (f"  failed: {t['failed']}" if t.get("failed") else "")
        out.append(f"{sec:>8} s  {t['task']:<5}  {t['label']}{tail}")
    return out


def print_tasks(tasks: list[dict], est: dict, wall: float, where: str, stream=None) -> None:
    stream = stream or sys.stdout
    print("explore: task times (cached tasks: the time they took when they ran)", file=stream)
    for line in task_lines(tasks):
        print("  " + line, file=stream)
    computed = sum(not t["cached"] for t in tasks)
    print(f"explore: {len(tasks)} tasks, {est['sum_seconds']:,.0f} s of work; on 16 workers about "
          f"{est['seconds']:,.0f} s (per phase: sum / 16, at least the longest task); this run: {wall:,.0f} s wall, "
          f"{computed} task(s) computed on {where}", file=stream)


def markdown(rows: list[dict], tasks: list[dict], fronts: dict, meta: dict, plots: dict) -> str:
    from .targets import TARGETS

    est = meta["estimate_16_workers"]
    tools = ", ".join(f"{k} {v}" for k, v in meta["tools"].items() if v)
    L = ["# Hardware design-space exploration (`python -m hw.explore`)", "",
         f"{meta['n_points']} points (spec x target x lanes x batch x clock x fused pools x overlapped load), {sum(bool(r.get('failed')) for r in rows)} "
         f"failed; {meta['computed']} task(s) computed this run on {meta['executor']} in {meta['wall_seconds']:,.0f} s "
         f"wall. Tools: {tools}; code digest {meta['code']}; nextpnr seed {meta['seed']}.", "",
         "images/s = batch x clock / cycles per image, at the clock the build asked for and met (no "
         "`--timing-allow-fail`). LUT4: Yosys' `SB_LUT4` cells (iCE40) or nextpnr's `TRELLIS_COMB` (ECP5); BRAM: "
         "block RAMs (iCE40 EBR of 4 kbit, ECP5 DP16KD of 18 kbit); the iCE40 board top keeps the weights in SPRAM. "
         "Pareto: not dominated in (images/s up, LUT4 down) [L] or (images/s up, BRAM down) [B], per target."]
    if meta["sim_images"]:
        L += ["", f"sim: Verilator against the emulator on the first {meta['sim_images']:,} MNIST test images, bit-exact "
                  "count, of the design that was built (lanes, batch, fused pools, overlapped load; an iCE40 batch "
                  "on Yosys' SB_MAC16 model)."]
    cols = [("spec_name", "spec"), ("lanes", "lanes"), ("batch", "batch"), ("fuse_pools", "pools fused"),
            ("overlap_load", "load overlapped"), ("clock_mhz", "clock MHz"),
            ("fmax_mhz", "Fmax MHz"), ("luts", "LUT4"), ("ffs", "FF"), ("dsps", "DSP"), ("brams", "BRAM"),
            ("sprams", "SPRAM"), ("cycles_per_image", "cycles/image"), ("images_per_s", "images/s")]
    for t in dict.fromkeys(r["target"] for r in rows):
        ok = sorted([r for r in built(rows) if r["target"] == t],
                    key=lambda r: (r["spec_name"], r["lanes"], r["batch"], r["clock_mhz"], bool(r.get("fuse_pools")),
                                   bool(r.get("overlap_load"))))
        L += ["", f"## {t} ({TARGETS[t].board})", ""]
        if not ok:
            L += ["No point of this target built (see the failures)."]
            continue
        L += ["| " + " | ".join(h for _, h in cols) + " | sim bit-exact | Pareto | build s |",
              "|" + "---|" * (len(cols) + 3)]
        for r in ok:
            mark = "".join(m for m, k in (("L", "pareto_luts"), ("B", "pareto_brams")) if r.get(k)) or "-"
            L.append("| " + " | ".join(_cell(r.get(k)) for k, _ in cols) + f" | {_sim(r)} | {mark} | "
                     f"{_cell(r.get('seconds'))} |")
        for axis, name in AXES.items():
            front = sorted(fronts[t][axis], key=lambda r: r[axis])
            L += ["", f"Pareto front (images/s, {name}): " + "; ".join(
                f"{r['spec_name']} {_short(r)}: {r['images_per_s']:,.1f} images/s, {r[axis]:,} {name}" for r in front)]
        for axis in AXES:
            if (t, axis) in plots:
                L += ["", f"![{t}: images/s against {AXES[axis]}]({plots[(t, axis)]})"]
    failed = [r for r in rows if r.get("failed")]
    L += ["", "## Failures", ""]
    if failed:
        L += ["| point | reason | build s |", "|---|---|---|"]
        L += [f"| {r['label']} | {r['failed']}" + (f" (images/s at Fmax: {r['images_per_s_at_fmax']:,.1f})"
                                                     if r.get("images_per_s_at_fmax") else "")
              + f" | {_cell(r.get('seconds'))} |" for r in failed]
    else:
        L += ["None."]
    sim_failed = [r for r in rows if (r.get("sim") or {}).get("failed") or (r.get("sim") or {}).get("mismatches")]
    if sim_failed:
        L += ["", "Simulation: " + "; ".join(f"{r['label']}: {_sim(r)}" for r in sim_failed)]
    L += ["", "## Task times", "",
          f"{len(tasks)} tasks, {est['sum_seconds']:,.0f} s of work. On a 16-worker cluster about "
          f"**{est['seconds']:,.0f} s** (per phase, synthesis then simulation: the sum of its task times / 16, at "
          "least its longest task; " + ", ".join(f"{k}: {v['tasks']} tasks, {v['sum_seconds']:,.0f} s, longest "
                                                 f"{v['longest_seconds']:,.0f} s" for k, v in est["phases"].items())
          + "). Cached tasks show the time they took when they ran.", "", "```"] + task_lines(tasks) + ["```"]
    return "\n".join(L) + "\n"


def write_report(rows: list[dict], tasks: list[dict], out: Path, meta: dict) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fronts = mark_fronts(rows)
    plots = {}
    for t, by_axis in fronts.items():
        ok = [r for r in built(rows) if r["target"] == t and r.get("luts") is not None]
        for axis in AXES:
            if ok:
                name = f"{t}-{axis}.png"
                plot(ok, t, axis, by_axis[axis], out / name)
                plots[(t, axis)] = name
    doc = {**meta, "points": [{k: v for k, v in r.items() if k != "cached"} for r in rows],
           "tasks": tasks, "pareto": {t: {a: [r["key"] for r in f] for a, f in by.items()} for t, by in fronts.items()},
           "plots": sorted(plots.values())}
    atomic_write_text(out / "results.json", json.dumps(doc, indent=1) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(flat(r))
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "report.md", markdown(rows, tasks, fronts, meta, plots))
    return {"report": out / "report.md", "json": out / "results.json", "csv": out / "results.csv",
            "plots": [out / p for p in sorted(plots.values())]}
