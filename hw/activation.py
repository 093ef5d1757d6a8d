"""The drain: add the bias, requantize each lane's accumulator, apply the activation (a table in
ROM, ReLU, or none) and write the state into the next layer's layout in the banked feature memory."""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .fixed import requantize
from .layout import address, log2
from .pool import PoolStage
from .program import POOL_LATENCY, Program, addr_width, drain_turns
from .tap_pipeline import n0_range, tile_range


class Activation(wiring.Component):
    """Drains the ``lanes`` accumulators of a finished group, one per cycle.

    On ``capture`` it takes a copy of every lane's accumulator and of the group's coordinates (so
    the MAC lanes can start the next group at once), then for lane k = 0..lanes-1, one per cycle:
    adds the bias (bias ROM entry ``bias_addr``, plus k where the layer has one bias per lane),
    wraps the sum to the layer's accumulator width and computes the output as the layer says
    (``LayerProgram.out_fn``): ``lut`` requantizes to the table's address format (``hw/fixed.py``)
    and reads the activation ROM (every table of the spec, concatenated); ``relu`` requantizes
    ``max(acc, 0)`` to the state format; ``linear`` requantizes. If ``mask[k]`` it writes the state
    where the next layer reads it: output (map, y, x) of a conv tile (``ty``, ``tx``; ``map_off`` =
    the map's first word), shifted by the next layer's padding, or neuron ``n0 + k`` of a dense
    group, placed by the next layer's :class:`~hw.layout.Layout`. For the last layer (``score``)
    it presents ``score[n0 + k]`` instead.

    A layer with a fused pool (``LayerProgram.pool``) writes no state: lane k's state goes into
    its k x k window's register (:class:`~hw.pool.PoolStage`) instead; after
    :data:`~hw.program.POOL_LATENCY` idle turns (the last state reaching its window) come
    ``Program.pool_mul_cycles`` turns per window j of the tile (the multiply: one turn, or the
    serial multiplier's steps, the product in the last): ``coef * window`` plus the pool's bias (its map's), wrapped to the
    pool's accumulator and put through the pool's output function (the same stages as a lane's),
    written as pool output (map, ty * R/k + j // (C/k), tx * C/k + j % (C/k)) into the pool's
    output layout, unless the window reaches past the pool's output (a masked lane or beyond
    k * floor(h/k)): it is dropped, as the pool drops it.

    ``images`` = B > 1: the drain of B images in lockstep. The control (turns, addresses, bias ROM,
    pool windows' order) is shared; each image has its own accumulator copies, sums, ROM and pool
    window registers: ``acc``, ``wdata`` and ``score`` are then per image (``acc[b][q]``), while
    ``we``, ``waddr``, ``score_we`` and ``score_idx`` hold for every image.

    Latency: turn k of a group is cycle ``capture + 1 + k``; its score is presented two cycles later
    and its feature write three cycles later, so a group's last write is presented ``D + 3``
    cycles after ``capture``, ``D`` = :func:`~hw.program.drain_turns` (``lanes``, or more with a
    fused pool). Throughput: one turn per cycle; ``capture`` may be high again in the cycle of the
    last turn.
    """

    def __init__(self, program: Program, images: int = 1):
        self.program, self.images = program, images
        P = program.lanes
        self.lanes = P
        n = len(program.layers)
        self.addr_width = aw = addr_width(program)
        bw = max(1, log2(P))
        super().__init__({
            "capture": In(1),
            "acc": In(signed(program.acc_width)).array(*self._dims(P)),
            "layer": In(range(max(n, 2))),
            "ty": In(tile_range(program)),
            "tx": In(tile_range(program)),
            "map_off": In(unsigned(aw)),
            "n0": In(n0_range(program)),
            "bias_addr": In(range(max(len(program.bias_words), 2))),
            "mask": In(P),
            "we": Out(1),
            "waddr": Out(unsigned(aw + bw)),
            "wdata": Out(signed(program.fm_width)).array(*self._dims()),
            "score_we": Out(1),
            "score_idx": Out(range(max(program.classes, 2))),
            "score": Out(signed(program.score_width)).array(*self._dims()),
            "busy": Out(1),
        })

    def _dims(self, *inner):
        """Port dimensions: per image (``images`` > 1) and then ``inner``; a one-image port as before."""
        return ((self.images,) if self.images > 1 else ()) + inner

    def _of(self, port, b):
        return port[b] if self.images > 1 else port

    def elaborate(self, platform):
        m = Module()
        prog, P, B = self.program, self.lanes, self.images
        R, C, aw = prog.R, prog.C, self.addr_width
        lr, lc = log2(R), log2(C)
        n = len(prog.layers)
        # the stages the drain computes: every layer, then every fused pool (index n + j)
        stages = prog.layers + [lp.pool for lp in prog.fused]
        pool_stage = {id(lp): n + j for j, lp in enumerate(prog.fused)}
        d_max = max(drain_turns(lp, P) for lp in prog.layers)
        sfx = [f"_{b}" if B > 1 else "" for b in range(B)]
        accs = [[Signal(signed(prog.acc_width), name=f"acc{q}{sfx[b]}", reset_less=True) for q in range(P)]
                for b in range(B)]  # data: no reset
        mask = Signal(P)
        layer = Signal.like(self.layer)
        ty, tx, map_off, n0 = Signal.like(self.ty), Signal.like(self.tx), Signal.like(self.map_off), Signal.like(self.n0)
        lane_bias, pbias = Signal.like(self.bias_addr), Signal.like(self.bias_addr)  # bias ROM addresses
        per_lane, per_lane_now = Signal(), Signal()
        k = Signal(range(d_max + 1))
        active = Signal()
        m.d.comb += self.busy.eq(active)
        # a fused pool (constants of the captured layer, registered at capture)
        F = bool(prog.fused)
        fused, pmax, pstage = Signal(), Signal(), Signal(range(max(len(stages), 2)))
        last_turn = Signal.like(k)
        if F:
            pools = [PoolStage(prog) for b in range(B)]  # per image; image 0's drives the shared control
            for b in range(B):
                m.submodules["pool" + sfx[b]] = pools[b]
            pool = pools[0]
            fused_now, pmax_now, pstage_now, last_now = Signal(), Signal(), Signal.like(pstage), Signal.like(k)
            cbase_now, cbase = Signal.like(pool.coef_addr), Signal.like(pool.coef_addr)
            pbase_now = Signal.like(self.bias_addr)
            m.d.comb += last_now.eq(P - 1)
            with m.Switch(self.layer):
                for i, lp in enumerate(prog.layers):
                    if lp.pool is not None:
                        with m.Case(i):
                            m.d.comb += [fused_now.eq(1), pmax_now.eq(lp.pool.op == "max"), cbase_now.eq(lp.coef_base),
                                         pstage_now.eq(pool_stage[id(lp)]), last_now.eq(drain_turns(lp, P) - 1),
                                         pbase_now.eq(lp.pool.bias_base)]
            with m.If(self.capture):
                m.d.sync += [fused.eq(fused_now), pmax.eq(pmax_now), pstage.eq(pstage_now), last_turn.eq(last_now),
                             cbase.eq(cbase_now), pbias.eq(pbase_now + self.n0)]
            m.d.comb += [p.coef_addr.eq(cbase + n0) for p in pools]
        else:
            m.d.comb += last_turn.eq(P - 1)

        # d0: lane k's value is at the head of the shift register accs[0]
        # the accumulators as expressions, not inside the If below: their inputs change every cycle,
        # and an event-driven simulator re-runs an If's process at each change (see hw.window.select)
        for b in range(B):
            for q in range(P):
                shifted = accs[b][q + 1] if q < P - 1 else accs[b][q]
                m.d.sync += accs[b][q].eq(Mux(self.capture, self._of(self.acc, b)[q], Mux(active, shifted, accs[b][q])))
        with m.If(self.capture):
            m.d.sync += [mask.eq(self.mask), layer.eq(self.layer), ty.eq(self.ty), tx.eq(self.tx),
                         map_off.eq(self.map_off), n0.eq(self.n0), k.eq(0), active.eq(1)]
        with m.Elif(active):
            m.d.sync += [mask.eq(mask >> 1), k.eq(k + 1)]
            with m.If(k == last_turn):
                m.d.sync += active.eq(0)

        m.submodules.bias = bias_mem = Memory(shape=signed(prog.acc_width), depth=max(len(prog.bias_words), 2),
                                              init=prog.bias_words or [0])
        brp = bias_mem.read_port()
        rps = []  # the activation ROM: one per image (one read port each)
        for b in range(B):
            m.submodules["rom" + sfx[b]] = rom = Memory(shape=signed(prog.fm_width), depth=max(len(prog.lut_rom), 2),
                                                        init=prog.lut_rom or [0])
            rps.append(rom.read_port())

        # lane k's output coordinates (then, a stage later, its write address) in the next layer's layout
        kk = k[:max(1, log2(P))] if P > 1 else Const(0, 1)
        dy, dx = (kk >> lc) if R > 1 else Const(0, 1), (kk[:lc] if C > 1 else Const(0, 1))
        cy, cx = Signal(10), Signal(max(10, len(n0) + 1))  # padded coordinates (dense: the neuron)
        # a fused layer: lane turns feed the pool stage (window pw, first lane pf); window turns
        # (jw) read it; the stage of a turn names the layer or pool whose constants it uses
        win_turn, lane_turn = Signal(), Signal()
        stage = Signal.like(pstage)
        pw, jw = Signal(8), Signal(8)
        pf, wmask = Signal(), Signal()
        if F:
            # the window turns (k >= P + POOL_LATENCY while active), from a register: the turn
            # counter's compare stays out of the paths to the bias ROM and the write address
            run = Signal()
            m.d.sync += run.eq(~self.capture & active & fused & (k != last_turn) & (k >= P + POOL_LATENCY - 1))
            m.d.comb += [p.run.eq(run) for p in pools]
            m.d.comb += [win_turn.eq(pool.run & pool.valid),
                         lane_turn.eq(fused & (k < P)), jw.eq(pool.rd), stage.eq(Mux(win_turn, pstage, layer))]
        else:
            m.d.comb += stage.eq(layer)
        with m.Switch(stage):
            for i, lp in enumerate(stages):
                with m.Case(i):
                    if i >= n:  # a fused pool's window jw: pool output (ty * R/k + wy, tx * C/k + wx)
                        kp = lp.spec.kernel
                        ry, cx_ = log2(R // kp), log2(C // kp)
                        wy, wx = (jw >> cx_) if ry else Const(0, 1), (jw[:cx_] if cx_ else Const(0, 1))
                        yy, xx = _coordinates(m, prog.fused[i - n].wrap, kp, ty, tx, wy, wx, ry, cx_, f"p{i}")
                        m.d.comb += wmask.eq((yy < lp.out_h) & (xx < lp.out_w))
                    else:
                        yy, xx = _coordinates(m, lp.wrap, 1, ty, tx, dy, dx, lr, lc, f"l{i}")
                    if lp.pool is not None:  # the lane's window of the tile; its first lane starts it
                        kp = lp.pool.spec.kernel
                        lk, cxp = log2(kp), log2(C // kp)
                        m.d.comb += [pw.eq(((dy >> lk) << cxp) | (dx >> lk)),
                                     pf.eq((dy[:lk] == 0) & (dx[:lk] == 0) if lk else 1)]
                        continue  # its states are not written
                    lay = lp.out_layout
                    if lay is None:
                        continue
                    if lp.mode == "dense":  # neuron n0 + k is map n0 + k of 1 x 1: bank 0
                        m.d.comb += cx.eq(n0 + k)
                        continue
                    m.d.comb += [cy.eq(yy + lay.pad), cx.eq(xx + lay.pad)]
        # lane turns read bias bias_addr (+ k where the layer has one per lane), counted in a register
        with m.Switch(self.layer):
            for i, lp in enumerate(prog.layers):
                with m.Case(i):
                    m.d.comb += per_lane_now.eq(lp.bias_per_lane)
        with m.If(self.capture):
            m.d.sync += [lane_bias.eq(self.bias_addr), per_lane.eq(per_lane_now)]
        with m.Elif(active & per_lane):
            m.d.sync += lane_bias.eq(lane_bias + 1)
        m.d.comb += brp.addr.eq(Mux(win_turn, pbias, lane_bias) if F else lane_bias)

        # d1: the bias arrives; the sum is registered (a block RAM's output is slow: no more logic after it)
        acc1 = [Signal(signed(prog.acc_width), name="acc1" + sfx[b], reset_less=True) for b in range(B)]
        v1 = Signal()
        cy1, cx1, moff1 = (Signal.like(v, reset_less=True) for v in (cy, cx, map_off))
        idx1 = Signal.like(self.score_idx, reset_less=True)
        layer1 = Signal.like(stage, reset_less=True)
        m.d.sync += [layer1.eq(stage), cy1.eq(cy), cx1.eq(cx), moff1.eq(map_off), idx1.eq(n0 + k)]
        # d1: the write address from the registered coordinates (a wrapped layout's multiply by its
        # pitch and the adders sit in a stage of their own)
        bank, word = Signal(max(1, log2(P))), Signal(aw)
        with m.Switch(layer1):
            for i, lp in enumerate(stages):
                lay = lp.out_layout
                if lay is None or lp.pool is not None:
                    continue
                with m.Case(i):
                    if lp.mode == "dense":
                        m.d.comb += [bank.eq(0), word.eq(lay.base + cx1)]
                    else:
                        b, w = address(lay, cy1, cx1, 1 << len(cx1))
                        m.d.comb += [bank.eq(b), word.eq(lay.base + moff1 + w)]
        p1, p2, p3 = Signal(), Signal(), Signal()  # a fused lane's state: to the pool stage, not memory
        pw1, pw2, pw3, pf1, pf2, pf3 = (Signal.like(s, reset_less=True) for s in (pw, pw, pw, pf, pf, pf))
        if F:
            m.d.sync += [acc1[b].eq(Mux(win_turn, pools[b].value, accs[b][0])) for b in range(B)]
            m.d.sync += [v1.eq(active & Mux(fused, win_turn & wmask, mask[0])), p1.eq(active & lane_turn),
                         pw1.eq(pw), pf1.eq(pf), p2.eq(p1), pw2.eq(pw1), pf2.eq(pf1), p3.eq(p2), pw3.eq(pw2), pf3.eq(pf2)]
        else:
            m.d.sync += [acc1[b].eq(accs[b][0]) for b in range(B)] + [v1.eq(active & mask[0])]
        total = [Signal(signed(prog.acc_width), name="total" + sfx[b], reset_less=True) for b in range(B)]
        v2 = Signal()
        waddr2, idx2, layer2 = (Signal.like(s, reset_less=True) for s in (self.waddr, self.score_idx, layer1))
        m.d.sync += [total[b].eq(acc1[b] + brp.data) for b in range(B)]
        m.d.sync += [v2.eq(v1), waddr2.eq(word if P == 1 else (bank << aw) | word), idx2.eq(idx1), layer2.eq(layer1)]
        # d2: wrap, then the ROM address, the computed state, or the score (every image alike)
        is_score2, from_rom2 = Signal(), Signal()
        state2 = [Signal(signed(prog.fm_width), name="state2" + sfx[b]) for b in range(B)]
        with m.Switch(layer2):
            for i, lp in enumerate(stages):
                with m.Case(i):
                    f, acc_fmt = lp.spec.formats, lp.acc_format
                    m.d.comb += [is_score2.eq(lp.out_fn == "score"), from_rom2.eq(lp.out_fn == "lut")]
                    for b in range(B):
                        wrapped = total[b][:acc_fmt.width].as_signed()
                        if lp.out_fn == "score":
                            m.d.comb += self._of(self.score, b).eq(wrapped)
                        elif lp.out_fn == "lut":
                            fi = f["index"]
                            idx, _ = requantize(wrapped, acc_fmt.frac, fi)
                            if len(lp.spec.lut) == 1 << fi.width and lp.lut_base % len(lp.spec.lut) == 0:
                                # a full table at an aligned base: idx - code_min is idx with its sign
                                # bit flipped, and the base is ORed in (no adder before the ROM)
                                n = fi.width
                                off = Cat(idx[:n - 1], ~idx[n - 1]) if fi.signed else idx[:n]
                                m.d.comb += rps[b].addr.eq(off | lp.lut_base)
                            else:
                                m.d.comb += rps[b].addr.eq(lp.lut_base + (idx - fi.code_min).as_unsigned())
                        else:
                            src = Mux(wrapped < 0, 0, wrapped) if lp.out_fn == "relu" else wrapped
                            v, _ = requantize(src, acc_fmt.frac, lp.spec.out_format)
                            m.d.comb += state2[b].eq(v)
        m.d.comb += [self.score_we.eq(v2 & is_score2), self.score_idx.eq(idx2)]
        # d3: the ROM's data (or the registered state) arrives with the registered write address
        we3, from_rom3 = Signal(), Signal()
        waddr3 = Signal.like(self.waddr, reset_less=True)
        m.d.sync += [we3.eq(v2 & ~is_score2), waddr3.eq(waddr2), from_rom3.eq(from_rom2)]
        m.d.comb += [self.we.eq(we3), self.waddr.eq(waddr3)]
        for b in range(B):
            state3 = Signal.like(state2[b], name="state3" + sfx[b], reset_less=True)
            m.d.sync += state3.eq(state2[b])
            data3 = Mux(from_rom3, rps[b].data, state3)
            m.d.comb += self._of(self.wdata, b).eq(data3)
            if F:
                m.d.comb += [pools[b].we.eq(p3), pools[b].win.eq(pw3), pools[b].first.eq(pf3), pools[b].max.eq(pmax),
                             pools[b].state.eq(data3)]
        return m


def _coordinates(m, wrap: int, kp: int, ty, tx, dy, dx, ry: int, cx: int, name: str):
    """Output (y, x) of lane or pool window (dy, dx) of the group at strip/tile row ``ty``, column
    ``tx`` (tiles: a tile index; wrapped: the group's first column). Tiled: (ty * 2**ry + dy,
    tx * 2**cx + dx). Wrapped at width ``wrap`` (a pool of kernel ``kp``: its windows, the strip
    ``wrap / kp`` wide): the lane's column tx / kp + dx runs on into the next strip past its end."""
    y, x = Signal(10, name=f"{name}_y"), Signal(10, name=f"{name}_x")
    if not wrap:
        m.d.comb += [y.eq((ty << ry) | dy), x.eq((tx << cx) | dx)]
        return y, x
    col = (tx >> log2(kp)) + dx
    past = col >= wrap // kp
    m.d.comb += [y.eq(((ty + past) << ry) | dy), x.eq(col - Mux(past, wrap // kp, 0))]
    return y, x
