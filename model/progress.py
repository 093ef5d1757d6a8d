"""Progress of long work: a live bar on a terminal, plain periodic lines in a log.

tqdm's bar is right for a person watching a terminal, but in a log (CI, ``make ... | tee``, a
file) its carriage returns pile up into one unreadable line. :class:`Progress` shows the bar only
when stderr is a terminal; otherwise it prints one plain line every ``LENET_PROGRESS_SECONDS``
seconds (default 10) and a last line when the work ends:

    sim q8: 420/1,000 images (42%), 35.1 images/s, 0 mismatches, 12 s

Every long command (training, QAT, the sweep, the RTL simulation) reports through it.
"""
from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("LENET_PROGRESS_SECONDS", "10")))
    except ValueError:
        return 10.0


class Progress:
    """``total`` units of work called ``unit``; ``update(n, **fields)`` as they finish.

    ``fields`` (e.g. ``mismatches=0``, ``loss=0.12``) are shown after the rate. ``enabled=False``
    prints nothing. ``terminal`` forces the bar (True) or the plain lines (False); by default it is
    whether ``stream`` is a terminal.
    """

    def __init__(self, total: int, unit: str, desc: str = "", enabled: bool = True, stream=None,
                 terminal: bool | None = None, initial: int = 0):
        self.total, self.unit, self.desc, self.enabled = int(total), unit, desc, enabled
        self.stream = stream or sys.stderr
        self.done = int(initial)
        self.fields: dict[str, object] = {}
        self.start = time.monotonic()
        self.last_line = self.start
        self.interval = _interval()
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.terminal = is_tty if terminal is None else terminal
        self.bar = None
        if enabled and self.terminal:
            self.bar = tqdm(total=self.total, initial=self.done, unit=unit, desc=desc or None, file=self.stream,
                            dynamic_ncols=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, **fields) -> None:
        self.done += n
        self.fields.update(fields)
        if not self.enabled:
            return
        if self.bar is not None:
            if fields:
                self.bar.set_postfix({k: _fmt(v) for k, v in self.fields.items()}, refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self._line()

    def describe(self, desc: str, **fields) -> None:
        """Change the label (e.g. the epoch) and the shown fields without counting work."""
        self.desc = desc
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.set_description(desc, refresh=False)
            if self.fields:
                self.bar.set_postfix({k: _fmt(v) for k, v in self.fields.items()}, refresh=False)

    def set(self, done: int, **fields) -> None:
        """Jump to ``done`` units (for work counted elsewhere, e.g. in files other processes write)."""
        self.update(done - self.done, **fields)

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        units = self.unit + ("es" if self.unit.endswith(("ch", "sh", "s", "x")) else "s")
        rate = f", {self.done / elapsed:,.1f} {units}/s" if elapsed > 0 and self.done else ""
        extra = "".join(f", {_fmt(v)} {k}" if isinstance(v, int) else f", {k} {_fmt(v)}"
                        for k, v in self.fields.items())
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{self.done:,}/{self.total:,} {units}{pct}{rate}{extra}, {elapsed:.0f} s"

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.terminal is False:
            self._line()
        self.enabled = False


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
