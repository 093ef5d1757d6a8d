"""The top: ``Accelerator(spec, lanes=P)``, a whole LeNet on one time-multiplexed MAC engine.

Data path, in the spirit of the Bell Labs ANNA chip: ``lanes`` neurons computed in parallel by
:class:`~hw.mac.MACLanes`, fed by :class:`~hw.window.TileWindow` (one banked copy of the feature
maps and the crossbar that puts the R x C pixels under the current tap onto the lanes); a
sequencer walks the layers of the spec in turn (see :mod:`hw.program` for the two modes and the
memory layout); :class:`~hw.activation.Activation` drains each finished group through bias,
requantize and the activation ROM back into the feature memory, while the lanes already compute
the next group.

Ports
-----
``wl`` (only with ``weights="load"``): stream of bytes, the weight memory's image
(:meth:`Accelerator.weight_load_data`, ``weight_load_bytes`` long), taken while the accelerator is
idle; with ``weights="rom"`` the weights are initialised memory contents instead.
``i``: stream of uint8 pixels, a 28x28 image in raster order (the border of a padded input is
written by the loader). ``o``: stream of 11 beats, the class then the ten scores, the last beat
flagged. ``busy`` is high from the first cycle of loading to ``done`` (one cycle, after the last
output beat), so a testbench counts cycles/image as the cycles with ``busy`` high; that number
equals :func:`hw.perf.cycles_per_image` when the streams never stall.
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from quantize.spec import QuantSpec

from .activation import Activation
from .mac import MACLanes
from .program import Program, addr_width, compile_spec
from .weights import WeightMemory
from .window import TileWindow, _log2

OUTPUT_BEATS = 11  # class + ten scores


def layer_gap(lanes: int) -> int:
    """Idle cycles between a layer's last tap and the next layer's first (GAP + INIT): the drain of
    the last group (capture 6 cycles after the tap, lanes turns, bias, sum and ROM stages) must
    land before the next layer reads, and the last score before OUTPUT."""
    return lanes + 8



class Accelerator(wiring.Component):
    """A LeNet accelerator generated from a :class:`QuantSpec` with ``lanes`` parallel MACs.

    Latency = throughput period = :func:`hw.perf.cycles_per_image` cycles per image (one image at a
    time; a new image is accepted after ``done``).

    ``batch`` = B > 1 runs B images in lockstep: one sequencer and one weight memory, B copies of
    the feature memory, MAC lanes and drain (B x lanes MACs). ``i`` then carries one pixel of each
    image per beat (image b in bits 8b..8b+7) and each ``o`` beat carries B values (``value[b]``);
    the cycles per batch are those of one image.
    """

    def __init__(self, spec: QuantSpec, lanes: int = 8, weights: str = "rom", batch: int = 1):
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        if weights not in ("rom", "load"):
            raise ValueError(f"weights must be 'rom' (initialised memory) or 'load' (loaded through wl), got {weights!r}")
        self.weights = weights
        if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 64:
            raise ValueError(f"batch must be an integer in 1..64, got {batch!r}")
        self.batch = batch
        self.spec = spec
        self.program: Program = compile_spec(spec, lanes)
        self.lanes = lanes
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
        prog, P = self.program, self.lanes
        R, C = prog.R, prog.C
        lr, lc = _log2(R), _log2(C)
        AW = self.addr_width
        layers = prog.layers
        n_layers = len(layers)
        ww, dw = prog.weight_width, prog.fm_width

        # -- memories ------------------------------------------------------------------------------
        B = self.batch

        def name(base, b):  # batch 1 keeps the plain names (the tracer and tests look for them)
            return base if B == 1 else f"{base}{b}"

        wins = [TileWindow(R, C, prog.fm_words, dw) for _ in range(B)]
        for b, w in enumerate(wins):
            m.submodules[name("window", b)] = w
        win = wins[0]
        offw = prog.offset_width
        myw, mxw = lr, lc
        n_dense, n_taps = len(prog.dense_words), len(prog.tap_words)
        m.submodules.wmem = wmem = WeightMemory(prog.weight_word_width, max(1, n_dense + n_taps),
                                                prog.weight_words() if self.weights == "rom" else None)
        m.submodules.inlut = inlut = Memory(shape=signed(dw), depth=256, init=prog.input_lut)
        in_rps = [inlut.read_port() for _ in range(B)]

        # the bias is added in the drain: the lanes restart from 0
        macs = [MACLanes(P, ww, dw, prog.acc_width, bias=False) for _ in range(B)]
        acts = [Activation(prog) for _ in range(B)]
        for b in range(B):
            m.submodules[name("mac", b)], m.submodules[name("act", b)] = macs[b], acts[b]
        act = acts[0]

        # -- per-layer constants -------------------------------------------------------------------
        conv_maps = [(i, o) for i, lp in enumerate(layers) if lp.mode == "conv" for o in range(lp.maps)]
        # taps and drain waits per conv map in network order (one spare entry: "the map after the last")
        taps_arr = Array([Const(layers[i].taps[o], 16) for i, o in conv_maps] + [Const(1, 16)])
        wait_arr = Array([Const(max(0, P - layers[i].taps[o]), 16) for i, o in conv_maps] + [Const(0, 16)])
        layer = Signal(range(max(n_layers, 2)))
        k = {name: Signal(range(1 << 16), name=f"k_{name}") for name in
             ("in_base", "maps", "groups", "tiles_x", "out_h", "out_w", "row_step", "col_step", "out_lhw",
              "in_h", "in_w", "in_lhw", "bias_base", "n_out", "dense_taps", "dense_wait")}
        k_conv = Signal()
        k_last = Signal()
        in_llw = Signal(range(32))
        with m.Switch(layer):
            for i, lp in enumerate(layers):
                with m.Case(i):
                    lin, lout = lp.in_layout, lp.out_layout
                    vals = {"in_base": lin.base, "maps": lp.maps, "groups": lp.groups, "tiles_x": lp.tiles[1],
                            "out_h": lp.out_size, "out_w": lp.out_size, "row_step": lin.s * lin.lw,
                            "col_step": lin.s, "out_lhw": lout.lhw if lout else 0,
                            "in_h": lin.h, "in_w": lin.w, "in_lhw": lin.lhw, "bias_base": lp.bias_base, "n_out": lp.n_out,
                            "dense_taps": lp.taps[0] if lp.mode == "dense" else 0,
                            "dense_wait": max(0, P - lp.taps[0]) if lp.mode == "dense" else 0}
                    m.d.comb += [k[name].eq(v) for name, v in vals.items()]
                    m.d.comb += [k_conv.eq(lp.mode == "conv"), k_last.eq(i == n_layers - 1),
                                 in_llw.eq(_log2(lin.lw))]

        # -- sequencer state -----------------------------------------------------------------------
        o_cnt = Signal(range(1 << 16))  # output map (conv)
        g_cnt = Signal(range(1 << 16))  # group within the map (conv) or layer (dense)
        t_cnt = Signal(range(1 << 16))  # tap within the group
        gm = Signal(range(max(len(conv_maps), 2)))  # global conv map index
        p0 = Signal(range(1 << 16))  # first neuron of the group (dense)
        ty, tx = Signal(8), Signal(8)  # tile (conv)
        tile_off, row_off = Signal(AW), Signal(AW)  # word offset of the tile, of its tile row
        map_off = Signal(AW)  # first word of output map o_cnt in the next layer's layout
        # dense: input (c, y, x) of the current tap
        dc_off, dy_, dx_ = Signal(AW), Signal(8), Signal(8)
        # one weight memory: dense words from 0, conv taps from n_dense
        tap_ptr = Signal(range(max(n_dense + n_taps, 2)))
        tap_map_base = Signal.like(tap_ptr)
        dense_ptr = Signal.like(tap_ptr)
        counter = Signal(range(1 << 16))
        load_y, load_x = Signal(range(prog.input_size + 1)), Signal(range(prog.input_size + 1))
        out_beat = Signal(range(OUTPUT_BEATS + 1))

        # the group's last tap index and drain wait, in registers: the sequencer's control decides on
        # comparisons of registers only (the map tables are read a cycle ahead, for the next map)
        tm1, wait_cur, nxt_tm1, nxt_wait = Signal(16), Signal(16), Signal(16), Signal(16)
        m.d.sync += [nxt_tm1.eq(taps_arr[gm + 1] - 1), nxt_wait.eq(wait_arr[gm + 1])]
        last_tap = t_cnt == tm1
        last_group = g_cnt == k["groups"] - 1
        last_map = o_cnt == k["maps"] - 1
        issue = Signal()

        m.d.comb += wmem.raddr.eq(Mux(k_conv, tap_ptr, dense_ptr))

        def restart_map():
            return [g_cnt.eq(0), p0.eq(0), ty.eq(0), tx.eq(0), tile_off.eq(0), row_off.eq(0)]

        def restart_dense_input():
            return [dc_off.eq(0), dy_.eq(0), dx_.eq(0)]

        # load: input ROM address now, the write one cycle later
        load_we = Signal()
        load_waddr = Signal(AW + max(1, _log2(P)))
        m.d.sync += load_we.eq(0)
        pad, size = prog.input_pad, prog.input_size
        # the padding border, from registers (i.ready must not wait on the counters' comparisons)
        bx, by = Signal(init=pad > 0), Signal(init=pad > 0)
        border = bx | by
        nx = Mux(load_x == size - 1, 0, load_x + 1)
        ny = Mux(load_x == size - 1, load_y + 1, load_y)
        lay0 = layers[0].in_layout
        s0 = lay0.s - 1
        Y0, X0 = load_y >> s0, load_x >> s0
        lrow0 = ((Y0 >> lr) << s0) | (load_y[0] if s0 else 0)
        lcol0 = ((X0 >> lc) << s0) | (load_x[0] if s0 else 0)
        bank0 = (Y0[:lr] << lc if R > 1 else 0) | (X0[:lc] if C > 1 else 0)
        word0 = lay0.base + (lrow0 << _log2(lay0.lw)) + lcol0
        load_addr_now = Signal.like(load_waddr)
        m.d.comb += load_addr_now.eq(word0 if P == 1 else (bank0 << AW) | word0)

        with m.FSM(name="seq"):
            with m.State("IDLE"):
                m.d.sync += [tap_ptr.eq(n_dense), dense_ptr.eq(0), gm.eq(0), layer.eq(0), load_y.eq(0), load_x.eq(0),
                             bx.eq(pad > 0), by.eq(pad > 0)]
                if self.weights == "load":  # weight bytes are taken only between images
                    m.d.comb += [wmem.load.valid.eq(self.wl.valid), wmem.load.payload.eq(self.wl.payload),
                                 self.wl.ready.eq(wmem.load.ready)]
                with m.If(self.i.valid):
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += self.busy.eq(1)
                with m.If(border):
                    m.d.comb += [rp.addr.eq(0) for rp in in_rps]
                with m.Else():
                    m.d.comb += self.i.ready.eq(1)
                    m.d.comb += [rp.addr.eq(self.i.payload[8 * b:8 * b + 8]) for b, rp in enumerate(in_rps)]
                with m.If(border | self.i.valid):
                    m.d.sync += [load_we.eq(1), load_waddr.eq(load_addr_now), load_x.eq(load_x + 1),
                                 bx.eq((nx < pad) | (nx >= size - pad)), by.eq((ny < pad) | (ny >= size - pad))]
                    with m.If(load_x == size - 1):
                        m.d.sync += [load_x.eq(0), load_y.eq(load_y + 1)]
                        with m.If(load_y == size - 1):
                            m.next = "INIT"
            with m.State("INIT"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += restart_map() + restart_dense_input() + [o_cnt.eq(0), t_cnt.eq(0), map_off.eq(0),
                                                                     tap_map_base.eq(tap_ptr)]
                m.d.sync += [tm1.eq(Mux(k_conv, taps_arr[gm], k["dense_taps"]) - 1),
                             wait_cur.eq(Mux(k_conv, wait_arr[gm], k["dense_wait"]))]
                m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += [self.busy.eq(1), issue.eq(1)]
                m.d.sync += [t_cnt.eq(t_cnt + 1), dense_ptr.eq(dense_ptr + ~k_conv), tap_ptr.eq(tap_ptr + k_conv)]
                # dense: walk the input (c, y, x) in the emulator's order
                with m.If(~k_conv):
                    m.d.sync += dx_.eq(dx_ + 1)
                    with m.If(dx_ == k["in_w"] - 1):
                        m.d.sync += [dx_.eq(0), dy_.eq(dy_ + 1)]
                        with m.If(dy_ == k["in_h"] - 1):
                            m.d.sync += [dy_.eq(0), dc_off.eq(dc_off + k["in_lhw"])]
                with m.If(last_tap):
                    m.d.sync += t_cnt.eq(0)
                    with m.If(k_conv):
                        with m.If(last_group):
                            m.d.sync += [tm1.eq(nxt_tm1), wait_cur.eq(nxt_wait)]
                            m.d.sync += restart_map() + [o_cnt.eq(o_cnt + 1), gm.eq(gm + 1),
                                                         map_off.eq(map_off + k["out_lhw"]), tap_map_base.eq(tap_ptr + 1)]
                        with m.Else():
                            m.d.sync += [g_cnt.eq(g_cnt + 1), tap_ptr.eq(tap_map_base)]
                            with m.If(tx == k["tiles_x"] - 1):
                                m.d.sync += [tx.eq(0), ty.eq(ty + 1), row_off.eq(row_off + k["row_step"]),
                                             tile_off.eq(row_off + k["row_step"])]
                            with m.Else():
                                m.d.sync += [tx.eq(tx + 1), tile_off.eq(tile_off + k["col_step"])]
                    with m.Else():
                        m.d.sync += [g_cnt.eq(g_cnt + 1), p0.eq(p0 + P)] + restart_dense_input()
                    layer_done = last_group & (last_map | ~k_conv)
                    wait_next = Mux(k_conv & last_group, nxt_wait, wait_cur)
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

        # -- tap pipeline: c1 (weight word), c2 (window address), c4 (lanes' pixels), MAC, c6 (accumulators final)
        # the fields are as narrow as the spec allows: a pipeline word of at most 64 bits is one machine
        # word in a simulator (Icarus allocates wider vectors on the heap at every copy)
        max_tiles = max([max(lp.tiles) for lp in layers] + [1])
        max_n0 = max(lp.n_out for lp in layers) + P
        info = data.StructLayout({"valid": 1, "first": 1, "last": 1, "conv": 1, "layer": range(max(n_layers, 2)),
                                  "ty": range(max_tiles), "tx": range(max_tiles), "map_off": AW,
                                  "n0": range(max_n0), "bias_addr": act.bias_addr.shape(), "mask": P})
        # st[j]: the tap issued j cycles ago (j >= 1, registers). The issue stage writes st[1] field by
        # field in one registered assignment: no combinational struct assembled from parts (in Icarus a
        # net driven by several parts re-sends its whole value to every reader at each part's change)
        st = [None] + [Signal(info, name=f"s{j}") for j in range(1, 7)]
        mask_now = Cat(*(Mux(k_conv, ((ty << lr) + q // C < k["out_h"]) & ((tx << lc) + q % C < k["out_w"]),
                             p0 + q < k["n_out"]) for q in range(P)))
        m.d.sync += [st[1].valid.eq(issue), st[1].first.eq(t_cnt == 0), st[1].last.eq(issue & last_tap),
                     st[1].conv.eq(k_conv), st[1].layer.eq(layer), st[1].ty.eq(ty), st[1].tx.eq(tx),
                     st[1].map_off.eq(map_off), st[1].n0.eq(p0),
                     st[1].bias_addr.eq(k["bias_base"] + Mux(k_conv, o_cnt, p0)), st[1].mask.eq(mask_now)]
        m.d.sync += [st[j + 1].eq(st[j]) for j in range(1, 6)]
        # the datapath registers below carry no reset: they are qualified by the valid bits of ``st``
        s1_tile, s1_dense, s2_tile, s2_dense = (Signal(AW, reset_less=True) for _ in range(4))
        s1_bank, s2_bank = (Signal(max(1, _log2(P)), reset_less=True) for _ in range(2))
        s1_row_step, s1_col_step, s2_row_step, s2_col_step = (Signal(AW, reset_less=True) for _ in range(4))
        dword = dc_off + ((dy_ >> lr) << in_llw) + (dx_ >> lc)
        dbank = (dy_[:lr] << lc if R > 1 else 0) | (dx_[:lc] if C > 1 else 0)
        m.d.sync += [s1_tile.eq(k["in_base"] + tile_off), s1_dense.eq(k["in_base"] + dword), s1_bank.eq(dbank),
                     s1_row_step.eq(k["row_step"]), s1_col_step.eq(k["col_step"]),
                     s2_tile.eq(s1_tile), s2_dense.eq(s1_dense), s2_bank.eq(s1_bank),
                     s2_row_step.eq(s1_row_step), s2_col_step.eq(s1_col_step)]

        # c1: the weight word leaves the memory and is registered as it is
        wdata = Signal(prog.weight_word_width, reset_less=True)
        m.d.sync += wdata.eq(wmem.rdata)
        tap_w = wdata[:ww].as_signed()
        tap_off = wdata[ww:ww + offw]
        # c2: the window's addresses
        for win in wins:  # every image of the batch reads the same addresses of its own feature maps
            m.d.comb += [win.base.eq(Mux(st[2].conv, s2_tile + tap_off, s2_dense)), win.adj_row.eq(s2_row_step),
                         win.adj_col.eq(s2_col_step), win.dense.eq(~st[2].conv), win.bank.eq(s2_bank)]
            if myw:
                m.d.comb += win.my.eq(wdata[ww + offw:ww + offw + myw])
            if mxw:
                m.d.comb += win.mx.eq(wdata[ww + offw + myw:ww + offw + myw + mxw])
        # the lanes' weights, delayed to meet their pixels: one register of P weights per stage (a
        # register costs a simulator about as much per cycle whatever its width)
        s3_w, s4_w = Signal(P * ww, name="s3_w", reset_less=True), Signal(P * ww, name="s4_w", reset_less=True)
        m.d.sync += [s3_w.eq(Mux(st[2].conv, tap_w.as_unsigned().replicate(P), wdata[:P * ww])), s4_w.eq(s3_w)]

        # c4: the lanes' pixels and weights into the MACs
        for b in range(B):
            mac, act, win, in_rp = macs[b], acts[b], wins[b], in_rps[b]
            m.d.comb += [mac.valid.eq(st[4].valid), mac.first.eq(st[4].first)]
            for q in range(P):
                m.d.comb += [mac.w[q].eq(s4_w[q * ww:(q + 1) * ww].as_signed()), mac.x[q].eq(win.x[q])]

            m.d.comb += [act.capture.eq(st[6].last), act.layer.eq(st[6].layer), act.ty.eq(st[6].ty),
                         act.tx.eq(st[6].tx), act.map_off.eq(st[6].map_off), act.n0.eq(st[6].n0),
                         act.bias_addr.eq(st[6].bias_addr), act.mask.eq(st[6].mask)]
            m.d.comb += [act.acc[q].eq(mac.acc[q]) for q in range(P)]

            # feature-memory writes: the loader, then the drain
            m.d.comb += [win.we.eq(load_we | act.we), win.waddr.eq(Mux(load_we, load_waddr, act.waddr)),
                         win.wdata.eq(Mux(load_we, in_rp.data, act.wdata))]

            # scores and the running argmax (first maximum wins, as in the emulator)
            scores = Array(Signal(signed(prog.score_width), name=f"score{j}" if B == 1 else f"score{b}_{j}")
                           for j in range(prog.scores))
            best = Signal(signed(prog.score_width), name=name("best", b))
            cls = Signal(range(max(prog.scores, 2)), name=name("cls", b))
            with m.If(act.score_we):
                m.d.sync += scores[act.score_idx].eq(act.score)
                with m.If((act.score_idx == 0) | (act.score > best)):
                    m.d.sync += [best.eq(act.score), cls.eq(act.score_idx)]
            value = self.o.payload.value if B == 1 else self.o.payload.value[b]
            m.d.comb += value.eq(Mux(out_beat == 0, cls, scores[out_beat - 1]))
        m.d.comb += self.o.payload.last.eq(out_beat == OUTPUT_BEATS - 1)
        return m
