"""Checkpoints: weights plus everything needed to rebuild the model, written atomically.

A checkpoint is a dict saved with torch.save:
    format   'snn-kd-loihi/checkpoint'      version  1
    kind     'teacher' | 'student'          arch     {'name', 'config'} (see train.models;
                                                     'nir': the NIR file's bytes, train.from_nir)
    state_dict, dataset, encoding {'kind', 'timesteps', 'seed'}, epoch, epochs, complete,
    optimizer, scheduler, history, args, settings {flag: value} (what --resume must match)
Writes go through common.files.atomic_write: a failed write keeps the previous checkpoint.
Encoding 'spikes' (train.from_nir) names its held-out file relative to the checkpoint's folder;
load_checkpoint makes it absolute, so a moved run folder still works.
"""
import json
from pathlib import Path

import torch

from common.files import atomic_write  # noqa: F401  (re-exported for older imports)

from .models import arch_of, build_model

FORMAT, VERSION = "snn-kd-loihi/checkpoint", 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not ours."""


def save_checkpoint(path, model, kind, arch=None, **fields):
    """`arch` overrides arch_of(model): {'name': 'nir', 'config': {'nir': bytes}} for a student
    rebuilt from a NIR file (train.from_nir)."""
    ckpt = {"format": FORMAT, "version": VERSION, "kind": kind, "arch": arch or arch_of(model),
            "state_dict": model.state_dict(), **fields}
    atomic_write(path, lambda tmp: _save(ckpt, tmp))


def _save(obj, tmp):
    """torch.save through a Python file object, so that a full disk is OSError(ENOSPC), which
    atomic_write names in one line. (Given a path, torch.save reports it as an opaque RuntimeError;
    given a file, the OSError of the write can still be followed by torch's RuntimeError from
    closing the zip, so the OSError is dug out of the exception chain.)"""
    with open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            cause = e.__context__
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__context__
            if cause is None:
                raise
            raise cause from None


_MISSING = object()


def plain(value):
    """Settings as JSON-like values (tuples as lists), so stored and new ones compare equal."""
    return json.loads(json.dumps(value))


def first_difference(ckpt, settings: dict):
    """(flag, stored value, new value) for the first flag in `settings` whose value differs from
    the checkpoint's 'settings' (stored None when it records none), or None when all match."""
    stored = ckpt.get("settings") or {}
    for flag, value in plain(settings).items():
        if stored.get(flag, _MISSING) != value:
            return flag, stored.get(flag), value
    return None


def check_settings(path, ckpt, settings: dict, action="--resume"):
    """Raise CheckpointError naming the first flag whose value differs from the one the checkpoint
    was written with. `settings` maps a flag (e.g. '--batch-size') to its value."""
    if "settings" not in ckpt:
        raise CheckpointError(f"{path}: records no run settings (written by an older version); "
                              f"cannot {action} it, start a new --run")
    diff = first_difference(ckpt, settings)
    if diff:
        flag, old, new = diff
        raise CheckpointError(f"{path}: the run used {flag} {_show(old)}, now {_show(new)}; "
                              f"{action} needs the same {flag} (or start a new --run)")


def _show(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


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
    encoding = ckpt.get("encoding")
    if isinstance(encoding, dict) and encoding.get("kind") == "spikes" \
            and not Path(encoding.get("file", "")).is_absolute():
        # train.from_nir names its held-out samples relative to the run folder (movable)
        ckpt["encoding"] = {**encoding, "file": str(path.parent.absolute() / encoding["file"])}
    return ckpt


def load_model(path, kind=None):
    """Rebuild the model of a checkpoint in eval mode; returns (model, ckpt)."""
    ckpt = load_checkpoint(path, kind)
    try:
        if ckpt["arch"].get("name") == "nir":  # train.from_nir: the user's graph, our weights
            from .from_nir import student_from_bytes
            model = student_from_bytes(ckpt["arch"]["config"]["nir"])
        else:
            model = build_model(ckpt["arch"])
        model.load_state_dict(ckpt["state_dict"])
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild model: {str(e).splitlines()[0]}") from None
    return model.eval(), ckpt
