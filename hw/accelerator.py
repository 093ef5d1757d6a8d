"""The top: ``Accelerator(spec, lanes=P)``, a whole LeNet-style network on one time-multiplexed
MAC engine.

Data path, in the spirit of the Bell Labs ANNA chip: ``lanes`` neurons computed in parallel by
:class:`~hw.mac.MACLanes`, fed by :class:`~hw.window.TileWindow` (one banked copy of the feature
maps and the crossbar that puts the R x C pixels under the current tap onto the lanes), drained
by :class:`~hw.activation.Activation` through bias, requantize and activation back into the
feature memory while the lanes already compute the next group: together an
:class:`~hw.engine.Engine`. One :class:`~hw.sequencer.Sequencer` walks the compiled
:class:`~hw.program.Program` layer after layer (see :mod:`hw.program` for the modes and layouts).

Ports
-----
``wl`` (only with ``weights="load"``): stream of bytes, the weight memory's image
(:meth:`Accelerator.weight_load_data`, ``weight_load_bytes`` long), taken while the accelerator is
idle; with ``weights="rom"`` the weights are initialised memory contents instead.
``i``: stream of uint8 pixels, the spec's C x H x W image, channel by channel in raster order (the
padding is written by the loader). ``o``: ``program.output_beats`` beats, the class then one score
per class, the last beat flagged. ``busy`` is high from the first cycle of loading to ``done`` (one
cycle, after the last output beat), so a testbench counts cycles/image as the cycles with ``busy``
high; that number equals :func:`hw.perf.cycles_per_image` when the streams never stall. An
overlapped program (``Program.overlap``) takes the next image while one runs: its loading cycles
count only while no image runs (the first of a stream: :func:`hw.perf.latency_cycles`).
"""
from __future__ import annotations

from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from quantize.spec import QuantSpec

from .engine import Engine
from .program import Program, addr_width, compile_spec
from .sequencer import Sequencer


class Accelerator(wiring.Component):
    """A LeNet-style accelerator generated from a :class:`QuantSpec` with ``lanes`` parallel MACs.

    Latency = throughput period = :func:`hw.perf.cycles_per_image` cycles per image (one image at a
    time; a new image is accepted after ``done``); an overlapped program accepts the next image while
    one runs, and its period is :func:`hw.perf.cycles_per_image`, its latency
    :func:`hw.perf.latency_cycles`.

    ``batch`` = B > 1 runs B images in lockstep: one sequencer and one weight memory, one engine of
    B images (B x lanes MACs; images 2j and 2j + 1 share the DSPs where ``dsp`` pairs them, see
    :class:`~hw.mac.MACLanes`). ``i`` then carries one pixel of each image per beat (image b in bits
    8b..8b+7) and each ``o`` beat carries B values (``value[b]``); the cycles per batch are those
    of one image. ``program`` may be given instead of compiling ``spec`` again.
    """

    def __init__(self, spec: QuantSpec, lanes: int = 8, weights: str = "rom", batch: int = 1,
                 program: Program | None = None, dsp: str = "auto"):
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        if weights not in ("rom", "load"):
            raise ValueError(f"weights must be 'rom' (initialised memory) or 'load' (loaded through wl), got {weights!r}")
        if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 64:
            raise ValueError(f"batch must be an integer in 1..64, got {batch!r}")
        self.weights, self.batch, self.spec, self.lanes, self.dsp = weights, batch, spec, lanes, dsp
        self.program: Program = program if program is not None else compile_spec(spec, lanes)
        if self.program.lanes != lanes:
            raise ValueError(f"program compiled for {self.program.lanes} lanes, not {lanes}")
        p = self.program
        self.addr_width = addr_width(p)
        sw = max(p.score_width, 5)
        value = signed(sw) if batch == 1 else data.ArrayLayout(signed(sw), batch)
        self.out_layout = data.StructLayout({"value": value, "last": unsigned(1)})
        ports = {
            "i": In(stream.Signature(unsigned(8 * batch))),
            "o": Out(stream.Signature(self.out_layout)),
            "busy": Out(1),
            "done": Out(1),
        }
        if weights == "load":
            ports["wl"] = In(stream.Signature(unsigned(8)))
            self.weight_load_bytes = len(p.weight_bytes())
        super().__init__(ports)

    def weight_load_data(self) -> bytes:
        """The bytes to send through ``wl`` (``weights="load"``) before the first image."""
        return self.program.weight_bytes()

    def elaborate(self, platform):
        m = Module()
        B = self.batch
        m.submodules.seq = seq = Sequencer(self.program, self.weights)
        m.d.comb += [seq.i_valid.eq(self.i.valid), self.i.ready.eq(seq.i_ready), self.o.valid.eq(seq.o_valid),
                     seq.o_ready.eq(self.o.ready), self.o.payload.last.eq(seq.o_last),
                     self.busy.eq(seq.busy), self.done.eq(seq.done)]
        if self.weights == "load":
            m.d.comb += [seq.wl_valid.eq(self.wl.valid), seq.wl_payload.eq(self.wl.payload), self.wl.ready.eq(seq.wl_ready)]
        m.submodules.engine = eng = Engine(self.program, images=B, dsp=self.dsp)
        wiring.connect(m, seq.ctl, eng.ctl)
        if B == 1:
            m.d.comb += [eng.pixel.eq(self.i.payload), self.o.payload.value.eq(eng.value)]
        for b in range(B if B > 1 else 0):
            m.d.comb += [eng.pixel[b].eq(self.i.payload[8 * b:8 * b + 8]), self.o.payload.value[b].eq(eng.value[b])]
        return m
