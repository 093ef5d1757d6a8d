"""Board tops: the accelerator behind a UART, for the iCEBreaker (iCE40 UP5K) and the ULX3S (ECP5-85F).

``python -m hw.boards --board {icebreaker,ulx3s} --spec DIR [--lanes P] [--baud B] --out DIR`` writes
the board top's Verilog, the platform top (pins, clock and reset glue) as RTLIL and Verilog, the
pin constraints (.pcf / .lpf) and a JSON manifest; building the bitstream is :mod:`hw.synth`'s job.

Protocol (version 3, see ``docs/board-protocol.md``), 8N1 at ``baud`` (115200 by default), one
command at a time: the host waits for each reply before sending the next command. The images and
the reply are sized by the spec and the accelerator's batch B (B images in lockstep): B x C x H x W
pixels in, B classes and B x ``classes`` scores out (LeNet-5 at batch 1: 1 x 28 x 28 and 10).

========================================  ===============================================================
host sends                                board answers
========================================  ===============================================================
``I`` (0x49), B * C * H * W bytes: B     ``R`` (0x52), the B classes (1 byte each), then per class j
uint8 images, channel by channel, raster  the scores j of images 0..B-1, each 4 bytes little-endian
order, pixel k of images 0..B-1 together  two's complement (sign-extended score)
``W`` (0x57), length N (4 bytes little-   ``K`` (0x4B) once the N bytes went to the accelerator's weight
endian), N bytes                          port; ``E`` (0x45) after discarding them if it has none
``?`` (0x3F)                              ``V`` (0x56), protocol version (3), lanes, C, H, W, classes,
                                          batch B (one byte each: 8 bytes)
any other byte                            ``E`` (0x45)
========================================  ===============================================================

If the host stops in the middle of a command's bytes (no byte for ``timeout_s``, 0.1 s by
default), the board resets the accelerator, answers ``E`` and waits for a new command.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from model.util import UserError, atomic_write_text, cli

from .platforms import BOARDS, PlatformTop, ecp5_pll, ice40_pll, platform_for
from .uart import UARTReceiver, UARTTransmitter, divisor_for

PROTOCOL_VERSION = 3
SCORE_BYTES = 4
VERSION_BYTES = 8  # 'V', version, lanes, channels, height, width, classes, batch
CMD_IMAGE, CMD_WEIGHTS, CMD_QUERY = 0x49, 0x57, 0x3F  # 'I', 'W', '?'
REPLY_RESULT, REPLY_OK, REPLY_ERROR, REPLY_VERSION = 0x52, 0x4B, 0x45, 0x56  # 'R', 'K', 'E', 'V'
DEFAULT_BAUD = 115200
DEFAULT_TIMEOUT_S = 0.1


def result_bytes(classes: int, batch: int = 1) -> int:
    """Bytes of the reply to an ``I`` command: ``R``, ``batch`` classes, ``batch * classes`` 4-byte scores."""
    return 1 + batch * (1 + SCORE_BYTES * classes)


def frames_per_image(image_shape, classes: int, batch: int = 1) -> tuple[int, int]:
    """UART frames (bytes) of one ``I`` command (``batch`` images): (in: ``I`` and the pixels, out: the reply)."""
    c, h, w = image_shape
    return 1 + batch * c * h * w, result_bytes(classes, batch)


def version_reply(lanes: int, image_shape, classes: int, batch: int = 1) -> bytes:
    """The board's answer to ``?``: ``V``, version, lanes, channels, height, width, classes, batch."""
    return bytes([REPLY_VERSION, PROTOCOL_VERSION, lanes, *image_shape, classes, batch])


