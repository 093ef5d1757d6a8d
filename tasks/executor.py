"""One executor layer for every fan-out command: processes on this machine, or a Dask cluster.

A fan-out command (``quantize.sweep``, ``hw.explore``, ``sim``) turns its work into tasks: a
module-level function ``fn(context, item)``, one shared ``context`` (a dict with a ``token``: the
checkpoint or model and its images, sent once) and one ``item`` per task, each named by a content
key. :meth:`Executor.run` yields ``(key, result)`` as tasks finish, or ``(key, exception)`` for a
task that raised; the command keeps what finished (its own per-key cache), so an interrupted run
resumes and a result computed once is never computed again.

- ``--executor local`` (default): ``jobs`` spawned processes (``jobs`` 1: in this process).
- ``--executor dask --scheduler tcp://HOST:PORT`` (or ``$DASK_SCHEDULER_ADDRESS``): the tasks go
  to a running Dask scheduler; the context is scattered to every worker once. Before anything is
  submitted the workers are checked: each must import this project, at the same code digest
  (:func:`versions`), with the same numpy/torch/amaranth versions; a mismatch is named. A worker
  that dies mid-task is replaced by Dask, which reruns its tasks elsewhere.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator

from model.util import UserError

EXECUTORS = ("local", "dask")
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
CONNECT_SECONDS = 5
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "quantize", "hw", "sim", "tasks")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over this project's Python sources (the packages above): what a task's result depends on."""
    h = hashlib.sha256()
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def versions() -> dict:
    """What a worker must share with the client for its results to be the client's."""
    import numpy

    out = {"code": code_digest(), "python": platform.python_version(), "numpy": numpy.__version__}
    for name in ("torch", "amaranth"):
        with contextlib.suppress(ImportError):
            out[name] = __import__(name).__version__
    return out


# -- the context in a worker process -----------------------------------------------------------------
_CONTEXT: dict = {}


