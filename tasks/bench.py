"""``python -m tasks.bench``: the same sweep on the local executor and on Dask, timed and compared.

Runs ``python -m quantize.sweep`` twice into fresh directories: with ``--executor local --jobs J``,
then with ``--executor dask`` against a scheduler started here with the real ``dask scheduler``
and ``dask worker`` commands (J single-threaded worker processes; or ``--scheduler ADDR`` for one
you started). Prints both wall times, Dask's overhead and whether ``results.json`` is identical
apart from timings; ``--json`` for one object. ``make bench-dask`` runs the default 142-point sweep.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model.util import UserError, cli

TIMING = ("seconds", "emulator_images_per_s")


def _points(out: Path) -> list[dict]:
    data = json.loads((out / "results.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMING} for r in data["points"]]


def _sweep(out: Path, args: list[str]) -> float:
    t0 = time.perf_counter()
    # its own process group: an interrupted bench stops the sweep's worker processes too (killing
    # the sweep alone left its process pool running)
    p = subprocess.Popen([sys.executable, "-m", "quantize.sweep", "--out", str(out), "--no-progress", *args],
                         start_new_session=True)
    try:
        p.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    if p.returncode:
        raise UserError(f"the sweep ({' '.join(args)}) failed with exit code {p.returncode}")
    return time.perf_counter() - t0


class LocalDask:
    """``dask scheduler`` + ``dask worker`` processes on 127.0.0.1, stopped on exit."""

    def __init__(self, workers: int):
        dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
        if dask is None:
            raise UserError("the dask command is not installed (make install)")
        self.tmp = tempfile.TemporaryDirectory(prefix="lenet-hw-dask-")
        sfile = Path(self.tmp.name) / "scheduler.json"
        self.procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                        "--scheduler-file", str(sfile)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)]
        deadline = time.monotonic() + 60
        while not sfile.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not sfile.is_file():
            self.close()
            raise UserError("dask scheduler did not start within 60 s")
        self.address = json.loads(sfile.read_text())["address"]
        self.procs.append(subprocess.Popen([dask, "worker", self.address, "--nworkers", str(workers), "--nthreads",
                                            "1", "--no-dashboard"], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(self.address, set_as_default=False) as c:
            c.wait_for_workers(workers, timeout=120)

    def close(self):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.tmp.cleanup()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tasks.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2, help="local processes, and Dask workers started here")
    p.add_argument("--scheduler", default=None, help="use this running scheduler instead of starting one")
    p.add_argument("--grid", default=None, help="sweep grid JSON (default: the sweep's 142 points)")
    p.add_argument("--out", default="build/reports/bench-dask")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a kill stops the scheduler and workers started here
    try:
        return _bench(a)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _bench(a) -> int:
    if a.jobs < 1:
        raise UserError("--jobs must be at least 1")
    out = Path(a.out)
    for d in ("local", "dask"):
        shutil.rmtree(out / d, ignore_errors=True)
    grid = ["--grid", a.grid] if a.grid else []
    local_s = _sweep(out / "local", ["--executor", "local", "--jobs", str(a.jobs), *grid])
    cluster = None if a.scheduler else LocalDask(a.jobs)
    try:
        address = a.scheduler or cluster.address
        dask_s = _sweep(out / "dask", ["--executor", "dask", "--scheduler", address, *grid])
    finally:
        if cluster:
            cluster.close()
    local, dask = _points(out / "local"), _points(out / "dask")
    res = {"points": len(local), "local_seconds": round(local_s, 1), "dask_seconds": round(dask_s, 1),
           "overhead": round(dask_s / local_s - 1, 4), "identical": local == dask, "workers": a.jobs}
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{res['points']} points: local ({a.jobs} processes) {res['local_seconds']} s, Dask ({a.jobs} workers) "
              f"{res['dask_seconds']} s: overhead {100 * res['overhead']:+.1f}%; results "
              + ("identical" if res["identical"] else "DIFFER"))
    return 0 if res["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
