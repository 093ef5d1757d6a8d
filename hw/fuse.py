"""Pool fusion at compile time (``compile_spec(spec, lanes, fuse_pools=True)``): which conv ->
pool pairs run as one layer, the fused pool's program, and how its coefficient is multiplied.
The hardware is :class:`hw.pool.PoolStage` in the drain (:mod:`hw.activation`); the drain's
length is :func:`hw.program.drain_turns`."""
from __future__ import annotations

from quantize.qformat import QFormat
from quantize.spec import LayerSpec

from .layout import Layout
from .program import POOL_LATENCY, LayerProgram, is_dense_mode, tile_shape

MULTIPLIERS = ("auto", "serial", "parallel")


def fusable(conv: LayerSpec, pool: LayerSpec, lanes: int) -> bool:
    """True if ``pool`` (right after ``conv``) can run in ``conv``'s drain: a conv-mode sum layer
    (conv/local with a spatial output) followed by a subsample/avgpool/maxpool of stride k, no
    padding, map o reading map o, per-map bias, and k dividing both sides of the tile."""
    R, C = tile_shape(lanes)
    k = pool.kernel
    return (conv.kind in ("conv", "local") and not is_dense_mode(conv)
            and pool.kind in ("subsample", "avgpool", "maxpool") and pool.stride == k and pool.pad == 0
            and pool.out_maps == pool.in_maps == conv.out_maps and pool.sources() == list(range(pool.out_maps))
            and not pool.untied and R % k == 0 and C % k == 0)


def pool_windows(lp: LayerProgram, lanes: int) -> int:
    """The k x k windows of a tile of ``lp``'s fused pool."""
    R, C = tile_shape(lanes)
    k = lp.pool.spec.kernel
    return (R // k) * (C // k)


def serial_mul_cycles(weight_width: int) -> int:
    """Steps of the serial (radix-4 Booth) coefficient multiplier: two coefficient bits a step."""
    return -(-weight_width // 2)


def mul_cycles(fused: list[LayerProgram], lanes: int, weight_width: int, how: str = "auto") -> int:
    """Drain turns per pool window: "serial" (a radix-4 Booth multiplier in LUTs,
    :func:`serial_mul_cycles`), "parallel" (1: one product per turn, a DSP block where Yosys finds
    one), or "auto": serial where every fused layer's taps still cover the longer drain (no group
    waits for it), else parallel."""
    serial = serial_mul_cycles(weight_width)
    if how == "serial" or how == "auto" and all(
            min(lp.taps) >= lanes + POOL_LATENCY + pool_windows(lp, lanes) * serial for lp in fused):
        return serial
    return 1


def fuse_pool(conv: LayerProgram, l: LayerSpec, acc_format: QFormat, bias_words: list, coef_words: list) -> None:
    """Fuse pool ``l`` into ``conv``'s drain: ``conv.pool`` becomes the pool's program (the conv's
    tiles and output layout, the pool's output read by the next layer; its "input" is the conv's
    output, never stored: a layout of it is kept for reference only); the pool's biases and
    per-map coefficients (1 for a max-pool) are appended."""
    from .program import _out_fn

    virtual = Layout(l.in_maps, l.in_h, l.in_w, l.kernel, conv.in_layout.R, conv.in_layout.C, 0, 0)
    conv.pool = LayerProgram(name=l.name, mode="conv", spec=l, in_layout=virtual, out_layout=conv.out_layout,
                             out_h=l.out_h, out_w=l.out_w, maps=l.out_maps, groups=conv.groups, tiles=conv.tiles,
                             taps=[], n_out=l.out_h * l.out_w, op="max" if l.kind == "maxpool" else "sum",
                             out_fn=_out_fn(l, False), acc_format=acc_format, bias_base=len(bias_words))
    bias_words += [int(v) for v in l.bias_acc()]
    conv.coef_base = len(coef_words)
    coef_words += [1] * l.out_maps if l.kind == "maxpool" else [int(v) for v in l.weight]
