# amaranth: UnusedElaboratable=no
# (the host builds an Accelerator only to read its ports and weight bytes, never to elaborate it)
"""``python -m hw.board --port DEV [--baud B] --spec DIR [--images N | FILE.npy] [--weights] [--json]``

The host side of the board protocol (:mod:`hw.boards`, docs/board-protocol.md): asks the board
what it takes (``?``: protocol version, lanes, image shape, classes) and checks that against the
QuantSpec, sends images to it over a serial port, reads back the class and the scores, and
compares them with the emulator of the same QuantSpec, bit for bit.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from model.util import UserError, cli

from .boards import (CMD_IMAGE, CMD_QUERY, CMD_WEIGHTS, DEFAULT_BAUD, DEFAULT_TIMEOUT_S, PROTOCOL_VERSION,
                     REPLY_ERROR, REPLY_OK, REPLY_RESULT, REPLY_VERSION, SCORE_BYTES, VERSION_BYTES, result_bytes)

MAX_WEIGHT_BYTES = (1 << 32) - 1


class ProtocolError(UserError):
    """The board answered something the protocol does not allow, or not in time."""


def _name(code: int) -> str:
    return f"0x{code:02X}" + (f" ({chr(code)!r})" if 0x20 <= code < 0x7F else "")


def _shape_text(shape) -> str:
    return " x ".join(str(int(v)) for v in shape)


# --------------------------------------------------------------------------- encode / decode (pure)
def encode_image(image, shape) -> bytes:
    """``I`` and the C * H * W pixels of a uint8 image of ``shape`` = (C, H, W), channel by channel in
    raster order (an H x W image passes for C = 1)."""
    shape = tuple(int(v) for v in shape)
    image = np.asarray(image)
    if image.ndim == 2 and shape[0] == 1:
        image = image[None]
    if image.dtype != np.uint8 or image.shape != shape:
        raise UserError(f"an image must be uint8 {_shape_text(shape)}, got {image.dtype} {_shape_text(image.shape)}")
    return bytes([CMD_IMAGE]) + np.ascontiguousarray(image).tobytes()


def encode_images(images, shape) -> bytes:
    """``I`` and the pixels of B uint8 images of ``shape`` for a board of batch B: pixel k of images
    0..B-1 one after the other (the accelerator takes one pixel of every image per beat)."""
    parts = [encode_image(img, shape)[1:] for img in images]
    return bytes([CMD_IMAGE]) + np.stack([np.frombuffer(p, np.uint8) for p in parts], axis=1).tobytes()


def encode_weights(data: bytes) -> bytes:
    """``W``, the length (4 bytes little-endian) and the bytes for the accelerator's weight port."""
    data = bytes(data)
    if len(data) > MAX_WEIGHT_BYTES:
        raise UserError(f"{len(data)} weight bytes: the protocol's length field holds at most {MAX_WEIGHT_BYTES}")
    return bytes([CMD_WEIGHTS]) + len(data).to_bytes(4, "little") + data


def encode_query() -> bytes:
    return bytes([CMD_QUERY])


def decode_result(reply: bytes, classes: int) -> tuple[int, list[int]]:
    """``R``, class, ``classes`` 4-byte little-endian two's complement scores -> (class, scores)."""
    return decode_results(reply, classes, 1)[0]


def decode_results(reply: bytes, classes: int, batch: int) -> list[tuple[int, list[int]]]:
    """``R``, ``batch`` classes, then per class j the scores j of the ``batch`` images (4 bytes
    little-endian two's complement each) -> [(class, scores)] per image."""
    reply = bytes(reply)
    if not reply or reply[0] != REPLY_RESULT:
        got = _name(reply[0]) if reply else "nothing"
        hint = " (the board did not take the image: a byte was lost, or it timed out)" if reply[:1] == bytes([REPLY_ERROR]) else ""
        raise ProtocolError(f"bad reply to an image: {got}, expected {_name(REPLY_RESULT)}{hint}")
    if len(reply) != result_bytes(classes, batch):
        raise ProtocolError(f"bad reply to an image: {len(reply)} bytes, expected {result_bytes(classes, batch)}")
    at = 1 + batch
    scores = [[int.from_bytes(reply[at + SCORE_BYTES * (k * batch + b):at + SCORE_BYTES * (k * batch + b + 1)],
                              "little", signed=True) for k in range(classes)] for b in range(batch)]
    return [(reply[1 + b], scores[b]) for b in range(batch)]


def encode_result(cls: int, scores) -> bytes:
    """The board's reply for (class, scores): the inverse of :func:`decode_result`."""
    return encode_results([(cls, scores)])


def encode_results(results) -> bytes:
    """The board's reply for [(class, scores)] of a batch: the inverse of :func:`decode_results`."""
    scores = [[int(s) for s in sc] for _, sc in results]
    return (bytes([REPLY_RESULT, *(int(c) & 0xFF for c, _ in results)])
            + b"".join(sc[k].to_bytes(SCORE_BYTES, "little", signed=True) for k in range(len(scores[0])) for sc in scores))


