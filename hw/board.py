# amaranth: UnusedElaboratable=no
# (the host builds an Accelerator only to read its ports and weight bytes, never to elaborate it)
"""``python -m hw.board --port DEV [--baud B] --spec DIR [--images N | FILE.npy] [--weights] [--json]``

The host side of the board protocol (:mod:`hw.boards`, docs/board-protocol.md): sends images to a
board over a serial port, reads back the class and the ten scores, and compares them with the
emulator of the same QuantSpec, bit for bit.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from model.util import UserError, cli

from .boards import (CMD_IMAGE, CMD_QUERY, CMD_WEIGHTS, DEFAULT_BAUD, DEFAULT_TIMEOUT_S, N_SCORES,
                     PROTOCOL_VERSION, REPLY_ERROR, REPLY_OK, REPLY_RESULT, REPLY_VERSION, SCORE_BYTES)

RESULT_BYTES = 2 + N_SCORES * SCORE_BYTES  # 'R', class, ten 4-byte scores
VERSION_BYTES = 4  # 'V', version, lanes, scores
MAX_WEIGHT_BYTES = (1 << 32) - 1


class ProtocolError(UserError):
    """The board answered something the protocol does not allow, or not in time."""


def _name(code: int) -> str:
    return f"0x{code:02X}" + (f" ({chr(code)!r})" if 0x20 <= code < 0x7F else "")


# --------------------------------------------------------------------------- encode / decode (pure)
def encode_image(image) -> bytes:
    """``I`` and the 784 pixels of a uint8 28 x 28 image, raster order."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (28, 28):
        raise UserError(f"an image must be uint8 28 x 28, got {image.dtype} {image.shape}")
    return bytes([CMD_IMAGE]) + np.ascontiguousarray(image).tobytes()


def encode_weights(data: bytes) -> bytes:
    """``W``, the length (4 bytes little-endian) and the bytes for the accelerator's weight port."""
    data = bytes(data)
    if len(data) > MAX_WEIGHT_BYTES:
        raise UserError(f"{len(data)} weight bytes: the protocol's length field holds at most {MAX_WEIGHT_BYTES}")
    return bytes([CMD_WEIGHTS]) + len(data).to_bytes(4, "little") + data


def encode_query() -> bytes:
    return bytes([CMD_QUERY])


def decode_result(reply: bytes) -> tuple[int, list[int]]:
    """``R``, class, ten 4-byte little-endian two's complement scores -> (class, scores)."""
    reply = bytes(reply)
    if not reply or reply[0] != REPLY_RESULT:
        got = _name(reply[0]) if reply else "nothing"
        hint = " (the board did not take the image: a byte was lost, or it timed out)" if reply[:1] == bytes([REPLY_ERROR]) else ""
        raise ProtocolError(f"bad reply to an image: {got}, expected {_name(REPLY_RESULT)}{hint}")
    if len(reply) != RESULT_BYTES:
        raise ProtocolError(f"bad reply to an image: {len(reply)} bytes, expected {RESULT_BYTES}")
    scores = [int.from_bytes(reply[2 + SCORE_BYTES * k:2 + SCORE_BYTES * (k + 1)], "little", signed=True)
              for k in range(N_SCORES)]
    return reply[1], scores


def encode_result(cls: int, scores) -> bytes:
    """The board's reply for (class, scores): the inverse of :func:`decode_result`."""
    scores = [int(s) for s in scores]
    if len(scores) != N_SCORES:
        raise ValueError(f"{len(scores)} scores, expected {N_SCORES}")
    return bytes([REPLY_RESULT, int(cls) & 0xFF]) + b"".join(s.to_bytes(SCORE_BYTES, "little", signed=True) for s in scores)


def decode_version(reply: bytes) -> dict:
    """``V``, version, lanes, scores -> ``{"version", "lanes", "scores"}`` (version and scores checked)."""
    reply = bytes(reply)
    if len(reply) != VERSION_BYTES or reply[0] != REPLY_VERSION:
        got = _name(reply[0]) if reply else "nothing"
        raise ProtocolError(f"bad reply to '?': {got} ({len(reply)} bytes), expected {_name(REPLY_VERSION)} "
                            f"and {VERSION_BYTES - 1} bytes: is this a lenet-hw board at the right baud rate?")
    info = {"version": reply[1], "lanes": reply[2], "scores": reply[3]}
    if info["version"] != PROTOCOL_VERSION:
        raise ProtocolError(f"the board speaks protocol version {info['version']}, this host {PROTOCOL_VERSION}")
    if info["scores"] != N_SCORES:
        raise ProtocolError(f"the board sends {info['scores']} scores, expected {N_SCORES}")
    return info


