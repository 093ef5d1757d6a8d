"""The boards' platforms: which amaranth-boards platform each board is, its PLL's dividers (iCE40
SB_PLL40, ECP5 EHXPLLL) and :class:`PlatformTop`, a board top wired to the board's pins and clock."""
from __future__ import annotations

import importlib

from amaranth.hdl import Const, Elaboratable, Module, Signal
from amaranth.lib import io

from model.util import UserError

# (module, class) in amaranth-boards; the pins its platforms define (amaranth-boards 0.0.21):
# iCEBreaker: clk12 pin 35, UART rx 6 / tx 9 (the FTDI's second channel), green LED 37;
# ULX3S: clk25 G2, UART (FTDI) rx M1 / tx L4, LED0 B2.
BOARDS = {
    "icebreaker": {"module": "amaranth_boards.icebreaker", "platform": "ICEBreakerPlatform", "led": ("led_g", 0),
                   "constraints": ".pcf"},
    "ulx3s": {"module": "amaranth_boards.ulx3s", "platform": "ULX3S_85F_Platform", "led": ("led", 0),
              "constraints": ".lpf"},
    "ulx3s-25f": {"module": "amaranth_boards.ulx3s", "platform": "ULX3S_25F_Platform", "led": ("led", 0),
                  "constraints": ".lpf"},
}


def ice40_pll(f_in: float, f_out: float) -> dict:
    """SB_PLL40 dividers for ``f_out`` MHz from ``f_in`` MHz (the search icepll does): PFD 10-133 MHz,
    VCO 533-1066 MHz. Returns DIVR, DIVF, DIVQ, FILTER_RANGE and the frequency reached."""
    best = None
    for divr in range(16):
        pfd = f_in / (divr + 1)
        if not 10 <= pfd <= 133:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533 <= vco <= 1066:
                continue
            for divq in range(1, 7):
                f = vco / (1 << divq)
                if best is None or abs(f - f_out) < abs(best["mhz"] - f_out):
                    fr = next(i for i, lim in enumerate((17, 26, 44, 66, 101, 1e9), 1) if pfd < lim)
                    best = {"DIVR": divr, "DIVF": divf, "DIVQ": divq, "FILTER_RANGE": fr, "mhz": f}
    if best is None or abs(best["mhz"] - f_out) > 0.02 * f_out:
        raise UserError(f"no iCE40 PLL setting gives {f_out:g} MHz from {f_in:g} MHz")
    return best


def ecp5_pll(f_in: float, f_out: float) -> dict:
    """EHXPLLL dividers for ``f_out`` MHz from ``f_in`` MHz: PFD 3.125-400 MHz, VCO 400-800 MHz."""
    best = None
    for clki in range(1, 129):
        pfd = f_in / clki
        if not 3.125 <= pfd <= 400:
            continue
        for fb in range(1, 81):
            f = pfd * fb
            for op in range(1, 129):
                if 400 <= f * op <= 800:
                    if best is None or abs(f - f_out) < abs(best["mhz"] - f_out):
                        best = {"CLKI_DIV": clki, "CLKFB_DIV": fb, "CLKOP_DIV": op, "mhz": f}
                    break
    if best is None or abs(best["mhz"] - f_out) > 0.02 * f_out:
        raise UserError(f"no ECP5 PLL setting gives {f_out:g} MHz from {f_in:g} MHz")
    return best


def platform_for(board: str):
    """An instance of the board's amaranth-boards platform."""
    if board not in BOARDS:
        raise UserError(f"unknown board {board!r} ({', '.join(BOARDS)})")
    info = BOARDS[board]
    try:
        module = importlib.import_module(info["module"])
    except ImportError:
        raise UserError(f"board {board}: amaranth-boards is not installed (pip install amaranth-boards)") from None
    return getattr(module, info["platform"])()


class PlatformTop(Elaboratable):
    """A :class:`hw.boards.BoardTop` wired to the board's UART pins and an LED; the clock domain comes from the
    platform (the board's oscillator), or with ``pll`` (dividers from :func:`ice40_pll` /
    :func:`ecp5_pll`) from a PLL on it, held in reset until the PLL locks."""

    def __init__(self, top, board: str, pll: dict | None = None):
        self.top, self.board, self.pll = top, board, pll

    def elaborate(self, platform):
        m = Module()
        if self.pll is not None:
            self._pll(m, platform)
        m.submodules.top = top = self.top
        uart = platform.request("uart", 0, dir="-")
        led = platform.request(*BOARDS[self.board]["led"], dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.submodules.led_buf = led_buf = io.Buffer("o", led)  # an active-low LED is inverted by its port
        m.d.comb += [top.rx.eq(rx_buf.i), tx_buf.o.eq(top.tx), led_buf.o.eq(top.led)]
        return m

    def _pll(self, m, platform):
        from amaranth.hdl import ClockDomain, Instance
        from amaranth.lib.cdc import ResetSynchronizer

        pll = self.pll
        m.domains.sync = cd = ClockDomain("sync")
        locked = Signal()
        clk = platform.request(platform.default_clk, dir="-")
        if "DIVF" in pll:  # iCE40: the oscillator pin feeds the PLL directly
            m.submodules.pll = Instance(
                "SB_PLL40_PAD", p_FEEDBACK_PATH="SIMPLE", p_DIVR=pll["DIVR"], p_DIVF=pll["DIVF"], p_DIVQ=pll["DIVQ"],
                p_FILTER_RANGE=pll["FILTER_RANGE"], i_PACKAGEPIN=clk.io, i_RESETB=Const(1), i_BYPASS=Const(0),
                o_PLLOUTGLOBAL=cd.clk, o_LOCK=locked)
        else:  # ECP5
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk)
            m.submodules.pll = Instance(
                "EHXPLLL", p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
                p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD", p_CLKI_DIV=pll["CLKI_DIV"],
                p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=pll["CLKOP_DIV"], p_CLKOP_CPHASE=pll["CLKOP_DIV"] - 1,
                p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=pll["CLKFB_DIV"],
                i_RST=Const(0), i_STDBY=Const(0), i_CLKI=clk_buf.i, i_CLKFB=cd.clk, o_CLKOP=cd.clk, o_LOCK=locked,
                i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1), i_PHASESTEP=Const(1),
                i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0))
        m.submodules.rst_sync = ResetSynchronizer(~locked, domain="sync")
