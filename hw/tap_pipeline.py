"""The tap pipeline of the sequencer (``hw/sequencer.py``): what a tap issued in cycle c0 drives in
the cycles after it. The window's read inputs are registered as the tap word leaves the weight
memory: a bank's address is then a multiplexer over registered sums (its group's first words plus
the tap's offsets, :mod:`hw.wrap`) chosen by registered select bits; the drain's fields of a group
reach the drain with its last tap's capture."""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, Signal
from amaranth.lib import data

from .layout import Layout, address, log2
from .program import Program, addr_width, drain_turns


def tile_range(prog: Program) -> range:
    """The values of a tile coordinate (``ty``, ``tx``) of any layer, one past the last tile."""
    return range(max([max(lp.tiles) for lp in prog.layers] + [1]) + 1)


def n0_range(prog: Program) -> range:
    """The values of ``n0``: a conv layer's output map, or a dense group's first neuron."""
    return range(max(max(lp.n_out, lp.maps) for lp in prog.layers) + prog.lanes + 1)


def tap_pipeline(m, prog: Program, ctl, k: dict, issue, last_tap, layer, o_cnt, ty, tx, thr, p0, map_off, bias_ptr,
                 t_cnt, tile_off, dc_off, dy_, dx_, wmem) -> None:
    """The stages after a tap's issue, driving ``ctl``: c1 (the weight word; the window's read
    inputs registered as it leaves the memory), c2 (the window read), c4 (the lanes' pixels and
    weights), c6 (the drain's capture). ``k``: the sequencer's registered per-layer constants;
    the rest: its counters and registers in the issue cycle (``thr``: the wrap threshold of a
    wrapped group, :mod:`hw.wrap`)."""
    P = prog.lanes
    R, C = prog.R, prog.C
    lr, lc = log2(R), log2(C)
    AW, ww, offw, sh = addr_width(prog), prog.weight_width, prog.offset_width, prog.tap_shift
    layers = prog.layers
    # fields as narrow as the program allows: a pipeline word of at most 64 bits is one machine
    # word in a simulator (Icarus allocates wider vectors on the heap at every copy)
    # the pipeline's fields: one value narrower than the bundle's ranges where that saves a bit
    # (a tile index below the tile count, n0 below the last group's end)
    max_tiles = tile_range(prog).stop - 1
    max_n0 = n0_range(prog).stop - 1
    info = data.StructLayout({"valid": 1, "first": 1, "last": 1, "conv": 1, "lane_w": 1, "max": 1,
                              "layer": range(max(len(layers), 2)), "ty": range(max_tiles), "tx": range(max_tiles),
                              "map_off": AW, "n0": range(max_n0), "bias_addr": ctl.bias_addr.shape(), "mask": P})
    # st[j]: the tap issued j cycles ago, registered field by field (no struct assembled from
    # parts: in Icarus a net driven by several parts re-sends its value at each part's change)
    st = [None] + [Signal(info, name=f"s{j}") for j in range(1, 7)]
    def inside(q):  # lane q of the group in the output (wrapped: its row in the next strip past thr)
        dy, dx = divmod(q, C)
        tiled = ((ty << lr) + dy < k["out_h"]) & ((tx << lc) + dx < k["out_w"])
        if not prog.wrapped:
            return tiled
        return Mux(k["wrap"], ((ty + (thr <= dx)) << lr) + dy < k["out_h"], tiled)

    mask_now = Cat(*(Mux(k["conv"], inside(q), p0 + q < k["n_out"]) for q in range(P)))
    m.d.sync += [st[1].valid.eq(issue), st[1].first.eq(t_cnt == 0), st[1].last.eq(issue & last_tap),
                 st[1].conv.eq(k["conv"]), st[1].lane_w.eq(k["lane_w"]), st[1].max.eq(k["max"]),
                 st[1].layer.eq(layer), st[1].ty.eq(ty), st[1].tx.eq(tx),
                 st[1].map_off.eq(map_off), st[1].n0.eq(Mux(k["conv"], o_cnt, p0)), st[1].bias_addr.eq(bias_ptr), st[1].mask.eq(mask_now)]
    # the drain's fields of a group (layer, tile, map, bias, mask) are read at its capture, five
    # cycles after st[1] holds its last tap. When every group lasts at least 6 cycles, one
    # register latched from st[1] holds them until then (fewer flip-flops than 5 stages of them)
    hold = min(max(min(lp.taps), drain_turns(lp, P)) for lp in layers) >= 6
    if hold:
        grp = Signal(info, name="group")
        with m.If(st[1].last):
            m.d.sync += grp.eq(st[1])
        for j in range(1, 6):
            m.d.sync += [getattr(st[j + 1], f).eq(getattr(st[j], f))
                         for f in ("valid", "first", "last", "conv", "lane_w", "max")]
    else:
        m.d.sync += [st[j + 1].eq(st[j]) for j in range(1, 6)]
        grp = st[6]
    # the datapath registers below carry no reset: they are qualified by the valid bits of ``st``
    # a bank's first words (cc: its column carries, w: its lane runs past the strip's end)
    corners = ("", "_col", "_wrap", "_col_wrap")[:4 if prog.wrapped else 2]
    s1_tile = [Signal(AW, name=f"s1_tile{c}", reset_less=True) for c in corners]
    s1_dense = Signal(AW, reset_less=True)
    s1_bank, s2_bank = (Signal(max(1, log2(P)), reset_less=True) for _ in range(2))
    # dense: input (c, y, x) of a stride-1 layout (the row length from the layer's table)
    dbank, dword = address(Layout(1, 1, 1, 1, R, C), dy_, dx_, 1 << len(dy_), llw=k["in_llw"])
    dword = dc_off + dword
    m.d.sync += [s1_tile[i].eq(k["in_base" + c] + tile_off) for i, c in enumerate(corners)]
    m.d.sync += [s1_dense.eq(k["in_base"] + dword), s1_bank.eq(dbank), s2_bank.eq(s1_bank)]
    s1_wraps = Signal(C, reset_less=True)  # lane column dx runs past the strip's end
    m.d.sync += s1_wraps.eq(Cat(*(thr <= dx for dx in range(C))))
    # c1: the weight word leaves the memory and is registered as it is; the tap's word offsets
    # (off0, or off1 where a bank's row carries) are added to the group's first words, and each
    # bank's selects are registered (a bank's read address is then a multiplexer over registers)
    wdata = Signal(prog.weight_word_width, reset_less=True)
    fields, pos = {}, sh
    for name, width in (("off0", offw), ("off1", offw), ("my", lr), ("mx0", lc), ("mx1", lc)):
        fields[name] = (wmem.rdata[pos:pos + width], wdata[pos:pos + width]) if width else (Const(0, 1),) * 2
        pos += width
    now = {name: f[0] for name, f in fields.items()}
    conv = st[1].conv
    rd = [Signal(AW, name=f"rd_base{i}", reset_less=True) for i in range(2 * len(corners))]
    for i, rdi in enumerate(rd):  # i = rc + 2 cc + 4 w
        rc, corner = i % 2, i // 2
        total = s1_tile[corner] + now["off1" if rc else "off0"]
        m.d.sync += rdi.eq(Mux(conv, total, s1_dense) if i == 0 else total)
    row_carry = Signal(R, reset_less=True)
    col_carry = [Signal(C, name=f"col_carry{rc}", reset_less=True) for rc in range(2)]
    m.d.sync += [wdata.eq(wmem.rdata), row_carry.eq(Cat(*(conv & (r < now["my"]) for r in range(R))))]
    for rc in range(2):
        mx = now["mx1" if rc else "mx0"]
        m.d.sync += col_carry[rc].eq(Cat(*(conv & (c < mx) for c in range(C))))
    m.d.comb += [ctl.rd_base[i].eq(rd[i]) for i in range(len(rd))]
    m.d.comb += [ctl.rd_row_carry.eq(row_carry), ctl.rd_dense.eq(~st[2].conv), ctl.rd_bank.eq(s2_bank)]
    m.d.comb += [ctl.rd_col_carry[rc].eq(col_carry[rc]) for rc in range(2)]
    if prog.wrapped:  # bank column c is read by lane column (c - mx) % C: its wrap bit
        wrap = [Signal(C, name=f"wrap{rc}", reset_less=True) for rc in range(2)]
        for rc in range(2):
            mx = now["mx1" if rc else "mx0"]
            m.d.sync += wrap[rc].eq(Cat(*(conv & s1_wraps.bit_select((c - mx)[:lc], 1) for c in range(C))))
            m.d.comb += ctl.rd_wrap[rc].eq(wrap[rc])
        m.d.comb += ctl.rd_mx1.eq(fields["mx1"][1])
    if lr:
        m.d.comb += ctl.rd_my.eq(fields["my"][1])
    if lc:
        m.d.comb += ctl.rd_mx0.eq(fields["mx0"][1])
    # the lanes' weights, registered a stage before their pixels (the lanes delay them the last
    # cycle themselves: MACLanes w_early, inside the DSP blocks where they pair images)
    s3_w = Signal(P * ww, name="s3_w", reset_less=True)
    m.d.sync += s3_w.eq(Mux(st[2].lane_w, wdata[:P * ww], wdata[:ww].replicate(P)))
    m.d.comb += [ctl.lane_w.eq(s3_w), ctl.mac_valid.eq(st[4].valid), ctl.mac_first.eq(st[4].first),
                 ctl.mac_max.eq(st[4].max)]
    m.d.comb += [ctl.capture.eq(st[6].last), ctl.layer.eq(grp.layer), ctl.ty.eq(grp.ty), ctl.tx.eq(grp.tx),
                 ctl.map_off.eq(grp.map_off), ctl.n0.eq(grp.n0), ctl.bias_addr.eq(grp.bias_addr),
                 ctl.mask.eq(grp.mask)]
