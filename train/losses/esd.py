"""ESD (Zhao et al., arXiv 2510.06254): enhanced self-distillation through lightweight ANN branches
on intermediate firing rates, with a reliable self-teacher; docs/kd.md."""
import torch
from torch import nn
from torch.nn import functional as F

from common.cli import non_negative_float, positive_float

from ..models import SpikingCNN
from .base import DistillLoss


class DownBlock(nn.Module):
    """The reference's branch block (its DeepConv), channels c -> c_out, H and W halved:

        y = ReLU(body(x) + BN(conv1x1_s2(x)))
        body = dw3x3_s2 -> pw -> BN -> ReLU -> dw3x3 -> pw (c -> c_out) -> BN -> ReLU

    dw: depthwise conv, pw: 1x1 conv.
    """

    def __init__(self, c, c_out):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 2, 1, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.Conv2d(c, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU())
        self.shortcut = nn.Sequential(nn.Conv2d(c, c_out, 1, 2, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def spatial_branch(channels, num_classes, blocks):
    """`blocks` DownBlocks (each halves H, W and doubles the channels), global average pool,
    linear: the reference gives the branch on the k-th of K tapped stages K - k + 1 blocks (3/2/1
    for ResNet-18), so every branch ends at the same depth and width."""
    layers, c = [], channels
    for _ in range(blocks):
        layers.append(DownBlock(c, 2 * c))
        c *= 2
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


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
    the exits that classify the sample correctly, no gradient); KL_m is the mean KL over the
    reliable samples (those with a correct exit), as the reference's esd_loss. b = 0.3, tau = 3; the
    division by T is the authors' (a constant scale of the loss). Spatial branches are the
    reference's stacks of stride-2 blocks (3/2/1 on three tapped stages; see spatial_branch);
    dense stages get a small MLP. Branches train with the student and are never exported.
    """

    needs_teacher = False

    def __init__(self, shapes, num_classes, beta=0.3, tau=3.0):
        super().__init__()
        self.names = list(shapes)
        spatial = [n for n, s in shapes.items() if len(s) == 3]
        self.branches = nn.ModuleList(
            spatial_branch(s[0], num_classes, len(spatial) - spatial.index(n)) if len(s) == 3
            else dense_branch(s[0], num_classes) for n, s in shapes.items())
        self.beta, self.tau = beta, tau

    @staticmethod
    def add_args(parser):
        parser.add_argument("--esd-beta", type=non_negative_float, default=0.3,
                            help="esd: weight of the self-distillation term")
        parser.add_argument("--esd-tau", type=positive_float, default=3.0, help="esd: temperature")

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
        reliable = mask.sum().clamp(min=1)            # no reliable sample: the term is 0
        for z in exits:
            kl = (p * (p.clamp(min=1e-12).log() - F.log_softmax(z / self.tau, -1))).sum(-1)
            kd = kd + (kl * mask).sum() / reliable * self.tau ** 2
        steps = out.logits_t.shape[0]
        loss = (ce + self.beta * kd) / steps
        return loss, {"ce": ce.item(), "self_kd": float(kd), "reliable": mask.float().mean().item()}
