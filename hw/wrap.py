"""Wrapped groups: a conv layer's output rows in strips of R, the strips laid end to end, and each
group of R x C lanes taking the next C columns of that strip-linear order, running on from the end
of one strip into the next.

A tiled layer (the default) covers an H x W output map with ceil(H/R) * ceil(W/C) tiles; when C
does not divide W, the last tile column is part empty (LeNet-5's C3: 10 x 10 in 2 x 4 tiles takes
15 groups for 100 positions, in 2 x 8 tiles 14). Wrapped, the map takes ceil(ceil(H/R) * W / C)
groups (13 and 7). The layer's input is then laid out with a strip pitch W' = W (mod C)
(:class:`hw.layout.Layout` ``pitch``), so that the lanes that pass the end of a strip still read C
different bank columns; they read ``m = (W' - W) / C`` words further on than their group's other
lanes (their *wrap*), which is the only new thing the window's bank addresses need.

The address arithmetic, for lane (dy, dx) of group g (first strip-linear column g * C: strip s0,
column x0) and tap (c, ky = qy * R + my, kx): with t_a = a * W' + kx (a = qy, or qy + 1 for the
lanes whose row dy + my passes R: the row carry), the lane reads bank ((dy + my) % R,
(dx + t_a) % C), word ``c * lhw + G + t_a // C + [dx + t_a % C >= C] + w * m``, where G = g + s0 * m
is the group's base word and w = [x0 + dx >= W] the lane's wrap. The tap word carries both
offsets ``c * lhw + t_a // C`` and both column rotations ``t_a % C`` (:func:`tap_fields`).
"""
from __future__ import annotations

from quantize.spec import LayerSpec

from .layout import Layout, cdiv


def pitch(out_w: int, in_w: int, C: int) -> int:
    """The smallest strip pitch W' >= ``in_w`` (the padded input width) with W' = ``out_w`` (mod C)."""
    return in_w + (out_w - in_w) % C


def wrapped_groups(out_h: int, out_w: int, R: int, C: int) -> int:
    """Groups of a wrapped map: ceil(H / R) strips of W columns, C columns a group."""
    return cdiv(cdiv(out_h, R) * out_w, C)


def wraps(l: LayerSpec, R: int, C: int, pool_kernel: int | None = None) -> bool:
    """True if conv layer ``l`` runs in wrapped groups on an R x C tile: a shared-weight conv at
    stride 1 with a spatial output at least C wide, one bias per map, where wrapping saves groups;
    a fused pool of kernel k (``pool_kernel``) also needs k | W, so that no pool window straddles
    a strip's end."""
    from .program import is_dense_mode

    if l.kind != "conv" or is_dense_mode(l) or l.stride != 1 or l.untied or C == 1:
        return False
    H, W = l.out_h, l.out_w
    if W < C or (pool_kernel and W % pool_kernel):
        return False
    return wrapped_groups(H, W, R, C) < cdiv(H, R) * cdiv(W, C)


def tap_fields(lin: Layout, c: int, ky: int, kx: int) -> tuple[int, int, int, int, int]:
    """(off0, my, mx0, off1, mx1) of tap (c, ky, kx) of a conv-mode layer reading ``lin``: the word
    offset and column rotation of the lanes whose row does not carry into the next strip (or tile
    row), then of those whose row does. The one home of this formula (the compiler's tap words)."""
    S, R, C = lin.s, lin.R, lin.C
    if lin.pitch:  # wrapped (stride 1): t_a = a * W' + kx, a = qy or qy + 1
        qy, my = divmod(ky, R)
        t0, t1 = qy * lin.pitch + kx, (qy + 1) * lin.pitch + kx
        return c * lin.lhw + t0 // C, my, t0 % C, c * lin.lhw + t1 // C, t1 % C
    k1y, k0y, k1x, k0x = ky // S, ky % S, kx // S, kx % S
    qy, my, qx, mx = k1y // R, k1y % R, k1x // C, k1x % C
    off = c * lin.lhw + (qy * S + k0y) * lin.lw + qx * S + k0x
    return off, my, mx, off + S * lin.lw, mx  # the next tile row: s * lw words on