def decode_version(reply: bytes) -> dict:
    """``V``, version, lanes, channels, height, width, classes, batch -> ``{"version", "lanes",
    "image_shape", "classes", "batch"}`` (``image_shape`` = [C, H, W]). A board of another protocol version is an error
    that says so, whatever the length of its reply."""
    reply = bytes(reply)
    if len(reply) < 2 or reply[0] != REPLY_VERSION:
        got = _name(reply[0]) if reply else "nothing"
        raise ProtocolError(f"bad reply to '?': {got} ({len(reply)} bytes), expected {_name(REPLY_VERSION)} "
                            f"and {VERSION_BYTES - 1} bytes: is this a lenet-hw board at the right baud rate?")
    if reply[1] != PROTOCOL_VERSION:
        raise ProtocolError(f"the board speaks protocol version {reply[1]}, this host {PROTOCOL_VERSION} "
                            "(rebuild the board top with this hw/)")
    if len(reply) != VERSION_BYTES:
        raise ProtocolError(f"bad reply to '?': {len(reply)} bytes, expected {VERSION_BYTES}")
    if reply[7] < 1:
        raise ProtocolError("bad reply to '?': batch 0")
    return {"version": reply[1], "lanes": reply[2], "image_shape": list(reply[3:6]), "classes": reply[6],
            "batch": reply[7]}


def check_board(info: dict, spec) -> None:
    """The board's announcement (:func:`decode_version`) against the spec: the same image shape and
    number of classes, or a one-line error."""
    want = {"image_shape": [int(v) for v in spec.input_shape], "classes": int(spec.classes)}
    have = {k: info[k] for k in want}
    if have != want:
        raise ProtocolError(f"the board takes {_shape_text(have['image_shape'])} images and gives {have['classes']} "
                            f"scores, the spec {_shape_text(want['image_shape'])} and {want['classes']}: "
                            "a board built from another spec?")


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
        self.info: dict | None = None  # the board's answer to '?'

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
        """``?``: the board's announcement; later images are sized by it."""
        self.port.write(encode_query())
        head = self.read(1, "the reply to '?'")
        if head[0] == REPLY_VERSION:
            head += self.read(1, "the reply to '?'")
            if head[1] == PROTOCOL_VERSION:
                head += self.read(VERSION_BYTES - 2, "the reply to '?'")
        self.info = decode_version(head)  # raises on anything else, naming the byte or the version
        return self.info

    def classify(self, image) -> tuple[int, list[int]]:
        """``I``: one image of the announced shape; (class, scores). On a board of batch B the image
        goes with B - 1 blank ones."""
        blank = np.zeros_like(np.asarray(image))
        return self.classify_batch([image] + [blank] * ((self.info or {}).get("batch", 1) - 1))[0]

    def classify_batch(self, images) -> list[tuple[int, list[int]]]:
        """``I``: exactly the board's batch of images of the announced shape; [(class, scores)]."""
        info = self.info
        if info is None:
            raise ProtocolError("classify before query: the board's image shape is not known")
        batch, classes = info["batch"], info["classes"]
        if len(images) != batch:
            raise UserError(f"the board takes {batch} images per command, got {len(images)}")
        self.port.write(encode_images(images, info["image_shape"]))
        first = self.read(1, "the reply to an image")
        if first[0] != REPLY_RESULT:
            return decode_results(first, classes, batch)  # raises
        return decode_results(first + self.read(result_bytes(classes, batch) - 1, "the reply to an image"),
                              classes, batch)

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
    expected_scores = np.asarray(expected_scores, np.int64)
    classes = np.asarray(classes, np.int64)
    scores = np.asarray(scores, np.int64).reshape(len(classes), expected_scores.shape[1])
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
    """Query the board and check what it takes against ``spec``, load the weights if asked,
    classify ``images`` (uint8, the spec's input shape or what :func:`model.data.fit_images`
    adapts to it); compare with the emulator."""
    from model.data import fit_images
    from quantize.emulator import Emulator

    images = fit_images(np.asarray(images), spec.input_shape)
    ref = Emulator(spec).run(images, keep=False)
    if resync:
        board.resync()
    info = board.query()
    check_board(info, spec)
    if weights:
        board.load_weights(weight_bytes(spec, info["lanes"]))
    classes, scores = [], []
    t0 = time.perf_counter()
    batch = info["batch"]
    for n in range(0, len(images), batch):  # the last command padded with blank images
        group = list(images[n:n + batch])
        group += [np.zeros_like(images[0])] * (batch - len(group))
        for c, s in board.classify_batch(group)[:len(images) - n]:
            classes.append(c)
            scores.append(s)
    dt = time.perf_counter() - t0
    res = compare(classes, scores, ref.predictions, ref.scores, labels)
    res["images_per_s"] = round(len(images) / dt, 2) if dt > 0 else None
    res.update(lanes=info["lanes"], batch=batch, image_shape=info["image_shape"], classes=info["classes"])
    return res


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hw.board", description=__doc__.split("\n\n")[1])
    p.add_argument("--port", required=True, help="serial device (/dev/ttyUSB1, COM3) or pyserial URL")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"baud rate the board was built for (default {DEFAULT_BAUD})")
    p.add_argument("--spec", required=True, help="QuantSpec directory the board was built from")
    p.add_argument("--images", default="100",
                   help="N (the first N MNIST test images, fitted to the spec's input) or a uint8 N x C x H x W .npy")
    p.add_argument("--data", default=None, help="MNIST directory")
    p.add_argument("--weights", action="store_true", help="load the weights over the UART first (boards with a weight port)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for a reply (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    from pathlib import Path

    from model import data
    from model.data import fit_images
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

        images = load_images(args.images, spec.input_shape)
    # every input checked before the port is opened: an image the spec cannot take writes nothing
    images = fit_images(images, spec.input_shape, "MNIST test images" if labels is not None else f"--images {args.images}")
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
