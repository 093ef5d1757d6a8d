"""The top: ``Accelerator(spec, lanes=P)``, a whole LeNet on one time-multiplexed MAC engine.

Data path, in the spirit of the Bell Labs ANNA chip: ``lanes`` neurons computed in parallel by
:class:`~hw.mac.MACLanes`, fed from per-lane copies of the feature memory; a sequencer walks the
layers of the spec in turn (see :mod:`hw.program` for the two modes and the memory layout);
:class:`~hw.activation.Activation` drains each finished group through requantize + the activation
ROM back into the feature memory, while the lanes already compute the next group.

Ports
-----
``i``: stream of uint8 pixels, a 28x28 image in raster order (the 2-pixel border of the 32x32
input is written by the loader). ``o``: stream of 11 beats, the class then the ten scores, the last
beat flagged. ``busy`` is high from the first cycle of loading to ``done`` (one cycle, after the
last output beat), so a testbench counts cycles/image as the cycles with ``busy`` high; that number
equals :func:`hw.perf.cycles_per_image` when the streams never stall.
"""
from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from quantize.spec import QuantSpec

from .activation import Activation
from .mac import MACLanes
from .program import Program, compile_spec

# sequencer constants shared with the cycle model (hw/perf.py)
LOAD_CYCLES = 32 * 32  # one feature-memory write per cycle over the padded 32x32 input
PIPE = 4  # tap issue (c0) -> accumulator final (c4): tap memory, feature memory, multiply, add
OUTPUT_BEATS = 11  # class + ten scores


def layer_gap(lanes: int) -> int:
    """Idle cycles between a layer's last tap and the next layer's first (GAP + INIT): the drain of
    the last group (lanes turns, one write cycle) must land before the next layer reads."""
    return lanes + 4


def _pack(values, width):
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & ((1 << width) - 1)) << (i * width)
    return word


