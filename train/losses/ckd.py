"""CKDSNN (Liu et al., AAAI 2026): saliency-scaled activation map distillation (SAMD) and
noise-smoothed logits distillation (NLD); docs/kd.md."""
import argparse
import functools

import torch
from torch.nn import functional as F

from common.cli import non_negative_float

from .base import DistillLoss
from .fkd import resize_to

TAU = 2.0  # temperature of both SAMD and NLD in the paper and the code


SAM_EPS = 1e-3  # the reference's eps for the batch-global min-max of spike and fc-CAM maps


def min_max(maps, eps=1e-8):
    """Per-sample min-max normalisation of maps (B, H, W): (m - min_b) / (max_b - min_b + eps)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(maps)


def batch_min_max(maps, eps=SAM_EPS):
    """Batch-global min-max (the reference code's SAM and fc-CAM): (m - min) / (max - min + eps)
    with min and max over the whole batch, so one flat (all-zero) map among others is scaled by
    at most 1 / (max - min) and not by 1 / eps."""
    lo, hi = maps.min(), maps.max()
    return (maps - lo) / (hi - lo + eps)


def fc_cam(features, fc_weight, cls):
    """CAM_b = ReLU(sum_d W_fc[c_b, d] * F_b[d]) for features (B, D, H, W), classes c (B,)."""
    return F.relu(torch.einsum("bd,bdhw->bhw", fc_weight[cls], features))


def grad_cam(features, head, cls):
    """Grad-CAM: w_b[d] = mean_hw d score_c / d F_b[d, h, w]; CAM_b = ReLU(sum_d w_b[d] F_b[d]).

    `head` maps the last-stage features to logits (global average pool + fc for our teachers);
    computed with autograd on a detached copy, so nothing flows back into the teacher.
    """
    with torch.enable_grad():
        feats = features.detach().requires_grad_(True)
        score = head(feats).gather(1, cls[:, None]).sum()
        (grad,) = torch.autograd.grad(score, feats)
    weights = grad.mean((2, 3))
    return F.relu(torch.einsum("bd,bdhw->bhw", weights, feats.detach()))


def samd_loss(cam, sam, tau=TAU):
    """KL(softmax(CAM/tau) || softmax(SAM'/tau)) over H*W, batch mean.

    cam: the teacher map, already normalised to [0, 1]. sam: the raw student map (spike counts),
    resized to the teacher's H x W when the sizes differ, then batch-global min-max normalised
    (eps 1e-3) as in the reference. When the whole batch's maps are flat (no spike anywhere at
    that stage) the map carries nothing to align and the normalisation would scale gradients by
    1 / eps: the term is then multiplied by 0 (kept in the graph, value 0).
    """
    sam = resize_to(sam.unsqueeze(1), cam.shape[-2:]).squeeze(1)
    p = F.softmax(cam.flatten(1) / tau, dim=1)
    log_q = F.log_softmax(batch_min_max(sam).flatten(1) / tau, dim=1)
    kl = F.kl_div(log_q, p, reduction="batchmean")
    flat = bool(sam.max() <= sam.min())
    return kl * 0.0 if flat else kl


def gaussian_like(z, mode="paper"):
    """Per-sample noise shaped by the logits' statistics over classes (mean mu, std sd):

    paper: n = mu + sd * eps,   i.e. n ~ N(mu, sd^2), statistics detached (the noise is a constant);
    code:  n = mu + sd^2 * eps, the reference's generate_gaussian_noise (scale std^2, not std),
           statistics not detached, as there.
    eps ~ N(0, 1) elementwise.
    """
    if mode == "code":
        mu, sd = z.mean(1, keepdim=True), z.std(1, keepdim=True)
        return mu + sd ** 2 * torch.randn_like(z)
    mu = z.detach().mean(1, keepdim=True)
    sd = z.detach().std(1, keepdim=True)
    return mu + sd * torch.randn_like(z)


def nld_loss(teacher_logits, z, noise, mode="paper", lam=0.1, tau=TAU):
    """tau^2 KL(softmax(p/tau) || q), batch mean, with
    paper: q = softmax((z + lam * n) / tau);
    code:  q = (1 - lam) softmax(z/tau) + lam softmax(n/tau).
    """
    p = F.softmax(teacher_logits / tau, dim=1)
    if mode == "paper":
        log_q = F.log_softmax((z + lam * noise) / tau, dim=1)
    else:
        q = (1 - lam) * F.softmax(z / tau, dim=1) + lam * F.softmax(noise / tau, dim=1)
        log_q = q.log()
    return F.kl_div(log_q, p, reduction="batchmean") * tau * tau


def pool_fc(feats, fc):
    """Our teachers' head: global average pool, then the fc layer."""
    return fc(F.adaptive_avg_pool2d(feats, 1).flatten(1))


def teacher_head(teacher):
    """Last-stage features -> logits for a teacher with `.fc` after global average pooling.

    A partial function, so the teacher's fc is not registered (nor trained) as part of the loss.
    """
    return functools.partial(pool_fc, fc=teacher.fc)


class CKDSNN(DistillLoss):
    """L = CE(z, y) + ws * SAMD + wn * NLD  (docs/kd.md: ws = wn = 1)

    SAMD = KL(softmax(CAM/2) || softmax(SAM/2)) over H*W, with
      CAM: teacher map at its last stage for its predicted class c, either fc-weight CAM
           ReLU(sum_d W_fc[c, d] F[d]) (the code; min-max over the batch, eps 1e-3) or Grad-CAM
           (the paper; for a global-pool + fc head it equals the fc CAM divided by H*W; min-max
           per sample, eps 1e-8, as the reference's Grad-CAM path);
      SAM: sum over T and channels of the student's last spatial spike maps, min-max over the
           batch with eps 1e-3 (the reference's getForwardCAM); a batch of flat maps adds 0.
    NLD = 4 KL(softmax(p/2) || q), q from z = mean_t z_t and noise n (see gaussian_like and
          nld_loss: paper mode n ~ N(mean_k z, std_k z^2), code mode scale std_k z^2).
    """

    def __init__(self, head, cam="gradcam", samd=True, nld=True, nld_mode="paper", nld_lambda=0.1,
                 samd_weight=1.0, nld_weight=1.0):
        super().__init__()
        self.head = head
        self.cam, self.samd, self.nld = cam, samd, nld
        self.nld_mode, self.nld_lambda = nld_mode, nld_lambda
        self.samd_weight, self.nld_weight = samd_weight, nld_weight

    @staticmethod
    def add_args(parser):
        parser.add_argument("--cam", choices=("gradcam", "fc"), default="gradcam",
                            help="ckd: teacher map for SAMD (paper: gradcam; code: fc)")
        parser.add_argument("--samd", action=argparse.BooleanOptionalAction, default=True,
                            help="ckd: use the SAMD term")
        parser.add_argument("--nld", action=argparse.BooleanOptionalAction, default=True,
                            help="ckd: use the NLD term")
        parser.add_argument("--nld-mode", choices=("paper", "code"), default="paper",
                            help="ckd: noise added to logits (paper) or mixed into "
                                 "probabilities (code)")
        parser.add_argument("--nld-lambda", type=non_negative_float, default=0.1,
                            help="ckd: noise scale (paper) / mixing weight (code)")
        parser.add_argument("--samd-weight", type=non_negative_float, default=1.0, help="ckd: weight of SAMD")
        parser.add_argument("--nld-weight", type=non_negative_float, default=1.0, help="ckd: weight of NLD")

    @classmethod
    def from_args(cls, args, student, teacher):
        return cls(teacher_head(teacher), args.cam, args.samd, args.nld, args.nld_mode,
                   args.nld_lambda, args.samd_weight, args.nld_weight)

    def teacher_cam(self, teacher_out):
        """The teacher map normalised to [0, 1] as the reference does it: the fc CAM batch-global
        (eps 1e-3), Grad-CAM per sample (eps 1e-8)."""
        feats = teacher_out.features[-1].detach()
        cls = teacher_out.logits.argmax(1)
        if self.cam == "fc":
            return batch_min_max(fc_cam(feats, teacher_out.fc_weight.detach(), cls))
        return min_max(grad_cam(feats, self.head, cls))

    def forward(self, out, y, teacher_out):
        z = out.logits
        ce = F.cross_entropy(z, y)
        loss, parts = ce, {"ce": ce.item()}
        if self.samd:
            sam = out.features["last"].sum((0, 2))
            samd = samd_loss(self.teacher_cam(teacher_out), sam)
            loss = loss + self.samd_weight * samd
            parts["samd"] = samd.item()
            parts["samd_flat"] = float(sam.max() <= sam.min())  # batches with no spike there
        if self.nld:
            noise = gaussian_like(z, self.nld_mode)
            nld = nld_loss(teacher_out.logits.detach(), z, noise, self.nld_mode, self.nld_lambda)
            loss = loss + self.nld_weight * nld
            parts["nld"] = nld.item()
        return loss, parts

