"""Train a network: ``python -m model.train --arch lenet5 [--epochs N] [--seed S] [--[no-]distort]``.

The LeNets train on the 60,000 MNIST training digits (``boosted-lenet4``: by boosting, see
:mod:`model.boosted`); ``zip1989`` on the 7,291 training digits
of the USPS stand-in, ``net1`` .. ``net5`` on the 320 of the 480-digit stand-in (:mod:`model.usps`).
The checkpoint records the error on the network's own test split (``test_error``, ``split``) and,
for the 16x16 networks, on the full MNIST test set at 16x16 (``mnist_test_error``).

Deterministic for a given seed on a given machine: fixed thread count, seeded shuffling and
distortions, deterministic kernels.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time

import numpy as np
import torch
from model.progress import Progress
import torch.nn.functional as F

from . import boosted, checkpoint, data, lineage, usps
from .evaluate import evaluate
from .lenet import ALL_ARCHS, LeNet, LeNetConfig, preprocess, unknown_arch
from .util import UserError, cli

#: each network's training recipe (the committed checkpoints were made with exactly these, seed 0)
RECIPES = {
    "lenet1": {"epochs": 15, "distort": False, "logit_scale": 1.0},
    "lenet4": {"epochs": 20, "distort": True, "logit_scale": 1.0},
    # logits are minus the RBF distances (hundreds): scaled by 0.1 the loss keeps training
    # examples that are already right, and the training error falls from ~0.9% to ~0.1%
    "lenet5": {"epochs": 20, "distort": True, "logit_scale": 0.1},
    **{a: dict(r) for a, r in lineage.RECIPES.items()},
    # three LeNet-4s by boosting (model.boosted): member 1 is the committed lenet4 checkpoint,
    # members 2 and 3 train on filtered distortions as model.boosted.RECIPE says
    boosted.NAME: {"boosting": dict(boosted.RECIPE), "distort": True, "logit_scale": 1.0},
}

#: the options of the single-network recipes, which the boosting recipe does not take
SINGLE_ONLY = ("epochs", "distort", "batch", "lr", "weight_decay", "distort_strength", "logit_scale")


def distort(x: torch.Tensor, gen: torch.Generator, background: float, strength: float = 1.0,
            elastic: float = 0.0, elastic_sigma: float = 2.0) -> torch.Tensor:
    """Random affine distortions (the paper's: small shifts, scaling, squeezing, shearing).

    ``strength`` multiplies every range (1: scale 0.9..1.1, squeeze and rotation +-0.1, shear
    +-0.15, shifts +-4% of the side). ``elastic`` > 0 adds an elastic distortion (Simard et al.,
    2003): a displacement field uniform in -1..1 per pixel, smoothed by a Gaussian of
    ``elastic_sigma`` pixels and scaled by ``elastic`` pixels (4 and 2: about 0.33 pixel rms per
    axis), drawn before the affine part; 0 draws nothing, so the affine-only results are unchanged."""
    n = x.shape[0]
    field = _elastic_field(x.shape, gen, elastic, elastic_sigma) if elastic else None
    k = float(strength)  # k = 1 gives the very same bounds as the LeNet recipes were trained with
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen)
    s = u(1 - 0.1 * k, 1 + 0.1 * k)
    sq = u(-0.1 * k, 0.1 * k)
    sh = u(-0.15 * k, 0.15 * k)
    rot = u(-0.1 * k, 0.1 * k)
    tx, ty = u(-0.08 * k, 0.08 * k), u(-0.08 * k, 0.08 * k)
    c, si = torch.cos(rot), torch.sin(rot)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = (c * s) * (1 + sq)
    theta[:, 0, 1] = -si * s + sh
    theta[:, 1, 0] = si * s
    theta[:, 1, 1] = (c * s) * (1 - sq)
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    if field is not None:
        grid = grid + field
    return F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background


def _elastic_field(shape, gen: torch.Generator, alpha: float, sigma: float) -> torch.Tensor:
    """N x H x W x 2 displacements in grid units (see :func:`distort`), smoothed with replicated edges."""
    n, _, h, w = shape
    d = torch.rand(n, 2, h, w, generator=gen) * 2 - 1
    r = int(math.ceil(2 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    d = F.conv2d(F.pad(d.reshape(2 * n, 1, h, w), (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    d = F.conv2d(F.pad(d, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1)).reshape(n, 2, h, w)
    d = d * alpha * torch.tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1)  # pixels -> grid units (x, y)
    return d.permute(0, 2, 3, 1)


def training_digits(arch: str, data_dir=None) -> data.Split:
    """The digits ``arch`` trains on (see the module doc)."""
    split = lineage.SPLIT.get(arch)
    return data.load("train", data_dir) if split is None else usps.load(split, "train", data_dir)


def train(arch: str, epochs: int, seed: int, distort_on: bool, batch: int = 32, lr: float = 2e-3,
          data_dir=None, progress: bool = True, threads: int = 2, logit_scale: float = 1.0,
          weight_decay: float = 0.0, distort_strength: float = 1.0, label_smoothing: float | None = None,
          elastic: float | None = None) -> LeNet:
    """``label_smoothing`` (cross-entropy's) and ``elastic`` (:func:`distort`): None takes the
    recipe's (:data:`RECIPES`; 0 if it has none)."""
    recipe = RECIPES.get(arch, {})
    label_smoothing = recipe.get("label_smoothing", 0.0) if label_smoothing is None else label_smoothing
    elastic = recipe.get("elastic", 0.0) if elastic is None else elastic
    torch.manual_seed(seed)
    torch.set_num_threads(threads)  # part of the recipe: results are bit-identical for a given count
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed)
    train_split = training_digits(arch, data_dir)
    x_all = preprocess(train_split.images, arch)
    y_all = torch.from_numpy(train_split.labels.astype(np.int64))
    model = LeNet(LeNetConfig(arch))
    opt = (torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay) if weight_decay
           else torch.optim.Adam(model.parameters(), lr=lr))
    steps_per_epoch = math.ceil(len(x_all) / batch)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    bar = Progress(total, "batch", f"epoch 1/{epochs}", enabled=progress)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_all), generator=gen)
        seen = wrong = 0
        loss_sum = 0.0
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            x, y = x_all[idx], y_all[idx]
            if distort_on:
                x = distort(x, gen, data.BACKGROUND, distort_strength, elastic)
            logits = model(x)
            # LeNet-5's logits are minus the RBF distances; the scale sets how hard the loss keeps
            # pushing examples that are already classified right (the paper's criterion is scale 1)
            loss = F.cross_entropy(logits * logit_scale, y, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
            wrong += int((logits.argmax(1) != y).sum())
            loss_sum += float(loss.detach()) * len(y)
            if i % 50 == 0 or i == steps_per_epoch - 1:
                bar.describe(f"epoch {epoch + 1}/{epochs}", loss=f"{loss_sum / seen:.4f}", err=f"{100 * wrong / seen:.2f}%",
                             img_s=f"{seen / (time.perf_counter() - t0):.0f}")
            bar.update(1)
    bar.close()
    model.eval()
    return model


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.train", description="Train a network on its training digits "
                                "(MNIST for the LeNets, an MNIST-drawn stand-in for the 1989 networks).")
    p.add_argument("--arch", required=True, help=", ".join(ALL_ARCHS))
    p.add_argument("--epochs", type=int, default=None, help="passes over the training digits (default: the recipe)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distort", action=argparse.BooleanOptionalAction, default=None,
                   help="random affine distortions of training images (default: the recipe)")
    p.add_argument("--batch", type=int, default=None, help="default: the recipe (32)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (one-cycle schedule; default: the recipe, 2e-3)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: the recipe, 0: Adam)")
    p.add_argument("--distort-strength", type=float, default=None,
                   help="multiplies the distortion ranges (default: the recipe, 1)")
    p.add_argument("--data", default=None, help="MNIST directory (see model.data for the search order)")
    p.add_argument("--out", default=None, help="checkpoint path (default build/checkpoints/ARCH.pt)")
    p.add_argument("--logit-scale", type=float, default=None, help="multiplies the logits in the loss (default: the recipe)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (results depend on it; the recipes use 1)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.arch not in ALL_ARCHS:
        raise unknown_arch(args.arch)
    if args.arch == boosted.NAME:
        return main_boosted(args, argv)
    recipe = RECIPES[args.arch]
    for key, default in (("batch", 32), ("lr", 2e-3), ("weight_decay", 0.0), ("distort_strength", 1.0)):
        if getattr(args, key) is None:
            setattr(args, key, recipe.get(key, default))
    epochs = recipe["epochs"] if args.epochs is None else args.epochs
    if args.distort is None:
        args.distort = recipe["distort"]
    if args.logit_scale is None:
        args.logit_scale = recipe["logit_scale"]
    if epochs < 1 or args.batch < 1:
        raise UserError("--epochs and --batch must be positive")
    out = args.out or f"build/checkpoints/{args.arch}.pt"
    t0 = time.perf_counter()
    model = train(args.arch, epochs, args.seed, args.distort, args.batch, args.lr, args.data,
                  progress=not args.no_progress, threads=args.threads, logit_scale=args.logit_scale,
                  weight_decay=args.weight_decay, distort_strength=args.distort_strength)
    train_s = time.perf_counter() - t0
    result = evaluate(model, args.data)
    extra, where = {}, ""
    if args.arch in lineage.NAMES:  # the 16x16 networks: their own split, and all of MNIST's test digits
        full = evaluate(model, args.data, split="mnist")
        extra = {"split": result["split"], "test_images": result["images"], "weight_decay": args.weight_decay,
                 "distort_strength": args.distort_strength,
                 "mnist_test_error": full["error_rate"], "mnist_test_errors": full["errors"]}
        where = (f", {result['split']} split; MNIST 16x16 {100 * full['error_rate']:.2f}% "
                 f"({full['errors']}/{full['images']})")
    command = _command(argv)
    checkpoint.save(out, model, seed=args.seed, epochs=epochs, distort=args.distort, batch=args.batch,
                    logit_scale=args.logit_scale,
                    lr=args.lr, test_error=result["error_rate"], test_errors=result["errors"],
                    train_seconds=round(train_s, 1), command=command, **extra)
    print(f"{args.arch}: test error {100 * result['error_rate']:.2f}% ({result['errors']}/{result['images']}{where}), "
          f"trained in {train_s:.0f} s, saved {out}")
    return 0


def _command(argv) -> str:
    return "python -m model.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


def main_boosted(args, argv) -> int:
    """``--arch boosted-lenet4``: :func:`model.boosted.train_boosted`, its own recipe only."""
    given = [k for k in SINGLE_ONLY if getattr(args, k) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UserError(f"{args.arch}: {flag} does not apply (its recipe is model.boosted.RECIPE)")
    out = args.out or f"build/checkpoints/{args.arch}.pt"
    t0 = time.perf_counter()
    model, info = boosted.train_boosted(args.seed, data_dir=args.data, progress=not args.no_progress,
                                        threads=args.threads)
    train_s = time.perf_counter() - t0
    result = evaluate(model, args.data)
    # no wall time in the file: the same seed gives the same bytes
    checkpoint.save(out, model, seed=args.seed, boosting=info, test_error=result["error_rate"],
                    test_errors=result["errors"], command=_command(argv))
    print(f"{args.arch}: test error {100 * result['error_rate']:.2f}% ({result['errors']}/{result['images']}), "
          f"members 2 and 3 trained on {info['set2']:,} and {info['set3']:,} patterns in {train_s:.0f} s, saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