def decode_ack(reply: bytes) -> None:
    """``K`` after weight loading; ``E`` means the accelerator has no weight port."""
    reply = bytes(reply)
    if reply == bytes([REPLY_OK]):
        return
    if reply == bytes([REPLY_ERROR]):
        raise ProtocolError("the board answered 'E' to weight loading: its accelerator has no weight port "
                            "(its weights are built in; leave out --weights)")
    raise ProtocolError(f"bad reply to weight loading: {_name(reply[0]) if reply else 'nothing'}, expected {_name(REPLY_OK)}")


# --------------------------------------------------------------------------- the serial session
class Board:
    """A board on a serial-like object (``write``, ``read(n)`` returning at most n bytes, possibly
    fewer after its own timeout, ``reset_input_buffer``)."""

    def __init__(self, port, timeout: float = 2.0):
        self.port, self.timeout = port, timeout

    def read(self, n: int, what: str) -> bytes:
        buf = b""
        deadline = time.monotonic() + self.timeout
        while len(buf) < n:
            chunk = self.port.read(n - len(buf))
            if chunk:
                buf += bytes(chunk)
            elif time.monotonic() >= deadline:
                raise ProtocolError(f"timeout: the board sent {len(buf)} of {n} bytes of {what} in {self.timeout:g} s "
                                    "(wrong port or baud rate, board not programmed?)")
        return buf

    def resync(self) -> None:
        """Let a command that a previous host left half-sent time out on the board, then drop its 'E'."""
        time.sleep(DEFAULT_TIMEOUT_S * 1.5)
        self.port.reset_input_buffer()

    def query(self) -> dict:
        self.port.write(encode_query())
        first = self.read(1, "the reply to '?'")
        if first[0] != REPLY_VERSION:
            return decode_version(first)  # raises, naming the byte
        return decode_version(first + self.read(VERSION_BYTES - 1, "the reply to '?'"))

    def classify(self, image) -> tuple[int, list[int]]:
        self.port.write(encode_image(image))
        first = self.read(1, "the reply to an image")
        if first[0] != REPLY_RESULT:
            return decode_result(first)  # raises
        return decode_result(first + self.read(RESULT_BYTES - 1, "the reply to an image"))

    def load_weights(self, data: bytes) -> None:
        self.port.write(encode_weights(data))
        decode_ack(self.read(1, "the reply to weight loading"))


def open_port(port: str, baud: int, timeout: float):
    """Open ``port`` (a device, or a pyserial URL such as ``socket://host:port``)."""
    try:
        import serial
    except ImportError:
        raise UserError("pyserial is not installed (pip install pyserial)") from None
    try:
        return serial.serial_for_url(port, baudrate=baud, timeout=min(timeout, 0.1), write_timeout=max(timeout, 5.0))
    except (serial.SerialException, ValueError, OSError) as e:
        raise UserError(f"--port {port}: cannot open ({e})") from None