class BoardTop(wiring.Component):
    """The accelerator behind a UART that speaks the board protocol (module docstring).

    Parameters
    ----------
    spec : QuantSpec
        The network; ignored when ``accelerator`` is given.
    lanes : int
        MAC lanes of the accelerator (also reported by the ``?`` command).
    clk_hz, baud : int
        Clock frequency and UART baud rate; the bit period is ``clk_hz // baud`` cycles (at least 4,
        within 2% of ``baud``).
    timeout_s : float
        A command whose bytes stop arriving for this long is abandoned (accelerator reset, ``E``).
    accelerator : wiring.Component, optional
        Any component with the accelerator's ports (``i``, ``o``, optional ``wl``); by default
        ``Accelerator(spec, lanes)``.
    image_shape, classes : optional
        The (C, H, W) of an image and the number of scores, announced by ``?`` and sizing the
        ``I`` command; by default the accelerator's ``program.image_shape`` and
        ``program.classes`` (give them for an accelerator without a program, e.g. a stub).
    input_register : bool
        Pass the accelerator's pixel beats through a register (its valid and payload), so the
        protocol's decisions and the accelerator's loader are not one path (every board top uses it:
        on the ECP5 the two sit far apart, on the full UP5K that path set the clock).

    Ports: ``rx`` (from the host), ``tx`` (to the host), ``led`` (high while an image is being
    received, computed or answered).

    Latency: an image's reply starts as soon as the accelerator's first output beat is ready, i.e.
    :func:`hw.perf.cycles_per_image` cycles after the image's last byte (less the load cycles that
    overlapped the reception); the reply takes ``result_bytes(classes) * 10 * divisor`` cycles.
    Throughput: one image per ``sum(frames_per_image(...)) * 10 * divisor`` cycles plus the
    compute (LeNet-5: (785 + 42) frames, about 13 images/s at 115200 baud).
    """

    def __init__(self, spec=None, lanes: int = 8, clk_hz: int = 12_000_000, baud: int = DEFAULT_BAUD,
                 timeout_s: float = DEFAULT_TIMEOUT_S, accelerator=None, image_shape=None, classes=None,
                 input_register: bool = False):
        if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= 255:
            raise ValueError(f"lanes must be an integer from 1 to 255 (one byte in the '?' reply), got {lanes!r}")
        self.divisor = divisor_for(clk_hz, baud)
        self.clk_hz, self.baud, self.lanes = int(clk_hz), int(baud), lanes
        if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        # never shorter than a few frames, so a slow but steady host is not cut off
        self.timeout_cycles = max(int(self.clk_hz * timeout_s), 4 * 10 * self.divisor)
        if accelerator is None:
            from .accelerator import Accelerator

            accelerator = Accelerator(spec, lanes)
        members = accelerator.signature.members
        for name in ("i", "o"):
            if name not in members:
                raise TypeError(f"the accelerator has no '{name}' port")
        prog = getattr(accelerator, "program", None)
        if image_shape is None and prog is not None:
            image_shape = prog.image_shape
        if classes is None and prog is not None:
            classes = prog.classes
        if image_shape is None or classes is None:
            raise TypeError("the accelerator has no program: give image_shape and classes")
        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 255
                                            for v in (*image_shape, classes)):
            raise ValueError(f"image_shape (C, H, W) and classes must be integers from 1 to 255 (one byte each in "
                             f"the '?' reply), got {image_shape!r} and {classes!r}")
        self.acc = accelerator
        self.input_register = bool(input_register)
        self.image_shape, self.classes = image_shape, classes
        self.batch = getattr(accelerator, "batch", 1)
        if not isinstance(self.batch, int) or not 1 <= self.batch <= 255:
            raise ValueError(f"the accelerator's batch must be 1..255 (one byte in the '?' reply), got {self.batch!r}")
        self.image_bytes = image_shape[0] * image_shape[1] * image_shape[2] * self.batch
        self.has_weight_port = "wl" in members
        self.score_width = len(accelerator.o.payload.value) // self.batch
        if self.score_width > 8 * SCORE_BYTES:
            raise ValueError(f"scores are {self.score_width} bits wide; the protocol carries at most {8 * SCORE_BYTES}")
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "led": Out(1)})

    def elaborate(self, platform):
        m = Module()
        acc_reset = Signal()
        m.submodules.acc = ResetInserter(acc_reset)(self.acc)
        m.submodules.uart_rx = urx = UARTReceiver(self.divisor)
        m.submodules.uart_tx = utx = UARTTransmitter(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        # received bytes pass a two-entry FIFO: its flags are registers, so the protocol's decisions
        # (and the accelerator's ready) do not form one path with the receiver's
        m.submodules.rx_fifo = fifo = SyncFIFO(width=8, depth=2)
        m.d.comb += [fifo.w_data.eq(urx.o.payload), fifo.w_en.eq(urx.o.valid), urx.o.ready.eq(fifo.w_rdy)]
        acc, rx = self.acc, SimpleNamespace(valid=fifo.r_rdy, ready=fifo.r_en, payload=fifo.r_data)

        B = self.batch
        beat = acc.i  # where the protocol puts a pixel beat: the accelerator, or the input register
        if self.input_register:
            beat = SimpleNamespace(valid=Signal(), ready=Signal(), payload=Signal.like(acc.i.payload))
            full = Signal()
            m.d.comb += [acc.i.valid.eq(full), beat.ready.eq(~full)]  # one beat at a time: no ready path
            with m.If(acc.i.valid & acc.i.ready):
                m.d.sync += full.eq(0)
            with m.If(beat.valid & beat.ready):
                m.d.sync += [full.eq(1), acc.i.payload.eq(beat.payload)]
            with m.If(acc_reset):  # an abandoned command's beat is dropped with the accelerator's state
                m.d.sync += full.eq(0)
        # the reply, one byte at a time: ``txi`` counts the bytes of the current unit down to 0, from
        # a source that holds still while they go out (the '?' answer, a constant; a one-byte answer,
        # a register; the accelerator's output beat, which is taken when its last byte has moved).
        # ``tx_busy`` is "bytes left" as a register: the protocol's decisions read no compare
        version = version_reply(self.lanes, self.image_shape, self.classes, B)
        out = acc.o.payload.value
        values = [Signal(signed(8 * SCORE_BYTES), name=f"value{b}") for b in range(B)]  # sign-extended scores
        m.d.comb += [values[b].eq(out if B == 1 else out[b]) for b in range(B)]
        units = {  # kind -> its bytes, last first (txi counts down)
            "version": [Const(v, 8) for v in reversed(version)],
            "header": [v[:8] for v in reversed(values)] + [Const(REPLY_RESULT, 8)],
            "scores": [v.word_select(j, 8) for v in reversed(values) for j in reversed(range(SCORE_BYTES))],
        }
        nmax = max(len(u) for u in units.values())
        txi = Signal(range(nmax))
        tx_busy, tx_beat = Signal(), Signal()  # bytes left; the unit is an accelerator beat
        single = Signal(8)  # a one-byte answer ('E', 'K')
        kind = Signal(range(len(units) + 1))  # 0: ``single``, 1 + k: units' k-th
        byte = Signal(8)
        with m.Switch(kind):
            with m.Case(0):
                m.d.comb += byte.eq(single)
            for k, unit in enumerate(units.values()):
                with m.Case(k + 1):
                    m.d.comb += byte.eq(Array(unit + [unit[-1]] * (2 ** len(txi) - len(unit)))[txi])
        # each byte waits in a register for the transmitter (``txd``): the multiplexers above and the
        # transmitter's shift register are not one path
        txd, txd_full = Signal(8), Signal()
        m.d.comb += [utx.i.valid.eq(txd_full), utx.i.payload.eq(txd)]
        take = Signal()  # the next byte of the unit moves into ``txd``
        m.d.comb += take.eq(tx_busy & (~txd_full | utx.i.ready))
        sent = Signal()  # the unit's last byte moves now
        m.d.comb += sent.eq(take & (txi == 0))
        with m.If(take):
            m.d.sync += [txd.eq(byte), txd_full.eq(1), txi.eq(txi - 1), tx_busy.eq(txi != 0)]
        with m.Elif(utx.i.ready):
            m.d.sync += txd_full.eq(0)

        def send(what, beat=False):
            """Start a reply unit: an int (one byte) or the name of one of ``units``."""
            if isinstance(what, int):
                return [single.eq(what), kind.eq(0), txi.eq(0), tx_busy.eq(1), tx_beat.eq(0)]
            k = list(units).index(what)
            return [kind.eq(k + 1), txi.eq(len(units[what]) - 1), tx_busy.eq(1), tx_beat.eq(beat)]

        count = Signal(range(self.image_bytes))
        sub = Signal(range(max(B, 2)))  # byte of the current pixel beat (image 0..B-1)
        held = Signal(8 * max(B - 1, 1))
        length = Signal(32)
        first = Signal()
        idle = Signal(range(self.timeout_cycles + 1))  # cycles without a byte inside a command

        byte_in = rx.valid & rx.ready
        timed_out = Signal()
        ack = REPLY_OK if self.has_weight_port else REPLY_ERROR

        with m.FSM(name="proto") as fsm:
            with m.State("CMD"):
                with m.If(~tx_busy):
                    m.d.comb += rx.ready.eq(1)
                    with m.If(rx.valid):
                        with m.Switch(rx.payload):
                            with m.Case(CMD_IMAGE):
                                m.d.sync += [count.eq(0), sub.eq(0)]
                                m.next = "IMAGE"
                            with m.Case(CMD_WEIGHTS):
                                m.d.sync += count.eq(0)
                                m.next = "LENGTH"
                            with m.Case(CMD_QUERY):
                                m.d.sync += send("version")
                            with m.Default():
                                m.d.sync += send(REPLY_ERROR)
            with m.State("IMAGE"):
                with m.If(timed_out):
                    m.next = "ABORT"
                # pixel k of images 0..B-1 arrive one after the other: B - 1 bytes are held, the
                # last one completes the accelerator's beat
                last_of_beat = sub == B - 1
                m.d.comb += [beat.valid.eq(rx.valid & last_of_beat), beat.payload.eq(Cat(held, rx.payload) if B > 1 else rx.payload),
                             rx.ready.eq(Mux(last_of_beat, beat.ready, 1))]
                with m.If(byte_in):
                    m.d.sync += sub.eq(Mux(last_of_beat, 0, sub + 1))
                    if B > 1:
                        m.d.sync += held.eq(Cat(held[8:], rx.payload))
                with m.If(byte_in):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == self.image_bytes - 1):
                        m.d.sync += first.eq(1)
                        m.next = "RESULT"
            with m.State("RESULT"):
                # a beat is sent straight from the accelerator's output, then taken
                with m.If(~tx_busy & acc.o.valid):
                    with m.If(first):
                        m.d.sync += send("header", beat=True) + [first.eq(0)]
                    with m.Else():
                        m.d.sync += send("scores", beat=True)
                m.d.comb += acc.o.ready.eq(sent & tx_beat)
                with m.If(sent & tx_beat & acc.o.payload.last):
                    m.next = "CMD"
            with m.State("LENGTH"):
                with m.If(timed_out):
                    m.next = "ABORT"
                m.d.comb += rx.ready.eq(1)
                new_length = Cat(length[8:], rx.payload)
                with m.If(byte_in):
                    m.d.sync += [length.eq(new_length), count.eq(count + 1)]
                    with m.If(count == 3):
                        with m.If(new_length == 0):
                            m.next = "ACK"
                        with m.Else():
                            m.next = "WEIGHTS"
            with m.State("WEIGHTS"):
                with m.If(timed_out):
                    m.next = "ABORT"
                if self.has_weight_port:
                    m.d.comb += [acc.wl.valid.eq(rx.valid), acc.wl.payload.eq(rx.payload), rx.ready.eq(acc.wl.ready)]
                else:
                    m.d.comb += rx.ready.eq(1)
                with m.If(byte_in):
                    m.d.sync += length.eq(length - 1)
                    with m.If(length == 1):
                        m.next = "ACK"
            with m.State("ACK"):
                # the answer to 'W' in a state of its own: the byte-counting states start no reply
                m.d.sync += send(ack)
                m.next = "CMD"
            with m.State("ABORT"):
                # the host went silent inside a command: reset the accelerator, answer 'E'
                m.d.comb += acc_reset.eq(1)
                m.d.sync += send(REPLY_ERROR)
                m.next = "CMD"

        # inter-byte timeout while a command's bytes are expected (not while the board computes,
        # nor while a received byte waits for the accelerator)
        waiting = fsm.ongoing("IMAGE") | fsm.ongoing("LENGTH") | fsm.ongoing("WEIGHTS")
        m.d.comb += timed_out.eq(waiting & ~rx.valid & (idle == self.timeout_cycles - 1))
        with m.If(~waiting | rx.valid | timed_out):
            m.d.sync += idle.eq(0)
        with m.Else():
            m.d.sync += idle.eq(idle + 1)
        m.d.comb += self.led.eq(fsm.ongoing("IMAGE") | fsm.ongoing("RESULT"))
        return m


