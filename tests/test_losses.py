"""Distillation losses against values computed by hand with plain formulas on tiny tensors."""
import argparse
import functools
import math

import pytest
import torch
from torch import nn

from train.losses import METHODS, TeacherOutput, add_method_args, build_loss
from train.losses.ckd import (CKDSNN, fc_cam, gaussian_like, grad_cam, min_max as per_sample_min_max,
                              nld_loss, pool_fc, samd_loss)
from train.losses.esd import ESD, reliable_teacher
from train.losses.fkd import FeatureKD
from train.losses.tser import TSER
from train.models import SmallCNN, SpikingCNN, SpikingResNet, StudentOutput


def softmax(v, tau=1.0):
    e = [math.exp(a / tau) for a in v]
    return [a / sum(e) for a in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def ce(z, y):
    return -math.log(softmax(z)[y])


def min_max(v, eps=0.0):
    lo, hi = min(v), max(v)
    return [(a - lo) / (hi - lo + eps) for a in v]


def out_with(logits_t, last=None, spikes=None):
    out = StudentOutput(logits_t=torch.tensor(logits_t))
    if last is not None:
        out.features["last"] = torch.as_tensor(last)
    out.spikes.update(spikes or {})
    return out


def parse(argv=()):
    p = argparse.ArgumentParser()
    add_method_args(p)
    return p.parse_args(list(argv))


# ---- interface ---------------------------------------------------------------------------------

def test_every_method_builds_from_its_flags_and_runs():
    student = SpikingCNN(in_shape=(1, 8, 8), kernels=(3, 3), strides=(1, 2))
    teacher = SmallCNN((1, 8, 8))
    teacher.eval()
    x = (torch.rand(3, 2, 1, 8, 8) < 0.5).float()
    with torch.no_grad():
        logits, feats = teacher(x[0], return_features=True)
    t_out = TeacherOutput(logits, feats, teacher.fc.weight)
    for name in METHODS:
        loss_fn = build_loss(name, parse(), student, teacher)
        loss, parts = loss_fn(student(x), torch.tensor([1, 2]), t_out)
        loss.backward()
        assert torch.isfinite(loss) and all(math.isfinite(v) for v in parts.values()), name
    assert not METHODS["esd"].needs_teacher and METHODS["ckd"].needs_teacher


def test_ckd_switches_parse():
    args = parse(["--no-samd", "--nld-mode", "code", "--cam", "fc"])
    assert (args.samd, args.nld, args.nld_mode, args.cam) == (False, True, "code", "fc")
    args = parse([])
    assert (args.samd, args.nld, args.nld_mode, args.cam) == (True, True, "paper", "gradcam")


# ---- fkd ---------------------------------------------------------------------------------------

def test_feature_kd_by_hand():
    loss_fn = FeatureKD(1, 1, weight=0.5)
    with torch.no_grad():
        loss_fn.proj.weight.fill_(2.0)
        loss_fn.proj.bias.fill_(0.5)
    spikes = [[[[[1.0, 0.0], [1.0, 1.0]]]], [[[[0.0, 0.0], [1.0, 0.0]]]]]   # (T=2, B=1, C=1, 2, 2)
    teacher = torch.tensor([[[[1.0, 2.0], [0.0, 3.0]]]])
    out = out_with([[[1.0, 0.0]], [[3.0, 0.0]]], last=spikes)
    loss, _ = loss_fn(out, torch.tensor([0]), TeacherOutput(None, [teacher], None))
    mean_map = [0.5, 0.0, 1.0, 0.5]
    mse = sum((2 * m + 0.5 - f) ** 2 for m, f in zip(mean_map, [1.0, 2.0, 0.0, 3.0])) / 4
    assert loss.item() == pytest.approx(ce([2.0, 0.0], 0) + 0.5 * mse, rel=1e-6)


def test_feature_kd_resizes_to_teacher():
    loss_fn = FeatureKD(1, 1, weight=1.0)
    with torch.no_grad():
        loss_fn.proj.weight.fill_(1.0)
        loss_fn.proj.bias.zero_()
    spikes = [[[[[1.0, 0.0], [1.0, 1.0]]]]]                         # 2x2 student, 1x1 teacher
    out = out_with([[[0.0, 0.0]]], last=spikes)
    t_out = TeacherOutput(None, [torch.zeros(1, 1, 1, 1)], None)
    loss, parts = loss_fn(out, torch.tensor([0]), t_out)
    assert parts["feat"] == pytest.approx(0.75 ** 2)


# ---- ckd ---------------------------------------------------------------------------------------

FEATS = torch.tensor([[[[1.0, 0.0], [2.0, 1.0]], [[0.0, 3.0], [1.0, 0.0]]]])   # (B=1, D=2, 2, 2)
FC = nn.Linear(2, 3)
with torch.no_grad():
    FC.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.25], [-1.0, 2.0]]))
    FC.bias.zero_()