# --------------------------------------------------------------------------- images, weights, comparison
def crop28(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """N x 28 x 28 passes; N x 32 x 32 gives its centre, if its border is grey level 0 (as the
    accelerator pads the 28 x 28 centre itself)."""
    if images.shape[1] == 28:
        return images
    border = np.ones(images.shape[1:], bool)
    border[pad:-pad, pad:-pad] = False
    if images[:, border].any():
        raise UserError(f"a 32 x 32 image must have a {pad}-pixel border of grey level 0 (the board takes the "
                        "28 x 28 centre); pass 28 x 28 images or clear the border")
    return images[:, pad:-pad, pad:-pad]


def weight_bytes(spec, lanes: int) -> bytes:
    """The byte stream for the accelerator's weight port (``acc.weight_load_data()``)."""
    from .accelerator import Accelerator

    acc = Accelerator(spec, lanes, weights="load")  # the iCEBreaker build: weights in SPRAM, loaded over the UART
    data = bytes(acc.weight_load_data())
    expect = getattr(acc, "weight_load_bytes", len(data))
    if len(data) != expect:
        raise UserError(f"--weights: weight_load_data() gave {len(data)} bytes, the accelerator expects {expect}")
    return data


def compare(classes, scores, expected_classes, expected_scores, labels=None) -> dict:
    """Board results against the emulator's (integer equality) and against the labels."""
    classes, scores = np.asarray(classes, np.int64), np.asarray(scores, np.int64).reshape(len(classes), N_SCORES)
    bad = np.flatnonzero((classes != expected_classes) | (scores != expected_scores).any(axis=1))
    first = None
    if len(bad):
        n = int(bad[0])
        diff = np.flatnonzero(scores[n] != expected_scores[n])
        k = int(diff[0]) if len(diff) else None
        first = {"image": n, "class": {"expected": int(expected_classes[n]), "actual": int(classes[n])},
                 "score_index": k, "expected": int(expected_scores[n][k]) if k is not None else None,
                 "actual": int(scores[n][k]) if k is not None else None}
    errors = int((classes != np.asarray(labels)).sum()) if labels is not None else None
    return {"images": len(classes), "mismatches": len(bad), "first_mismatch": first, "errors": errors}


def run(board: Board, spec, images: np.ndarray, labels=None, weights: bool = False, resync: bool = True) -> dict:
    """Query the board, load the weights if asked, classify ``images``; compare with the emulator."""
    from quantize.emulator import Emulator

    images = crop28(images, spec.input_pad)
    ref = Emulator(spec).run(images, keep=False)
    if resync:
        board.resync()
    info = board.query()
    if weights:
        board.load_weights(weight_bytes(spec, info["lanes"]))
    classes, scores = [], []
    t0 = time.perf_counter()
    for img in images:
        c, s = board.classify(img)
        classes.append(c)
        scores.append(s)
    dt = time.perf_counter() - t0
    res = compare(classes, scores, ref.predictions, ref.scores, labels)
    res["images_per_s"] = round(len(images) / dt, 2) if dt > 0 else None
    res["lanes"] = info["lanes"]
    return res


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hw.board", description=__doc__.split("\n\n")[1])
    p.add_argument("--port", required=True, help="serial device (/dev/ttyUSB1, COM3) or pyserial URL")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"baud rate the board was built for (default {DEFAULT_BAUD})")
    p.add_argument("--spec", required=True, help="QuantSpec directory the board was built from")
    p.add_argument("--images", default="100", help="N (the first N MNIST test images) or a uint8 N x 28 x 28 .npy")
    p.add_argument("--data", default=None, help="MNIST directory")
    p.add_argument("--weights", action="store_true", help="load the weights over the UART first (boards with a weight port)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for a reply (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    from pathlib import Path

    from model import data
    from quantize import spec as qspec

    if args.baud <= 0:
        raise UserError("--baud must be positive")
    if args.timeout <= 0:
        raise UserError("--timeout must be positive")
    if not Path(args.spec).is_dir():
        raise UserError(f"--spec {args.spec}: no such directory")
    spec = qspec.load(args.spec)
    labels = None
    if args.images.isdigit():
        n = int(args.images)
        if n < 1:
            raise UserError("--images must be at least 1")
        split = data.load("test", args.data)
        images, labels = split.images[:n], split.labels[:n]
    else:
        from quantize.run import load_images

        images = load_images(args.images)
    images = crop28(images, spec.input_pad)  # every input checked before the port is opened
    port = open_port(args.port, args.baud, args.timeout)
    try:
        res = run(Board(port, args.timeout), spec, images, labels, args.weights)
    finally:
        port.close()
    res = {"port": args.port, "baud": args.baud, **res}
    if args.json:
        print(json.dumps(res))
    else:
        errs = f", {res['errors']} misclassified vs labels" if res["errors"] is not None else ""
        print(f"board on {args.port}: {res['images'] - res['mismatches']}/{res['images']} images bit-exact with the "
              f"emulator{errs}, {res['images_per_s']} images/s")
        if res["first_mismatch"]:
            print("first mismatch: " + json.dumps(res["first_mismatch"]))
    return 1 if res["mismatches"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
