# amaranth: UnusedElaboratable=no
"""hw/board.py: the host side of the board protocol. Encode/decode as pure functions, and the whole
host (``main``) against a fake serial port that behaves like a board, answering with the emulator."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

import hw.board as host
from hw.board import (Board, ProtocolError, check_board, decode_ack, decode_result, decode_results, decode_version,
                      encode_image, encode_images, encode_query, encode_result, encode_results, encode_weights)
from hw.boards import PROTOCOL_VERSION, VERSION_BYTES, result_bytes, version_reply
from model.util import UserError


# --------------------------------------------------------------------------- pure functions
def test_encode_image():
    img = np.arange(784, dtype=np.int64).reshape(28, 28).astype(np.uint8)
    msg = encode_image(img, (1, 28, 28))
    assert len(msg) == 785 and msg[0] == ord("I") and msg[1:] == img.tobytes()
    assert encode_image(img[None], (1, 28, 28)) == msg
    for bad in (img.astype(np.int16), img[:27], np.zeros((32, 32), np.uint8)):
        with pytest.raises(UserError, match="uint8 1 x 28 x 28"):
            encode_image(bad, (1, 28, 28))


def test_encode_image_channels_then_raster_order():
    img = np.arange(2 * 5 * 7, dtype=np.uint8).reshape(2, 5, 7)
    msg = encode_image(img, (2, 5, 7))
    assert len(msg) == 1 + 70 and msg[1:] == bytes(range(70))  # channel 0 row by row, then channel 1
    with pytest.raises(UserError, match="uint8 2 x 5 x 7, got uint8 5 x 7"):
        encode_image(img[0], (2, 5, 7))


def test_encode_weights_and_query():
    assert encode_weights(b"\x01\x02\x03") == b"W\x03\x00\x00\x00\x01\x02\x03"
    assert encode_weights(b"") == b"W\x00\x00\x00\x00"
    assert encode_query() == b"?"


@pytest.mark.parametrize("scores", [list(range(10)), [-1, 0, 1, -(2**31), 2**31 - 1, -300, 300, -5, 7, 123456],
                                    [5, -6, 7]])
def test_result_roundtrip(scores):
    msg = encode_result(7, scores)
    assert len(msg) == result_bytes(len(scores)) == 2 + 4 * len(scores) and msg[:2] == b"R\x07"
    assert msg[2:6] == scores[0].to_bytes(4, "little", signed=True)
    assert decode_result(msg, len(scores)) == (7, scores)


def test_result_sign_extension_from_the_score_width():
    # a board with 10-bit scores sends -3 as 0xFFFFFFFD, not 0x000003FD
    assert decode_result(b"R\x02" + b"\xfd\xff\xff\xff" + bytes(36), 10)[1][0] == -3


def test_version_reply_layout():
    assert PROTOCOL_VERSION == 3 and VERSION_BYTES == 8
    assert version_reply(8, (1, 28, 28), 10) == b"V\x03\x08\x01\x1c\x1c\x0a\x01"
    assert decode_version(version_reply(8, (3, 16, 20), 4)) == {"version": 3, "lanes": 8, "image_shape": [3, 16, 20],
                                                                 "classes": 4, "batch": 1}
    assert decode_version(version_reply(8, (1, 28, 28), 10, 2))["batch"] == 2


def test_batch_images_and_results():
    """A batch's pixels go interleaved (pixel k of every image together); its reply holds the B
    classes, then score j of every image for each j."""
    imgs = [np.arange(6, dtype=np.uint8).reshape(1, 2, 3) + 10 * b for b in range(3)]
    assert encode_images(imgs, (1, 2, 3)) == b"I" + bytes([0, 10, 20, 1, 11, 21, 2, 12, 22, 3, 13, 23, 4, 14, 24,
                                                          5, 15, 25])
    assert encode_images(imgs[:1], (1, 2, 3)) == encode_image(imgs[0], (1, 2, 3))
    results = [(1, [5, -6]), (7, [-(2**31), 2**31 - 1]), (0, [0, 3])]
    msg = encode_results(results)
    assert msg[:4] == b"R\x01\x07\x00" and len(msg) == result_bytes(2, 3) == 4 + 3 * 2 * 4
    assert msg[4:8] == (5).to_bytes(4, "little", signed=True) and msg[8:12] == (2**31 - 1 + 1).to_bytes(4, "little")
    assert decode_results(msg, 2, 3) == results
    with pytest.raises(ProtocolError, match="27 bytes, expected 28"):
        decode_results(msg[:-1], 2, 3)


def test_decode_errors():
    good = encode_result(1, [0] * 10)
    with pytest.raises(ProtocolError, match="0x45 \\('E'\\).*did not take the image"):
        decode_result(b"E", 10)
    with pytest.raises(ProtocolError, match="0x00, expected 0x52"):
        decode_result(b"\x00" + good[1:], 10)
    with pytest.raises(ProtocolError, match="41 bytes, expected 42"):
        decode_result(good[:-1], 10)
    with pytest.raises(ProtocolError, match="42 bytes, expected 14"):
        decode_result(good, 3)
    with pytest.raises(ProtocolError, match="nothing"):
        decode_result(b"", 10)
    with pytest.raises(ProtocolError, match="protocol version 1, this host 3"):
        decode_version(b"V\x01\x08\x0a")  # a version-1 board's whole reply
    with pytest.raises(ProtocolError, match="protocol version 2"):
        decode_version(b"V\x02\x08\x01\x1c\x1c\x0a")  # a version-2 board's whole reply
    with pytest.raises(ProtocolError, match="7 bytes, expected 8"):
        decode_version(b"V\x03\x08\x01\x1c\x1c\x0a")
    with pytest.raises(ProtocolError, match="baud rate"):
        decode_version(b"E")
    decode_ack(b"K")
    with pytest.raises(ProtocolError, match="no weight port"):
        decode_ack(b"E")
    with pytest.raises(ProtocolError, match="expected 0x4B"):
        decode_ack(b"Z")


def test_check_board_against_the_spec(q8_spec):
    info = decode_version(version_reply(8, (1, 28, 28), 10))
    check_board(info, q8_spec)
    for shape, classes in (((1, 16, 16), 10), ((1, 28, 28), 4), ((3, 28, 28), 10)):
        with pytest.raises(ProtocolError, match=f"the board takes {' x '.join(map(str, shape))} images and gives "
                                                f"{classes} scores, the spec 1 x 28 x 28 and 10"):
            check_board(decode_version(version_reply(8, shape, classes)), q8_spec)


# --------------------------------------------------------------------------- a fake board
class FakeBoard:
    """A serial port with the board behind it: parses the host's bytes as the board's protocol FSM
    does and answers images with the emulator. ``corrupt`` = (image, score index) to falsify,
    ``silent`` never answers, ``garbage`` answers every command with that byte, ``reply_v`` replaces
    the answer to '?' (another protocol version, another network)."""

    def __init__(self, spec, lanes=8, weight_port=False, corrupt=None, silent=False, garbage=None, reply_v=None,
                 batch=1):
        from quantize.emulator import Emulator

        self.emu, self.lanes, self.weight_port = Emulator(spec), lanes, weight_port
        self.shape, self.classes = tuple(spec.input_shape), spec.classes
        self.pixels = int(np.prod(self.shape))
        self.batch = batch
        self.reply_v = reply_v if reply_v is not None else version_reply(lanes, self.shape, self.classes, batch)
        self.corrupt, self.silent, self.garbage = corrupt, silent, garbage
        self.inbuf, self.outbuf = bytearray(), bytearray()
        self.written = 0
        self.images = 0
        self.weights = None
        self.closed = False

    # pyserial's interface, as far as the host uses it
    def write(self, data):
        self.written += len(data)
        self.inbuf += data
        while self._step():
            pass
        return len(data)

    def read(self, n):
        if not self.outbuf:
            time.sleep(0.005)  # as a serial port with a short timeout
            return b""
        out, self.outbuf[:] = bytes(self.outbuf[:n]), self.outbuf[n:]
        return out

    def reset_input_buffer(self):
        self.outbuf.clear()

    def close(self):
        self.closed = True

    def _answer(self, data: bytes):
        if not self.silent:
            self.outbuf += bytes([self.garbage]) if self.garbage is not None else data

    def _step(self) -> bool:
        b = self.inbuf
        if not b:
            return False
        cmd = b[0]
        if cmd == ord("?"):
            del b[:1]
            self._answer(self.reply_v)
        elif cmd == ord("I"):
            n = self.pixels * self.batch
            if len(b) < 1 + n:
                return False
            imgs = np.frombuffer(bytes(b[1:1 + n]), np.uint8).reshape(self.pixels, self.batch).T.reshape(-1, *self.shape)
            del b[:1 + n]
            r = self.emu.run(imgs, keep=False)
            results = []
            for k in range(self.batch):
                scores = [int(v) for v in r.scores[k]]
                if self.corrupt and self.corrupt[0] == self.images:
                    scores[self.corrupt[1]] += 1
                self.images += 1
                results.append((int(r.predictions[k]), scores))
            self._answer(encode_results(results))
        elif cmd == ord("W"):
            if len(b) < 5 or len(b) < 5 + int.from_bytes(b[1:5], "little"):
                return False
            n = int.from_bytes(b[1:5], "little")
            self.weights = bytes(b[5:5 + n]) if self.weight_port else None
            del b[:5 + n]
            self._answer(b"K" if self.weight_port else b"E")
        else:
            del b[:1]
            self._answer(b"E")
        return True


@pytest.fixture
def fake_port(monkeypatch):
    """Make ``hw.board.open_port`` return the FakeBoard that the test sets in ``holder[0]``."""
    holder = []

    def open_port(port, baud, timeout):
        return holder[0]

    monkeypatch.setattr(host, "open_port", open_port)
    monkeypatch.setattr(host, "DEFAULT_TIMEOUT_S", 0.01)  # Board.resync's wait
    return holder


@pytest.fixture(scope="module")
def images_npy(quant_images, tmp_path_factory):
    path = tmp_path_factory.mktemp("board") / "images.npy"
    np.save(path, quant_images[0][:5])
    return path


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = host.main([*map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------- the host end to end
def test_host_matches_emulator_on_mnist(q8_spec, q8_spec_dir, fake_port, capsys, quant_images):
    fake_port.append(FakeBoard(q8_spec))
    code, out, err = run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", 6, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["images"] == 6 and res["mismatches"] == 0 and res["first_mismatch"] is None
    assert res["lanes"] == 8 and res["images_per_s"] > 0
    assert res["image_shape"] == [1, 28, 28] and res["classes"] == 10
    from quantize.emulator import Emulator

    preds = Emulator(q8_spec).run(quant_images[0][:6], keep=False).predictions
    assert res["errors"] == int((preds != quant_images[1][:6]).sum())
    assert fake_port[0].images == 6 and fake_port[0].closed


def test_host_batch_board_pads_the_last_command(q8_spec, q8_spec_dir, fake_port, capsys, quant_images):
    """A board of batch 2 takes two images per 'I'; 5 images go as 3 commands (the last with a blank)."""
    fake_port.append(FakeBoard(q8_spec, batch=2, corrupt=(2, 1)))
    code, out, err = run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", 5, "--json")
    res = json.loads(out)
    assert code == 1 and res["batch"] == 2 and res["images"] == 5 and fake_port[0].images == 6
    assert res["mismatches"] == 1 and res["first_mismatch"]["image"] == 2 and res["first_mismatch"]["score_index"] == 1


def test_host_npy_images_and_text_summary(q8_spec, q8_spec_dir, fake_port, capsys, images_npy):
    fake_port.append(FakeBoard(q8_spec))
    code, out, err = run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", images_npy)
    assert code == 0, err
    assert "5/5 images bit-exact" in out and "labels" not in out


def test_host_32x32_images_are_cropped(q8_spec, q8_spec_dir, fake_port, capsys, quant_images, tmp_path):
    np.save(tmp_path / "pad.npy", np.pad(quant_images[0][:2], ((0, 0), (2, 2), (2, 2))))
    fake_port.append(FakeBoard(q8_spec))
    code, out, err = run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", tmp_path / "pad.npy", "--json")
    assert code == 0 and json.loads(out)["mismatches"] == 0


def test_host_reports_a_mismatch(q8_spec, q8_spec_dir, fake_port, capsys, images_npy):
    fake_port.append(FakeBoard(q8_spec, corrupt=(3, 4)))
    code, out, _ = run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", images_npy, "--json")
    assert code == 1
    res = json.loads(out)
    assert res["mismatches"] == 1 and res["errors"] is None
    fm = res["first_mismatch"]
    assert fm["image"] == 3 and fm["score_index"] == 4 and fm["actual"] == fm["expected"] + 1


def one_error_line(code, out, err) -> str:
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_host_timeout(q8_spec, q8_spec_dir, fake_port, capsys, images_npy):
    fake_port.append(FakeBoard(q8_spec, silent=True))
    t0 = time.monotonic()
    line = one_error_line(*run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", images_npy,
                                    "--timeout", 0.2))
    assert "timeout: the board sent 0 of 1 bytes of the reply to '?' in 0.2 s" in line
    assert time.monotonic() - t0 < 5


def test_host_bad_reply_byte(q8_spec, q8_spec_dir, fake_port, capsys, images_npy):
    fake_port.append(FakeBoard(q8_spec, garbage=0x00))
    line = one_error_line(*run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", images_npy))
    assert "bad reply to '?': 0x00" in line


def test_board_error_reply_to_an_image(q8_spec):
    board = Board(FakeBoard(q8_spec), timeout=0.5)
    board.query()
    board.port.garbage = ord("E")
    with pytest.raises(ProtocolError, match="did not take the image"):
        board.classify(np.zeros((28, 28), np.uint8))


def test_classify_needs_the_announcement(q8_spec):
    with pytest.raises(ProtocolError, match="before query"):
        Board(FakeBoard(q8_spec), timeout=0.5).classify(np.zeros((28, 28), np.uint8))


def test_weight_loading(q8_spec):
    board = Board(FakeBoard(q8_spec, weight_port=True), timeout=0.5)
    board.load_weights(b"\x05" * 1000)
    assert board.port.weights == b"\x05" * 1000
    board = Board(FakeBoard(q8_spec), timeout=0.5)
    with pytest.raises(ProtocolError, match="no weight port"):
        board.load_weights(b"\x05" * 10)
    assert board.query()["lanes"] == 8  # still in step after the discarded bytes


def test_weights_flag_needs_a_weight_port(q8_spec, q8_spec_dir, fake_port, capsys, images_npy):
    """A board whose accelerator has its weights built in answers 'E' to 'W'."""
    fake_port.append(FakeBoard(q8_spec))
    line = one_error_line(*run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", images_npy, "--weights"))
    assert "no weight port" in line


def test_bad_images_file(q8_spec, q8_spec_dir, fake_port, capsys, tmp_path):
    """An image the spec cannot take: one error line, exit 2, not a byte sent to the board."""
    fake_port.append(FakeBoard(q8_spec))
    np.save(tmp_path / "f.npy", np.zeros((2, 28, 28), np.float32))
    line = one_error_line(*run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", tmp_path / "f.npy"))
    assert "uint8" in line and str(tmp_path / "f.npy") in line
    np.save(tmp_path / "s.npy", np.zeros((2, 20, 20), np.uint8))
    line = one_error_line(*run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", tmp_path / "s.npy"))
    assert "shape (2, 20, 20), the spec takes 1 x 28 x 28" in line
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 28, 28), np.uint8))
    line = one_error_line(*run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", tmp_path / "c.npy"))
    assert "the spec takes 1 x 28 x 28" in line
    np.save(tmp_path / "b.npy", np.full((1, 32, 32), 9, np.uint8))
    line = one_error_line(*run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", tmp_path / "b.npy"))
    assert "border" in line
    line = one_error_line(*run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", tmp_path / "nope.npy"))
    assert "no such file" in line
    assert fake_port[0].written == 0


def test_board_of_another_network_is_refused(q8_spec, q8_spec_dir, fake_port, capsys, images_npy):
    """A board announcing another image shape or class count: one line, no image sent."""
    fake_port.append(FakeBoard(q8_spec, reply_v=version_reply(8, (1, 16, 16), 10)))
    line = one_error_line(*run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", images_npy))
    assert "the board takes 1 x 16 x 16 images and gives 10 scores, the spec 1 x 28 x 28 and 10" in line
    assert fake_port[0].images == 0


def test_version_1_board_is_refused(q8_spec, q8_spec_dir, fake_port, capsys, images_npy):
    """A board built before protocol 2 answers '?' with 4 bytes: named at once, no timeout."""
    fake_port.append(FakeBoard(q8_spec, reply_v=b"V\x01\x08\x0a"))
    t0 = time.monotonic()
    line = one_error_line(*run_main(capsys, "--port", "fake", "--spec", q8_spec_dir, "--images", images_npy,
                                    "--timeout", 3))
    assert "protocol version 1, this host 3" in line
    assert time.monotonic() - t0 < 2 and fake_port[0].images == 0


def test_missing_port_one_error_line(q8_spec_dir, images_npy, run_module):
    r = run_module("hw.board", "--port", "/dev/no-such-tty", "--spec", q8_spec_dir, "--images", images_npy)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --port /dev/no-such-tty: cannot open"), r.stderr
    assert r.stdout == ""


def test_missing_spec_one_error_line(tmp_path, run_module):
    r = run_module("hw.board", "--port", "/dev/no-such-tty", "--spec", tmp_path / "nope")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: --spec {tmp_path / 'nope'}: no such directory"]