class Accelerator(wiring.Component):
    """A LeNet accelerator generated from a :class:`QuantSpec` with ``lanes`` parallel MACs.

    Latency = throughput period = :func:`hw.perf.cycles_per_image` cycles per image (one image at a
    time; a new image is accepted after ``done``).
    """

    def __init__(self, spec: QuantSpec, lanes: int = 8):
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        self.spec = spec
        self.program: Program = compile_spec(spec, lanes)
        self.lanes = lanes
        p = self.program
        self.addr_width = max(1, (p.fm_words - 1).bit_length())
        sw = max(p.score_width, 5)
        self.out_layout = data.StructLayout({"value": signed(sw), "last": unsigned(1)})
        super().__init__({
            "i": In(stream.Signature(unsigned(8))),
            "o": Out(stream.Signature(self.out_layout)),
            "busy": Out(1),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        prog, P = self.program, self.lanes
        AW = self.addr_width
        layers = prog.layers
        n_layers = len(layers)
        ww, dw, accw = prog.weight_width, prog.fm_width, prog.acc_width

        # -- memories ------------------------------------------------------------------------------
        fms = []
        for q in range(P):
            mem = Memory(shape=signed(dw), depth=prog.fm_words, init=[])
            m.submodules[f"fm{q}"] = mem
            fms.append((mem.read_port(), mem.write_port()))
        offw = prog.offset_width
        tap_init = [_pack([w], ww) | (off << ww) for w, off in prog.tap_words] or [0]
        m.submodules.taps = tapmem = Memory(shape=unsigned(ww + offw), depth=len(tap_init), init=tap_init)
        dense_init = [_pack(ws, ww) for ws in prog.dense_words] or [0]
        m.submodules.dense = densemem = Memory(shape=unsigned(P * ww), depth=len(dense_init), init=dense_init)
        bias_init = [_pack(bs, accw) for bs in prog.bias_words] or [0]
        m.submodules.bias = biasmem = Memory(shape=unsigned(P * accw), depth=len(bias_init), init=bias_init)
        m.submodules.inlut = inlut = Memory(shape=signed(dw), depth=256, init=prog.input_lut)
        tap_rp, dense_rp, bias_rp, in_rp = tapmem.read_port(), densemem.read_port(), biasmem.read_port(), inlut.read_port()

        m.submodules.mac = mac = MACLanes(P, ww, dw, accw)
        m.submodules.act = act = Activation(prog, AW)

        # -- per-layer constants -------------------------------------------------------------------
        conv_maps = [(i, o) for i, lp in enumerate(layers) if lp.mode == "conv" for o in range(lp.maps)]
        taps_arr = Array(Const(layers[i].taps[o], 16) for i, o in conv_maps) if conv_maps else Array([Const(0, 16)])
        wait_arr = Array(Const(max(0, P - layers[i].taps[o]), 16) for i, o in conv_maps) if conv_maps else Array([Const(0, 16)])
        layer = Signal(range(max(n_layers, 2)))
        k = {name: Signal(range(1 << 16), name=f"k_{name}") for name in
             ("in_base", "out_base", "n", "maps", "groups", "wout", "dc", "adv_a", "adv_b", "dense_taps", "dense_wait")}
        k_conv = Signal()
        k_last = Signal()
        lane_col0 = [Signal(range(1 << 16), name=f"k_col0_{q}") for q in range(P)]
        lane_base0 = [Signal(range(1 << 16), name=f"k_base0_{q}") for q in range(P)]
        with m.Switch(layer):
            for i, lp in enumerate(layers):
                with m.Case(i):
                    S, win, wout = lp.stride, lp.in_size, lp.out_size
                    dr, dc = divmod(P, wout) if lp.mode == "conv" else (0, 0)
                    adv_a = dr * S * win + dc * S
                    vals = {"in_base": lp.in_base, "out_base": lp.out_base or 0, "n": lp.n_out, "maps": lp.maps,
                            "groups": lp.groups, "wout": wout, "dc": dc, "adv_a": adv_a,
                            "adv_b": adv_a + S * win - wout * S if lp.mode == "conv" else 0,
                            "dense_taps": lp.taps[0] if lp.mode == "dense" else 0,
                            "dense_wait": max(0, P - lp.taps[0]) if lp.mode == "dense" else 0}
                    m.d.comb += [k[name].eq(v) for name, v in vals.items()]
                    m.d.comb += [k_conv.eq(lp.mode == "conv"), k_last.eq(i == n_layers - 1)]
                    if lp.mode == "conv":
                        for q in range(P):
                            r0, c0 = divmod(q, wout)
                            m.d.comb += [lane_col0[q].eq(c0), lane_base0[q].eq(r0 * S * win + c0 * S)]

        # -- sequencer state -----------------------------------------------------------------------
        o_cnt = Signal(range(1 << 16))  # output map (conv)
        g_cnt = Signal(range(1 << 16))  # group within the map (conv) or layer (dense)
        t_cnt = Signal(range(1 << 16))  # tap within the group
        gm = Signal(range(max(len(conv_maps), 2)))  # global conv map index
        p0 = Signal(range(1 << 16))  # first output (position or neuron) of the group
        map_off = Signal(range(1 << 16))  # o * n
        tap_ptr = Signal(range(max(len(tap_init), 2)))
        tap_map_base = Signal.like(tap_ptr)
        dense_ptr = Signal(range(max(len(dense_init), 2)))
        bias_ptr = Signal(range(max(len(bias_init), 2)))
        col = [Signal(range(1 << 16), name=f"col{q}") for q in range(P)]
        base = [Signal(range(1 << 16), name=f"base{q}") for q in range(P)]
        counter = Signal(range(1 << 16))
        load_addr = Signal(range(LOAD_CYCLES + 1))
        out_beat = Signal(range(OUTPUT_BEATS + 1))

        T = Signal(16)
        m.d.comb += T.eq(Mux(k_conv, taps_arr[gm], k["dense_taps"]))
        last_tap = t_cnt == T - 1
        last_group = g_cnt == k["groups"] - 1
        last_map = o_cnt == k["maps"] - 1
        issue = Signal()

        m.d.comb += [tap_rp.addr.eq(tap_ptr), dense_rp.addr.eq(dense_ptr), bias_rp.addr.eq(bias_ptr)]

        def init_layer():
            return [o_cnt.eq(0), g_cnt.eq(0), t_cnt.eq(0), p0.eq(0), map_off.eq(0), tap_map_base.eq(tap_ptr)] + \
                   [col[q].eq(lane_col0[q]) for q in range(P)] + [base[q].eq(lane_base0[q]) for q in range(P)]

        def advance_lanes():
            stmts = []
            for q in range(P):
                c1 = col[q] + k["dc"]
                wrap = c1 >= k["wout"]
                stmts += [col[q].eq(Mux(wrap, c1 - k["wout"], c1)),
                          base[q].eq(base[q] + Mux(wrap, k["adv_b"], k["adv_a"]))]
            return stmts

        # load: input ROM address now, the write one cycle later
        load_we = Signal()
        load_waddr = Signal(AW)
        m.d.sync += load_we.eq(0)
        lr, lc = load_addr[5:], load_addr[:5]
        pad, size = prog.input_pad, prog.input_size
        border = (lr < pad) | (lr >= size - pad) | (lc < pad) | (lc >= size - pad)

        with m.FSM(name="seq"):
            with m.State("IDLE"):
                m.d.sync += [tap_ptr.eq(0), dense_ptr.eq(0), bias_ptr.eq(0), gm.eq(0), layer.eq(0),
                             load_addr.eq(0)]
                with m.If(self.i.valid):
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += self.busy.eq(1)
                with m.If(border):
                    m.d.comb += in_rp.addr.eq(0)
                with m.Else():
                    m.d.comb += [self.i.ready.eq(1), in_rp.addr.eq(self.i.payload)]
                with m.If(border | self.i.valid):
                    m.d.sync += [load_we.eq(1), load_waddr.eq(load_addr), load_addr.eq(load_addr + 1)]
                    with m.If(load_addr == LOAD_CYCLES - 1):
                        m.next = "INIT"
            with m.State("INIT"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += init_layer()
                m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += [self.busy.eq(1), issue.eq(1)]
                m.d.sync += [t_cnt.eq(t_cnt + 1), dense_ptr.eq(dense_ptr + ~k_conv), tap_ptr.eq(tap_ptr + k_conv)]
                with m.If(last_tap):
                    m.d.sync += t_cnt.eq(0)
                    with m.If(k_conv):
                        with m.If(last_group):
                            m.d.sync += [g_cnt.eq(0), o_cnt.eq(o_cnt + 1), gm.eq(gm + 1), bias_ptr.eq(bias_ptr + 1),
                                         p0.eq(0), map_off.eq(map_off + k["n"]), tap_map_base.eq(tap_ptr + 1)]
                            m.d.sync += [col[q].eq(lane_col0[q]) for q in range(P)]
                            m.d.sync += [base[q].eq(lane_base0[q]) for q in range(P)]
                        with m.Else():
                            m.d.sync += [g_cnt.eq(g_cnt + 1), p0.eq(p0 + P), tap_ptr.eq(tap_map_base)]
                            m.d.sync += advance_lanes()
                    with m.Else():
                        m.d.sync += [g_cnt.eq(g_cnt + 1), p0.eq(p0 + P), bias_ptr.eq(bias_ptr + 1)]
                    layer_done = last_group & (last_map | ~k_conv)
                    wait_next = Mux(k_conv, wait_arr[Mux(last_group, gm + 1, gm)], k["dense_wait"])
                    with m.If(layer_done):
                        m.d.sync += counter.eq(layer_gap(P) - 2)
                        m.next = "GAP"
                    with m.Elif(wait_next != 0):
                        m.d.sync += counter.eq(wait_next - 1)
                        m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += counter.eq(counter - 1)
                with m.If(counter == 0):
                    m.next = "ISSUE"
            with m.State("GAP"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += counter.eq(counter - 1)
                with m.If(counter == 0):
                    with m.If(k_last):
                        m.next = "FINISH"
                    with m.Else():
                        m.d.sync += layer.eq(layer + 1)
                        m.next = "INIT"
            with m.State("FINISH"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += out_beat.eq(0)
                m.next = "OUTPUT"
            with m.State("OUTPUT"):
                m.d.comb += [self.busy.eq(1), self.o.valid.eq(1)]
                with m.If(self.o.ready):
                    m.d.sync += out_beat.eq(out_beat + 1)
                    with m.If(out_beat == OUTPUT_BEATS - 1):
                        m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1)]
                m.next = "IDLE"

        # -- tap pipeline: c1 (memory words out), c2 (features out), MAC, c4 (accumulators final) -----
        s1 = {n: Signal(name=f"s1_{n}") for n in ("valid", "first", "last", "conv")}
        s1_t = Signal.like(t_cnt)
        s1_in_base = Signal(AW)
        s1_mask = Signal(P)
        s1_out = Signal(AW)
        s1_layer = Signal.like(layer)
        s1_base = [Signal(range(1 << 16), name=f"s1_base{q}") for q in range(P)]
        mask_now = Signal(P)
        m.d.comb += [mask_now[q].eq(p0 + q < k["n"]) for q in range(P)]
        m.d.sync += [s1["valid"].eq(issue), s1["first"].eq(t_cnt == 0), s1["last"].eq(issue & last_tap),
                     s1["conv"].eq(k_conv), s1_t.eq(t_cnt), s1_in_base.eq(k["in_base"]), s1_mask.eq(mask_now),
                     s1_out.eq(k["out_base"] + map_off + p0), s1_layer.eq(layer)]
        m.d.sync += [s1_base[q].eq(base[q]) for q in range(P)]

        tap_w = tap_rp.data[:ww].as_signed()
        tap_off = tap_rp.data[ww:]
        s2 = {n: Signal(name=f"s2_{n}") for n in ("valid", "first", "last")}
        s2_w = [Signal(signed(ww), name=f"s2_w{q}") for q in range(P)]
        s2_bias = [Signal(signed(accw), name=f"s2_bias{q}") for q in range(P)]
        s2_mask, s2_out, s2_layer = Signal(P), Signal(AW), Signal.like(layer)
        for q in range(P):
            addr = s1_in_base + Mux(s1["conv"], s1_base[q] + tap_off, s1_t)
            m.d.comb += fms[q][0].addr.eq(Mux(s1_mask[q], addr, 0))
            m.d.sync += [s2_w[q].eq(Mux(s1["conv"], tap_w, dense_rp.data[q * ww:(q + 1) * ww].as_signed())),
                         s2_bias[q].eq(bias_rp.data[q * accw:(q + 1) * accw].as_signed())]
        m.d.sync += [s2[n].eq(s1[n]) for n in s2] + [s2_mask.eq(s1_mask), s2_out.eq(s1_out), s2_layer.eq(s1_layer)]

        m.d.comb += [mac.valid.eq(s2["valid"]), mac.first.eq(s2["first"])]
        for q in range(P):
            m.d.comb += [mac.w[q].eq(s2_w[q]), mac.x[q].eq(fms[q][0].data), mac.bias[q].eq(s2_bias[q])]
        s3_last, s4_last = Signal(), Signal()
        s3_mask, s4_mask = Signal(P), Signal(P)
        s3_out, s4_out = Signal(AW), Signal(AW)
        s3_layer, s4_layer = Signal.like(layer), Signal.like(layer)
        m.d.sync += [s3_last.eq(s2["last"]), s3_mask.eq(s2_mask), s3_out.eq(s2_out), s3_layer.eq(s2_layer),
                     s4_last.eq(s3_last), s4_mask.eq(s3_mask), s4_out.eq(s3_out), s4_layer.eq(s3_layer)]

        m.d.comb += [act.capture.eq(s4_last), act.layer.eq(s4_layer), act.out_addr.eq(s4_out), act.mask.eq(s4_mask)]
        m.d.comb += [act.acc[q].eq(mac.acc[q]) for q in range(P)]

        # feature-memory writes (every lane copy): the loader, then the drain
        for q in range(P):
            wp = fms[q][1]
            m.d.comb += [wp.en.eq(Mux(load_we, 1, act.we)), wp.addr.eq(Mux(load_we, load_waddr, act.waddr)),
                         wp.data.eq(Mux(load_we, in_rp.data, act.wdata))]

        # scores and the running argmax (first maximum wins, as in the emulator)
        scores = Array(Signal(signed(prog.score_width), name=f"score{j}") for j in range(prog.scores))
        best = Signal(signed(prog.score_width))
        cls = Signal(range(max(prog.scores, 2)))
        with m.If(act.score_we):
            m.d.sync += scores[act.score_idx].eq(act.score)
            with m.If((act.score_idx == 0) | (act.score > best)):
                m.d.sync += [best.eq(act.score), cls.eq(act.score_idx)]
        m.d.comb += [self.o.payload.value.eq(Mux(out_beat == 0, cls, scores[out_beat - 1])),
                     self.o.payload.last.eq(out_beat == OUTPUT_BEATS - 1)]
        return m
