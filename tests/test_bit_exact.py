"""The float student computes Loihi's fixed-point arithmetic (issue 13): LoihiCUBA's step against
hwmodels.loihi.neuron_step on integer inputs (truncation, wrap, clip, strict threshold), and small
trained students against the emulator of their compiled network, spike for spike."""
import pytest
import torch
from torch.nn import functional as F

from deploy.compile import build_net
from export.to_nir import student_to_nir
from hwmodels.loihi import Emulator, neuron_step
from train.models import SpikingCNN, SpikingResNet
from train.neurons import LoihiCUBA
from train.ratebp import rate_forward

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STEP = 1 / 64


def float_step(layer):
    """The pre-issue-13 float neuron (I = alpha I + x, V = beta V + I, no truncation, wrap or clip),
    kept here only to show that the cases below need Loihi's arithmetic."""
    alpha, beta, theta = (p.detach() for p in layer.quantized())

    def step(x, syn, mem, params):
        syn = alpha * syn + x
        mem = beta * mem + syn
        spk = (mem > theta).float()
        return spk, syn, mem * (1 - spk), mem - theta
    return step


# ---- (b) one neuron step against hwmodels.loihi.neuron_step --------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("i_decay,v_decay", [(2867, 410), (4096, 2048), (1, 0), (4095, 4095),
                                             (0, 4096), (1234, 17)])
def test_step_equals_loihi_neuron_step(i_decay, v_decay, device):
    g = torch.Generator().manual_seed(i_decay * 7 + v_decay)
    n = LoihiCUBA((40,), alpha=1 - i_decay / 4096, beta=1 - v_decay / 4096, threshold=3.0,
                  weight_step=STEP).to(device)
    vth = 3 * 64 << 6                                   # theta / weight_step, << 6
    steps, batch = 30, 16
    a = torch.randint(-4000, 4000, (steps, batch, 40), generator=g)
    big = torch.rand(steps, batch, 40, generator=g) < 0.05   # |a| << 6 up to 2^23: wraps, clips
    a = torch.where(big, torch.randint(-(1 << 17), 1 << 17, a.shape, generator=g), a).to(device)
    u = v = torch.zeros(batch, 40, dtype=torch.int64, device=device)
    syn = mem = torch.zeros(batch, 40, device=device)
    wrapped = clipped = spikes = 0
    for t in range(steps):
        pre = u * (4096 - i_decay) // 4096 + (a[t] << 6)   # to count wraps (sign aside)
        u, v, s = neuron_step(u, v, a[t], (i_decay, v_decay, vth, None))
        spk, syn, mem = n(a[t].float() * STEP, syn, mem)
        assert torch.equal(spk.bool(), s), t
        assert torch.equal(syn.long(), u) and torch.equal(mem.long(), v), t
        wrapped += int((pre.abs() > (1 << 23) + 4096).sum())
        clipped += int((v.abs() == (1 << 23) - 1).sum())
        spikes += int(s.sum())
    assert spikes > 0
    # fast decays keep u, v within 24 bits; every slower one wraps u / clips v here
    assert (wrapped > 0) == (i_decay < 4095) and (clipped > 0) == (v_decay < 4095)


def test_threshold_is_strict_and_reset_is_same_step():
    n = LoihiCUBA((2,), alpha=0.5, beta=0.75, threshold=1.0, weight_step=STEP)
    zero = torch.zeros(2)
    spk, syn, mem = n(torch.tensor([1.0, 1.0 + STEP]), zero, zero)   # v == vth, v == vth + 64
    assert spk.tolist() == [0.0, 1.0]
    assert mem.tolist() == [4096.0, 0.0] and syn.tolist() == [4096.0, 4160.0]


def test_truncation_toward_zero_for_both_signs():
    # iDecay 2048 (alpha 0.5): u = +-3 -> +-1 (not +-1.5, not -2); vDecay 0 keeps v
    n = LoihiCUBA((2,), alpha=0.5, beta=1.0, threshold=100.0, weight_step=STEP)
    syn = torch.tensor([3.0, -3.0])
    _, syn, mem = n(torch.zeros(2), syn, torch.zeros(2))
    assert syn.tolist() == [1.0, -1.0] and mem.tolist() == [1.0, -1.0]
    u, v, _ = neuron_step(torch.tensor([3, -3]), torch.zeros(2, dtype=torch.int64),
                          torch.zeros(2, dtype=torch.int64), (2048, 0, 100 * 64 << 6, None))
    assert u.tolist() == [1, -1] and v.tolist() == [1, -1]


