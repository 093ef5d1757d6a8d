"""model.progress: a bar on a terminal, plain periodic lines (no carriage returns) in a log."""
from __future__ import annotations

import io

from model.progress import Progress


def test_plain_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.setenv("LENET_PROGRESS_SECONDS", "0")  # a line at every update
    out = io.StringIO()
    with Progress(4, "image", "sim q8", stream=out) as p:
        assert p.bar is None and p.terminal is False
        p.update(1, mismatches=0)
        p.set(3, mismatches=1)
        p.update(1)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("sim q8: 1/4 images (25%)") and "0 mismatches" in lines[0]
    assert lines[1].startswith("sim q8: 3/4 images (75%)") and "1 mismatches" in lines[1]
    assert lines[-1].startswith("sim q8: 4/4 images (100%)")  # the closing line
    assert all("images/s" in l for l in lines)


def test_lines_are_spaced_by_the_interval(monkeypatch):
    monkeypatch.setenv("LENET_PROGRESS_SECONDS", "3600")
    out = io.StringIO()
    p = Progress(100, "batch", "epoch 1/2", stream=out)
    for _ in range(100):
        p.update(1)
    assert out.getvalue() == ""  # nothing until the interval has passed ...
    p.describe("epoch 2/2", loss="0.12")
    p.close()
    lines = out.getvalue().splitlines()  # ... and one line at the end
    assert len(lines) == 1 and lines[0].startswith("epoch 2/2: 100/100 batches (100%)") and "loss 0.12" in lines[0]


def test_bar_on_a_terminal():
    out = io.StringIO()
    p = Progress(10, "point", "sweep", stream=out, terminal=True)
    assert p.bar is not None
    p.update(5, last="a")
    p.close()
    assert "\r" in out.getvalue() and "5/10" in out.getvalue()


def test_disabled_prints_nothing():
    out = io.StringIO()
    p = Progress(3, "image", stream=out, enabled=False, terminal=False)
    p.update(3)
    p.close()
    assert out.getvalue() == "" and p.done == 3
