"""hw/boards.py: the board top's protocol in Amaranth's simulator (a stub accelerator behind the
UART, driven bit by bit from the testbench), the platform glue and ``python -m hw.boards``."""
from __future__ import annotations

import gc
import json
from types import SimpleNamespace

import numpy as np
import pytest
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.board import (decode_result, decode_results, decode_version, encode_image, encode_images, encode_query,
                      encode_weights)
from hw.boards import BoardTop, board_design, frames_per_image, result_bytes

CLK_HZ, BAUD = 4000, 1000  # 4 cycles per bit: the fastest the UART allows, short simulations
DIV = CLK_HZ // BAUD
SCORE_STEP = 30000
SHAPE, CLASSES = (2, 5, 7), 4  # a small stub network: 70 pixels in, 4 scores out
REPLY = result_bytes(CLASSES)


class StubAccelerator(wiring.Component):
    """The accelerator's ports with a trivial function over a ``shape`` image and ``classes``
    scores: s = sum of the pixels, class = s % classes, score k = s - 30000 k (negative scores too);
    optional weight port that counts and sums bytes, ready every other cycle (back-pressure). Its
    ``program`` carries only what the board top reads (image shape, classes)."""

    def __init__(self, width: int = 20, weight_port: bool = False, ports=("i", "o"), shape=SHAPE, classes=CLASSES,
                 batch: int = 1):
        self.batch = batch  # B images per beat: pixel k of image b in bits 8b..8b+7, B values per beat
        value = signed(width) if batch == 1 else data.ArrayLayout(signed(width), batch)
        self.out_layout = data.StructLayout({"value": value, "last": unsigned(1)})
        self.program = SimpleNamespace(image_shape=tuple(shape), classes=classes)
        self.pixels, self.classes = int(np.prod(shape)), classes
        members = {"busy": Out(1), "done": Out(1)}
        if "i" in ports:
            members["i"] = In(stream.Signature(unsigned(8 * batch)))
        if "o" in ports:
            members["o"] = Out(stream.Signature(self.out_layout))
        if weight_port:
            members.update({"wl": In(stream.Signature(unsigned(8))), "wl_count": Out(32), "wl_sum": Out(32)})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        B = self.batch
        totals = [Signal(20, name=f"total{b}") for b in range(B)]
        n = Signal(range(self.pixels))
        beat = Signal(range(self.classes + 1))
        value = self.o.payload.value
        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [t.eq(t + self.i.payload[8 * b:8 * b + 8]) for b, t in enumerate(totals)]
                    m.d.sync += n.eq(n + 1)
                    with m.If(n == self.pixels - 1):
                        m.d.sync += beat.eq(0)
                        m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [self.busy.eq(1), self.o.valid.eq(1), self.o.payload.last.eq(beat == self.classes)]
                for b, t in enumerate(totals):
                    m.d.comb += (value if B == 1 else value[b]).eq(
                        Mux(beat == 0, t % self.classes, t - SCORE_STEP * (beat - 1)))
                with m.If(self.o.ready):
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(beat == self.classes):
                        m.d.sync += [t.eq(0) for t in totals] + [n.eq(0)]
                        m.next = "LOAD"
        if "wl" in self.signature.members:
            toggle = Signal()
            m.d.sync += toggle.eq(~toggle)
            m.d.comb += self.wl.ready.eq(toggle)
            with m.If(self.wl.valid & self.wl.ready):
                m.d.sync += [self.wl_count.eq(self.wl_count + 1), self.wl_sum.eq(self.wl_sum + self.wl.payload)]
        return m


def stub_result(image: np.ndarray, classes: int = CLASSES) -> tuple[int, list[int]]:
    s = int(image.astype(np.int64).sum())
    return s % classes, [s - SCORE_STEP * k for k in range(classes)]


