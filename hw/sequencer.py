"""The sequencer: one state machine that walks the compiled program layer after layer and drives
the engines (``hw/engine.py``) through a control bundle (:func:`control_signature`).

Per image: LOAD streams the image in (writing the first layer's padding itself), then per layer
INIT, FILL (the padding of this layer's input, from the fill list), ISSUE (one tap per cycle: the
weight memory word and the window address of every lane), WAIT (a group shorter than the lanes
waits for the drain), GAP (the last group drains); then FINISH, OUTPUT (class and scores) and DONE.
The cycle counts are :mod:`hw.perf`'s.

An overlapped program (``Program.overlap``, its input in a region of its own) loads the next image
beside the layers instead: the loader takes the image while layers 1.. of the current one run
(once layer 0 has read its input), writing in the cycles the drain and the fill leave free, and
the next image starts right after DONE. Per-layer constants come from one table
(:func:`layer_constants`); the tap pipeline registers a control word per stage so that the
engines see the tap's address, weights and drain coordinates at the right cycle.
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .layout import address, log2
from .program import Program, addr_width, drain_turns
from .tap_pipeline import n0_range, tap_pipeline, tile_range
from .weights import WeightMemory


def control_signature(prog: Program) -> wiring.Signature:
    """What the sequencer tells every engine each cycle (``Out`` on the sequencer's side)."""
    aw, P = addr_width(prog), prog.lanes
    bw = max(1, log2(P))
    return wiring.Signature({
        # the window read (tap pipeline stage 2; hw.window.TileWindow's read inputs)
        "rd_base": Out(unsigned(aw)).array(8 if prog.wrapped else 4),
        "rd_row_carry": Out(prog.R), "rd_col_carry": Out(prog.C).array(2),
        "rd_my": Out(range(prog.R)), "rd_mx0": Out(range(prog.C)), "rd_dense": Out(1), "rd_bank": Out(range(P)),
        **({"rd_wrap": Out(prog.C).array(2), "rd_mx1": Out(range(prog.C))} if prog.wrapped else {}),
        # the lanes (stage 4; their weights a stage early, stage 3): one weight per lane, packed
        "lane_w": Out(unsigned(P * prog.weight_width)), "mac_valid": Out(1), "mac_first": Out(1), "mac_max": Out(1),
        # the drain (stage 6)
        "capture": Out(1), "layer": Out(range(max(len(prog.layers), 2))), "ty": Out(tile_range(prog)), "tx": Out(tile_range(prog)),
        "map_off": Out(unsigned(aw)), "n0": Out(n0_range(prog)), "bias_addr": Out(range(max(len(prog.bias_words), 2))),
        "mask": Out(P),
        # feature-memory writes of the loader and the fill: the input table's word, or a pad code
        "in_lut_addr_hi": Out(range(max(prog.image_shape[0], 2))),  # channel: the table to read
        "fm_we": Out(1), "fm_waddr": Out(unsigned(aw + bw)), "fm_pad": Out(1), "fm_pad_code": Out(signed(prog.fm_width)),
        # output beat: 0 the class, 1 + j score j; and the beat of the next cycle (a score memory's
        # read address: its data then arrive with the beat)
        "out_beat": Out(range(prog.output_beats + 1)), "out_beat_next": Out(range(prog.output_beats + 1)),
    })


def layer_constants(m: Module, prog: Program, layer) -> dict:
    """The per-layer constants, registered: ``k[name]`` holds the entry of the ``layer`` of the
    previous cycle. One table for the whole sequencer; the register keeps the table's multiplexer
    out of the paths that decide the next state (the UP5K's critical path before). Counts that the
    sequencer compares with are stored minus one (``*_m1``), so no subtractor sits before a compare."""
    P = prog.lanes
    rows = []
    for lp in prog.layers:
        lin = lp.in_layout
        lout = lp.out_layout
        rs, cs = lin.s * lin.lw, lin.s  # tiles: the next tile row's and column's first words
        # a bank's first words: its column's carry adds cs (wrapped: 1), a lane past the strip's end
        # (wrapped only) the strip's skipped words; a row's carry is in the tap word (off1)
        cc, ww = (1, lp.wrap_skip) if lp.wrap else (cs, 0)
        rows.append({"in_base": lin.base, "in_base_col": lin.base + cc, "in_base_wrap": lin.base + ww,
                     "in_base_col_wrap": lin.base + cc + ww, "wrap": lp.wrap != 0, "wrap_w": lp.wrap or prog.C,
                     "wrap_step": 1 + lp.wrap_skip, "maps_m1": lp.maps - 1, "groups_m1": lp.groups - 1,
                     "tiles_x_m1": lp.tiles[1] - 1, "out_h": lp.out_h, "out_w": lp.out_w,
                     "row_step": rs, "col_step": cs,
                     "out_lhw": lout.lhw if lout else 0, "in_h_m1": lin.h - 1, "in_w_m1": lin.w - 1, "in_lhw": lin.lhw,
                     "in_llw": log2(lin.lw), "bias_base": lp.bias_base, "n_out": lp.n_out,
                     "dense_tm1": lp.taps[0] - 1 if lp.mode == "dense" else 0,
                     "dense_wait": max(0, P - lp.taps[0]) if lp.mode == "dense" else 0,
                     "fill_base": lp.fill_base, "fill_m1": max(lp.fill_count - 1, 0), "fill": lp.fill_count != 0,
                     "pad_code": lp.spec.pad_code,
                     "conv": lp.mode == "conv", "last": lp is prog.layers[-1], "shared": lp.shared,
                     "lane_w": lp.mode == "dense" or not lp.shared, "max": lp.op == "max",
                     "bias_per_lane": lp.bias_per_lane})
    k = {}
    for key in rows[0]:
        vals = [int(r[key]) for r in rows]
        shape = signed(max(v.bit_length() for v in vals) + 1) if min(vals) < 0 else range(max(vals + [1]) + 1)
        k[key] = Signal(shape, name=f"k_{key}", init=vals[0])
    with m.Switch(layer):
        for i, r in enumerate(rows):
            with m.Case(i):
                m.d.sync += [k[key].eq(int(v)) for key, v in r.items()]
    return k


class Sequencer(wiring.Component):
    """The control of an accelerator built from ``program``: ``i_valid``/``i_ready`` take the image's
    bytes (C x H x W, channel by channel, raster order; the pixel itself goes to the engines),
    ``o_valid``/``o_ready``/``o_last`` pace the output beats, ``ctl`` drives the engines."""

    def __init__(self, program: Program, weights: str = "rom"):
        self.program, self.weights = program, weights
        ports = {"ctl": Out(control_signature(program)), "i_valid": In(1), "i_ready": Out(1),
                 "o_valid": Out(1), "o_ready": In(1), "o_last": Out(1), "busy": Out(1), "done": Out(1)}
        if weights == "load":
            ports["wl_valid"], ports["wl_ready"], ports["wl_payload"] = In(1), Out(1), In(8)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        prog, P, ctl = self.program, self.program.lanes, self.ctl
        C = prog.C
        AW = addr_width(prog)
        layers = prog.layers
        n_dense, n_taps = len(prog.dense_words), len(prog.tap_words)
        m.submodules.wmem = wmem = WeightMemory(prog.weight_word_width, max(1, n_dense + n_taps),
                                                prog.weight_words() if self.weights == "rom" else None)
        # depth >= 2: a one-word memory would have a 0-bit address (a [-1:0] wire in the Verilog)
        m.submodules.fill = fill_mem = Memory(shape=unsigned(AW + max(1, log2(P))), depth=max(len(prog.fill_words), 2),
                                              init=prog.fill_words or [0])
        fill_rp = fill_mem.read_port()

        conv_maps = [(i, o) for i, lp in enumerate(layers) if lp.mode == "conv" for o in range(lp.maps)]
        # taps and drain waits per conv map in network order (one spare entry: "the map after the last")
        # counters as wide as the program needs (a narrower compare is a shorter path)
        taps = range(max(t for lp in layers for t in lp.taps) + 1)
        waits = [max(0, drain_turns(lp, P) - t) for lp in layers for t in lp.taps]
        wait_shape = range(max(waits + [prog.gap, 1]) + 1)
        tm1_arr = Array([Const(layers[i].taps[o] - 1, taps) for i, o in conv_maps] + [Const(0, taps)])
        wait_arr = Array([Const(max(0, drain_turns(layers[i], P) - layers[i].taps[o]), wait_shape)
                          for i, o in conv_maps] + [Const(0, wait_shape)])
        layer = Signal(range(max(len(layers), 2)))
        k = layer_constants(m, prog, layer)

        o_cnt = Signal(range(max(lp.maps for lp in layers) + 1))  # output map (conv)
        g_cnt = Signal(range(max(lp.groups for lp in layers) + 1))  # group
        t_cnt = Signal(taps)  # tap in the group
        gm = Signal(range(max(len(conv_maps), 2)))  # global conv map index
        p0 = Signal(n0_range(prog))  # first neuron of the group (dense)
        ty, tx = Signal(tile_range(prog)), Signal(tile_range(prog))  # tile (conv); wrapped: strip, first column
        # wrapped groups: lanes dx >= thr (the strip's width less the group's first column) run on
        # into the next strip; tiles: thr = C (none does)
        thr = Signal(range(max([lp.wrap for lp in layers] + [C]) + 1), init=C)
        tile_off, row_off = Signal(AW), Signal(AW)  # word offset of the tile, of its tile row
        map_off = Signal(AW)  # first word of output map o_cnt in the next layer's layout
        dc_off, dy_, dx_ = Signal(AW), Signal(8), Signal(8)  # dense: input (c, y, x) of the current tap
        tap_ptr = Signal(range(max(n_dense + n_taps, 2)))  # one weight memory: dense words from 0, taps after
        tap_map_base = Signal.like(tap_ptr)
        dense_ptr = Signal.like(tap_ptr)
        bias_ptr = Signal.like(ctl.bias_addr)
        counter = Signal(range(max([lp.fill_count for lp in layers] + waits + [prog.gap]) + 1))
        fill_ptr = Signal(range(max(len(prog.fill_words), 2)))

        # the taps (minus one) and the drain wait of this group and of the next map's, with the
        # wait's "not zero" kept as a flag: the next state reads registers and short compares only
        tm1, nxt_tm1, wait_cur, nxt_wait = Signal(taps), Signal(taps), Signal(wait_shape), Signal(wait_shape)
        wait_cur_nz, nxt_wait_nz = Signal(), Signal()
        gm_next = Signal(range(len(conv_maps) + 2), init=1)  # gm + 1, counted alongside gm
        m.d.sync += [nxt_tm1.eq(tm1_arr[gm_next]), nxt_wait.eq(wait_arr[gm_next]),
                     nxt_wait_nz.eq(wait_arr[gm_next] != 0)]
        # "this tap is the group's last", a register kept equal to t_cnt == tm1 (set where either
        # moves): the compare stays out of the issue logic's paths
        last_tap = Signal()
        tm2 = Signal.like(tm1, name="tm2")  # tm1 - 1 (wrapping), loaded with tm1: last_tap's compare is register to register
        last_group = g_cnt == k["groups_m1"]
        last_map = o_cnt == k["maps_m1"]
        issue = Signal()
        m.d.comb += wmem.raddr.eq(Mux(k["conv"], tap_ptr, dense_ptr))

        def restart_map():
            return [g_cnt.eq(0), p0.eq(0), ty.eq(0), tx.eq(0), tile_off.eq(0), row_off.eq(0), thr.eq(k["wrap_w"])]

        def restart_dense_input():
            return [dc_off.eq(0), dy_.eq(0), dx_.eq(0)]

        # the loader: the input table's address now (the engines add the pixel), the write a cycle later
        lay0 = prog.input_layout
        ch, hp, wp_, pad = lay0.maps, lay0.h, lay0.w, lay0.pad
        load_c = Signal(range(max(ch, 2)))
        load_y, load_x = Signal(range(hp + 1)), Signal(range(wp_ + 1))
        load_coff = Signal(AW)
        bx, by = Signal(init=pad > 0), Signal(init=pad > 0)  # the border, from registers
        border = bx | by
        nx = Mux(load_x == wp_ - 1, 0, load_x + 1)
        ny = Mux(load_x == wp_ - 1, Mux(load_y == hp - 1, 0, load_y + 1), load_y)
        bank0, word0 = address(lay0, load_y, load_x, max(hp, wp_) + 1)
        load_addr_now = Signal(AW + max(1, log2(P)))
        m.d.comb += load_addr_now.eq(Cat((word0 + load_coff)[:AW], bank0) if P > 1 else word0 + load_coff)
        load_we, load_pad, fill_we = Signal(), Signal(), Signal()
        load_waddr = Signal.like(load_addr_now)
        m.d.sync += [load_we.eq(0), fill_we.eq(0)]
        # the fill list's word arrives a cycle after its address, as the input table's for the loader
        m.d.comb += [ctl.in_lut_addr_hi.eq(load_c), fill_rp.addr.eq(fill_ptr), ctl.fm_we.eq(load_we | fill_we),
                     ctl.fm_waddr.eq(Mux(fill_we, fill_rp.data, load_waddr)), ctl.fm_pad.eq(fill_we | load_pad)]
        # loader: ``load_go`` steps it (a pixel taken, or a border word); ``loaded``: an image waits in
        # the input region; ``in_use``: layer 0 reads it (overlap: the loader waits for both)
        overlap = prog.overlap
        load_go, filling, fill_next = Signal(), Signal(), Signal()
        loading = Signal(init=1)  # a register: the loader may step in this cycle
        loaded, in_use = Signal(), Signal(name="in_use")  # (named: a closure reads it)
        load_last = (load_x == wp_ - 1) & (load_y == hp - 1) & (load_c == ch - 1)
        if overlap:
            # the drain's writes end D + 3 cycles after its capture (D: the longest drain): the loader
            # writes only in the quiet cycles after that, told by a counter since the last capture.
            # ``loading`` is a register, decided a cycle early and on the safe side (not in the cycle
            # after a capture, a fill, or the load's last step), so ``i_ready`` is one gate from
            # registers: no path from the drain, the sequencer's states or the stream through it
            quiet_after = max(drain_turns(lp, P) for lp in layers) + 2
            since_cap = Signal(range(quiet_after + 1), init=quiet_after)
            with m.If(ctl.capture):
                m.d.sync += since_cap.eq(0)
            with m.Elif(since_cap != quiet_after):
                m.d.sync += since_cap.eq(since_cap + 1)
            m.d.sync += loading.eq(~loaded & ~in_use & ~filling & ~fill_next & (since_cap == quiet_after)
                                   & ~ctl.capture & ~(load_go & load_last))
            m.d.comb += [self.i_ready.eq(loading & ~border), load_go.eq(loading & (border | self.i_valid))]
            with m.If(load_go & load_last):
                m.d.sync += loaded.eq(1)
        with m.If(load_go):
            m.d.sync += [load_we.eq(1), load_waddr.eq(load_addr_now), load_pad.eq(border),
                         load_x.eq(nx), load_y.eq(ny),
                         bx.eq((nx < pad) | (nx >= wp_ - pad)), by.eq((ny < pad) | (ny >= hp - pad))]
            with m.If((load_x == wp_ - 1) & (load_y == hp - 1)):
                m.d.sync += [load_c.eq(load_c + 1), load_coff.eq(load_coff + lay0.lhw)]
                with m.If(load_c == ch - 1):
                    m.d.sync += [load_c.eq(0), load_coff.eq(0)]
        # the loader's border words take the first layer's pad code, the fill's the current layer's
        m.d.comb += ctl.fm_pad_code.eq(Mux(fill_we, k["pad_code"], prog.input_pad_code))
        m.d.comb += ctl.out_beat_next.eq(ctl.out_beat)  # FINISH and OUTPUT's advance below say otherwise

        with m.FSM(name="seq"):
            def start_image():  # the first layer's registers (``layer`` is 0 already)
                return [tap_ptr.eq(n_dense), dense_ptr.eq(0), gm.eq(0), gm_next.eq(1)]

            def take_image():  # overlap: the loaded image goes to layer 0, which holds its region
                return [loaded.eq(0), in_use.eq(1)]

            with m.State("IDLE"):
                m.d.sync += start_image()
                if self.weights == "load":  # weight bytes are taken only between images
                    m.d.comb += [wmem.load.valid.eq(self.wl_valid), wmem.load.payload.eq(self.wl_payload),
                                 self.wl_ready.eq(wmem.load.ready)]
                if overlap:  # the loader's steps count as busy cycles of the image they load
                    m.d.comb += self.busy.eq(load_go)
                    with m.If(loaded):
                        m.d.sync += take_image()
                        m.next = "INIT"
                else:
                    with m.If(self.i_valid):
                        m.next = "LOAD"
            if not overlap:  # (overlapped, no LOAD state: nothing but the loader's registers drives i_ready)
                with m.State("LOAD"):
                    m.d.comb += [self.busy.eq(1), self.i_ready.eq(~border), load_go.eq(border | self.i_valid)]
                    with m.If(load_go & load_last):
                        m.next = "INIT"
            with m.State("INIT"):
                m.d.comb += self.busy.eq(1)
                first_tm1 = Mux(k["conv"], tm1_arr[gm], k["dense_tm1"])  # the layer's first group's taps - 1
                with m.If(layer != 0):  # layer 0's last read is long done: the loader may refill its input
                    m.d.sync += in_use.eq(0)
                m.d.sync += restart_map() + restart_dense_input() + [
                    o_cnt.eq(0), t_cnt.eq(0), map_off.eq(0), tap_map_base.eq(tap_ptr), bias_ptr.eq(k["bias_base"]),
                    fill_ptr.eq(k["fill_base"]), counter.eq(k["fill_m1"]),
                    tm1.eq(first_tm1), tm2.eq(first_tm1 - 1), last_tap.eq(first_tm1 == 0),
                    wait_cur.eq(Mux(k["conv"], wait_arr[gm], k["dense_wait"])),
                    wait_cur_nz.eq(Mux(k["conv"], wait_arr[gm], k["dense_wait"]) != 0)]
                m.next = "ISSUE"
                with m.If(k["fill"]):
                    m.d.comb += fill_next.eq(1)
                    m.next = "FILL"
            with m.State("FILL"):
                m.d.comb += [self.busy.eq(1), filling.eq(1)]
                m.d.sync += [fill_we.eq(1), fill_ptr.eq(fill_ptr + 1), counter.eq(counter - 1)]
                with m.If(counter == 0):
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += [self.busy.eq(1), issue.eq(1)]
                m.d.sync += [t_cnt.eq(t_cnt + 1), dense_ptr.eq(dense_ptr + ~k["conv"]), tap_ptr.eq(tap_ptr + k["conv"])]
                with m.If(~k["conv"]):  # dense: walk the input (c, y, x) in the emulator's order
                    m.d.sync += dx_.eq(dx_ + 1)
                    with m.If(dx_ == k["in_w_m1"]):
                        m.d.sync += [dx_.eq(0), dy_.eq(dy_ + 1)]
                        with m.If(dy_ == k["in_h_m1"]):
                            m.d.sync += [dy_.eq(0), dc_off.eq(dc_off + k["in_lhw"])]
                m.d.sync += last_tap.eq(t_cnt == tm2)
                with m.If(last_tap):
                    m.d.sync += [t_cnt.eq(0), last_tap.eq(Mux(k["conv"] & last_group, nxt_tm1, tm1) == 0)]
                    with m.If(k["bias_per_lane"]):
                        m.d.sync += bias_ptr.eq(bias_ptr + P)
                    with m.Elif(last_group):
                        m.d.sync += bias_ptr.eq(bias_ptr + 1)
                    with m.If(k["conv"]):
                        with m.If(last_group):
                            m.d.sync += [tm1.eq(nxt_tm1), tm2.eq(nxt_tm1 - 1), wait_cur.eq(nxt_wait),
                                         wait_cur_nz.eq(nxt_wait_nz)]
                            m.d.sync += restart_map() + [o_cnt.eq(o_cnt + 1), gm.eq(gm + 1), gm_next.eq(gm_next + 1),
                                                         map_off.eq(map_off + k["out_lhw"]), tap_map_base.eq(tap_ptr + 1)]
                        with m.Else():
                            m.d.sync += g_cnt.eq(g_cnt + 1)
                            with m.If(k["shared"]):  # shared weights: the next tile replays the map's taps
                                m.d.sync += tap_ptr.eq(tap_map_base)
                            self._next_group(m, k, thr, ty, tx, tile_off, row_off)
                    with m.Else():
                        m.d.sync += [g_cnt.eq(g_cnt + 1), p0.eq(p0 + P)] + restart_dense_input()
                    layer_done = last_group & (last_map | ~k["conv"])
                    wait_next = Mux(k["conv"] & last_group, nxt_wait, wait_cur)
                    with m.If(layer_done):
                        m.d.sync += counter.eq(prog.gap - 2)
                        m.next = "GAP"
                    with m.Elif(Mux(k["conv"] & last_group, nxt_wait_nz, wait_cur_nz)):
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
                # the next layer one cycle early: its constants (registered) are there in INIT
                with m.If((counter == 1) & ~k["last"]):
                    m.d.sync += layer.eq(layer + 1)
                with m.If(counter == 0):
                    with m.If(k["last"]):
                        m.next = "FINISH"
                    with m.Else():
                        m.next = "INIT"
            with m.State("FINISH"):
                m.d.comb += [self.busy.eq(1), ctl.out_beat_next.eq(0)]
                # layer 0's constants are registered by INIT, even straight after DONE
                m.d.sync += [ctl.out_beat.eq(0), layer.eq(0), in_use.eq(0)]
                m.next = "OUTPUT"
            with m.State("OUTPUT"):
                m.d.comb += [self.busy.eq(1), self.o_valid.eq(1)]
                with m.If(self.o_ready):
                    m.d.comb += ctl.out_beat_next.eq(ctl.out_beat + 1)
                    m.d.sync += ctl.out_beat.eq(ctl.out_beat + 1)
                    with m.If(ctl.out_beat == prog.output_beats - 1):
                        m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1)]
                m.next = "IDLE"
                if overlap:  # the next image is in: start it now
                    with m.If(loaded):
                        m.d.sync += start_image() + take_image()
                        m.next = "INIT"
        m.d.comb += self.o_last.eq(ctl.out_beat == prog.output_beats - 1)
        tap_pipeline(m, prog, ctl, k, issue, last_tap, layer, o_cnt, ty, tx, thr, p0, map_off, bias_ptr, t_cnt,
                     tile_off, dc_off, dy_, dx_, wmem)
        return m

    def _next_group(self, m, k, thr, ty, tx, tile_off, row_off):
        """A conv map's next group: the next tile (across, then down), or wrapped, the next C
        columns of the strips laid end to end (``thr <= C``: the next group starts in the next strip)."""
        C = self.program.C

        def next_tile():
            with m.If(tx == k["tiles_x_m1"]):
                m.d.sync += [tx.eq(0), ty.eq(ty + 1), row_off.eq(row_off + k["row_step"]),
                             tile_off.eq(row_off + k["row_step"])]
            with m.Else():
                m.d.sync += [tx.eq(tx + 1), tile_off.eq(tile_off + k["col_step"])]

        if not self.program.wrapped:
            next_tile()
            return
        with m.If(k["wrap"]):
            with m.If(thr <= C):
                m.d.sync += [thr.eq(thr + k["wrap_w"] - C), tx.eq(tx + C - k["wrap_w"]), ty.eq(ty + 1),
                             tile_off.eq(tile_off + k["wrap_step"])]
            with m.Else():
                m.d.sync += [thr.eq(thr - C), tx.eq(tx + C), tile_off.eq(tile_off + 1)]
        with m.Else():
            next_tile()