def test_fc_cam_and_grad_cam_by_hand():
    cls = torch.tensor([1])
    f = FEATS[0].reshape(2, 4).tolist()
    cam = [max(0.0, 0.5 * a + 0.25 * b) for a, b in zip(*f)]
    assert fc_cam(FEATS, FC.weight, cls).flatten().tolist() == pytest.approx(cam)
    # for a global-average-pool + fc head the class-score gradient is W[c, d] / (H W)
    grad_weights = [0.5 / 4, 0.25 / 4]
    cam_g = [max(0.0, grad_weights[0] * a + grad_weights[1] * b) for a, b in zip(*f)]
    head = functools.partial(pool_fc, fc=FC)
    assert grad_cam(FEATS, head, cls).flatten().tolist() == pytest.approx(cam_g)
    assert FC.weight.grad is None


def test_samd_by_hand_both_cams():
    """fc CAM: min-max over the batch with eps 1e-3 (the reference's compute_cam); Grad-CAM: per
    sample with eps 1e-8 (its Grad-CAM path); the student map: over the batch with eps 1e-3."""
    sam_spikes = torch.zeros(2, 1, 2, 2, 2)                           # (T, B, C, 2, 2)
    sam_spikes[0, 0, 0] = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    sam_spikes[1, 0, 1] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    logits = FC(FEATS.mean((2, 3))).detach()                          # predicted class: 1 or other
    c = int(logits.argmax())
    f = FEATS[0].reshape(2, 4).tolist()
    w = FC.weight[c].tolist()
    raw = [max(0.0, w[0] * a + w[1] * b) for a, b in zip(*f)]
    cams = {"fc": min_max(raw, 1e-3), "gradcam": min_max([v / 4 for v in raw], 1e-8)}
    sam = min_max([1.0, 1.0, 2.0, 1.0], 1e-3)
    t_out = TeacherOutput(logits, [FEATS], FC.weight)
    for cam_kind, cam in cams.items():
        expected = kl(softmax(cam, 2.0), softmax(sam, 2.0))
        loss_fn = CKDSNN(functools.partial(pool_fc, fc=FC), cam=cam_kind, nld=False)
        out = out_with([[[0.0, 0.0, 0.0]]], last=sam_spikes)
        loss, parts = loss_fn(out, torch.tensor([0]), t_out)
        assert parts["samd"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
        assert parts["samd_flat"] == 0.0
        assert loss.item() == pytest.approx(ce([0.0, 0.0, 0.0], 0) + expected, rel=1e-5)


def test_samd_min_max_is_over_the_batch():
    """Two samples: the student map of sample 1 is normalised with the batch's min and max."""
    sam = torch.tensor([[[0.0, 2.0], [4.0, 1.0]], [[1.0, 1.0], [2.0, 3.0]]])
    cam = torch.tensor([[[0.0, 1.0], [0.5, 0.25]], [[1.0, 0.0], [0.0, 0.5]]])
    got = samd_loss(cam, sam).item()
    expected = sum(kl(softmax(cam[b].flatten().tolist(), 2.0),
                      softmax([v / (4 + 1e-3) for v in sam[b].flatten().tolist()], 2.0))
                   for b in range(2)) / 2
    assert got == pytest.approx(expected, rel=1e-5)


def test_samd_flat_student_map_keeps_gradients_bounded():
    """B = 4 with an all-zero student map (no spikes yet) for one sample: the gradient stays of
    the order of the others'. Per-sample min-max with eps 1e-8 (the old code) blows it up."""
    torch.manual_seed(0)
    cam = torch.rand(4, 4, 4)
    cam = cam / cam.amax((1, 2), keepdim=True)
    counts = torch.randint(0, 8, (4, 4, 4)).float()
    counts[0] = 0.0                                                    # a flat, all-zero map
    sam = counts.clone().requires_grad_(True)
    samd_loss(cam, sam).backward()
    assert torch.isfinite(sam.grad).all()
    assert sam.grad.abs().max() < 0.1
    assert sam.grad[0].abs().max() <= 2 * sam.grad[1:].abs().max()
    # the old per-sample normalisation on the same maps: a gradient of 1e4 or more
    old = counts.clone().requires_grad_(True)
    log_q = torch.log_softmax(per_sample_min_max(old).flatten(1) / 2, 1)
    torch.nn.functional.kl_div(log_q, torch.softmax(cam.flatten(1) / 2, 1),
                               reduction="batchmean").backward()
    assert old.grad.abs().max() > 1e4


def test_samd_all_flat_batch_adds_nothing():
    """No spike anywhere at the last stage: the term is 0 with a zero (finite) gradient."""
    cam = torch.rand(3, 4, 4)
    sam = torch.zeros(3, 4, 4, requires_grad=True)
    loss = samd_loss(cam, sam)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(sam.grad, torch.zeros_like(sam))
    spikes = torch.zeros(2, 3, 2, 4, 4)                                # (T, B, C, H, W)
    feats = torch.rand(3, 2, 4, 4)
    t_out = TeacherOutput(FC(feats.mean((2, 3))).detach(), [feats], FC.weight)
    out = out_with([[[0.0, 0.0, 0.0]] * 3], last=spikes)
    _, parts = CKDSNN(functools.partial(pool_fc, fc=FC), nld=False)(out, torch.tensor([0, 1, 2]),
                                                                    t_out)
    assert parts["samd"] == 0.0 and parts["samd_flat"] == 1.0


def test_nld_by_hand_paper_and_code():
    z, p, n = [1.0, -0.5, 0.25], [2.0, 0.0, -1.0], [0.3, 0.1, 0.6]
    t = lambda v: torch.tensor([v])                                    # noqa: E731
    paper = 4 * kl(softmax(p, 2), softmax([a + 0.1 * b for a, b in zip(z, n)], 2))
    mixed = [0.9 * a + 0.1 * b for a, b in zip(softmax(z, 2), softmax(n, 2))]
    code = 4 * kl(softmax(p, 2), mixed)
    assert nld_loss(t(p), t(z), t(n), "paper", 0.1).item() == pytest.approx(paper, rel=1e-5)
    assert nld_loss(t(p), t(z), t(n), "code", 0.1).item() == pytest.approx(code, rel=1e-5)


def test_nld_noise_statistics():
    """paper: n ~ N(mean_k z, std_k(z)^2); code (the reference): scale std_k(z)^2, not std."""
    torch.manual_seed(0)
    z = torch.randn(2, 20000) * torch.tensor([[1.5], [3.0]]) + torch.tensor([[2.0], [-1.0]])
    for mode, scale in (("paper", z.std(1)), ("code", z.std(1) ** 2)):
        n = gaussian_like(z, mode)
        torch.testing.assert_close(n.mean(1), z.mean(1), atol=0.15, rtol=0)
        torch.testing.assert_close(n.std(1), scale, atol=0, rtol=0.03)


def test_nld_noise_gradient_paper_detached_code_not():
    z = torch.randn(3, 10, requires_grad=True)
    assert not gaussian_like(z, "paper").requires_grad
    n = gaussian_like(z, "code")
    n.sum().backward()                                                 # through mean and std^2
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_ckd_switches_remove_terms():
    torch.manual_seed(0)
    spikes = (torch.rand(2, 1, 2, 2, 2) < 0.5).float()
    t_out = TeacherOutput(FC(FEATS.mean((2, 3))).detach(), [FEATS], FC.weight)
    y = torch.tensor([2])
    head = functools.partial(pool_fc, fc=FC)

    def run(**kw):
        torch.manual_seed(1)
        return CKDSNN(head, **kw)(out_with([[[0.5, 0.0, -0.5]]], last=spikes), y, t_out)

    ce_only, parts = run(samd=False, nld=False)
    assert set(parts) == {"ce"} and ce_only.item() == pytest.approx(ce([0.5, 0.0, -0.5], 2))
    samd_only, parts = run(nld=False)
    assert set(parts) == {"ce", "samd", "samd_flat"}
    nld_only, parts = run(samd=False)
    assert set(parts) == {"ce", "nld"}
    both, parts = run()
    assert both.item() == pytest.approx(samd_only.item() + nld_only.item() - ce_only.item(),
                                        rel=1e-6)


# ---- tser --------------------------------------------------------------------------------------

def test_tser_by_hand():
    z_t, p, y = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]], [0.5, 1.5, 0.0], 1
    a, g, tau = 0.7, 0.2, 2.0
    ent = lambda q: -sum(v * math.log(v) for v in q)                   # noqa: E731
    expected = sum(ce(z, y) + a * tau ** 2 * kl(softmax(p, tau), softmax(z, tau))
                   - g * ent(softmax(z, tau)) for z in z_t) / 2
    out = out_with([[z] for z in z_t])
    loss, _ = TSER(a, g, tau)(out, torch.tensor([y]), TeacherOutput(torch.tensor([p]), [], None))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_tser_gamma_sign_rewards_entropy_and_refuses_negative():
    """docs/kd.md: L includes -g*H with g >= 0, so raising the per-step entropy lowers the loss;
    --tser-gamma refuses a negative weight, and 0 drops the term."""
    assert parse(["--tser-gamma", "0"]).tser_gamma == 0.0
    with pytest.raises(SystemExit):
        parse(["--tser-gamma", "-0.1"])
    y, p = torch.tensor([0]), TeacherOutput(torch.tensor([[0.0, 0.0]]), [], None)
    z = torch.tensor([[[1.0, 0.0]]], requires_grad=True)             # (T=1, B=1, K=2)
    loss, parts = TSER(alpha=0.0, gamma=0.5, tau=1.0)(StudentOutput(logits_t=z), y, p)
    no_ent, _ = TSER(alpha=0.0, gamma=0.0, tau=1.0)(StudentOutput(logits_t=z), y, p)
    assert loss.item() == pytest.approx(no_ent.item() - 0.5 * parts["entropy"], rel=1e-6)
    assert parts["entropy"] > 0 and loss.item() < no_ent.item()


