"""The loss interface and the cross-entropy-only baseline (`--method none`)."""
from torch import nn
from torch.nn import functional as F


class DistillLoss(nn.Module):
    """Base class: `forward(out, y, teacher_out) -> (loss, parts)`."""

    needs_teacher = True

    @staticmethod
    def add_args(parser):
        """Add this method's flags (each flag name must be unique across methods)."""

    @classmethod
    def from_args(cls, args, student, teacher):
        return cls()


class CrossEntropy(DistillLoss):
    """L = CE(z, y) with z = mean_t z_t, the student's time-mean logits."""

    needs_teacher = False

    def forward(self, out, y, teacher_out=None):
        ce = F.cross_entropy(out.logits, y)
        return ce, {"ce": ce.item()}
