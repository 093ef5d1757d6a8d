"""The FPGA targets :mod:`hw.synth` builds for: each device's resources, the configuration each one
ships in (:data:`SHIPPED`), and the checks of a design's cells and nextpnr's report against them.

This module needs neither Amaranth nor the YoWASP tools: :mod:`sim` and the reports read it too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from model.util import UserError


@dataclass(frozen=True)
class Target:
    family: str  # ice40 or ecp5
    board: str  # hw.boards board
    device_args: tuple[str, ...]
    capacity: dict  # nextpnr resource name -> count on the device
    synth: str


TARGETS = {
    "ice40-up5k": Target("ice40", "icebreaker", ("--up5k", "--package", "sg48"),
                         {"ICESTORM_LC": 5280, "ICESTORM_RAM": 30, "ICESTORM_SPRAM": 4, "ICESTORM_DSP": 8, "IO": 39},
                         "synth_ice40 -dsp -spram"),
    "ecp5-25k": Target("ecp5", "ulx3s-25f", ("--25k", "--package", "CABGA381"),
                       {"TRELLIS_COMB": 24288, "TRELLIS_FF": 24288, "DP16KD": 56, "MULT18X18D": 28, "IO": 197},
                       "synth_ecp5"),
    "ecp5-85k": Target("ecp5", "ulx3s", ("--85k", "--package", "CABGA381"),
                       {"TRELLIS_COMB": 83640, "TRELLIS_FF": 83640, "DP16KD": 208, "MULT18X18D": 156, "IO": 365},
                       "synth_ecp5"),
}

# The configuration each target is built in when --lanes/--batch/--freq/--fuse-pools/--overlap-load are not given: per target and
# spec preset (``None``: any other spec), the fastest one measured to fit and meet its clock (README's
# hardware table; ``make synth`` rebuilds it).
SHIPPED = {
    ("ice40-up5k", None): {"lanes": 8, "batch": 2, "freq": 29.25, "fuse_pools": True, "overlap_load": True, "seed": 1},
    ("ice40-up5k", "anna"): {"lanes": 8, "batch": 3, "freq": 29.0, "fuse_pools": True, "overlap_load": True, "seed": 1},
    ("ecp5-25k", None): {"lanes": 8, "batch": 2, "freq": 70.0, "fuse_pools": True, "overlap_load": True, "seed": 1},
    ("ecp5-85k", None): {"lanes": 8, "batch": 19, "freq": 59.0, "fuse_pools": True, "overlap_load": True, "seed": 1},
}


def shipped(target_key: str, preset: str | None) -> dict:
    """The shipped configuration of ``target_key`` for a spec of ``preset``: lanes, batch, freq (MHz),
    fuse_pools, overlap_load and nextpnr's placement seed (the one its figures were measured with:
    placement moves Fmax by a few per cent)."""
    return dict(SHIPPED.get((target_key, preset)) or SHIPPED[(target_key, None)])


def sim_dsp(target_key: str, batch: int) -> str:
    """The DSP model a simulation of ``target_key``'s build of ``batch`` images uses (``Accelerator``'s
    ``dsp``): the iCE40's SB_MAC16 pairs (Yosys' cell model) where a batch shares them, else the
    products as RTL."""
    return "sb_mac16" if TARGETS[target_key].family == "ice40" and batch > 1 else "auto"


# yosys cell type -> the nextpnr resource it lands on, to refuse a design that cannot fit before place
# and route (and to say which resource and by how much)
_CELL_RESOURCE = {
    "ice40": {"SB_RAM40_4K": "ICESTORM_RAM", "SB_SPRAM256KA": "ICESTORM_SPRAM", "SB_MAC16": "ICESTORM_DSP"},
    "ecp5": {"DP16KD": "DP16KD", "MULT18X18D": "MULT18X18D", "TRELLIS_FF": "TRELLIS_FF"},
}
RESOURCE_NAMES = {"ICESTORM_LC": "logic cells", "ICESTORM_RAM": "block RAMs (EBR)", "ICESTORM_SPRAM": "SPRAMs",
                   "ICESTORM_DSP": "DSP blocks (SB_MAC16)", "TRELLIS_COMB": "LUT4s", "TRELLIS_FF": "flip-flops",
                   "DP16KD": "block RAMs (DP16KD)", "MULT18X18D": "multipliers (MULT18X18D)", "IO": "I/O pins"}


def cell_counts(stat: dict, top: str) -> dict:
    """Cells by type of the synthesized top, plus ``IO``: its port bits (each one a pin)."""
    mods = stat.get("modules", {})
    mod = mods.get(f"\\{top}") or mods.get(top) or (next(iter(mods.values())) if len(mods) == 1 else {})
    return {**mod.get("num_cells_by_type", {}), "IO": int(mod.get("num_port_bits", 0))}


def overused(log: str) -> tuple[str, int, int] | None:
    """The first resource of nextpnr's utilisation report (``ICESTORM_LC:  5998/  5280  113%``) used
    beyond the device, as (name, used, available); None if every one fits."""
    for m in re.finditer(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", log, re.M):
        if int(m[2]) > int(m[3]):
            return m[1], int(m[2]), int(m[3])
    return None


def check_fit(target: Target, cells: dict, name: str) -> None:
    """Refuse, before place and route, a design with more DSPs/RAMs/FFs than the device has."""
    used: dict[str, int] = {"IO": cells.get("IO", 0)}
    for cell, n in cells.items():
        res = _CELL_RESOURCE[target.family].get(cell)
        if res is None and target.family == "ecp5" and cell.startswith("TRELLIS_FF"):
            res = "TRELLIS_FF"
        if res:
            used[res] = used.get(res, 0) + n
    if target.family == "ice40":  # every LUT and every FF takes a logic cell (packed in pairs at best)
        luts = sum(n for c, n in cells.items() if c == "SB_LUT4")
        ffs = sum(n for c, n in cells.items() if c.startswith("SB_DFF"))
        used["ICESTORM_LC"] = max(luts, ffs)
    else:
        used["TRELLIS_COMB"] = sum(n for c, n in cells.items() if c == "LUT4") + 2 * cells.get("CCU2C", 0)
    for res, n in used.items():
        cap = target.capacity.get(res)
        if cap is not None and n > cap:
            raise UserError(f"{name} does not fit {target_name(target)}: it needs {n:,} {RESOURCE_NAMES.get(res, res)}, "
                            f"the device has {cap:,} ({n - cap:,} over)")


def target_name(target: Target) -> str:
    return next(k for k, v in TARGETS.items() if v is target)


def parse_report(report: dict, target: Target) -> dict:
    util = report.get("utilization", {})

    def used(res):
        return int(util.get(res, {}).get("used", 0))

    fmax = report.get("fmax", {})
    achieved = min((v["achieved"] for v in fmax.values()), default=None)
    constraint = min((v["constraint"] for v in fmax.values()), default=None)
    out = {"utilization": {k: {"used": int(v["used"]), "available": int(v["available"])} for k, v in util.items()},
           "fmax_mhz": round(achieved, 2) if achieved is not None else None,
           "constraint_mhz": round(constraint, 2) if constraint is not None else None}
    if target.family == "ice40":
        out.update(logic_cells=used("ICESTORM_LC"), dsps=used("ICESTORM_DSP"), brams=used("ICESTORM_RAM"),
                   sprams=used("ICESTORM_SPRAM"))
    else:
        out.update(luts=used("TRELLIS_COMB"), ffs=used("TRELLIS_FF"), dsps=used("MULT18X18D"), brams=used("DP16KD"),
                   sprams=None)
    return out