def rtl_board(top: BoardTop, script: list, max_cycles: int = 400_000) -> tuple[bytes, dict]:
    """Run ``script`` on the board top: ("send", bytes) sends over ``rx``, ("expect", n) waits for n
    more reply bytes on ``tx``, ("idle", cycles) keeps the line idle. Returns every reply byte and,
    for a stub with a weight port, its counters."""
    replies = bytearray()
    extra = {}

    async def host_rx(ctx):  # background: decode tx in the middle of each bit
        while True:
            while ctx.get(top.tx):
                await ctx.tick()
            await ctx.tick().repeat(DIV // 2)
            bits = []
            for _ in range(9):
                await ctx.tick().repeat(DIV)
                bits.append(ctx.get(top.tx))
            assert bits[8] == 1, "stop bit low on tx"
            replies.append(sum(b << k for k, b in enumerate(bits[:8])))

    async def host(ctx):
        ctx.set(top.rx, 1)
        cycles = 0
        for op, arg in script:
            if op == "send":
                for byte in arg:
                    for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [1]:
                        ctx.set(top.rx, bit)
                        await ctx.tick().repeat(DIV)
            elif op == "idle":
                await ctx.tick().repeat(arg)
            elif op == "expect":
                want = len(replies) + arg
                while len(replies) < want:
                    await ctx.tick()
                    cycles += 1
                    assert cycles < max_cycles, f"no reply: got {bytes(replies)!r}"
        if "wl_count" in top.acc.signature.members:
            extra["wl_count"] = ctx.get(top.acc.wl_count)
            extra["wl_sum"] = ctx.get(top.acc.wl_sum)

    sim = Simulator(top)
    sim.add_clock(1 / CLK_HZ)
    sim.add_testbench(host)
    sim.add_testbench(host_rx, background=True)
    sim.run()
    return bytes(replies), extra


def make_top(**kw) -> BoardTop:
    acc_kw = {k: kw.pop(k) for k in ("width", "weight_port", "shape", "classes", "batch") if k in kw}
    return BoardTop(None, kw.pop("lanes", 4), CLK_HZ, BAUD, accelerator=StubAccelerator(**acc_kw), **kw)


# --------------------------------------------------------------------------- protocol
def test_query_and_unknown_command():
    replies, _ = rtl_board(make_top(lanes=6), [("send", encode_query()), ("expect", 8), ("send", b"\x00"),
                                                ("expect", 1), ("send", b"x?"), ("expect", 9)])
    assert replies[:8] == b"V\x03\x06\x02\x05\x07\x04\x01"  # version 3, 6 lanes, 2 x 5 x 7 images, 4 classes, batch 1
    assert decode_version(replies[:8]) == {"version": 3, "lanes": 6, "image_shape": [2, 5, 7], "classes": 4,
                                           "batch": 1}
    assert replies[8:] == b"EE" + replies[:8]


@pytest.mark.parametrize("ireg", [False, True])
def test_batch_board_interleaved_pixels_and_reply(ireg):
    """A batch-3 accelerator: '?' says batch 3, one 'I' carries the three images' pixels interleaved,
    the reply holds the three classes and every image's scores (negative ones sign-extended); also
    with the pixel beats through the input register (the ECP5 board tops)."""
    top = make_top(batch=3, shape=(1, 2, 3), classes=3, input_register=ireg)
    imgs = [np.array([[[200, 255, 1], [0, 9, 77]]], np.uint8) + b for b in range(3)]
    replies, _ = rtl_board(top, [("send", encode_query()), ("expect", 8),
                                 ("send", encode_images(imgs, (1, 2, 3))), ("expect", result_bytes(3, 3))])
    assert decode_version(replies[:8])["batch"] == 3
    assert decode_results(replies[8:], 3, 3) == [stub_result(img, 3) for img in imgs]


@pytest.mark.parametrize("shape, classes, ireg", [(SHAPE, CLASSES, False), ((1, 9, 6), 11, False),
                                                  ((1, 9, 6), 11, True)])
def test_image_class_and_scores(shape, classes, ireg):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2)]
    n_out = result_bytes(classes)
    script = []
    for img in images:
        script += [("send", encode_image(img, shape)), ("expect", n_out)]
    replies, _ = rtl_board(make_top(shape=shape, classes=classes, input_register=ireg), script)
    assert len(replies) == 2 * n_out
    for n, img in enumerate(images):
        assert decode_result(replies[n_out * n:n_out * (n + 1)], classes) == stub_result(img, classes)
    assert min(decode_result(replies[:n_out], classes)[1]) < 0  # negative scores travel sign-extended


def test_image_shape_and_classes_given_explicitly():
    """An accelerator without a program: the board top takes the shape and classes as parameters."""
    acc = StubAccelerator()
    del acc.program
    top = BoardTop(None, 4, CLK_HZ, BAUD, accelerator=acc, image_shape=SHAPE, classes=CLASSES)
    assert (top.image_shape, top.classes, top.image_bytes) == (SHAPE, CLASSES, 70)
    img = np.full(SHAPE, 2, np.uint8)
    replies, _ = rtl_board(top, [("send", encode_image(img, SHAPE)), ("expect", REPLY)])
    assert decode_result(replies, CLASSES) == stub_result(img)


def test_weights_without_a_weight_port_are_discarded():
    payload = bytes(range(1, 40))
    replies, _ = rtl_board(make_top(), [("send", encode_weights(payload)), ("expect", 1),
                                        ("send", encode_query()), ("expect", 7)])
    assert replies[:1] == b"E"
    assert replies[1:2] == b"V"  # the N bytes were not taken for commands


