"""Distillation losses: one small module per method, all with the same interface.

    loss_fn = build_loss(name, args, student, teacher)
    loss, parts = loss_fn(out, y, teacher_out)

`out` is a `train.models.StudentOutput` (per-step logits, spike maps, features), `y` the labels and
`teacher_out` a `TeacherOutput` (None for methods that need no teacher). `parts` maps component
names to floats for logging. Each module may own trainable parameters (projections, branches); the
training loop optimises them together with the student.
"""
from dataclasses import dataclass

import torch

from .base import DistillLoss, CrossEntropy
from .kd import LogitKD
from .fkd import FeatureKD
from .ckd import CKDSNN
from .tser import TSER
from .esd import ESD


@dataclass
class TeacherOutput:
    logits: torch.Tensor        # (B, K)
    features: list              # per-stage feature maps (B, C, H, W)
    fc_weight: torch.Tensor     # (K, C_last): the classifier after global pooling, for CAMs
    logits_t: torch.Tensor = None  # (T, B, K) per-step logits, when the teacher has them (tser)


METHODS = {"none": CrossEntropy, "kd": LogitKD, "fkd": FeatureKD, "ckd": CKDSNN, "tser": TSER,
           "esd": ESD}


def add_method_args(parser):
    """Let each method add its own command-line flags."""
    for cls in METHODS.values():
        cls.add_args(parser)


def build_loss(name, args, student, teacher) -> DistillLoss:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (choose from {', '.join(METHODS)})")
    return METHODS[name].from_args(args, student, teacher)
