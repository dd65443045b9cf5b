"""TSER (Yu et al., CVPR 2025): temporal separation with entropy regularisation (docs/kd.md)."""
from torch.nn import functional as F

from common.cli import non_negative_float, positive_float

from .base import DistillLoss
from .kd import kl_div_tau


def entropy(logits, tau):
    """H(softmax(z/tau)) = -sum_k q_k log q_k, batch mean."""
    log_q = F.log_softmax(logits / tau, dim=-1)
    return -(log_q.exp() * log_q).sum(-1).mean()


class TSER(DistillLoss):
    """L = mean_t CE(z_t, y) + a * mean_t tau^2 KL(softmax(p_t/tau) || softmax(z_t/tau))
         - g * mean_t H(softmax(z_t/tau))

    No time averaging before the losses: every step's logits z_t meet the label and the teacher.
    p_t is the teacher's step t when it has per-step logits (teacher_out.logits_t, an SNN teacher
    of train.from_nir), else its one output p at every step (an ANN teacher, as in the paper).
    The paper calls the term a regulariser that stabilises training; its sign is not confirmed
    (SPEC.md). We read it as a confidence penalty: g >= 0, so the loss rewards high-entropy (less
    over-confident) per-step outputs, and g = 0 turns it off. Entropy minimisation (g < 0) is
    not offered: --tser-gamma refuses negative values (docs/kd.md).
    """

    def __init__(self, alpha=1.0, gamma=0.1, tau=4.0):
        super().__init__()
        self.alpha, self.gamma, self.tau = alpha, gamma, tau

    @staticmethod
    def add_args(parser):
        parser.add_argument("--tser-alpha", type=non_negative_float, default=1.0,
                            help="tser: weight a of the KD term")
        parser.add_argument("--tser-gamma", type=non_negative_float, default=0.1,
                            help="tser: weight g >= 0 of the entropy term (L includes -g*H: rewards entropy)")
        parser.add_argument("--tser-tau", type=positive_float, default=4.0, help="tser: temperature")

    @classmethod
    def from_args(cls, args, student, teacher):
        return cls(args.tser_alpha, args.tser_gamma, args.tser_tau)

    def forward(self, out, y, teacher_out):
        z_t = out.logits_t                                    # (T, B, K)
        steps = z_t.shape[0]
        per_step = teacher_out.logits_t
        if per_step is not None and per_step.shape != z_t.shape:
            raise ValueError(f"tser: teacher per-step logits {tuple(per_step.shape)}, student "
                             f"{tuple(z_t.shape)}")
        p_t = [teacher_out.logits.detach()] * steps if per_step is None else per_step.detach()
        ce = sum(F.cross_entropy(z, y) for z in z_t) / steps
        kd = sum(kl_div_tau(p, z, self.tau) for p, z in zip(p_t, z_t)) / steps
        ent = sum(entropy(z, self.tau) for z in z_t) / steps
        loss = ce + self.alpha * kd - self.gamma * ent
        return loss, {"ce": ce.item(), "kd": kd.item(), "entropy": ent.item()}