# ---- esd ---------------------------------------------------------------------------------------

def test_reliable_teacher_by_hand():
    exits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]],       # (E=2, B=3, K=2)
                          [[3.0, 1.0], [0.0, 2.0], [0.0, 1.0]]])
    teacher, mask = reliable_teacher(exits, torch.tensor([0, 0, 1]))
    # sample 0: both exits right -> mean; sample 1: none right -> masked; sample 2: exit 2 only
    assert mask.tolist() == [True, False, True]
    assert teacher[0].tolist() == [2.5, 0.5] and teacher[2].tolist() == [0.0, 1.0]


def test_esd_loss_by_hand():
    """KL averaged over the reliable samples only (sample 2 has no correct exit)."""
    loss_fn = ESD({"lif1": (2,)}, num_classes=2, beta=0.3, tau=3.0)
    loss_fn.branches[0] = nn.Identity()                                # the branch returns the rate
    rates = torch.tensor([[0.5, 0.0], [0.0, 1.0], [1.0, 0.0]])         # branch logits, B=3
    main = [[1.0, 0.0], [2.0, 0.0], [0.5, 0.0]]                        # main head, time mean
    out = out_with([main, main], spikes={"lif1": rates.expand(2, -1, -1)})
    y = [0, 1, 1]
    loss, parts = loss_fn(out, torch.tensor(y), None)
    exits = [rates.tolist(), main]
    # sample 0: both exits say 0 (right) -> teacher = mean; sample 1: branch right only;
    # sample 2: no exit right -> no teacher, no KL, and not counted in the KL's mean
    teachers = [[0.75, 0.0], [0.0, 1.0]]
    ce_sum = sum(ce(e[b], y[b]) for e in exits for b in range(3)) / 3
    kd = sum(9 * kl(softmax(teachers[b], 3), softmax(e[b], 3)) for e in exits for b in range(2)) / 2
    assert parts["ce"] == pytest.approx(ce_sum, rel=1e-6)
    assert parts["reliable"] == pytest.approx(2 / 3)
    assert loss.item() == pytest.approx((ce_sum + 0.3 * kd) / 2, rel=1e-6)


