"""Your own CNN through the whole flow: PyTorch -> ONNX -> QuantSpec -> Verilog -> bit-exact simulation.

Run from anywhere (it runs the project's commands from the repository root)::

    .venv/bin/python examples/import_walkthrough.py                 # about 3 minutes
    .venv/bin/python examples/import_walkthrough.py --synth         # + the iCE40 UP5K build (1-2 min)
    .venv/bin/python examples/import_walkthrough.py --quick         # the test's reduced budget

Steps (docs/import.md explains each one):

1. train ``examples/small_cnn.py``'s SmallCNN (Conv-ReLU-MaxPool x 2, Linear) on MNIST, in this
   process (seeded, deterministic, one torch thread);
2. export it to ONNX (opset 17) with ``torch.onnx.export``;
3. ``python -m quantize --model OUT/small_cnn.onnx --preset q8 --input-mean 0.1307 --input-std 0.3081
   --out OUT/small_cnn-q8``: import, calibrate, write the QuantSpec;
4. ``python -m quantize.evaluate --model OUT/small_cnn.onnx ...`` (float, onnxruntime) and
   ``python -m quantize.evaluate --spec OUT/small_cnn-q8`` (q8, the bit-exact emulator): test errors;
5. ``python -m hw.generate --spec OUT/small_cnn-q8 --lanes 8 --fuse-pools --overlap-load --out OUT/verilog``:
   the Verilog (each pool runs in its conv's drain, the next image loads while this one runs);
6. ``python -m sim --spec OUT/small_cnn-q8 --images N --simulator verilator --lanes 8 --fuse-pools
   --overlap-load``: RTL == emulator;
7. (``--synth``) ``python -m hw.synth --spec OUT/small_cnn-q8 --target ice40-up5k --lanes 8 --batch 1
   --fuse-pools --overlap-load``: the design of steps 5 and 6, one image at a time (ReLU states are
   unsigned 8-bit codes, 9-bit operands, so two images cannot share a DSP block), at the UP5K's
   shipped clock.

Each step prints the command it runs and its result; a step that fails stops the walk-through
with its error (exit 1). The figures go to ``OUT/results.json`` (rewritten after every step, so a
failed run shows how far it got).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # model/, quantize/... even without the editable install

import small_cnn  # noqa: E402  (examples/ is on sys.path: this file's directory)

#: the design steps 5-7 generate, simulate and build: pools fused, the next image loaded while one runs
DESIGN = ("--fuse-pools", "--overlap-load")
#: what --quick changes (the test's budget: a couple of minutes on a busy 2-core machine)
QUICK = {"train_images": 5000, "epochs": 1, "sim_images": 20, "eval_images": 2000}


class StepFailed(Exception):
    pass


class Walkthrough:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"status": "running", "quick": args.quick, "steps": {}, "commands": []}
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------ helpers
    def rel(self, path: Path) -> str:
        """A path as the commands show it: relative to the repository root when inside it."""
        path = Path(path).resolve()
        try:
            return str(path.relative_to(REPO))
        except ValueError:
            return str(path)

    def data_args(self) -> list[str]:
        return ["--data", self.args.data] if self.args.data else []

    def header(self, n: int, title: str) -> None:
        print(f"\n[{n}] {title}", flush=True)

    def save(self) -> None:
        self.results["total_seconds"] = round(time.perf_counter() - self.t0, 1)
        tmp = self.out / ".results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1) + "\n")
        os.replace(tmp, self.out / "results.json")

    def run(self, step: str, module: str, *args: str, json_out: bool = False, ok_codes=(0,)) -> tuple[int, str, str]:
        """Run ``python -m module args`` from the repository root, show the command, echo its
        stderr as it comes (progress lines), and return (exit code, stdout, its error line)."""
        argv = [module, *map(str, args)]
        shown = "python -m " + " ".join(shlex.quote(a) for a in argv)
        print(f"$ {shown}", flush=True)
        self.results["commands"].append(shown)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        tail: list[str] = []

        def pump():
            for line in p.stderr:
                tail.append(line.rstrip("\n"))
                del tail[:-20]
                print("    " + line.rstrip("\n"), file=sys.stderr, flush=True)

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        try:
            stdout = p.stdout.read()
            p.wait()
        except BaseException:
            p.kill()
            raise
        th.join()
        dt = time.perf_counter() - t
        self.results["steps"].setdefault(step, {})
        self.results["steps"][step]["seconds"] = round(self.results["steps"][step].get("seconds", 0) + dt, 1)
        if not json_out:
            for line in stdout.splitlines():
                print("  " + line, flush=True)
        why = next((l for l in reversed(tail) if l.startswith("error:")), None) or (tail[-1] if tail else "")
        if p.returncode not in ok_codes:
            raise StepFailed(f"{step}: `{shown}` exited with {p.returncode}"
                             + (f": {why.removeprefix('error: ')}" if why else ""))
        return p.returncode, stdout, why

    @staticmethod
    def last_json(stdout: str) -> dict:
        for line in reversed(stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        raise StepFailed(f"expected a JSON line on stdout, got: {stdout.strip()[-300:]!r}")

    # ------------------------------------------------------------------ the steps
    def train(self) -> None:
        import torch

        from model import data

        a = self.args
        self.header(1, f"train SmallCNN on {a.train_images:,} MNIST training digits, {a.epochs} epoch(s) "
                       f"(seed {a.seed}, {a.threads} torch thread(s))")
        torch.set_num_threads(a.threads)
        tr, te = data.load("train", a.data), data.load("test", a.data)
        model, secs = small_cnn.train(tr.images[:a.train_images], tr.labels[:a.train_images], epochs=a.epochs,
                                      seed=a.seed, log=lambda m: print(m, flush=True))
        n_eval = a.eval_images or len(te.labels)
        err = small_cnn.test_error(model, te.images[:n_eval], te.labels[:n_eval])
        ckpt = self.out / "small_cnn.pt"
        torch.save({"state_dict": model.state_dict(), "input_mean": small_cnn.INPUT_MEAN,
                    "input_std": small_cnn.INPUT_STD, "epochs": a.epochs, "train_images": a.train_images,
                    "seed": a.seed}, ckpt)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"  {n_params:,} parameters, trained in {secs:.1f} s; float test error (torch) "
              f"{100 * err:.2f}% on {n_eval:,} test images; saved {self.rel(ckpt)}", flush=True)
        self.model = model
        self.results.update(parameters=n_params, train_images=a.train_images, epochs=a.epochs, seed=a.seed,
                            train_seconds=round(secs, 1), float_error_torch=err)
        self.results["steps"]["train"] = {"seconds": round(secs, 1)}

    def export(self) -> None:
        import torch

        self.header(2, "export to ONNX (opset 17)")
        self.onnx = self.out / "small_cnn.onnx"
        print(f">>> torch.onnx.export(model, torch.zeros(1, 1, 28, 28), {str(self.rel(self.onnx))!r}, "
              f"dynamo=False, opset_version=17, input_names=['image'], output_names=['scores'], "
              f"dynamic_axes={{'image': {{0: 'N'}}, 'scores': {{0: 'N'}}}})", flush=True)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(self.model, (torch.zeros(1, 1, 28, 28),), str(self.onnx), dynamo=False,
                              opset_version=17, input_names=["image"], output_names=["scores"],
                              dynamic_axes={"image": {0: "N"}, "scores": {0: "N"}})
        import onnx

        ops = [n.op_type for n in onnx.load(str(self.onnx)).graph.node]
        print(f"  wrote {self.rel(self.onnx)} ({self.onnx.stat().st_size:,} bytes): {' -> '.join(ops)}", flush=True)
        self.results["onnx"] = {"file": self.rel(self.onnx), "ops": ops}
        self.results["steps"]["export"] = {"seconds": round(time.perf_counter() - t, 1)}

    def quantize(self) -> None:
        self.header(3, "import and quantize (q8: 8-bit weights and states)")
        self.spec = self.out / "small_cnn-q8"
        self.run("quantize", "quantize", "--model", self.rel(self.onnx), "--preset", "q8",
                 "--input-mean", str(small_cnn.INPUT_MEAN), "--input-std", str(small_cnn.INPUT_STD),
                 "--out", self.rel(self.spec), *self.data_args())
        spec = json.loads((self.spec / "spec.json").read_text())
        self.results["spec"] = {"dir": self.rel(self.spec),
                                "layers": [f"{l['name']} {l['kind']}" + (f"/{l['activation']}" if l.get("activation") else "")
                                           for l in spec["layers"]]}

    def evaluate(self) -> None:
        a = self.args
        limit = ["--limit", str(a.eval_images)] if a.eval_images else []
        self.header(4, "test error: float (onnxruntime) and q8 (bit-exact emulator)"
                    + (f", first {a.eval_images:,} test images" if a.eval_images else ""))
        _, out, _ = self.run("evaluate", "quantize.evaluate", "--model", self.rel(self.onnx),
                          "--input-mean", str(small_cnn.INPUT_MEAN), "--input-std", str(small_cnn.INPUT_STD),
                          *limit, *self.data_args(), "--json", json_out=True)
        fl = self.last_json(out)
        _, out, _ = self.run("evaluate", "quantize.evaluate", "--spec", self.rel(self.spec), *limit,
                          *self.data_args(), "--json", json_out=True)
        q = self.last_json(out)
        self.results.update(eval_images=q["images"], float_error=fl["error_rate"], q8_error=q["error_rate"],
                            float_errors=fl["errors"], q8_errors=q["errors"])
        print(f"  float (onnxruntime): {100 * fl['error_rate']:.2f}% ({fl['errors']}/{fl['images']}); "
              f"q8 (emulator): {100 * q['error_rate']:.2f}% ({q['errors']}/{q['images']})", flush=True)

    def generate(self) -> None:
        a = self.args
        self.header(5, f"generate the accelerator's Verilog ({a.lanes} lanes, pools fused, load overlapped)")
        vdir = self.out / "verilog"
        _, out, _ = self.run("generate", "hw.generate", "--spec", self.rel(self.spec), "--lanes", str(a.lanes),
                          *DESIGN, "--out", self.rel(vdir))
        manifests = sorted(vdir.glob("*.json"), key=lambda p: p.stat().st_mtime)
        if not manifests:
            raise StepFailed(f"generate: no manifest in {vdir}")
        man = json.loads(manifests[-1].read_text())
        self.verilog = vdir / f"{man['top']}.v"
        self.results["verilog"] = {"file": self.rel(self.verilog), "top": man["top"], "lanes": a.lanes,
                                   "lines": len(self.verilog.read_text().splitlines())}
        self.results["cycles_per_image_model"] = man["cycles_per_image"]

    def simulate(self) -> None:
        a = self.args
        self.header(6, f"RTL vs emulator: {a.sim_images:,} MNIST test images in {a.simulator}")
        code, out, _ = self.run("simulate", "sim", "--spec", self.rel(self.spec), "--images", str(a.sim_images),
                             "--simulator", a.simulator, "--lanes", str(a.lanes), *DESIGN,
                             "--out", self.rel(self.out / "sim"), *self.data_args(), "--json", json_out=True,
                             ok_codes=(0, 1))
        r = self.last_json(out)
        # the runner generates the Verilog again from the spec (a pure function of spec and design)
        sim_v = REPO / r["verilog"]
        same = sim_v.read_bytes() == self.verilog.read_bytes() if sim_v.is_file() else None
        self.results["sim"] = {"simulator": r["simulator"], "images": r["images"],
                               "bit_exact": r["images"] - r["mismatches"], "mismatches": r["mismatches"],
                               "first_mismatch": r.get("first_mismatch"), "cycles_per_image": r["cycles_per_image"],
                               "cycles_match_model": r["cycles_match_model"], "images_per_s": r["images_per_s"],
                               "sim_seconds": r["sim_seconds"], "build_seconds": r["build_seconds"],
                               "verilog_same_as_step_5": same}
        self.results["cycles_per_image"] = r["cycles_per_image"]
        print(f"  {r['images'] - r['mismatches']:,}/{r['images']:,} images bit-exact (class and every score), "
              f"{r['cycles_per_image']:,} cycles/image (model {r['cycles_per_image_model']:,}); "
              f"{r['images_per_s']} images/s simulated, {r['build_seconds']} s build"
              + ("; the simulated Verilog is step 5's, byte for byte" if same else ""), flush=True)
        if code != 0:
            raise StepFailed(f"simulate: {r['mismatches']} mismatches"
                             + ("" if r["cycles_match_model"] else ", cycles differ from the model")
                             + (f"; first: {json.dumps(r['first_mismatch'])}" if r.get("first_mismatch") else ""))

    def synth(self) -> None:
        a = self.args
        self.header(7, f"iCE40 UP5K build (iCEBreaker board top, {a.lanes} lanes, batch 1, the shipped clock): "
                       "yosys + nextpnr")
        code, out, why = self.run("synth", "hw.synth", "--spec", self.rel(self.spec), "--target", "ice40-up5k",
                             "--lanes", str(a.lanes), "--batch", "1", *DESIGN, "--out", self.rel(self.out / "synth"),
                             "--json",
                             json_out=True, ok_codes=(0, 2))
        if code == 2:
            # one `error:` line; a design that does not fit the UP5K or misses its clock is a result
            # (recorded), anything else (a missing tool, ...) a failure
            if "does not fit" not in why and "timing not met" not in why:
                raise StepFailed(f"synth: {why}")
            self.results["up5k"] = {"error": why.removeprefix("error: ")}
            print(f"  not built: {why.removeprefix('error: ')}", flush=True)
            return
        r = self.last_json(out)
        keep = ("batch", "luts", "ffs", "dsps", "brams", "sprams", "logic_cells", "clock_mhz", "fmax_mhz",
                "cycles_per_image", "images_per_s", "images_per_s_at_fmax", "total_seconds", "bitstream")
        self.results["up5k"] = {k: r.get(k) for k in keep}
        print(f"  {r['luts']:,} LUT4 ({r['logic_cells']:,} of 5,280 logic cells), {r['ffs']:,} FF, {r['dsps']} DSP, "
              f"{r['brams']} BRAM, {r['sprams']} SPRAM; Fmax {r['fmax_mhz']} MHz ({r['clock_mhz']:g} MHz met); "
              f"{r['images_per_s']:,} images/s at {r['clock_mhz']:g} MHz (batch {r['batch']})", flush=True)

    def main(self) -> int:
        steps = [self.train, self.export, self.quantize, self.evaluate, self.generate, self.simulate]
        if self.args.synth:
            steps.append(self.synth)
        try:
            for s in steps:
                s()
                self.save()
        except StepFailed as e:
            self.results["status"] = f"failed: {e}"
            self.save()
            print(f"\nerror: {e}", file=sys.stderr)
            return 1
        self.results["status"] = "ok"
        self.save()
        r = self.results
        print(f"\nsummary ({r['total_seconds']:.0f} s): float error {100 * r['float_error']:.2f}%, "
              f"q8 error {100 * r['q8_error']:.2f}% ({r['eval_images']:,} test images); "
              f"{r['sim']['bit_exact']:,}/{r['sim']['images']:,} bit-exact in {r['sim']['simulator']}; "
              f"{r['cycles_per_image']:,} cycles/image"
              + (f"; UP5K {r['up5k']['luts']:,} LUT4, Fmax {r['up5k']['fmax_mhz']} MHz, "
                 f"{r['up5k']['images_per_s']:,} images/s" if r.get("up5k") and r["up5k"].get("luts") else "")
              + (f"; UP5K not built: {r['up5k']['error']}" if r.get("up5k", {}).get("error") else "")
              + f"\nwrote {self.rel(self.out / 'results.json')}", flush=True)
        return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="examples/import_walkthrough.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="build/example", help="output directory (default build/example)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 3; --quick 1)")
    p.add_argument("--train-images", type=int, default=None,
                   help="the first N MNIST training digits (default all 60,000; --quick 5,000)")
    p.add_argument("--eval-images", type=int, default=None,
                   help="test errors on the first N test images (default all 10,000; --quick 2,000)")
    p.add_argument("--sim-images", type=int, default=None, help="images to simulate (default 1,000; --quick 20)")
    p.add_argument("--simulator", default="verilator", choices=("verilator", "icarus"))
    p.add_argument("--lanes", type=int, default=8, help="MAC lanes of the accelerator (default 8)")
    p.add_argument("--synth", action="store_true", help="also build for the iCE40 UP5K (yosys + nextpnr, 1-2 min)")
    p.add_argument("--quick", action="store_true",
                   help="a reduced budget (5,000 training digits, 1 epoch, 2,000 test images, 20 simulated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1: deterministic "
                                                           "and fastest for this small model on a shared machine)")
    p.add_argument("--data", default=None, help="MNIST directory (default: $LENET_DATA, ./data/mnist, ../shared/data/mnist)")
    a = p.parse_args(argv)
    full = {"train_images": 60000, "epochs": 3, "sim_images": 1000, "eval_images": None}
    for k, v in (QUICK if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    for k in ("epochs", "train_images", "sim_images", "lanes", "threads"):
        if getattr(a, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be at least 1")
    if a.eval_images is not None and a.eval_images < 1:
        p.error("--eval-images must be at least 1")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return Walkthrough(args).main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
