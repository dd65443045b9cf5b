"""Checkpoints: weights plus everything needed to rebuild the model, written atomically.

A checkpoint is a dict saved with torch.save:
    format   'snn-kd-loihi/checkpoint'      version  1
    kind     'teacher' | 'student'          arch     {'name', 'config'} (see train.models)
    state_dict, dataset, encoding {'kind', 'timesteps', 'seed'}, epoch, epochs, complete,
    optimizer, scheduler, history, args
"""
import os
import tempfile
from pathlib import Path

import torch

from .models import arch_of, build_model

FORMAT, VERSION = "snn-kd-loihi/checkpoint", 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not ours."""


def atomic_write(path, write_fn):
    """Call write_fn(tmp_path) and rename the result onto path, so path is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path, model, kind, **fields):
    ckpt = {"format": FORMAT, "version": VERSION, "kind": kind, "arch": arch_of(model),
            "state_dict": model.state_dict(), **fields}
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path, kind=None) -> dict:
    """Load and validate; raises CheckpointError with a one-line cause naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, ...
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupted?): "
                              f"{type(e).__name__}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file (foreign checkpoint?)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} "
                              f"(this code reads {VERSION})")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {ckpt.get('kind')}, expected a {kind}")
    for key in ("arch", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: missing field {key!r}")
    return ckpt


def load_model(path, kind=None):
    """Rebuild the model of a checkpoint in eval mode; returns (model, ckpt)."""
    ckpt = load_checkpoint(path, kind)
    try:
        model = build_model(ckpt["arch"])
        model.load_state_dict(ckpt["state_dict"])
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild model: {str(e).splitlines()[0]}") from None
    return model.eval(), ckpt
