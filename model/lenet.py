"""LeNet-1, LeNet-4 and LeNet-5 as in LeCun et al. (1989, 1998), in one readable file, and the
:class:`LeNet` module that also runs the boosted LeNet-4 of :mod:`model.boosted` (three LeNet-4s
side by side, 32x32 field like LeNet-4) and the 1989 networks of :mod:`model.lineage`
(``zip1989``, ``net1`` .. ``net5``).

Every network is a list of layers (:class:`model.layers.LayerDef`), which is also what the
quantizer and the hardware understand: ``conv`` (the LeNets: 5x5, valid, with an optional
connection table; strided, padded, with per-unit biases in the 1989 networks), ``local`` (locally
connected), ``subsample`` (2x2 sum times a trainable per-map coefficient plus a trainable bias),
``dense`` and ``rbf`` (LeNet-5's output: fixed +-1 7x12 bitmap centres, class = nearest centre).
Every layer up to the last is followed by the squashing function f(a) = 1.7159 tanh(2a/3).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import lineage
from .data import BACKGROUND
from .layers import A, S, LayerDef, LocalConv, Subsample, TableConv, out_side, squash  # noqa: F401 (re-exported)
from .util import UserError, cli

# C3 of LeNet-5 (1998, table I): C3 map -> S2 maps it reads.
C3_TABLE_LENET5 = [
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5), (0, 1, 2, 3, 4, 5),
]

# LeNet-1 (1989): H3 has 12 maps over the 4 H2 maps with 20 kernels in all, which with the rest
# gives the published 2,578 free parameters and 98,442 connections. The paper does not print the
# table; this one gives every H2 map to five H3 kernels.
C3_TABLE_LENET1 = [
    (0,), (1,), (2,), (3,), (3,), (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (0, 1, 2),
]

# LeNet-4 (1998): 4 C1 maps, 8 subsampling maps (two per C1 map), 16 C3 maps over the 8 S2 maps.
# The paper gives no table; three inputs per C3 map gives its "about 260,000 connections".
C3_TABLE_LENET4 = [tuple(sorted({i % 8, (i + 1) % 8, (i + 3) % 8})) for i in range(8)] + [
    tuple(sorted({i % 8, (i + 2) % 8, (i + 5) % 8})) for i in range(8)
]

# 7x12 bitmaps of the ten digits (LeNet-5's RBF centres): '#' -> +1, '.' -> -1.
_BITMAPS = {
    0: ["..###..", ".#...#.", "#.....#", "#.....#", "#.....#", "#.....#",
        "#.....#", "#.....#", "#.....#", "#.....#", ".#...#.", "..###.."],
    1: ["...#...", "..##...", ".#.#...", "...#...", "...#...", "...#...",
        "...#...", "...#...", "...#...", "...#...", "...#...", ".#####."],
    2: [".#####.", "#.....#", "......#", "......#", ".....#.", "....#..",
        "...#...", "..#....", ".#.....", "#......", "#......", "#######"],
    3: [".#####.", "#.....#", "......#", "......#", "......#", "..####.",
        "......#", "......#", "......#", "......#", "#.....#", ".#####."],
    4: ["....##.", "...#.#.", "..#..#.", ".#...#.", "#....#.", "#....#.",
        "#######", ".....#.", ".....#.", ".....#.", ".....#.", ".....#."],
    5: ["#######", "#......", "#......", "#......", "######.", "......#",
        "......#", "......#", "......#", "......#", "#.....#", ".#####."],
    6: ["..####.", ".#.....", "#......", "#......", "#.####.", "##....#",
        "#.....#", "#.....#", "#.....#", "#.....#", ".#...#.", "..###.."],
    7: ["#######", "......#", ".....#.", ".....#.", "....#..", "....#..",
        "...#...", "...#...", "..#....", "..#....", "..#....", "..#...."],
    8: [".#####.", "#.....#", "#.....#", "#.....#", ".#...#.", "..###..",
        ".#...#.", "#.....#", "#.....#", "#.....#", "#.....#", ".#####."],
    9: ["..###..", ".#...#.", "#.....#", "#.....#", "#.....#", "#....##",
        ".####.#", "......#", "......#", "......#", ".....#.", ".####.."],
}


def rbf_centres() -> np.ndarray:
    """The ten fixed RBF centres, float32 10 x 84 of +-1."""
    rows = []
    for d in range(10):
        bm = _BITMAPS[d]
        assert len(bm) == 12 and all(len(r) == 7 for r in bm), d
        rows.append([1.0 if ch == "#" else -1.0 for r in bm for ch in r])
    return np.array(rows, dtype=np.float32)


def _layers(arch: str) -> list[LayerDef]:
    if arch == "lenet1":
        return [
            LayerDef("C1", "conv", 1, 4, 28, 5),
            LayerDef("S2", "subsample", 4, 4, 24, 2),
            LayerDef("C3", "conv", 4, 12, 12, 5, tuple(C3_TABLE_LENET1)),
            LayerDef("S4", "subsample", 12, 12, 8, 2),
            LayerDef("F5", "dense", 12 * 4 * 4, 10, 1, squash=False),
        ]
    if arch == "lenet4":
        return [
            LayerDef("C1", "conv", 1, 4, 32, 5),
            # two subsampling maps per C1 map: S2 map j reads C1 map j // 2
            LayerDef("S2", "subsample", 4, 8, 28, 2),
            LayerDef("C3", "conv", 8, 16, 14, 5, tuple(C3_TABLE_LENET4)),
            LayerDef("S4", "subsample", 16, 16, 10, 2),
            LayerDef("F5", "dense", 16 * 5 * 5, 120, 1),
            LayerDef("F6", "dense", 120, 10, 1, squash=False),
        ]
    if arch == "lenet5":
        return [
            LayerDef("C1", "conv", 1, 6, 32, 5),
            LayerDef("S2", "subsample", 6, 6, 28, 2),
            LayerDef("C3", "conv", 6, 16, 14, 5, tuple(C3_TABLE_LENET5)),
            LayerDef("S4", "subsample", 16, 16, 10, 2),
            LayerDef("C5", "conv", 16, 120, 5, 5),
            LayerDef("F6", "dense", 120, 84, 1),
            LayerDef("OUT", "rbf", 84, 10, 1, squash=False),
        ]
    if arch in ENSEMBLES:
        from . import boosted  # imports this module

        return boosted.layers()
    if arch in lineage.NAMES:
        return lineage.layers(arch)
    raise unknown_arch(arch)


#: the LeNets (MNIST 28x28 networks of 1989-1998)
ARCHS = ("lenet1", "lenet4", "lenet5")
#: ensembles of LeNets that are one network each (:mod:`model.boosted`: three LeNet-4s side by side)
ENSEMBLES = ("boosted-lenet4",)
#: every network this package builds: the LeNets, the boosted LeNet-4 and the 1989 lineage (16x16 inputs)
ALL_ARCHS = ARCHS + ENSEMBLES + lineage.NAMES


def unknown_arch(arch) -> UserError:
    """The one-line error for a network name that does not exist, listing the valid names."""
    return UserError(f"unknown --arch {arch!r} (choose {', '.join(ALL_ARCHS)})")


@dataclass(frozen=True)
class LeNetConfig:
    arch: str = "lenet5"
    input_size: int = field(default=0)

    def __post_init__(self):
        _layers(self.arch)  # validates the name
        if self.input_size == 0:
            size = lineage.SIDE if self.arch in lineage.NAMES else 28 if self.arch == "lenet1" else 32
            object.__setattr__(self, "input_size", size)

    @property
    def layers(self) -> list[LayerDef]:
        return _layers(self.arch)

    def to_dict(self) -> dict:
        return asdict(self)


class RBF(nn.Module):
    """Euclidean RBF units with fixed centres: output y_i = ||x - c_i||^2 (smaller is better)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("centres", torch.from_numpy(rbf_centres()))

    def forward(self, x):
        return (x[:, None, :] - self.centres[None]).pow(2).sum(-1)


