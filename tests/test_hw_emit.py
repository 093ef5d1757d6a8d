"""hw.emit: the clocked blocks of each module merged into one, and nothing else touched."""
from __future__ import annotations

from hw.emit import emit_verilog, merge_clocked_blocks

YOSYS_LIKE = """module top(clk, a, q, r);
  input clk;
  always @(posedge clk)
    q <= a;
  assign x = a;
  always @(posedge clk) begin
    if (we)
      mem[addr] <= a;
  end
  always @(posedge clk)
    r <= q;
endmodule
module other(clk);
  always @(posedge clk)
    s <= t;
  always @(posedge clk)
    u = v;
endmodule
"""


def test_merges_the_two_yosys_shapes_per_module():
    out = merge_clocked_blocks(YOSYS_LIKE)
    top = out[:out.index("endmodule") + len("endmodule")]
    assert top.count("always @(posedge clk)") == 1
    body = top[top.index("always @(posedge clk) begin"):]
    assert body.index("q <= a;") < body.index("mem[addr] <= a;") < body.index("r <= q;")
    assert "assign x = a;" in top
    # a module with a blocking assignment in a clocked block is left exactly as it was
    assert out[out.index("module other"):] == YOSYS_LIKE[YOSYS_LIKE.index("module other"):]


def test_emitted_accelerator_has_one_clocked_block_per_module(q8_spec):
    from hw.accelerator import Accelerator

    text = emit_verilog(Accelerator(q8_spec, 8), "t")
    modules = text.count("\nmodule ") + text.startswith("module ")
    assert text.count("always @(posedge clk)") <= modules
    assert merge_clocked_blocks(text) == text  # idempotent
