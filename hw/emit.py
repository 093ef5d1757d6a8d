"""Verilog emission: Amaranth's Verilog (through Yosys), shaped for fast event-driven simulation.

Yosys writes every flip-flop as its own ``always @(posedge clk)`` block. Icarus runs each block
as a thread that wakes at every clock edge, and a thread wake-up costs far more than the
non-blocking assignment it carries; with ~160 registers that is most of a cycle's work.
:func:`merge_clocked_blocks` puts all the blocks of one clock in a module into one block: the same
non-blocking assignments, so the same logic (the order of non-blocking assignments to different
registers does not matter, and Yosys writes no two for the same bits), and Icarus simulates the
accelerator about 1.2 x faster. Verilator and the lint are indifferent to it.
"""
from __future__ import annotations

import re

from amaranth.back import verilog

_HEAD = re.compile(r"^  always @\(posedge (\\?[\w$.]+ ?)\)( begin)?$")


def merge_clocked_blocks(text: str) -> str:
    """``text`` with the ``always @(posedge c)`` blocks of each module merged into one per clock.

    Only the two shapes Yosys writes are touched (a header followed by one statement, or a header
    ending in ``begin`` closed by a line ``  end``); a module with anything else is left as it is.
    """
    out = []
    for module in re.split(r"(?<=^endmodule\n)", text, flags=re.M):
        out.append(_merge_module(module))
    return "".join(out)


def _merge_module(module: str) -> str:
    lines = module.split("\n")
    kept, bodies = [], {}
    i = 0
    while i < len(lines):
        m = _HEAD.match(lines[i])
        if not m:
            kept.append(lines[i])
            i += 1
            continue
        clk = m.group(1).strip()
        if m.group(2):  # "begin" ... "  end"
            j = i + 1
            while j < len(lines) and lines[j] != "  end":
                if lines[j].startswith("  always") or lines[j].startswith("endmodule"):
                    return module  # not a shape we know: leave the module alone
                j += 1
            if j == len(lines):
                return module
            body = lines[i + 1:j]
            i = j + 1
        else:  # one statement on the next line
            if i + 1 >= len(lines) or not lines[i + 1].startswith("    ") or not lines[i + 1].rstrip().endswith(";"):
                return module
            body = [lines[i + 1]]
            i += 2
        if any("<=" not in l and l.strip() not in ("", "begin", "end") and not l.strip().startswith("if")
               for l in body):
            return module  # a blocking assignment or another statement: leave the module alone
        bodies.setdefault(clk, []).extend(body)
    if not bodies:
        return module
    end = max(k for k, l in enumerate(kept) if l.startswith("endmodule"))
    merged = []
    for clk, body in bodies.items():
        merged += [f"  always @(posedge {clk}) begin"] + body + ["  end"]
    return "\n".join(kept[:end] + merged + kept[end:])


def emit_verilog(component, name: str) -> str:
    """The Verilog of an Amaranth component, named ``name``, with its clocked blocks merged."""
    return merge_clocked_blocks(verilog.convert(component, name=name, emit_src=False))
