"""The scoreboard: the accelerator's outputs against the emulator's golden vectors, image by image.

The harness (:mod:`sim.harness`) writes one line per finished image (with an accelerator batch of
B images, one per run of B: :func:`parse_batch_line` splits it, the padding images are dropped);
:class:`Scoreboard` parses those lines and compares each image's class and every score with the golden class and scores by
integer equality, and its cycle count with the cycle model. Golden values come only from the
emulator (``quantize.run`` / :class:`quantize.emulator.Emulator`); nothing here computes one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def decode_beat(raw: int, value_width: int, payload_width: int) -> tuple[int, int]:
    """(signed value, last flag) of one ``o__payload`` word: the value in the low ``value_width``
    bits, ``last`` in the top bit."""
    v = raw & ((1 << value_width) - 1)
    if v >> (value_width - 1):
        v -= 1 << value_width
    return v, (raw >> (payload_width - 1)) & 1


@dataclass
class ImageResult:
    image: int
    cycles: int
    cls: int
    scores: list[int]
    protocol_error: str | None = None


def parse_line(line: str, beats: int, value_width: int, payload_width: int) -> ImageResult:
    """One results line: ``image cycles beats_seen beat0 ... beat{B-1}`` (beats in hex)."""
    parts = line.split()
    if len(parts) != 3 + beats:
        raise ValueError(f"malformed results line (expected {3 + beats} fields): {line!r}")
    image, cycles, seen = int(parts[0]), int(parts[1]), int(parts[2])
    decoded = [decode_beat(int(p, 16), value_width, payload_width) for p in parts[3:]]
    values = [v for v, _ in decoded]
    lasts = [l for _, l in decoded]
    error = None
    if seen != beats:
        error = f"{seen} output beats, expected {beats}"
    elif lasts != [0] * (beats - 1) + [1]:
        error = f"'last' flags {lasts}, expected only on beat {beats - 1}"
    return ImageResult(image, cycles, values[0], values[1:], error)


def parse_batch_line(line: str, beats: int, payload_width: int, batch: int) -> list[ImageResult]:
    """One results line of an accelerator batch of ``batch`` images (``group cycles beats_seen beat0
    ... beat{B-1}``, each beat B values of ``(payload_width - 1) / batch`` bits, value b in bits b·w..,
    ``last`` on top): one result per image of the group, numbered by the group, the run's cycles each."""
    if (payload_width - 1) % batch:
        raise ValueError(f"o__payload of {payload_width} bits is not {batch} values and 'last'")
    width = (payload_width - 1) // batch
    parts = line.split()
    if len(parts) != 3 + beats:
        raise ValueError(f"malformed results line (expected {3 + beats} fields): {line!r}")
    group, cycles, seen = int(parts[0]), int(parts[1]), int(parts[2])
    words = [int(p, 16) for p in parts[3:]]
    lasts = [(w >> (payload_width - 1)) & 1 for w in words]
    error = None
    if seen != beats:
        error = f"{seen} output beats, expected {beats}"
    elif lasts != [0] * (beats - 1) + [1]:
        error = f"'last' flags {lasts}, expected only on beat {beats - 1}"
    out = []
    for b in range(batch):
        values = [decode_beat(w >> (b * width), width, width + 1)[0] for w in words]
        out.append(ImageResult(group, cycles, values[0], values[1:], error))
    return out


@dataclass
class Scoreboard:
    """Compares results with ``golden_classes`` (N) and ``golden_scores`` (N x classes).

    ``index`` (N) maps the results' local image numbers 0..N-1 to the batch's (for the report);
    ``model_cycles`` is the cycle model's cycles per image (every image must take exactly that many),
    ``model_first`` those of a copy's first image where they differ (an overlapped program's latency,
    :func:`hw.perf.latency_cycles`: the first load is not hidden).
    """

    golden_classes: np.ndarray
    golden_scores: np.ndarray
    model_cycles: int
    index: np.ndarray | None = None
    model_first: int | None = None
    classes: list[int] = field(default_factory=list)
    scores: list[list[int]] = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)
    expected_cycles: list[int] = field(default_factory=list)
    mismatches: int = 0
    first_mismatch: dict | None = None

    @property
    def done(self) -> int:
        return len(self.classes)

    def add(self, r: ImageResult, first: bool | None = None) -> bool:
        """Score one image (they must come in order); True if it matches the emulator exactly.
        ``first``: it ran in the copy's first accelerator run (default: it is image 0)."""
        if r.image != self.done:
            raise ValueError(f"results out of order: image {r.image} after {self.done} images")
        n = int(self.index[r.image]) if self.index is not None else r.image
        exp_cls = int(self.golden_classes[r.image])
        exp_scores = [int(v) for v in self.golden_scores[r.image]]
        self.classes.append(r.cls)
        self.scores.append(r.scores)
        self.cycles.append(r.cycles)
        first = r.image == 0 if first is None else first
        self.expected_cycles.append(self.model_first if first and self.model_first is not None else self.model_cycles)
        ok = r.protocol_error is None and r.cls == exp_cls and r.scores == exp_scores
        if not ok:
            self.mismatches += 1
            if self.first_mismatch is None:
                k = next((j for j in range(len(exp_scores)) if j >= len(r.scores) or r.scores[j] != exp_scores[j]),
                         None)
                self.first_mismatch = {
                    "image": n, "class": {"expected": exp_cls, "actual": r.cls}, "score_index": k,
                    "expected": exp_scores[k] if k is not None else None,
                    "actual": r.scores[k] if k is not None and k < len(r.scores) else None}
                if r.protocol_error:
                    self.first_mismatch["protocol"] = r.protocol_error
        return ok

    def add_lines(self, lines: list[str], beats: int, value_width: int, payload_width: int) -> None:
        for line in lines:
            self.add(parse_line(line, beats, value_width, payload_width))

    @property
    def cycles_match_model(self) -> bool:
        return all(c == e for c, e in zip(self.cycles, self.expected_cycles))