class LeNet(nn.Module):
    """A LeNet. ``forward`` returns logits (for LeNet-5: minus the RBF distances)."""

    def __init__(self, config: LeNetConfig | str = "lenet5"):
        super().__init__()
        if isinstance(config, str):
            config = LeNetConfig(config)
        self.config = config
        self.defs = config.layers
        mods = []
        for i, d in enumerate(self.defs):
            # the first layer pads the image with the background, later ones pad with 0
            pad_value = BACKGROUND if i == 0 else 0.0
            if d.kind == "conv":
                mods.append(TableConv(d, pad_value))
            elif d.kind == "local":
                mods.append(LocalConv(d, pad_value))
            elif d.kind == "subsample":
                mods.append(Subsample(d))
            elif d.kind == "dense":
                m = nn.Linear(d.in_maps, d.out_maps)
                with torch.no_grad():
                    m.weight.uniform_(-1, 1).mul_(2.4 / d.in_maps)
                    m.bias.uniform_(-1, 1).mul_(2.4 / d.in_maps)
                mods.append(m)
            else:
                mods.append(RBF())
        self.layers = nn.ModuleList(mods)

    def forward(self, x, return_all: bool = False):
        outs = []
        for d, m in zip(self.defs, self.layers):
            if d.kind in ("dense", "rbf") and x.ndim > 2:
                x = x.flatten(1)
            x = m(x)
            if d.squash:
                x = squash(x)
            if d.kind in ("conv", "local") and d.out_size == 1 and x.ndim == 4:
                x = x.flatten(1)
            outs.append(x)
        logits = -x if self.defs[-1].kind == "rbf" else x
        return (logits, outs) if return_all else logits

    def param_table(self) -> list[dict]:
        return [
            {"layer": d.name, "kind": d.kind, "output": f"{d.out_maps}@{d.out_size}x{d.out_size}",
             "params": d.params(), "connections": d.connections(), "macs": d.macs()}
            for d in self.defs
        ]

    def trainable_params(self) -> int:
        """Free parameters (masked-out C3 weights and fixed RBF centres excluded)."""
        return sum(d.params() for d in self.defs)

    def units(self) -> int:
        """Units (neurons), the input pixels included, as the 1989 papers count them."""
        return self.config.input_size**2 + sum(d.units for d in self.defs)


