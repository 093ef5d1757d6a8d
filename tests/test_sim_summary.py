"""python -m sim.summary: the main job's closing table, and its verdict."""
from __future__ import annotations

import json

import pytest

from model.util import UserError
from sim.summary import main, summary

FLOAT = {"arch": "lenet5", "images": 10000, "errors": 78, "error_rate": 0.0078}
QUANT = {"network": "lenet5", "preset": "q8", "images": 10000, "errors": 75, "error_rate": 0.0075}
SIM = {"spec": "build/quant/lenet5-q8", "simulator": "verilator", "lanes": 8, "images": 1000, "mismatches": 0,
       "cycles_per_image": 47941, "cycles_per_image_model": 47941, "cycles_match_model": True, "images_per_s": 70.1}


def _reports(tmp_path, sims=(SIM,)):
    (tmp_path / "float.jsonl").write_text(json.dumps(FLOAT) + "\n")
    (tmp_path / "quant.jsonl").write_text(json.dumps(QUANT) + "\n")
    if sims is not None:
        (tmp_path / "sim.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sims))
    return tmp_path


def test_all_good(tmp_path, capsys):
    text, ok = summary(_reports(tmp_path))
    assert ok
    assert "float lenet5   test error 0.78%" in text
    assert "lenet5 q8     bit-exact emulator: test error 0.75%" in text
    assert "1,000/1,000 images bit-exact, 47941 cycles/image (model 47941)" in text
    assert main([str(tmp_path)]) == 0
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [{"mismatches": 3}, {"cycles_match_model": False, "cycles_per_image": 47940}])
def test_a_failed_simulation_fails_the_job(tmp_path, bad):
    text, ok = summary(_reports(tmp_path, [{**SIM, **bad}]))
    assert not ok and "FAILED" in text


def test_missing_simulation_fails_the_job(tmp_path):
    text, ok = summary(_reports(tmp_path, sims=None))
    assert not ok and "no simulation result" in text


def test_no_reports_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no reports"):
        summary(tmp_path)
    (tmp_path / "sim.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="sim.jsonl:1"):
        summary(tmp_path)
