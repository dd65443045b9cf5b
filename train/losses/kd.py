"""Hinton logit KD (baseline)."""
from torch.nn import functional as F

from common.cli import non_negative_float, positive_float

from .base import DistillLoss


def kl_div_tau(teacher_logits, student_logits, tau):
    """tau^2 * KL(softmax(p/tau) || softmax(z/tau)), averaged over the batch."""
    log_q = F.log_softmax(student_logits / tau, dim=-1)
    p = F.softmax(teacher_logits / tau, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean") * tau * tau


class LogitKD(DistillLoss):
    """L = CE(z, y) + a * tau^2 * KL(softmax(p/tau) || softmax(z/tau)), z = mean_t z_t."""

    def __init__(self, alpha=1.0, tau=4.0):
        super().__init__()
        self.alpha, self.tau = alpha, tau

    @staticmethod
    def add_args(parser):
        parser.add_argument("--kd-alpha", type=non_negative_float, default=1.0, help="weight of the KD term")
        parser.add_argument("--kd-tau", type=positive_float, default=4.0, help="KD temperature")

    @classmethod
    def from_args(cls, args, student, teacher):
        return cls(args.kd_alpha, args.kd_tau)

    def forward(self, out, y, teacher_out):
        ce = F.cross_entropy(out.logits, y)
        kd = kl_div_tau(teacher_out.logits, out.logits, self.tau)
        return ce + self.alpha * kd, {"ce": ce.item(), "kd": kd.item()}