def test_esd_no_reliable_sample_gives_no_kl():
    loss_fn = ESD({"lif1": (2,)}, num_classes=2)
    loss_fn.branches[0] = nn.Identity()
    rates = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = out_with([rates.tolist()], spikes={"lif1": rates.expand(1, -1, -1)})
    loss, parts = loss_fn(out, torch.tensor([1, 0]), None)              # every exit wrong
    assert torch.isfinite(loss) and parts["self_kd"] == 0.0 and parts["reliable"] == 0.0


def test_esd_branches_on_student_stages():
    """The reference's branch depths: the k-th of K spatial stages gets K - k + 1 stride-2 blocks
    doubling the channels, so all branches end at the same width (and 1/2^blocks the size)."""
    from train.losses.esd import DownBlock
    loss_fn = build_loss("esd", parse(), SpikingCNN(), None)           # lif1 16x14x14, lif2 32x7x7
    assert loss_fn.names == ["lif1", "lif2"]
    blocks = [[m for m in b if isinstance(m, DownBlock)] for b in loss_fn.branches]
    assert [len(b) for b in blocks] == [2, 1]
    assert [b[-1].shortcut[0].out_channels for b in blocks] == [64, 64]
    dw = blocks[0][0].body[0]
    assert dw.groups == 16 and dw.stride == (2, 2)
    assert loss_fn.branches[0](torch.rand(2, 16, 14, 14)).shape == (2, 10)
    resnet = build_loss("esd", parse(), SpikingResNet(in_shape=(3, 16, 16), widths=(8, 16, 32)),
                        None)
    assert [sum(isinstance(m, DownBlock) for m in b) for b in resnet.branches] == [3, 2, 1]
    dense = build_loss("esd", parse(), SpikingCNN(channels=(8,), kernels=(5,), strides=(2,),
                                                  hidden=(32, 16)), None)
    assert dense.names == ["lif1", "lif2"] and isinstance(dense.branches[1][0], nn.Linear)
    assert sum(isinstance(m, DownBlock) for m in dense.branches[0]) == 1