def _set_context(context: dict, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _CONTEXT.clear()
    _CONTEXT.update(context)


def _call(fn: Callable, item):
    return fn(_CONTEXT, item)


_MALLOC_TUNED = False


def _undo_nanny_malloc() -> None:
    """Give glibc back large allocation thresholds in a Dask worker (once per process).

    Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``. Setting any threshold
    turns off glibc's dynamic mmap threshold, which then stays at 128 KiB: every large numpy
    temporary is mmapped and unmapped again, and the emulator ran 40-70% slower in a worker than in
    a plain process (measured on this machine; ``make bench-dask``). 32 MiB is the top of the
    dynamic range glibc would have reached by itself."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD


def _context_call(fn: Callable, context: dict, item):
    _undo_nanny_malloc()
    return fn(context, item)


class Executor:
    """Runs ``fn(context, item)`` for every ``(key, item)``; see the module docstring."""

    kind = "local"
    workers = 1

    def run(self, fn: Callable, context: dict, items: list[tuple[str, object]], name: str = "task") \
            -> Iterator[tuple[str, object]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> str:
        return f"{self.workers} job(s)"


class LocalExecutor(Executor):
    """``jobs`` spawned processes of ``threads`` torch threads; one job runs in this process."""

    def __init__(self, jobs: int = 1, threads: int | None = None):
        if not isinstance(jobs, int) or jobs < 1:
            raise UserError(f"--jobs {jobs}: must be at least 1")
        self.workers = jobs
        self.threads = threads or (2 if jobs == 1 else 1)

    def run(self, fn, context, items, name="task"):
        if not items:
            return
        if self.workers == 1 or len(items) == 1:
            _set_context(context, self.threads)
            for key, item in items:
                try:
                    yield key, fn(context, item)
                except Exception as e:  # noqa: BLE001 - the caller decides what a failed task means
                    yield key, e
            return
        with ProcessPoolExecutor(max_workers=min(self.workers, len(items)), mp_context=get_context("spawn"),
                                 initializer=_set_context, initargs=(context, self.threads)) as ex:
            futs = {ex.submit(_call, fn, item): key for key, item in items}
            try:
                for fut in as_completed(futs):
                    e = fut.exception()
                    yield futs[fut], (e if e is not None else fut.result())
            except BaseException:
                for f in futs:
                    f.cancel()
                raise


class DaskExecutor(Executor):
    """Tasks on a running Dask scheduler (``tcp://HOST:PORT``)."""

    kind = "dask"

    def __init__(self, address: str, connect_seconds: float = CONNECT_SECONDS):
        try:
            from distributed import Client
        except ImportError:
            raise UserError("--executor dask needs the dask and distributed packages (make install)") from None
        self.address = address
        try:
            self.client = Client(address, timeout=f"{connect_seconds}s", set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise UserError(f"--scheduler {address}: no Dask scheduler answers within {connect_seconds:g} s "
                            f"({type(e).__name__})") from None
        try:
            self.workers = self._check_workers(connect_seconds)
        except BaseException:
            self.client.close()
            raise

    def _check_workers(self, seconds: float) -> int:
        info = self.client.scheduler_info()
        if not info.get("workers"):
            try:
                self.client.wait_for_workers(1, timeout=seconds)
            except (TimeoutError, OSError):
                raise UserError(f"--scheduler {self.address}: the scheduler has no workers (start some: "
                                "docs/cluster.md)") from None
        try:
            theirs = self.client.run(versions)
        except Exception as e:  # a worker without the project cannot even unpickle the function
            raise UserError(f"--scheduler {self.address}: a worker cannot run this project's code "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); install "
                            "it on every worker (docs/cluster.md)") from None
        ours = versions()
        for worker, v in sorted(theirs.items()):
            diff = [f"{k} {v.get(k)} (here {ours[k]})" for k in ours if v.get(k) != ours[k]]
            if diff:
                raise UserError(f"--scheduler {self.address}: worker {worker} differs from this machine: "
                                + ", ".join(diff) + "; install the same checkout on every worker (docs/cluster.md)")
        return len(theirs)

    def describe(self) -> str:
        return f"{self.workers} Dask worker(s) at {self.address}"

    def run(self, fn, context, items, name="task"):
        from distributed import as_completed as dask_completed

        if not items:
            return
        ctx = self.client.scatter(context, broadcast=True, hash=False)
        futs = {self.client.submit(_context_call, fn, ctx, item, key=f"{name}-{key}", pure=False, retries=1): key
                for key, item in items}
        try:
            with self.client.as_current():
                done = dask_completed(list(futs))
            for fut in done:
                key = futs[fut]
                if fut.status == "error":
                    yield key, fut.exception()
                else:
                    yield key, fut.result()
        finally:
            self.client.cancel([f for f in futs if not f.done()])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def add_arguments(parser) -> None:
    """``--executor`` and ``--scheduler`` for a fan-out command's parser."""
    parser.add_argument("--executor", default="local",
                        help="local (processes on this machine; default) or dask (a running Dask scheduler)")
    parser.add_argument("--scheduler", default=None,
                        help=f"--executor dask: the scheduler's address, tcp://HOST:PORT (default ${SCHEDULER_ENV})")


def make(kind: str = "local", scheduler: str | None = None, jobs: int = 1) -> Executor:
    """The executor ``--executor kind`` names; one UserError line for a bad choice."""
    if kind not in EXECUTORS:
        raise UserError(f"--executor {kind!r}: unknown (one of {', '.join(EXECUTORS)})")
    if kind == "local":
        if scheduler:
            raise UserError("--scheduler is for --executor dask")
        return LocalExecutor(jobs)
    address = scheduler or os.environ.get(SCHEDULER_ENV)
    if not address:
        raise UserError(f"--executor dask needs --scheduler tcp://HOST:PORT (or ${SCHEDULER_ENV})")
    return DaskExecutor(address)
