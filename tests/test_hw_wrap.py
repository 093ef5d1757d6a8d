"""hw.wrap: which conv layers run in wrapped groups, their strip pitch and group count."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from hw.wrap import pitch, wrapped_groups, wraps


def conv(out_h=10, out_w=10, kind="conv", stride=1, untied=False, kernel=5, pad=0):
    return SimpleNamespace(kind=kind, stride=stride, untied=untied, kernel=kernel, pad=pad, out_h=out_h, out_w=out_w,
                           in_h=(out_h - 1) * stride + kernel, in_w=(out_w - 1) * stride + kernel)


@pytest.mark.parametrize("out_w,in_w,C,want", [(10, 14, 4, 14), (10, 14, 8, 18), (28, 32, 8, 36), (7, 9, 4, 11),
                                                (12, 16, 4, 16)])
def test_pitch_is_the_smallest_congruent_width(out_w, in_w, C, want):
    assert pitch(out_w, in_w, C) == want
    assert want >= in_w and (want - out_w) % C == 0 and want - C < in_w


def test_wrapped_groups():
    assert wrapped_groups(10, 10, 2, 4) == 13 and wrapped_groups(10, 10, 2, 8) == 7
    assert wrapped_groups(28, 28, 2, 8) == 49 and wrapped_groups(5, 5, 2, 4) == 4


def test_which_layers_wrap():
    assert wraps(conv(), 2, 4) and wraps(conv(), 2, 8) and wraps(conv(), 2, 4, pool_kernel=2)
    assert not wraps(conv(28, 28), 2, 4)  # C divides W: nothing to save
    assert wraps(conv(28, 28), 2, 8)
    assert not wraps(conv(), 2, 16)  # W < C: a group would span more than two strips
    assert not wraps(conv(), 1, 1)  # one lane
    assert not wraps(conv(9, 9), 2, 4, pool_kernel=2)  # a pool window would straddle a strip's end
    assert not wraps(conv(kind="local"), 2, 4) and not wraps(conv(kind="maxpool"), 2, 4)
    assert not wraps(conv(stride=2), 2, 4) and not wraps(conv(untied=True), 2, 4)
    assert not wraps(conv(1, 1, kernel=5), 2, 4)  # dense mode (a 1x1 output of its whole input)
    # wrapping must save a group: 6 x 6 at 2 x 4 is 3 strips x 6 = 18 columns, 5 groups, 6 tiles
    assert wraps(conv(6, 6), 2, 4) and not wraps(conv(4, 6), 4, 4)
