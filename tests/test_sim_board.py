"""The board top in Icarus with a real UART model (cocotbext-uart) on its pins: ``?``, one MNIST test
image through ``I`` (class and ten scores equal to the emulator's), an unknown command.

Costs: the board top builds in seconds; one image is ~45,000 accelerator cycles plus ~66,000 cycles
of UART at 8 cycles per bit, ~15-30 s in Icarus. More images are ``slow``.
"""
from __future__ import annotations

import os

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
    assert r["version"] == {"version": 1, "lanes": LANES, "scores": 10}
    assert len(r["classes"]) == 1 and len(r["scores"][0]) == 10
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
