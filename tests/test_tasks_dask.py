"""tasks.executor on a real Dask cluster: a scheduler and two worker processes on 127.0.0.1.

The same small sweep runs on the local executor and on Dask and must give the same results.json
(timings aside); a worker killed mid-run loses nothing; a scheduler that does not answer, an
unknown executor and a worker at another code version fail in one line.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from quantize.sweep import main as sweep_main
from tasks import executor

distributed = pytest.importorskip("distributed")

GRID = {"base": "q8", "weight_bits": [3, 4, 6, 8], "act_bits": [4, 8], "rounding": ["RND_CONV"], "acc_bits": [],
        "sensitivity_bits": [], "anna": False, "images": 300}
TIMING = ("seconds", "emulator_images_per_s")


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two single-threaded worker processes (spawned, as `dask worker` would be)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("grid") / "grid.json"
    p.write_text(json.dumps(GRID))
    return p


def sweep(out, grid_file, mnist_dir, *extra) -> int:
    return sweep_main(["--grid", str(grid_file), "--out", str(out), "--data", str(mnist_dir), "--no-progress",
                       "--synth", str(out / "no-synth"), *extra])


def rows(out) -> list[dict]:
    data = json.loads((out / "results.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMING} for r in data["points"]]


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory, grid_file, mnist_dir):
    out = tmp_path_factory.mktemp("local")
    assert sweep(out, grid_file, mnist_dir, "--jobs", "2") == 0
    return rows(out)


def test_sweep_on_dask_equals_local(cluster, local_rows, grid_file, mnist_dir, tmp_path, capsys):
    out = tmp_path / "dask"
    assert sweep(out, grid_file, mnist_dir, "--executor", "dask", "--scheduler", cluster.scheduler_address) == 0
    assert f"2 Dask worker(s) at {cluster.scheduler_address}" in capsys.readouterr().err
    assert rows(out) == local_rows
    # a second run computes nothing again
    assert sweep(out, grid_file, mnist_dir, "--executor", "dask", "--scheduler", cluster.scheduler_address) == 0
    assert f"{len(local_rows)} cached, 0 to run" in capsys.readouterr().err


def test_a_killed_worker_loses_nothing(cluster, local_rows, grid_file, mnist_dir, tmp_path):
    """SIGKILL one worker once the first point is cached: Dask reruns its tasks on the other (and
    the restarted) worker; every point is there once, equal to the local run."""
    out = tmp_path / "killed"
    result = {}
    t = threading.Thread(target=lambda: result.update(rc=sweep(out, grid_file, mnist_dir, "--executor", "dask",
                                                               "--scheduler", cluster.scheduler_address)))
    t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((out / "points").glob("*.json")):
        time.sleep(0.05)
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as c:
        pids = c.run(os.getpid)
    os.kill(sorted(pids.values())[0], signal.SIGKILL)
    t.join(300)
    assert not t.is_alive() and result.get("rc") == 0
    assert rows(out) == local_rows
    assert len(list((out / "points").glob("*.json"))) == len({r["key"] for r in local_rows})
    assert not list((out / "points").glob(".*"))  # no half-written cache entry


def test_scheduler_that_does_not_answer(grid_file, mnist_dir, tmp_path, capsys):
    t0 = time.monotonic()
    rc = sweep(tmp_path / "down", grid_file, mnist_dir, "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9")
    err = capsys.readouterr().err
    assert rc == 2 and time.monotonic() - t0 < 30
    assert err.count("\n") == 1 and "--scheduler tcp://127.0.0.1:9: no Dask scheduler answers within 5 s" in err


def test_scheduler_from_the_environment(monkeypatch, cluster):
    monkeypatch.setenv(executor.SCHEDULER_ENV, cluster.scheduler_address)
    with executor.make("dask") as ex:
        assert ex.workers == 2 and ex.address == cluster.scheduler_address


@pytest.mark.parametrize("args, words", [
    (("--executor", "slurm"), "--executor 'slurm': unknown (one of local, dask)"),
    (("--executor", "dask"), "--executor dask needs --scheduler tcp://HOST:PORT"),
    (("--scheduler", "tcp://127.0.0.1:9"), "--scheduler is for --executor dask"),
])
def test_bad_executor_flags(args, words, grid_file, mnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(executor.SCHEDULER_ENV, raising=False)
    assert sweep(tmp_path / "bad", grid_file, mnist_dir, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_worker_at_another_version_is_named(cluster, monkeypatch):
    """The workers run this checkout; this process pretends to be another one."""
    monkeypatch.setattr(executor, "code_digest", lambda: "0123456789abcdef")
    with pytest.raises(executor.UserError) as e:
        executor.make("dask", cluster.scheduler_address)
    msg = str(e.value)
    assert "differs from this machine: code " in msg and "(here 0123456789abcdef)" in msg and "tcp://" in msg


def _fails(ctx, item):
    if item == "bad":
        raise ValueError("this task fails")
    return item * 2


def test_a_failing_task_is_reported_and_the_rest_finish(cluster):
    with executor.make("dask", cluster.scheduler_address) as ex:
        out = dict(ex.run(_fails, {"token": "t"}, [("a", 1), ("b", "bad"), ("c", 3)], name="fails"))
    assert out["a"] == 2 and out["c"] == 6
    assert isinstance(out["b"], ValueError) and "this task fails" in str(out["b"])


def test_sim_shards_on_dask(cluster, tmp_path, capsys):
    """python -m sim --executor dask: a small random network's images as 3 shards on the two
    workers (Icarus: a quick build per worker), the same verdict and classes as the local runner."""
    import shutil

    import numpy as np

    from quantize.randspec import extreme_images, random_spec
    from sim.__main__ import main as sim_main
    from sim.runner import run

    if not (shutil.which("iverilog") and shutil.which("vvp")):
        pytest.skip("iverilog not installed (make install)")
    spec = random_spec(42)
    spec_dir = tmp_path / "spec"
    spec.save(spec_dir)
    images = extreme_images(spec, np.random.default_rng(0), 6)
    np.save(tmp_path / "images.npy", images)
    local = run(spec_dir, images, "icarus", 1, out=tmp_path / "local")
    rc = sim_main(["--spec", str(spec_dir), "--images", str(tmp_path / "images.npy"), "--simulator", "icarus",
                   "--lanes", "1", "--executor", "dask", "--scheduler", cluster.scheduler_address, "--shards", "3",
                   "--out", str(tmp_path / "dask"), "--json", "--quiet"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["executor"] == "dask" and res["shards"] == 3
    for k in ("images", "mismatches", "cycles_per_image", "cycles_per_image_model", "cycles_match_model"):
        assert res[k] == local[k], k
    assert res["images"] == 6 and res["mismatches"] == 0
    classes = json.loads((tmp_path / "dask" / "spec-L1" / "icarus-dask" / "result.json").read_text())["classes"]
    assert classes == json.loads((tmp_path / "local" / "spec-L1" / "icarus" / "result.json").read_text())["classes"]


def test_bench_with_the_dask_commands(grid_file, tmp_path, capsys, mnist_dir, monkeypatch):
    """python -m tasks.bench: `dask scheduler` and `dask worker --nworkers 2` started as commands,
    the same sweep on both executors, identical results."""
    from tasks.bench import main as bench_main

    monkeypatch.setenv("LENET_DATA", str(mnist_dir))
    assert bench_main(["--grid", str(grid_file), "--out", str(tmp_path / "bench"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["identical"] is True and r["points"] == 8 and r["workers"] == 2
    assert r["local_seconds"] > 0 and r["dask_seconds"] > 0