#: side of the digit a network reads when it is not MNIST's 28: LeNet-1 (1989) and the 1989
#: lineage take 16x16 digits
DIGIT_SIDE = {"lenet1": 16, **{a: lineage.SIDE for a in lineage.NAMES}}


def input_geometry(config: "LeNetConfig | str") -> tuple[int, int]:
    """``(side, pad)``: the network reads the digit as ``side`` x ``side`` grey levels (MNIST's 28x28
    area-resampled by :func:`model.data.resample` when smaller), surrounded by ``pad`` rows and
    columns of background to make its ``input_size`` field (LeNet-4/5: 28 + 2 * 2 = 32; LeNet-1:
    16 + 2 * 6 = 28)."""
    if isinstance(config, str):
        config = LeNetConfig(config)
    side = DIGIT_SIDE.get(config.arch, 28)
    return side, (config.input_size - side) // 2


def preprocess(images_u8, arch: str) -> torch.Tensor:
    """uint8 N x 28 x 28 (or N x 32 x 32 with a blank border; or N x 16 x 16 for a network that
    reads 16x16 digits) -> float32 N x 1 x S x S in the paper's input range.

    The digit is brought to the network's side with :func:`model.data.fit_images` (LeNet-1 and the
    1989 networks: the integer area resampling to 16x16, so the float model and the integer
    emulator read the same grey levels), scaled, then padded with the background value to the
    input field (32x32 for LeNet-4/5, 28x28 for LeNet-1, as in the 1989 network; none for the
    1989 lineage, whose first layer pads). Any other shape is refused in one line.
    """
    from .data import check_images, fit_images, scale

    side, pad = input_geometry(arch)
    a = np.asarray(images_u8)
    if side != 28 and a.dtype == np.uint8 and a.shape[-2:] == (side, side) and a.ndim in (2, 3):
        digits = a.reshape(-1, 1, side, side)  # already the network's digit (a model.usps split)
        x = torch.from_numpy(scale(digits))
        return F.pad(x, (pad, pad, pad, pad), value=BACKGROUND) if pad else x
    images_u8 = check_images(a)
    if images_u8.shape[1] == 32:  # the old padded input: blank border required
        images_u8 = fit_images(images_u8, (1, 28, 28))[:, 0]
    digits = fit_images(images_u8, (1, side, side))
    x = torch.from_numpy(scale(digits))
    return F.pad(x, (pad, pad, pad, pad), value=BACKGROUND) if pad else x


def summary(model: LeNet) -> str:
    rows = model.param_table()
    lines = [f"{model.config.arch}: input 1@{model.config.input_size}x{model.config.input_size}",
             f"{'layer':6} {'kind':10} {'output':12} {'params':>8} {'connections':>12} {'MACs':>9}"]
    for r in rows:
        lines.append(f"{r['layer']:6} {r['kind']:10} {r['output']:12} {r['params']:>8,} {r['connections']:>12,} {r['macs']:>9,}")
    lines.append(f"{'total':30} {sum(r['params'] for r in rows):>8,} {sum(r['connections'] for r in rows):>12,} {sum(r['macs'] for r in rows):>9,}")
    published = lineage.PUBLISHED.get(model.config.arch)
    if published is not None:
        ours = {"units": model.units(), "connections": sum(r["connections"] for r in rows),
                "params": model.trainable_params()}
        names = {"units": "units (inputs included)", "connections": "connections", "params": "free parameters"}
        lines.append("; ".join(f"{names[k]} {ours[k]:,}" for k in names))
        known = [k for k in names if k in published]
        lines.append("published: " + ("; ".join(
            f"{names[k]} {published[k]:,}" + ("" if published[k] == ours[k] else f" (ours {ours[k]:,})")
            for k in known) if known else "no counts") + (
            f"; test error {published['test_error']}%" if "test_error" in published else
            f"; {published['accuracy']}% correct" if "accuracy" in published else ""))
    return "\n".join(lines)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.lenet", description="Describe a LeNet architecture.")
    p.add_argument("--arch", default="lenet5", help=", ".join(ALL_ARCHS))
    p.add_argument("--summary", action="store_true", help="print the per-layer parameter table")
    args = p.parse_args(argv)
    model = LeNet(LeNetConfig(args.arch))
    print(summary(model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