def test_straight_through_gradients():
    """du/dx = 1/unit, dv/du = 1, decays alpha and beta; the spike's surrogate sees V - theta in
    weight units, so dS/dx is the old float recursion's."""
    n = LoihiCUBA((1,), alpha=0.5, beta=0.75, threshold=1.0, weight_step=STEP)
    x = torch.tensor([0.3], requires_grad=True)
    syn0 = torch.tensor([1001.0], requires_grad=True)
    mem0 = torch.tensor([-77.0], requires_grad=True)
    spk, syn, mem, shifted = n.step(x, syn0, mem0, n.step_params())
    (syn + 2 * mem).sum().backward(retain_graph=True)
    assert x.grad.item() == pytest.approx(3 / n.unit)
    assert syn0.grad.item() == pytest.approx(3 * 0.5) and mem0.grad.item() == pytest.approx(
        2 * 0.75 * (1 - spk.item()))
    x.grad = None
    spk.sum().backward()
    u = shifted.item()                                   # atan surrogate: 1 / (1 + (pi u)^2)
    assert x.grad.item() == pytest.approx(1 / (1 + (torch.pi * u) ** 2), rel=1e-5)


# ---- (a) trained students against the emulator of their compiled network -----------------------

def tiny_scnn():
    return SpikingCNN(in_shape=(1, 10, 10), num_classes=5, channels=(6, 8), kernels=(3, 3),
                      strides=(1, 2), hidden=(24,), alpha=0.3, beta=0.9)


def tiny_sresnet():
    return SpikingResNet(in_shape=(1, 10, 10), num_classes=5, widths=(4, 8), blocks=(1, 1),
                         alpha=0.3, beta=0.9)


def trained(build, seed):
    """A few Adam steps, BPTT and rate-based, so the weights leave their initialisation."""
    torch.manual_seed(seed)
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    x = (torch.rand(8, 16, 1, 10, 10) < 0.3).float()
    y = torch.arange(16) % 5
    for forward in (model, model, lambda inp: rate_forward(model, inp)):
        opt.zero_grad()
        F.cross_entropy(forward(x).logits, y).backward()
        opt.step()
    return model.eval()


def mismatches(out, result):
    return {k: int((out.spikes[k].transpose(0, 1).bool() != result.spikes[k]).sum())
            for k in out.spikes}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("build", [tiny_scnn, tiny_sresnet], ids=["scnn", "sresnet"])
def test_trained_student_equals_emulator_on_every_spike(build, device, monkeypatch):
    model = trained(build, seed=0)
    net, _ = build_net(student_to_nir(model))
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(24, 48, 1, 10, 10, generator=g) < 0.35).float()    # (T, B, ...), T = 24
    result = Emulator(net).run(x.transpose(0, 1))                      # on CPU
    with torch.no_grad():
        out = model.to(device)(x.to(device))
    out.spikes = {k: s.cpu() for k, s in out.spikes.items()}
    out.logits_t = out.logits_t.cpu()
    model.cpu()                                        # the float-neuron check below on CPU
    assert set(out.spikes) <= set(result.spikes)        # the emulator adds relay groups
    total = sum(int(s.sum()) for s in out.spikes.values())
    assert total > 5000 and all(s.sum() > 0 for s in out.spikes.values())
    assert mismatches(out, result) == {k: 0 for k in out.spikes}
    assert torch.equal(out.logits.argmax(-1), result.predictions)
    # readout: the integrator's final v (Loihi units) is the summed logits / unit
    unit = STEP / 64
    assert torch.equal(torch.round(out.logits_t.sum(0) / unit).long(), result.readout[:, -1])
    # the same inputs through the pre-issue-13 float neuron disagree with Loihi
    for layer in (m for m in model.modules() if isinstance(m, LoihiCUBA)):
        monkeypatch.setattr(layer, "step", float_step(layer))
    with torch.no_grad():
        old = model(x)
    assert sum(mismatches(old, result).values()) > 0
