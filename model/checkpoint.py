"""Checkpoints that carry their own config, seed, training command and test error."""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from .lenet import ALL_ARCHS, LeNet, LeNetConfig, unknown_arch
from .util import UserError, atomic_path

FORMAT = "lenet-hw-checkpoint"
VERSION = 1
PACKAGED = Path(__file__).parent / "checkpoints"


def default_path(arch: str) -> Path:
    return PACKAGED / f"{arch}.pt"


def save(path: str | os.PathLike, model: LeNet, **meta) -> None:
    """Write atomically. ``meta``: seed, epochs, distort, test_error, command, ..."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    blob = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(), "state_dict": state, **meta}
    buf = io.BytesIO()
    torch.save(blob, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load(path: str | os.PathLike | None, arch: str | None = None) -> tuple[LeNet, dict]:
    """Load a checkpoint; if ``arch`` is given it must match the checkpoint's architecture."""
    if arch is not None and arch not in ALL_ARCHS:
        raise unknown_arch(arch)
    if path is None:
        if arch is None:
            raise UserError("give --checkpoint or --arch")
        path = default_path(arch)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for garbage input
        raise UserError(f"checkpoint {path}: not a readable PyTorch file ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"checkpoint {path}: not a lenet-hw checkpoint (no '{FORMAT}' header)")
    if blob.get("version", 0) > VERSION:
        raise UserError(f"checkpoint {path}: format version {blob['version']} is newer than this tool ({VERSION})")
    cfg = blob.get("config", {})
    if arch is not None and cfg.get("arch") != arch:
        raise UserError(f"checkpoint {path} is a {cfg.get('arch')} checkpoint, not {arch}")
    try:
        model = LeNet(LeNetConfig(**cfg))
        model.load_state_dict(blob["state_dict"], strict=True)
    except (TypeError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"checkpoint {path}: weights do not fit {cfg.get('arch')}: {first}") from None
    model.eval()
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    meta["path"] = str(path)
    return model, meta
