"""One engine: the convolver of one image (ANNA's neuron array). The banked feature memory and its
crossbar (:class:`~hw.window.TileWindow`), the MAC lanes (:class:`~hw.mac.MACLanes`), the drain
(:class:`~hw.activation.Activation`), the input table and the scores with their running argmax,
all driven by the sequencer's control bundle (``hw/sequencer.py``). A batch of B images is one
engine of B images under one sequencer."""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .activation import Activation
from .mac import MACLanes
from .program import Program
from .sequencer import control_signature
from .window import TileWindow

# block RAM shapes (depth, width): the iCE40's 4 kbit EBR and the ECP5's 18 kbit DP16KD
BRAM_SHAPES = {"ice40": ((256, 16), (512, 8), (1024, 4), (2048, 2)),
               "ecp5": ((512, 36), (1024, 18), (2048, 9), (4096, 4))}
MAX_WINDOW_BITS = 48  # hw.window.TileWindow's widest word


def images_per_window(words: int, width: int, platform, images: int = 2) -> int:
    """How many of ``images`` images' feature maps share one window (side by side in its words): the
    most that need no more of the platform's block RAMs in all than separate windows would."""
    from .weights import _is_ice40

    shapes = BRAM_SHAPES["ice40" if _is_ice40(platform) else "ecp5"]

    def brams(k):  # per bank, for all images, k to a window
        per_window = min(-(-words // d) * -(-(k * width) // w) for d, w in shapes)
        return -(-images // k) * per_window

    widest = max(1, MAX_WINDOW_BITS // width)
    return max(range(1, max(1, min(images, widest)) + 1), key=lambda k: (-brams(k), k))


class Engine(wiring.Component):
    """``pixel``: the image byte the sequencer is loading (``ctl.in_lut_addr_hi`` names its channel).
    ``value``: the output beat ``ctl.out_beat`` (0: the class, 1 + j: score j). Latency and
    throughput are the sequencer's.

    ``images`` = B > 1: B images in lockstep, each with its own drain, input table and scores, its
    feature maps side by side with other images' in the words of a shared window
    (:func:`images_per_window`), and one set of MAC lanes whose products pair the images on the DSPs
    (:class:`~hw.mac.MACLanes`, ``dsp``); ``pixel`` and ``value`` are then B-element arrays."""

    def __init__(self, program: Program, images: int = 1, dsp: str = "auto"):
        self.program, self.images, self.dsp = program, images, dsp
        value = signed(max(program.score_width, 5))
        super().__init__({"ctl": In(control_signature(program)),
                          "pixel": In(8) if images == 1 else In(8).array(images),
                          "value": Out(value) if images == 1 else Out(value).array(images)})

    def elaborate(self, platform):
        m = Module()
        prog, ctl, P, B = self.program, self.ctl, self.program.lanes, self.images
        ww, dw = prog.weight_width, prog.fm_width
        max_op = any(lp.op == "max" for lp in prog.layers)
        # bias: in the drain
        # the lane weights come a cycle early (ctl.lane_w): the lanes delay them, on the DSPs for free
        m.submodules.mac = mac = MACLanes(P, ww, dw, prog.acc_width, bias=False, max_op=max_op, images=B, dsp=self.dsp,
                                          w_early=True)
        m.d.comb += [mac.valid.eq(ctl.mac_valid), mac.first.eq(ctl.mac_first), mac.max.eq(ctl.mac_max)]
        m.d.comb += [mac.w[q].eq(ctl.lane_w[q * ww:(q + 1) * ww].as_signed()) for q in range(P)]
        # one drain for the B images (shared control, per-image data)
        m.submodules.act = act = Activation(prog, images=B)
        m.d.comb += [act.capture.eq(ctl.capture), act.layer.eq(ctl.layer), act.ty.eq(ctl.ty), act.tx.eq(ctl.tx),
                     act.map_off.eq(ctl.map_off), act.n0.eq(ctl.n0), act.bias_addr.eq(ctl.bias_addr),
                     act.mask.eq(ctl.mask)]
        # the feature memories: images in lockstep write the same words at the same addresses, so
        # several share one window, side by side in its words
        pack = images_per_window(prog.fm_words, dw, platform, B)
        for w0 in range(0, B, pack):
            imgs = list(range(w0, min(w0 + pack, B)))
            win = TileWindow(prog.R, prog.C, prog.fm_words, dw * len(imgs), prog.wrapped)
            m.submodules["window" if B <= pack else f"window{w0 // pack}"] = win
            self._read(m, win)
            wdata = []
            for b in imgs:  # one image: the plain names (the tracer and tests look for them)
                one = (lambda port: port) if B == 1 else (lambda port: port[b])
                x = [win.x[q][(b - w0) * dw:(b - w0 + 1) * dw].as_signed() for q in range(P)]
                m.d.comb += [one(mac.x)[q].eq(x[q]) for q in range(P)]
                m.d.comb += [one(act.acc)[q].eq(one(mac.acc)[q]) for q in range(P)]
                wdata.append(self._image(m, "" if B == 1 else str(b), act, one(act.wdata), one(act.score),
                                         one(self.pixel), one(self.value)))
            # feature-memory writes: the loader and the fill (input table word or pad code), else the
            # drain; every image's drain writes in the same cycles at the same address
            m.d.comb += [win.we.eq(ctl.fm_we | act.we), win.waddr.eq(Mux(ctl.fm_we, ctl.fm_waddr, act.waddr)),
                         win.wdata.eq(Cat(*wdata))]
        return m

    def _read(self, m, win):
        ctl, prog = self.ctl, self.program
        m.d.comb += [win.base[i].eq(ctl.rd_base[i]) for i in range(win.bases)]
        m.d.comb += [win.row_carry.eq(ctl.rd_row_carry), win.dense.eq(ctl.rd_dense), win.bank.eq(ctl.rd_bank)]
        m.d.comb += [win.col_carry[rc].eq(ctl.rd_col_carry[rc]) for rc in range(2)]
        if prog.wrapped:
            m.d.comb += [win.wrap[rc].eq(ctl.rd_wrap[rc]) for rc in range(2)] + [win.mx1.eq(ctl.rd_mx1)]
        if prog.R > 1:
            m.d.comb += win.my.eq(ctl.rd_my)
        if prog.C > 1:
            m.d.comb += win.mx0.eq(ctl.rd_mx0)

    def _image(self, m, sfx, act, act_wdata, act_score, pixel, value):
        """One image's input table and scores; returns the word it writes into its window."""
        prog, ctl = self.program, self.ctl
        dw = prog.fm_width
        m.submodules["inlut" + sfx] = inlut = Memory(shape=signed(dw), depth=len(prog.input_lut), init=prog.input_lut)
        in_rp = inlut.read_port()
        channels = prog.image_shape[0]
        m.d.comb += in_rp.addr.eq(Cat(pixel, ctl.in_lut_addr_hi) if channels > 1 else pixel)
        data = Signal(signed(dw), name="wdata" + sfx)
        m.d.comb += data.eq(Mux(ctl.fm_we, Mux(ctl.fm_pad, ctl.fm_pad_code, in_rp.data), act_wdata))

        # scores and the running argmax (first maximum wins, as in the emulator). The scores sit in
        # a memory (a block RAM or LUT RAM, not classes x score_width flip-flops and their output
        # multiplexer): score j at address 1 + j, read ahead at the next cycle's beat, so its data
        # arrive with the beat
        scores = Memory(shape=signed(prog.score_width), depth=prog.classes + 1, init=[])
        m.submodules["scores" + sfx] = scores
        s_wp, s_rp = scores.write_port(), scores.read_port()
        best = Signal(signed(prog.score_width), name="best" + sfx)
        cls = Signal(range(max(prog.classes, 2)), name="cls" + sfx)
        m.d.comb += [s_wp.en.eq(act.score_we), s_wp.addr.eq(act.score_idx + 1), s_wp.data.eq(act_score),
                     s_rp.addr.eq(ctl.out_beat_next)]
        with m.If(act.score_we & ((act.score_idx == 0) | (act_score > best))):
            m.d.sync += [best.eq(act_score), cls.eq(act.score_idx)]
        # beat 0 the class, beat 1 + j score j
        m.d.comb += value.eq(Mux(ctl.out_beat == 0, cls, s_rp.data))
        return data
