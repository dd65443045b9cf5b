"""ESD (Zhao et al., arXiv 2510.06254): enhanced self-distillation through lightweight ANN branches
on intermediate firing rates, with a reliable self-teacher; SPEC.md section 5."""
import torch
from torch import nn
from torch.nn import functional as F

from ..models import SpikingCNN
from .base import DistillLoss


def spatial_branch(channels, num_classes):
    """Depthwise-separable conv + BN + ReLU, global average pool, linear."""
    width = 2 * channels
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def dense_branch(features, num_classes, hidden=128):
    """A small MLP for dense (non-spatial) spiking stages."""
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, num_classes))


def branch_layers(student):
    """Spiking stages that get a branch: every stage output except the layer feeding the readout.

    SpikingCNN: every LIF but the last (lif1, lif2 by default). SpikingResNet: the output
    (lif_b) of the last block of each residual stage.
    """
    if isinstance(student, SpikingCNN):
        lifs = [n for n in student.layers if n.startswith("lif")]
        return lifs[:-1]
    ends = torch.tensor(student.config["blocks"]).cumsum(0) - 1
    return [f"blocks.{int(i)}.lif_b" for i in ends]


def reliable_teacher(exits, y):
    """Mean logits of the exits whose argmax equals the label, and a mask of samples with any.

    exits: (E, B, K). Returns (teacher (B, K), mask (B,)), both without gradient.
    """
    exits = exits.detach()
    correct = (exits.argmax(-1) == y).to(exits.dtype)           # (E, B)
    count = correct.sum(0)
    teacher = (exits * correct[..., None]).sum(0) / count.clamp(min=1)[:, None]
    return teacher, count > 0


class ESD(DistillLoss):
    """L = [sum_k CE(z_k, y) + b * sum_k tau^2 KL_m(softmax(r/tau) || softmax(z_k/tau))] / T

    z_k runs over the exits: one branch per intermediate spiking stage (reading its firing rate
    mean_t s_t) plus the student's own head z = mean_t z_t. r: the reliable teacher (mean logits of
    the exits that classify the sample correctly, no gradient); KL_m sums the KL over samples that
    have a correct exit and divides by the batch size. b = 0.3, tau = 3; the division by T is the
    authors' (a constant scale of the loss). Branches train with the student and are never exported.
    """

    needs_teacher = False

    def __init__(self, shapes, num_classes, beta=0.3, tau=3.0):
        super().__init__()
        self.names = list(shapes)
        self.branches = nn.ModuleList(
            spatial_branch(s[0], num_classes) if len(s) == 3 else dense_branch(s[0], num_classes)
            for s in shapes.values())
        self.beta, self.tau = beta, tau

    @staticmethod
    def add_args(parser):
        parser.add_argument("--esd-beta", type=float, default=0.3,
                            help="esd: weight of the self-distillation term")
        parser.add_argument("--esd-tau", type=float, default=3.0, help="esd: temperature")

    @classmethod
    def from_args(cls, args, student, teacher=None):
        with torch.no_grad():
            out = student(torch.zeros(1, 1, *student.config["in_shape"]))
        shapes = {n: tuple(out.spikes[n].shape[2:]) for n in branch_layers(student)}
        return cls(shapes, student.config["num_classes"], args.esd_beta, args.esd_tau)

    def forward(self, out, y, teacher_out=None):
        rates = [out.spikes[n].mean(0) for n in self.names]
        exits = torch.stack([b(r) for b, r in zip(self.branches, rates)] + [out.logits])
        teacher, mask = reliable_teacher(exits, y)
        p = F.softmax(teacher / self.tau, -1)
        ce = sum(F.cross_entropy(z, y) for z in exits)
        kd = 0.0
        for z in exits:
            kl = (p * (p.clamp(min=1e-12).log() - F.log_softmax(z / self.tau, -1))).sum(-1)
            kd = kd + (kl * mask).sum() / y.shape[0] * self.tau ** 2
        steps = out.logits_t.shape[0]
        loss = (ce + self.beta * kd) / steps
        return loss, {"ce": ce.item(), "self_kd": float(kd), "reliable": mask.float().mean().item()}