def top_name(spec, board: str) -> str:
    from .generate import top_name as acc_name

    if spec is None:
        return board
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{board}_{acc_name(spec)}")


def board_plan(board: str, spec, lanes: int = 8, baud: int = DEFAULT_BAUD, name: str | None = None,
               accelerator=None, pll_mhz: float | None = None):
    """The platform's build plan for the board top (``Platform.prepare``: nothing is built).

    Returns ``(plan, top)``: the :class:`amaranth.build.run.BuildPlan` (``plan.files`` holds the
    RTLIL, the pin constraints and the Yosys/nextpnr scripts; ``plan.execute_local(dir)`` would run
    the toolchain) and the :class:`BoardTop` in it. ``accelerator`` replaces
    ``Accelerator(spec, lanes)`` (see :class:`BoardTop`).
    """
    platform = platform_for(board)
    clk_hz = int(platform.default_clk_frequency)
    pll = None
    if pll_mhz is not None and abs(pll_mhz * 1e6 - clk_hz) > 1:
        f_in = clk_hz / 1e6
        pll = (ice40_pll if BOARDS[board]["constraints"] == ".pcf" else ecp5_pll)(f_in, pll_mhz)
        clk_hz = int(round(pll["mhz"] * 1e6))
    if accelerator is None and spec is not None and BOARDS[board]["constraints"] == ".pcf":
        # iCE40 UP5K: LeNet-5's weights do not fit its block RAM; they live in SPRAM, loaded with 'W'
        from .accelerator import Accelerator

        try:
            accelerator = Accelerator(spec, lanes, weights="load")
        except (ValueError, TypeError) as e:
            raise UserError(f"board {board}: {e}") from None
    try:
        top = BoardTop(spec, lanes, clk_hz, baud, accelerator=accelerator,
                       input_register=True)
    except (ValueError, TypeError) as e:
        raise UserError(f"board {board}: {e}") from None
    name = name or top_name(spec, board)
    # emit_src=False: no source locations, so the files depend on (spec, lanes, baud) only
    plan = platform.prepare(PlatformTop(top, board, pll), name=name, emit_src=False, debug_verilog=True)
    return plan, top


