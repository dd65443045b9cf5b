"""Feature KD: the element-wise feature alignment baseline (docs/kd.md)."""
import torch
from torch import nn
from torch.nn import functional as F

from common.cli import non_negative_float

from .base import DistillLoss


def resize_to(x, size):
    """Resize maps (B, C, H, W) to `size` (H', W'): area average to shrink, bilinear to grow."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def last_stage_shapes(student, teacher):
    """(C, H, W) of the student's features['last'] and of the teacher's last feature map.

    Found by one forward pass on zeros, in eval mode (no BatchNorm statistics change).
    """
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    with torch.no_grad():
        s = student(torch.zeros(1, 1, *student.config["in_shape"])).features["last"]
        _, feats = teacher(torch.zeros(1, *teacher.config["in_shape"]), return_features=True)
    student.train(modes[0])
    teacher.train(modes[1])
    return tuple(s.shape[2:]), tuple(feats[-1].shape[1:])


class FeatureKD(DistillLoss):
    """L = CE(z, y) + w * MSE(P(mean_t s_t), F)

    s_t: the student's last spatial spike map at step t (features['last']); P: a trainable 1x1 conv
    (student channels -> teacher channels) followed by a resize to the teacher's H x W; F: the
    teacher's last-stage feature map; MSE averaged over all elements.
    """

    def __init__(self, student_channels, teacher_channels, weight=1.0):
        super().__init__()
        self.proj = nn.Conv2d(student_channels, teacher_channels, 1)
        self.weight = weight

    @staticmethod
    def add_args(parser):
        parser.add_argument("--fkd-weight", type=non_negative_float, default=1.0,
                            help="fkd: weight w of the feature MSE term")

    @classmethod
    def from_args(cls, args, student, teacher):
        (cs, _, _), (ct, _, _) = last_stage_shapes(student, teacher)
        return cls(cs, ct, args.fkd_weight)

    def forward(self, out, y, teacher_out):
        ce = F.cross_entropy(out.logits, y)
        target = teacher_out.features[-1].detach()
        pred = resize_to(self.proj(out.features["last"].mean(0)), target.shape[-2:])
        mse = F.mse_loss(pred, target)
        return ce + self.weight * mse, {"ce": ce.item(), "feat": mse.item()}
