"""The board top in Icarus with a real UART model (cocotbext-uart) on its pins: ``?`` (protocol 2: the
image shape and classes announced), one MNIST test image through ``I`` (class and ten scores equal to
the emulator's), an unknown command.

Costs: the board top builds in seconds; one image is ~45,000 accelerator cycles plus ~66,000 cycles
of UART at 8 cycles per bit, ~15-30 s in Icarus. More images are ``slow``.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from sim import tb_board

LANES = 8


@pytest.fixture(scope="module")
def board_images(mnist_dir):
    import model.data

    return model.data.load("test", data=mnist_dir).images[:4]


def _need_icarus():
    from model.util import UserError
    from sim.runner import check_simulator

    try:
        check_simulator("icarus")
    except UserError as e:
        pytest.skip(str(e))


def test_board_uart_one_image_bit_exact(q8_spec_dir, board_images, sim_out):
    _need_icarus()
    pytest.importorskip("cocotbext.uart")
    r = tb_board.run(q8_spec_dir, board_images[:1], "icarus", lanes=LANES, out=sim_out / "board")
    assert r["version"] == {"version": 3, "lanes": LANES, "image_shape": [1, 28, 28], "classes": 10, "batch": 1}
    assert len(r["classes"]) == 1 and len(r["scores"][0]) == 10
    assert r["mismatches"] == 0, r["first_mismatch"]
    assert r["unknown_command"] == "E"


def test_board_uart_other_network(board_images, sim_out, tmp_path):
    """A board top of a network that is not LeNet-5 (several channels, a non-square image, not 10
    classes): the announcement, the image size and the reply follow the spec."""
    _need_icarus()
    pytest.importorskip("cocotbext.uart")
    randspec = pytest.importorskip("quantize.randspec")
    spec = next((s for s in map(randspec.random_spec, range(200))
                 if s.input_shape[0] > 1 and s.input_shape[1] != s.input_shape[2] and s.classes != 10), None)
    if spec is None:
        pytest.skip("no multi-channel non-square spec among the first 200 random specs")
    d = spec.save(tmp_path / "other")
    images = np.random.default_rng(2).integers(0, 256, (2, *spec.input_shape), dtype=np.uint8)
    r = tb_board.run(d, images, "icarus", lanes=4, out=sim_out / "board")
    assert r["version"] == {"version": 3, "lanes": 4, "image_shape": list(spec.input_shape), "classes": spec.classes,
                            "batch": 1}
    assert len(r["classes"]) == 2 and all(len(s) == spec.classes for s in r["scores"])
    assert r["mismatches"] == 0, r["first_mismatch"]
    assert r["unknown_command"] == "E"


@pytest.mark.slow
def test_board_uart_more_images_bit_exact(q8_spec_dir, board_images, sim_out):
    _need_icarus()
    pytest.importorskip("cocotbext.uart")
    r = tb_board.run(q8_spec_dir, board_images, os.environ.get("SIM", "icarus"), lanes=LANES, out=sim_out / "board")
    assert r["images"] == len(board_images) and r["mismatches"] == 0, r["first_mismatch"]


def test_board_harness_names_the_top():
    text = tb_board.harness_verilog()
    assert f"module {tb_board.HARNESS}(" in text and f"{tb_board.TOP} dut(" in text
    assert tb_board.CLK_HZ // tb_board.BAUD == tb_board.DIVISOR == 8