def board_design(board: str, spec, lanes: int = 8, baud: int = DEFAULT_BAUD, name: str | None = None,
                 accelerator=None) -> dict:
    """Everything about one board build that is a pure function of the inputs.

    Returns a dict: ``files`` (file name -> text: the board top's Verilog, with ``clk``/``rst``
    ports, for simulation; the platform top, pins and clock included, as RTLIL and Verilog; the pin
    constraints) and ``manifest`` (device, clock, baud, divisor, names).
    """
    from amaranth.back import verilog

    name = name or top_name(spec, board)
    plan, top = board_plan(board, spec, lanes, baud, name, accelerator)
    cons = BOARDS[board]["constraints"]
    files = {}
    for suffix, out in ((".il", ".il"), (".debug.v", ".v"), (cons, cons)):
        content = plan.files[name + suffix]
        files[name + out] = content if isinstance(content, str) else content.decode()
    files[f"{name}_top.v"] = verilog.convert(top, name=f"{name}_top", emit_src=False)
    platform = platform_for(board)
    manifest = {
        "board": board, "platform": BOARDS[board]["platform"], "device": platform.device,
        "package": platform.package, "clk_hz": top.clk_hz, "baud": int(baud), "divisor": top.divisor,
        "actual_baud": round(top.clk_hz / top.divisor, 1), "lanes": lanes, "network": getattr(spec, "network", None),
        "preset": spec.provenance.get("preset") if spec is not None else None,
        "weight_port": top.has_weight_port, "score_width": top.score_width,
        "protocol_version": PROTOCOL_VERSION, "image_shape": list(top.image_shape), "classes": top.classes,
        "bytes_per_image": dict(zip(("in", "out"), frames_per_image(top.image_shape, top.classes))),
        "top": name, "board_top": f"{name}_top",
        "files": {"rtlil": f"{name}.il", "verilog": f"{name}.v", "constraints": name + cons,
                  "board_top_verilog": f"{name}_top.v"},
    }
    return {"files": files, "manifest": manifest}


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hw.boards",
                                description="Board top (UART + accelerator) Verilog and pin constraints for a board.")
    p.add_argument("--board", required=True, choices=sorted(BOARDS))
    p.add_argument("--spec", required=True, help="QuantSpec directory")
    p.add_argument("--lanes", type=int, default=8, help="parallel MAC lanes")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"UART baud rate (default {DEFAULT_BAUD})")
    p.add_argument("--out", default="build/boards", help="output directory (a subdirectory per board is not made)")
    p.add_argument("--name", default=None, help="platform top name (default BOARD_NETWORK_PRESET)")
    args = p.parse_args(argv)
    from quantize import spec as qspec

    if not Path(args.spec).is_dir():
        raise UserError(f"--spec {args.spec}: no such directory")
    spec = qspec.load(args.spec)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    design = board_design(args.board, spec, args.lanes, args.baud, args.name)
    for fname, text in design["files"].items():
        atomic_write_text(out / fname, text)
    man = design["manifest"]
    atomic_write_text(out / f"{man['top']}.json", json.dumps(man, indent=1) + "\n")
    print(f"wrote {', '.join(design['files'])} and {man['top']}.json to {out} "
          f"({man['device']}, {man['clk_hz'] / 1e6:g} MHz, {man['baud']} baud: divisor {man['divisor']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
