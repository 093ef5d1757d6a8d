"""cocotb testbench for the board top (:class:`hw.boards.BoardTop`): a real UART on its pins.

cocotbext-uart's ``UartSource``/``UartSink`` drive ``rx`` and watch ``tx`` of the emitted Verilog
of the whole board top (UART receiver and transmitter, protocol FSM, accelerator), as a host on a
serial line would: ``?`` first (its announcement checked against the spec: protocol version, image
shape, classes), then each image with ``I``, checking the class and every score against the
emulator's golden values (written by :func:`run`, never computed here), then an unknown command.

``run(spec_dir, images)`` generates the Verilog (clock 100 MHz nominal, ``clk_hz / baud`` = 8: the
UART is as fast as the receiver allows, the simulated time goes into the accelerator), builds it
with ``cocotb_tools.runner`` and runs the test; ``python -m sim.tb_board --spec DIR [--images N]``
does the same from the command line.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

try:
    import cocotb
    from cocotb.triggers import RisingEdge, with_timeout
except ImportError:  # the runner half needs only cocotb_tools
    cocotb = None

PERIOD_NS = 10
CLK_HZ = 1_000_000_000 // PERIOD_NS
DIVISOR = 8
BAUD = CLK_HZ // DIVISOR
TOP = "lenet_board"
HARNESS = "lenet_board_harness"
CONFIG_ENV = "LENET_BOARD_CONFIG"


# --------------------------------------------------------------------------- cocotb half
if cocotb is not None:

    async def _read_exact(sink, n: int, timeout_ns: int) -> bytes:
        """``n`` bytes from the UART sink, or as many as came before the timeout."""
        buf = bytearray()

        async def fill():
            while len(buf) < n:
                buf.extend(await sink.read(1))  # read(k) wants k bytes already queued

        try:
            await with_timeout(fill(), timeout_ns, "ns")
        except TimeoutError:
            pass
        return bytes(buf)

    @cocotb.test()
    async def board_matches_emulator(dut):
        from cocotbext.uart import UartSink, UartSource

        from hw.board import check_board, decode_result, decode_version, encode_image, encode_query
        from hw.boards import VERSION_BYTES, result_bytes

        with open(os.environ[CONFIG_ENV]) as f:
            cfg = json.load(f)
        images = np.load(cfg["images"])
        golden = np.load(cfg["golden"])
        shape, classes = cfg["image_shape"], cfg["classes"]
        reply_bytes = result_bytes(classes)
        frame_ns = 10 * cfg["divisor"] * PERIOD_NS
        # a reply must come within the accelerator's compute time plus its own bytes (and margin)
        reply_timeout = 2 * cfg["cycles_per_image"] * PERIOD_NS + 2 * reply_bytes * frame_ns

        source = UartSource(dut.rx, baud=cfg["baud"], bits=8, stop_bits=1)
        sink = UartSink(dut.tx, baud=cfg["baud"], bits=8, stop_bits=1)
        dut.rst.value = 1
        for _ in range(4):
            await RisingEdge(dut.clk)
        dut.rst.value = 0
        for _ in range(4):
            await RisingEdge(dut.clk)

        results = {"version": None, "classes": [], "scores": [], "mismatches": 0, "first_mismatch": None,
                   "seconds_per_image": [], "unknown_command": None}
        await source.write(encode_query())
        reply = await _read_exact(sink, VERSION_BYTES, 4 * VERSION_BYTES * frame_ns)
        results["version"] = decode_version(reply)
        check_board(results["version"], SimpleNamespace(input_shape=shape, classes=classes))

        for n, img in enumerate(images):
            t0 = time.perf_counter()
            msg = encode_image(img, shape)
            await source.write(msg)
            reply = await _read_exact(sink, reply_bytes, len(msg) * frame_ns + reply_timeout)
            cls, scores = decode_result(reply, classes)  # a short or wrong reply raises: the test fails
            results["seconds_per_image"].append(round(time.perf_counter() - t0, 2))
            results["classes"].append(cls)
            results["scores"].append(scores)
            # scoreboard: integer equality with the emulator's golden values
            exp_cls, exp_scores = int(golden["predictions"][n]), [int(v) for v in golden["scores"][n]]
            if cls != exp_cls or scores != exp_scores:
                results["mismatches"] += 1
                if results["first_mismatch"] is None:
                    k = next((j for j in range(len(scores)) if scores[j] != exp_scores[j]), None)
                    results["first_mismatch"] = {
                        "image": n, "class": {"expected": exp_cls, "actual": cls}, "score_index": k,
                        "expected": exp_scores[k] if k is not None else None,
                        "actual": scores[k] if k is not None else None}

        await source.write(b"\x00")
        results["unknown_command"] = (await _read_exact(sink, 1, 4 * frame_ns)).decode("latin-1")
        with open(cfg["result"], "w") as f:
            json.dump(results, f)


# --------------------------------------------------------------------------- runner half
def harness_verilog(top: str = TOP, period_ns: int = PERIOD_NS) -> str:
    """The clock lives in the simulator (no Python callback per edge); cocotb drives ``rx``."""
    return f"""`timescale 1ns/1ps
// generated by sim/tb_board.py: clock around {top}
module {HARNESS}(output reg clk, input rst, input rx, output tx, output led);
  initial clk = 1'b0;
  always #{period_ns / 2} clk = ~clk;
  {top} dut(.clk(clk), .rst(rst), .rx(rx), .tx(tx), .led(led));
endmodule
"""


def prepare_board_verilog(spec, spec_dir: Path, lanes: int, out: Path, program=None) -> Path:
    """The board top's Verilog in ``out``, regenerated only when the spec, lanes or the hw/ sources
    it is made from changed. ``program``: the spec compiled for ``lanes``, if the caller has it."""
    from hw.accelerator import Accelerator
    from hw.boards import BoardTop
    from hw.emit import emit_verilog

    h = hashlib.sha256()
    for f in ("spec.json", "weights.npz"):
        h.update((spec_dir / f).read_bytes())
    hw_dir = Path(__file__).resolve().parents[1] / "hw"
    for f in sorted(hw_dir.glob("*.py")):
        h.update(f.read_bytes())
    h.update(repr((lanes, CLK_HZ, BAUD)).encode())
    key = h.hexdigest()[:16]
    vpath, stamp = out / f"{TOP}.v", out / "key.txt"
    if not (stamp.is_file() and stamp.read_text() == key and vpath.is_file()):
        from model.util import atomic_write_text

        acc = Accelerator(spec, lanes, program=program)
        # the accelerator's own Verilog emission (hw.emit: clocked blocks merged, faster in Icarus)
        text = emit_verilog(BoardTop(spec, lanes, CLK_HZ, BAUD, accelerator=acc), TOP)
        atomic_write_text(vpath, text)
        atomic_write_text(stamp, key)
    return vpath


def run(spec_dir, images: np.ndarray, simulator: str = "icarus", lanes: int = 8,
        out: str | os.PathLike = "build/sim-board", waves: bool = False) -> dict:
    """Send ``images`` (uint8, the spec's C x H x W input or what :func:`model.data.fit_images` adapts
    to it) to the simulated board over its UART pins; compare with the emulator. Returns the
    testbench's results (classes, scores, mismatches, first_mismatch, ...)."""
    from hw.perf import cycles_per_image
    from hw.program import compile_spec
    from model.data import fit_images
    from model.util import UserError, atomic_write_bytes, atomic_write_text
    from quantize import spec as qspec
    from quantize.emulator import Emulator
    from sim.build import build, check_simulator, icarus_copy

    check_simulator(simulator)
    spec_dir = Path(spec_dir)
    spec = qspec.load(spec_dir)
    images = fit_images(np.asarray(images), spec.input_shape)
    try:
        prog = compile_spec(spec, lanes)
    except ValueError as e:
        raise UserError(str(e)) from None
    work = Path(out) / f"{spec_dir.resolve().name}-L{lanes}"
    vpath = prepare_board_verilog(spec, spec_dir, lanes, work, prog)
    if simulator == "icarus":
        vpath = icarus_copy(vpath)
    hpath = work / f"{HARNESS}.v"
    htext = harness_verilog()
    if not hpath.is_file() or hpath.read_text() != htext:
        atomic_write_text(hpath, htext)

    run_dir = work / simulator
    tb = build(simulator, [hpath, vpath], HARNESS, run_dir, public=True, waves=waves)

    test_dir = run_dir / "test"
    test_dir.mkdir(parents=True, exist_ok=True)
    r = Emulator(spec).run(images, keep=False)
    np.save(test_dir / "images.npy", np.ascontiguousarray(images))
    buf = io.BytesIO()
    np.savez(buf, scores=r.scores, predictions=r.predictions)
    atomic_write_bytes(test_dir / "golden.npz", buf.getvalue())
    result_path = test_dir / "result.json"
    cfg = {"images": str((test_dir / "images.npy").resolve()), "golden": str((test_dir / "golden.npz").resolve()),
           "result": str(result_path.resolve()), "baud": BAUD, "divisor": DIVISOR, "lanes": lanes,
           "cycles_per_image": cycles_per_image(spec, lanes, program=prog),
           "image_shape": list(prog.image_shape), "classes": prog.classes}
    cfg_path = test_dir / "config.json"
    atomic_write_text(cfg_path, json.dumps(cfg))
    if result_path.exists():
        result_path.unlink()
    t0 = time.perf_counter()
    err = tb.run_test("sim.tb_board", test_dir, env={CONFIG_ENV: str(cfg_path.resolve())})
    if not result_path.is_file():
        raise UserError(f"the board simulation produced no result ({err or 'the test did not finish'}); "
                        f"see {test_dir / 'sim.log'}")
    res = json.loads(result_path.read_text())
    res.update({"simulator": simulator, "lanes": lanes, "images": len(images), "sim_seconds": round(time.perf_counter() - t0, 2),
                "expected_lanes": lanes, "log": str(test_dir / "sim.log")})
    return res


def main(argv=None):
    from model import data
    from model.util import UserError, cli

    @cli
    def _main(argv):
        p = argparse.ArgumentParser(prog="python -m sim.tb_board",
                                    description="Simulate the board top with a UART host model; compare with the emulator.")
        p.add_argument("--spec", required=True, help="QuantSpec directory")
        p.add_argument("--images", type=int, default=1, help="the first N MNIST test images")
        p.add_argument("--lanes", type=int, default=8)
        p.add_argument("--simulator", default=os.environ.get("SIM", "icarus"))
        p.add_argument("--data", default=None, help="MNIST directory")
        p.add_argument("--out", default="build/sim-board")
        p.add_argument("--waves", action="store_true")
        args = p.parse_args(argv)
        if not Path(args.spec).is_dir():
            raise UserError(f"--spec {args.spec}: no such directory")
        if args.images < 1:
            raise UserError("--images must be at least 1")
        res = run(args.spec, data.load("test", args.data).images[:args.images], args.simulator, args.lanes,
                  args.out, args.waves or os.environ.get("WAVES") == "1")
        print(json.dumps({k: res[k] for k in ("images", "mismatches", "first_mismatch", "version", "unknown_command",
                                              "sim_seconds")}))
        return 1 if res["mismatches"] else 0

    return _main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