def test_weights_go_to_the_weight_port():
    payload = bytes((7 * k) & 0xFF for k in range(300))
    replies, extra = rtl_board(make_top(weight_port=True), [("send", encode_weights(payload)), ("expect", 1),
                                                            ("send", encode_weights(b"")), ("expect", 1)])
    assert replies == b"KK"
    assert extra == {"wl_count": len(payload), "wl_sum": sum(payload)}


@pytest.mark.parametrize("ireg", [False, True])
def test_half_sent_image_times_out_and_resets_the_accelerator(ireg):
    top = make_top(input_register=ireg)
    img = np.full(SHAPE, 3, np.uint8)
    replies, _ = rtl_board(top, [("send", encode_image(img, SHAPE)[:11]), ("expect", 1),
                                 ("send", encode_image(img, SHAPE)), ("expect", REPLY)])
    assert replies[:1] == b"E"
    assert decode_result(replies[1:], CLASSES) == stub_result(img)


def test_frames_per_image():
    assert frames_per_image((1, 28, 28), 10) == (785, 42)  # LeNet-5
    assert frames_per_image(SHAPE, CLASSES) == (71, 18)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_parameters_are_validated():
    with pytest.raises(ValueError, match="lanes"):
        make_top(lanes=0)
    with pytest.raises(ValueError, match="too fast"):
        BoardTop(None, 4, 4000, 2000, accelerator=StubAccelerator())
    with pytest.raises(ValueError, match="at most 32"):
        make_top(width=40)
    with pytest.raises(TypeError, match="'o' port"):
        BoardTop(None, 4, CLK_HZ, BAUD, accelerator=StubAccelerator(ports=("i",)))
    with pytest.raises(ValueError, match="one byte each"):
        make_top(shape=(1, 256, 4))
    with pytest.raises(ValueError, match="one byte each"):
        make_top(classes=0)
    acc = StubAccelerator()
    del acc.program
    with pytest.raises(TypeError, match="give image_shape and classes"):
        BoardTop(None, 4, CLK_HZ, BAUD, accelerator=acc)
    del acc
    gc.collect()  # the half-built components warn now, under this test's filter


# --------------------------------------------------------------------------- platforms
@pytest.mark.parametrize("board, pins", [
    ("icebreaker", ["set_io clk12_0__io 35", "set_io uart_0__rx__io 6", "set_io uart_0__tx__io 9"]),
    ("ulx3s", ['LOCATE COMP "clk25_0__io" SITE "G2"', 'LOCATE COMP "uart_0__rx__io" SITE "M1"',
               'LOCATE COMP "uart_0__tx__io" SITE "L4"']),
])
def test_board_design_pins_and_determinism(board, pins):
    pytest.importorskip("amaranth_boards")
    a = board_design(board, None, lanes=4, accelerator=StubAccelerator())
    b = board_design(board, None, lanes=4, accelerator=StubAccelerator())
    assert a == b  # a pure function of the inputs
    man = a["manifest"]
    cons = a["files"][man["files"]["constraints"]]
    for pin in pins:
        assert pin in cons
    assert man["divisor"] == {"icebreaker": 104, "ulx3s": 217}[board]
    assert f"module {man['top']}(" in a["files"][man["files"]["verilog"]]
    top_v = a["files"][man["files"]["board_top_verilog"]]
    for port in ("input clk;", "input rx;", "output tx;"):
        assert port in top_v


def test_cli_writes_verilog_constraints_manifest(q8_spec_dir, tmp_path, run_module):
    pytest.importorskip("amaranth_boards")
    r = run_module("hw.boards", "--board", "icebreaker", "--spec", q8_spec_dir, "--lanes", 4, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "icebreaker_lenet5_q8.json").read_text())
    assert man["device"] == "iCE40UP5K" and man["clk_hz"] == 12_000_000 and man["lanes"] == 4
    assert man["protocol_version"] == 3 and man["image_shape"] == [1, 28, 28] and man["classes"] == 10
    assert man["bytes_per_image"] == {"in": 785, "out": 42}
    for f in man["files"].values():
        assert (tmp_path / f).stat().st_size > 0
    assert "set_io uart_0__rx__io 6" in (tmp_path / man["files"]["constraints"]).read_text()


def test_cli_bad_input_one_error_line(tmp_path, run_module):
    r = run_module("hw.boards", "--board", "icebreaker", "--spec", tmp_path / "nope", "--out", tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: --spec {tmp_path / 'nope'}: no such directory"]
