"""The sweep report: results.json, results.csv, report.md with tables and embedded PNG plots."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from model.util import atomic_path, atomic_write_text  # noqa: E402

CSV_FIELDS = ["kind", "label", "weight_bits", "act_bits", "rounding", "layer", "bits", "acc_bits", "qat",
              "error_rate", "errors", "images", "total_saturations", "acc_overflows", "weight_memory_bits",
              "hw_cost", "est_luts", "est_dsps", "est_brams", "est_cycles_per_image", "luts", "dsps", "brams",
              "fmax_mhz", "images_per_s", "emulator_images_per_s", "key", "failed"]


def _pct(x):
    return f"{100 * x:.2f}%"


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (cost, error), both minimised, sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _savefig(fig, path: Path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _heatmaps(grid_rows, path: Path, float_err: float):
    roundings = sorted({r["rounding"] for r in grid_rows})
    ws = sorted({r["weight_bits"] for r in grid_rows})
    acts = sorted({r["act_bits"] for r in grid_rows})
    fig, axes = plt.subplots(1, len(roundings), figsize=(5.2 * len(roundings), 4.4), squeeze=False)
    for ax, rnd in zip(axes[0], roundings):
        m = np.full((len(acts), len(ws)), np.nan)
        for r in grid_rows:
            if r["rounding"] == rnd:
                m[acts.index(r["act_bits"]), ws.index(r["weight_bits"])] = 100 * r["error_rate"]
        im = ax.imshow(np.log10(np.clip(m, 0.1, 100)), origin="lower", cmap="viridis_r", aspect="auto", vmin=np.log10(0.5), vmax=2)
        for (i, j), v in np.ndenumerate(m):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.1f}" if v < 10 else f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v > 5 else "black")
        ax.set_xticks(range(len(ws)), ws)
        ax.set_yticks(range(len(acts)), acts)
        ax.set_xlabel("weight bits")
        ax.set_ylabel("state (activation) bits")
        ax.set_title(f"test error % ({rnd}); float {100 * float_err:.2f}%")
    fig.colorbar(im, ax=axes[0].tolist(), label="log10 error %")
    _savefig(fig, path)


def _sensitivity(rows, path: Path, base_err: float):
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    bits = sorted({r["bits"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(bits), 1)
    for k, b in enumerate(bits):
        vals = [100 * next((r["error_rate"] for r in rows if r["layer"] == L and r["bits"] == b), np.nan) for L in layers]
        ax.bar(np.arange(len(layers)) + k * width, vals, width, label=f"{b} bits")
    ax.axhline(100 * base_err, color="k", ls="--", lw=1, label="all at base widths")
    ax.set_xticks(np.arange(len(layers)) + width * (len(bits) - 1) / 2, layers)
    ax.set_yscale("log")
    ax.set_ylabel("test error % (log)")
    ax.set_title("per-layer sensitivity: one layer's weights and states reduced")
    ax.legend(fontsize=8)
    _savefig(fig, path)


def _scatter(rows, xkey, xlabel, path: Path, title: str):
    xs = [r[xkey] for r in rows]
    ys = [100 * r["error_rate"] for r in rows]
    front = pareto(list(zip(xs, ys)))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.scatter(xs, ys, s=14, alpha=0.6, label="points")
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "r-o", ms=4, label="Pareto front")
    for i in front:
        ax.annotate(rows[i]["label"], (xs[i], ys[i]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test error % (log)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _savefig(fig, path)
    return front


def summarize(rows, float_err: float) -> dict:
    grid = [r for r in rows if r["kind"] == "grid" and not r.get("qat")]
    # 1e-9: a point exactly 0.2 points above float (e.g. 82 vs 62 errors in 10,000) is within
    within = [r for r in grid if r["error_rate"] - float_err <= 0.002 + 1e-9]
    smallest = min(within, key=lambda r: (r["weight_bits"] + r["act_bits"], r["weight_memory_bits"], r["error_rate"]), default=None)
    min_w = min((r["weight_bits"] for r in within), default=None)
    min_a = min((r["act_bits"] for r in within), default=None)
    anna = {("qat" if r.get("qat") else "ptq"): r for r in rows if r["kind"] == "anna"}
    return {"float_error": float_err, "smallest_within_0.2pt": smallest and {
                "label": smallest["label"], "weight_bits": smallest["weight_bits"], "act_bits": smallest["act_bits"],
                "error_rate": smallest["error_rate"]},
            "min_weight_bits_within_0.2pt": min_w, "min_act_bits_within_0.2pt": min_a,
            "anna_ptq_error": anna.get("ptq", {}).get("error_rate"),
            "anna_qat_error": anna.get("qat", {}).get("error_rate")}


def attach_synthesis(rows: list[dict], synth_dir) -> list[dict]:
    """Measured hardware for the points a synthesis was run on (``python -m hw.synth`` results under
    ``synth_dir``, matched by every layer's formats): ``row["synthesis"]`` lists them, and the
    ``luts``/``dsps``/``brams`` columns take the iCE40 build if there is one. Returns the results."""
    results = []
    if synth_dir is not None and Path(synth_dir).is_dir():
        for path in sorted(Path(synth_dir).glob("*/*/result.json")):
            try:
                r = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if r.get("spec_formats"):
                results.append(r)
    for row in rows:
        hits = [r for r in results if r["spec_formats"] == row.get("formats")]
        if hits:
            keep = ("target", "lanes", "batch", "luts", "ffs", "dsps", "brams", "sprams", "clock_mhz", "fmax_mhz",
                    "images_per_s")
            row["synthesis"] = [{k: h.get(k) for k in keep} for h in hits]
            main = next((h for h in hits if h["target"].startswith("ice40")), hits[0])
            row.update(luts=main["luts"], dsps=main["dsps"], brams=main["brams"])
    return results


def write_report(rows: list[dict], out: Path, float_err: float, checkpoint: str | None, seconds: float,
                 synth_dir=None, model: dict | None = None) -> dict:
    """``checkpoint``: the LeNet checkpoint swept; or ``model``: an imported model's description
    (:meth:`quantize.sweep_model.ImportedModel.describe`). Failed points (``failed``: the reason) are
    listed, and left out of the summary, tables and plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_rows, rows = rows, [r for r in rows if r.get("error_rate") is not None]
    failed = [r for r in all_rows if r.get("error_rate") is None]
    summary = summarize(rows, float_err)
    source = {"model": model} if model else {"checkpoint": checkpoint}
    atomic_write_text(out / "results.json", json.dumps({**source, "summary": summary, "seconds": round(seconds, 1),
                                                         "points": all_rows}, indent=1))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in all_rows:
        w.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    atomic_write_text(out / "results.csv", buf.getvalue())

    grid = [r for r in rows if r["kind"] == "grid" and not r.get("qat")]
    sens = [r for r in rows if r["kind"] == "sensitivity"]
    accs = [r for r in rows if r["kind"] == "acc"]
    base = next((r for r in grid if r["config"]["weight_bits"] == 8 and r["config"]["act_bits"] == 8
                 and r["rounding"] == "RND_CONV"), None)
    plots = {}
    if grid:
        _heatmaps(grid, out / "heatmap.png", float_err)
        plots["heatmap"] = "heatmap.png"
    if sens:
        _sensitivity(sens, out / "sensitivity.png", base["error_rate"] if base else float_err)
        plots["sensitivity"] = "sensitivity.png"
    # points at chance-level error are left off the cost plots, unless no point does better
    scored = [r for r in rows if r["error_rate"] < 0.5] or rows
    if scored:
        _scatter(scored, "weight_memory_bits", "weight memory (bits)", out / "pareto_memory.png",
                 "error vs weight memory (Pareto front in red)")
        plots["pareto_memory"] = "pareto_memory.png"
        measured = [r for r in scored if r.get("luts")]
        src = "measured (synthesis)" if measured else "estimated from the spec"
        _scatter(measured or scored, "luts" if measured else "est_luts", f"LUTs, {src}", out / "pareto_luts.png",
                 f"error vs hardware cost ({src})")
        plots["pareto_luts"] = "pareto_luts.png"

    n_images = all_rows[0]["images"] if all_rows else 0
    if model:
        scale = ", ".join(f"{m:g}/{s:g}" for m, s in zip(model["input_mean"], model["input_std"]))
        L = [f"# Quantization sweep: {model['network']} ({model['model']})", "",
             f"{len(all_rows)} points, each imported from the ONNX model (sha256 {model['model_sha256'][:12]}, input "
             f"{' x '.join(map(str, model['input_shape']))}, mean/std {scale}), calibrated on {model['calibration']} "
             f"(no QAT) and evaluated bit-exactly by the emulator on {n_images:,} images of "
             f"{model['test_images']} ({seconds:.0f} s).", "",
             "## Summary", "", f"- Float model (onnxruntime, same images): **{_pct(float_err)}**"]
    else:
        L = [f"# Quantization sweep: LeNet-5 ({checkpoint})", "",
             f"{len(all_rows)} points, each calibrated from the float checkpoint and evaluated bit-exactly by the "
             f"emulator on {n_images:,} MNIST test images ({seconds:.0f} s).", "",
             "## Summary", "", f"- Float model: **{_pct(float_err)}**"]
    if failed:
        L.append(f"- {len(failed)} point(s) could not be built for this model (listed under Failed points)")
    if base:
        L.append(f"- 8-bit weights and states (RND_CONV): {_pct(base['error_rate'])}")
    if summary["smallest_within_0.2pt"]:
        s = summary["smallest_within_0.2pt"]
        L.append(f"- Smallest widths within 0.2 points of float: **{s['weight_bits']}-bit weights, "
                 f"{s['act_bits']}-bit states** ({s['label']}: {_pct(s['error_rate'])}); fewest weight bits "
                 f"at any state width: {summary['min_weight_bits_within_0.2pt']}, fewest state bits: "
                 f"{summary['min_act_bits_within_0.2pt']}")
    else:
        L.append("- No grid point came within 0.2 points of the float error.")
    if summary["anna_ptq_error"] is not None:
        L.append(f"- ANNA point (6-bit weights, 3-bit states and input): {_pct(summary['anna_ptq_error'])} "
                 f"without QAT, **{_pct(summary['anna_qat_error'])} with QAT**" if summary["anna_qat_error"] is not None
                 else f"- ANNA point: {_pct(summary['anna_ptq_error'])} without QAT")
    flagged = [r for r in rows if r["acc_overflows"]]
    synthesized = [r for r in rows if r.get("synthesis")]
    L += ["", "Hardware cost columns are **estimated from the spec** (`quantize/hwcost.py`: 8 lanes, "
          "one DSP per lane, 4-kbit EBRs), except where a point was synthesized (`make synth`, results "
          f"read from `{synth_dir}`): those are **measured** below.", ""]
    if synthesized:
        L += ["## Measured hardware (Yosys + nextpnr)", "",
              "| point | error | target | lanes x batch | LUT4 | DSP | BRAM | SPRAM | Fmax MHz | images/s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in synthesized:
            for h in r["synthesis"]:
                L.append(f"| {r['label']} | {_pct(r['error_rate'])} | {h['target']} | {h['lanes']} x {h.get('batch') or 1} "
                         f"| {h['luts']:,} | {h['dsps']} | {h['brams']} | {h['sprams'] if h['sprams'] is not None else '-'} "
                         f"| {h['fmax_mhz']} | {h['images_per_s']:,} |")
        L.append("")
    if plots.get("heatmap"):
        L += ["## Error over (weight bits, state bits)", "", f"![heatmap]({plots['heatmap']})", ""]
        for rnd in sorted({r["rounding"] for r in grid}):
            ws = sorted({r["weight_bits"] for r in grid})
            L += [f"### {rnd} (test error %, rows: state bits, columns: weight bits)", "",
                  "| state \\ weight | " + " | ".join(map(str, ws)) + " |", "|---" * (len(ws) + 1) + "|"]
            for a in sorted({r["act_bits"] for r in grid}):
                cells = []
                for wb in ws:
                    r = next((r for r in grid if r["rounding"] == rnd and r["weight_bits"] == wb and r["act_bits"] == a), None)
                    cells.append("" if r is None else f"{100 * r['error_rate']:.2f}" + (" ⚠" if r["acc_overflows"] else ""))
                L.append(f"| {a} | " + " | ".join(cells) + " |")
            L.append("")
    if sens:
        L += ["## Per-layer sensitivity", "", "One layer's weights and output states at the given width, "
              "every other layer at the base (8-bit) widths.", "", f"![sensitivity]({plots['sensitivity']})", "",
              "| layer | " + " | ".join(f"{b} bits" for b in sorted({r['bits'] for r in sens})) + " |",
              "|---" * (1 + len({r['bits'] for r in sens})) + "|"]
        for layer in dict.fromkeys(r["layer"] for r in sens):
            L.append(f"| {layer} | " + " | ".join(_pct(r["error_rate"]) for r in sorted(
                (r for r in sens if r["layer"] == layer), key=lambda r: r["bits"])) + " |")
        L.append("")
    if accs:
        L += ["## Accumulator width (base point)", "", "| accumulator bits | error | wrapped sums |", "|---|---|---|"]
        for r in sorted(accs, key=lambda r: r["acc_bits"]):
            L.append(f"| {r['acc_bits']} | {_pct(r['error_rate'])} | {r['acc_overflows']:,}" + (" ⚠" if r["acc_overflows"] else "") + " |")
        L.append("")
    if plots.get("pareto_memory"):
        L += ["## Cost", "", f"![pareto memory]({plots['pareto_memory']})", "", f"![pareto luts]({plots['pareto_luts']})", ""]
    clipped = ("Clipped outputs (`saturations`: ReLU or linear states beyond their format, calibrated to the "
               "99.99th percentile, and LUT addresses where the function is flat) are expected in small numbers."
               if model else "Clipped LUT addresses (`saturations`) are expected where |pre-activation| > 4 "
               "(the squash is flat there).")
    L += ["## Saturation", "", clipped + " Wrapped accumulators (`acc_overflows`) are flagged ⚠ above.", ""]
    if flagged:
        L.append(f"{len(flagged)} point(s) wrapped an accumulator: " + ", ".join(r["label"] for r in flagged[:20]))
    else:
        L.append("No point wrapped an accumulator.")
    L += ["", "## All points", "", "| point | error | weight memory bits | est. LUTs | est. EBR | LUT-address clips | acc wraps |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['label']} | {_pct(r['error_rate'])} | {r['weight_memory_bits']:,} | {r['est_luts']:,} | "
                 f"{r['est_brams']} | {r['total_saturations']:,} | {r['acc_overflows']:,}{' ⚠' if r['acc_overflows'] else ''} |")
    if failed:
        L += ["", "## Failed points", "", "| point | reason |", "|---|---|"]
        L += [f"| {r['label']} | {r['failed'].replace('|', '/')} |" for r in failed]
    atomic_write_text(out / "report.md", "\n".join(L) + "\n")
    return {"report": str(out / "report.md"), **plots}