def read_complete_lines(path, skip: int = 0) -> list[str]:
    """The complete (newline-terminated) lines of a results file after the first ``skip``; a line
    still being written by a running simulator is left for the next read."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    lines = text.split("\n")[:-1]  # the part after the last newline is incomplete (or empty)
    return [l for l in lines[skip:] if l.strip()]


class ResultsStream:
    """One accelerator copy's results file and the scoreboard of its images: ``sel`` (batch indices,
    in the order the copy ran them) against the golden ``classes``/``scores`` of the whole batch.

    ``batch`` = B > 1: each line is one accelerator run of a group of images, ``groups`` (one per
    line) how many of its B images are real (the rest is padding, not scored)."""

    def __init__(self, sel: np.ndarray, path, classes: np.ndarray, scores: np.ndarray, model_cycles: int,
                 batch: int = 1, groups: list[int] | None = None, model_first: int | None = None):
        self.sel, self.path, self.batch = sel, path, batch
        self.groups = groups if groups is not None else [1] * len(sel)
        if sum(self.groups) != len(sel) or any(not 1 <= g <= batch for g in self.groups):
            raise ValueError(f"groups {self.groups} do not split {len(sel)} images into runs of at most {batch}")
        self.board = Scoreboard(classes[sel], scores[sel], model_cycles, index=sel, model_first=model_first)
        self.lines = 0  # accelerator runs scored
        self.run_cycles: list[int] = []  # cycles of each run

    def poll(self, beats: int, value_width: int, payload_width: int) -> None:
        """Score the lines written since the last poll (a line still being written waits)."""
        for line in read_complete_lines(self.path, self.lines):
            if self.batch == 1:
                results = [parse_line(line, beats, value_width, payload_width)]
            else:
                results = parse_batch_line(line, beats, payload_width, self.batch)
                if results[0].image != self.lines:
                    raise ValueError(f"results out of order: run {results[0].image} after {self.lines} runs")
                if self.lines >= len(self.groups):
                    raise ValueError(f"more runs than the {len(self.groups)} expected in {self.path}")
                results = results[:self.groups[self.lines]]  # the padding images are not scored
                for j, r in enumerate(results):
                    r.image = self.board.done + j
            for r in results:
                self.board.add(r, first=self.lines == 0)
            self.run_cycles.append(results[0].cycles)
            self.lines += 1


def split_streams(sel: np.ndarray, results_base, duts: int, classes: np.ndarray, scores: np.ndarray,
                  model_cycles: int, batch: int = 1, model_first: int | None = None) -> list[ResultsStream]:
    """The streams of one simulator process that ran images ``sel`` on ``duts`` copies: copy d ran
    ``sel[d::duts]`` and wrote ``<results_base>.d`` (see :mod:`sim.harness`). With an accelerator
    batch B > 1 the images form groups of B (the last one short) and copy d ran groups d, d + duts, ...
    ``model_first``: the cycles of each copy's first run, where they differ from ``model_cycles``."""
    if batch == 1:
        return [ResultsStream(sel[d::duts], f"{results_base}.{d}", classes, scores, model_cycles,
                              model_first=model_first)
                for d in range(min(duts, len(sel)))]
    groups = [sel[g:g + batch] for g in range(0, len(sel), batch)]
    return [ResultsStream(np.concatenate(groups[d::duts]), f"{results_base}.{d}", classes, scores, model_cycles,
                          batch, [len(g) for g in groups[d::duts]], model_first)
            for d in range(min(duts, len(groups)))]


def combine(streams: list[ResultsStream], n: int) -> dict:
    """Images scored, per-image classes (-1 where none), cycles (per image: its run's), the cycles
    of each accelerator run, mismatches and the first mismatch (lowest batch index) of all
    ``streams`` over a batch of ``n`` images."""
    classes = np.full(n, -1, np.int64)
    for s in streams:
        classes[s.sel[:s.board.done]] = s.board.classes
    firsts = [s.board.first_mismatch for s in streams if s.board.first_mismatch is not None]
    return {"images": sum(s.board.done for s in streams), "classes": classes.tolist(),
            "cycles": [c for s in streams for c in s.board.cycles],
            # every image's cycles equal the model's (a copy's first run: its latency)
            "cycles_match_model": all(s.board.cycles_match_model for s in streams),
            # the cycles of images after their copy's first run (the throughput's), and of first runs
            "steady_cycles": [c for s in streams for c, r in zip(s.board.cycles, _first_runs(s)) if not r],
            "first_cycles": [c for s in streams for c, r in zip(s.board.cycles, _first_runs(s)) if r],
            "run_cycles": [c for s in streams for c in s.run_cycles],
            "steady_run_cycles": [c for s in streams for c in s.run_cycles[1:]],  # after each copy's first run
            "mismatches": sum(s.board.mismatches for s in streams),
            "first_mismatch": min(firsts, key=lambda f: f["image"]) if firsts else None}


def _first_runs(stream: ResultsStream) -> list[bool]:
    """For each image the stream scored: did it run in the copy's first accelerator run?"""
    n0 = stream.groups[0] if stream.groups else 0
    return [j < n0 for j in range(stream.board.done)]
