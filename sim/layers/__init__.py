# amaranth: UnusedElaboratable=no
# (tops are built to read their ports and stimulus too, not only to be emitted)
"""Layer-level cocotb testbenches: small Amaranth tops, emitted to Verilog, run in Icarus or Verilator.

``python -m sim.layers [--layer NAME ...] [--simulator icarus|verilator] [--json]``

Each registered *layer top* is a small Amaranth component. :func:`run_layer` emits it with
``amaranth.back.verilog`` (deterministic: same parameters, same bytes), builds it with
``cocotb_tools.runner`` and runs the generic testbench :mod:`sim.tb_layers` on a cycle-by-cycle
schedule of inputs. The expected outputs are computed here, in Python, by the emulator's code only
(``quantize/ops.py``, ``quantize/qformat.py``), written with the inputs to ``golden.npz``; the
testbench drives the inputs, samples the outputs and compares them by integer equality. It never
computes an expected value itself.

The tops (``python -m sim.layers --help`` lists them; one vector is what one expectation checks):

- ``requantize``: ``hw.fixed.requantize``, 10 (source, target) format cases, combinational.
- ``mac``: ``hw.mac.MACLanes``, dot products + bias vs int64 sums wrapped to the acc width.
- ``activation_lut``: requantize to a LUT address + ROM vs ``ops.activation``.
- ``window``: ``hw.window.TileWindow`` alone. A tensor is written through its write port as
  ``hw.layout.Layout`` places it; then every tap of every tile of a conv (the accelerator's read
  addresses: tile offset + :func:`conv_tap`, ``compile_spec``'s tap word) and broadcast (dense)
  reads; each lane's word vs the emulator's im2col (``ops._unfold_int``) / flattened input.
- ``window_wrapped``: the same in wrapped groups (:mod:`hw.wrap`): the input laid out with a strip
  pitch, eight bases, the ``wrap`` selects and ``mx1`` (:func:`wrapped_read`), each group running
  on from one strip of the output into the next.
- ``conv_tile``, ``subsample``, ``dense``: the window feeding the MAC lanes (:class:`WindowMAC`,
  wired as in the accelerator): a conv layer with a connection table, a 2x2 subsampling (stride-2
  layout, four taps carrying the map's coefficient) and a dense layer (broadcast reads, one
  weight per lane); each (map, tile) or group's accumulators vs ``ops.conv2d`` /
  ``ops.subsample`` / ``ops.dense`` with bias 0 (the accelerator adds it in the drain), wrapped
  by the acc format's ``overflow_codes``. Extreme codes make some accumulators wrap.

These four draw fresh tensors and weights round after round until they have ``n`` vectors. Lanes
of a partial tile (outside the output map) and lanes past the last neuron are left out of the
comparison (``care``); the others must match.

Timing convention (the same as ``ctx.set``/``ctx.get``/``ctx.tick`` in an Amaranth testbench):
cycle ``t``'s inputs are applied in the middle of cycle ``t`` and the outputs are sampled once they
have settled in that same cycle, before the rising edge that ends it. So a component with latency
L shows the result of cycle t's inputs in cycle ``t + L``; a combinational top (no ``clk`` port) has
L = 0 and is stepped without a clock. Cycles start after two cycles of ``rst``; an input not given
in a cycle is 0.

The package, by job: ``core.py`` (ports, :class:`Schedule`, stimulus codes, the registry),
``arith.py`` (requantize, mac, activation_lut), ``window.py`` (the window top, :class:`WindowMAC`
and the layout/tap helpers), ``datapath.py`` (conv_tile, subsample, dense), ``run.py``
(:func:`run_layer`, the command line); :mod:`sim.tb_layers` is the cocotb testbench.

Adding a top takes ~20 lines: a builder, a vectors function and ``register`` (a sketch)::

    def _build_pool(p):
        return MaxPool(lanes=p["lanes"], data_width=p["bits"])

    def _pool_vectors(dut, p, rng, n):
        s = Schedule(dut)
        x = extremes_and_random(rng, QFormat(p["bits"], 0), n * 4).reshape(n, 4)  # min/max codes included
        golden = ...                                             # from quantize.ops only
        for v in range(n):
            c = s.cycle({"i__valid": 1, "i__payload": x[v]})
            s.expect(c + LATENCY, v, {"o__payload": golden[v]})  # ports as named in the Verilog;
        return s                                                 # care=[0/1 per lane] to skip lanes

    register(LayerTop("pool", "max pooling, latency 1", _build_pool, _pool_vectors,
                      {"lanes": 4, "bits": 8}, n=64))

Ports are the component's signature flattened as the Verilog names them (``i__payload``); an
``ArrayLayout`` port takes and returns one value per element (lane); any other layout is one
unsigned integer of its width. ``In`` ports are driven, ``Out`` ports are compared where expected.
The schedule is fixed in advance, so a top must have a known latency (every hw/ component states
it); a top that stalls on ``ready`` would need a monitor that matches output beats instead.

A run writes under ``OUT/NAME/<hash of the Verilog>/``: the Verilog, ``SIM/build-*`` (reused while
the Verilog and options are unchanged) and ``SIM/run/`` (``golden.npz``, ``sim.log``,
``result.json``). ``run_layer(..., params=...)`` overrides a top's defaults (e.g.
``activation_params(spec.layer("C1"))``); ``WAVES=1`` writes a waveform.
"""
from __future__ import annotations

# importing the modules registers the tops, in this order (``python -m sim.layers`` runs them in it):
# arith (requantize, mac, activation_lut), window (window), datapath (conv_tile, subsample, dense)
from .arith import MAC_LATENCY, REQUANTIZE_CASES, ActivationLUT, RequantizeTop, activation_params
from .core import LAYERS, LayerTop, Port, Schedule, extremes_and_random, get_layer, ports_of, register
from . import datapath  # noqa: F401  (registers conv_tile, subsample, dense)
from .run import OUT, PERIOD_NS, RESET_CYCLES, emit, main, run_layer
from .window import (WINDOW_LATENCY, WINDOW_MAC_LATENCY, WINDOW_PORTS, WINDOW_READ, WindowMAC, conv_tap, tile_read,
                     wrapped_read)

__all__ = ["LAYERS", "LayerTop", "Port", "Schedule", "extremes_and_random", "get_layer", "ports_of", "register",
           "MAC_LATENCY", "REQUANTIZE_CASES", "ActivationLUT", "RequantizeTop", "activation_params",
           "WINDOW_LATENCY", "WINDOW_MAC_LATENCY", "WINDOW_PORTS", "WINDOW_READ", "WindowMAC", "conv_tap", "tile_read",
           "wrapped_read",
           "OUT", "PERIOD_NS", "RESET_CYCLES", "emit", "main", "run_layer"]
