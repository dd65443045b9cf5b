"""Rate-based backprop: the spiking forward's values, the stated gradient, memory flat in T."""
import math

import pytest
import torch

from train.models import SpikingCNN, SpikingResNet
from train.ratebp import autograd_saved_bytes, rate_forward


def _scaled(model, factor):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    return model


@pytest.mark.parametrize("build,shape", [
    (lambda: SpikingCNN(), (1, 28, 28)),
    (lambda: SpikingResNet(in_shape=(3, 16, 16), widths=(8, 16, 16)), (3, 16, 16)),
])
def test_values_match_spiking_forward(build, shape):
    torch.manual_seed(0)
    model = _scaled(build(), 3.0)  # enough input to make every layer fire
    x = (torch.rand(5, 3, *shape) < 0.4).float()
    ref, out = model(x), rate_forward(model, x)
    assert torch.equal(out.logits_t, ref.logits_t)
    assert out.spikes.keys() == ref.spikes.keys()
    for name, rate in ref.rates.items():
        assert rate.mean() > 0, name
        torch.testing.assert_close(out.rates[name], rate)
    assert out.features["last"].shape == ref.features["last"].shape
    torch.testing.assert_close(out.features["last"].sum(0), ref.features["last"].sum(0))


def test_gradient_matches_hand_derivation():
    """One 1x1-conv channel pair + CUBA layer + readout; gradients from the formulas by hand."""
    torch.manual_seed(1)
    model = SpikingCNN(in_shape=(1, 2, 2), num_classes=3, channels=(2,), kernels=(1,), strides=(1,),
                       hidden=())
    w = [0.75, 1.25]                                   # on the 1/64 weight grid
    with torch.no_grad():
        model.layers["conv1"].weight.copy_(torch.tensor(w).view(2, 1, 1, 1))
        model.layers["readout"].weight.copy_(torch.randint(-32, 32, (3, 8)) / 64)
    x = torch.rand(6, 1, 1, 2, 2)                      # T=6, B=1, analog input
    c = torch.tensor([0.3, -1.0, 2.0])
    out = rate_forward(model, x)
    (out.logits * c).sum().backward()

    alpha, beta, theta, T = 0.5, 0.75, 1.0, 6
    unit = (1 / 64) / 64                               # Loihi state unit: weight_step / 2^6
    readout = model.layers["readout"].weight.detach()
    rates, elig = [], []
    for ch in range(2):
        for pix in range(4):
            i = v = g = f = 0.0
            spikes = e = 0.0
            for t in range(T):
                cur = (torch.tensor(w[ch]) * x[t, 0, 0].flatten()[pix]).item()  # float32 conv
                i = math.trunc(alpha * i) + round(cur / unit)   # Loihi's integer state
                v = math.trunc(beta * v) + i
                g = 1 + alpha * g
                f = g + beta * f
                u = (v - theta / unit) * unit
                e += f / (1 + (math.pi * u) ** 2) / T  # atan surrogate: 1 / (1 + (pi u)^2)
                s = float(u > 0)
                spikes += s / T
                v *= 1 - s
                f *= 1 - s                             # the reset clears V's dependence on x
            rates.append(spikes)
            elig.append(e)
    rates, elig = torch.tensor(rates), torch.tensor(elig)
    assert 0 < rates.mean() < 1                         # some neurons fire, so the reset matters
    dl_dr = readout.T @ c                               # (8,): channel-major like Flatten
    mean_x = x.mean(0).flatten()
    expect_w = torch.stack([(dl_dr[4 * ch:4 * ch + 4] * elig[4 * ch:4 * ch + 4] * mean_x).sum()
                            for ch in range(2)])
    torch.testing.assert_close(model.layers["conv1"].weight.grad.flatten(), expect_w)
    torch.testing.assert_close(model.layers["readout"].weight.grad, c[:, None] * rates[None, :])


def test_equals_bptt_for_constant_input_without_spikes():
    """One spiking layer, no reset and a constant input: the rate gradient is the BPTT gradient.

    (With more spiking layers BPTT's dL/ds_t varies with t and the rate gradient approximates it.)
    """
    torch.manual_seed(2)
    model = _scaled(SpikingCNN(in_shape=(1, 8, 8), channels=(4,), kernels=(3,), strides=(1,),
                               hidden=()), 0.05)  # small enough that nothing spikes
    x = torch.rand(1, 4, 1, 8, 8).expand(6, -1, -1, -1, -1).contiguous()
    y = torch.tensor([0, 1, 2, 3])
    grads = []
    conv = model.layers["conv1"].weight
    for forward in (model, lambda inp: rate_forward(model, inp)):
        model.zero_grad()
        out = forward(x)
        assert all(s.sum() == 0 for s in out.spikes.values())
        torch.nn.functional.cross_entropy(out.logits, y).backward()
        grads.append(conv.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-9)


def test_equals_bptt_for_constant_input_with_spikes():
    """One spiking layer and a constant input: exact, spikes and resets included, because the
    trace f_t = g_t + beta (1 - s_{t-1}) f_{t-1} is what BPTT computes through the (detached)
    hard reset. The reset-free trace f_t = g_t + beta f_{t-1} fails this test."""
    torch.manual_seed(2)
    model = SpikingCNN(in_shape=(1, 8, 8), channels=(4,), kernels=(3,), strides=(1,), hidden=())
    x = torch.rand(1, 16, 1, 8, 8).expand(8, -1, -1, -1, -1).contiguous()
    y = torch.arange(16) % 10
    grads = []
    conv = model.layers["conv1"].weight
    for forward in (model, lambda inp: rate_forward(model, inp)):
        model.zero_grad()
        out = forward(x)
        rate = out.rates["lif1"].mean().item()
        assert 0.1 < rate < 0.9, rate                 # spiking, and resetting, in earnest
        torch.nn.functional.cross_entropy(out.logits, y).backward()
        grads.append(conv.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1])
def test_close_to_bptt_on_the_digits_student(seed):
    """The default digits student (3 spiking layers), direct input, T = 8, a batch of real digits:
    per weight layer cosine(rate, BPTT) >= 0.95 and norm ratio within 1.5x. (Measured: conv1
    1.25-1.41x, conv2 1.15x; the reset-free trace gave conv1 4.5-6x, conv2 2.7-3x. At T = 4 conv1
    comes to 1.24-1.64x: rate backprop weighs every step's spike alike, BPTT weighs late ones less.)
    """
    from train.data import load_dataset
    from train.models import build_model, default_arch
    train, _, info = load_dataset("digits")
    images, labels = train.base.tensors
    torch.manual_seed(seed)
    model = build_model(default_arch(info, student=True))
    idx = torch.randperm(len(images))[:128]
    x, y = images[idx].expand(8, -1, -1, -1, -1).contiguous(), labels[idx]
    grads = []
    for forward in (model, lambda inp: rate_forward(model, inp)):
        model.zero_grad()
        out = forward(x)
        assert all(r.mean() > 0.05 for r in out.rates.values())
        torch.nn.functional.cross_entropy(out.logits, y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.dim() > 1})
    bptt, rate = grads
    for name in bptt:
        cos = torch.nn.functional.cosine_similarity(bptt[name].flatten(), rate[name].flatten(), 0)
        ratio = (rate[name].norm() / bptt[name].norm()).item()
        assert cos >= 0.95, (name, cos)
        assert 1 / 1.5 <= ratio <= 1.5, (name, ratio)


def test_autograd_memory_does_not_grow_with_timesteps():
    torch.manual_seed(3)
    model = SpikingCNN()
    y = torch.arange(16) % 10

    def saved(forward, steps):
        x = (torch.rand(steps, 16, 1, 28, 28) < 0.3).float()
        return autograd_saved_bytes(
            lambda: torch.nn.functional.cross_entropy(forward(x).logits, y))[1]

    rate = [saved(lambda x: rate_forward(model, x), t) for t in (2, 16)]
    bptt = [saved(model, t) for t in (2, 16)]
    assert rate[0] == rate[1]
    assert bptt[1] > 4 * bptt[0]


def test_per_step_losses_reach_the_rate_pass():
    """logits_t carry the rate pass's gradient: sum_t z_t has T times the gradient of mean_t z_t."""
    torch.manual_seed(4)
    model = _scaled(SpikingCNN(), 3.0)
    x = (torch.rand(4, 2, 1, 28, 28) < 0.4).float()
    rate_forward(model, x).logits_t.sum().backward()
    per_step = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (4 * rate_forward(model, x).logits.sum()).backward()
    for a, b in zip(per_step, model.parameters()):
        torch.testing.assert_close(a, b.grad)


def test_rejects_other_models():
    with pytest.raises(TypeError, match="SpikingCNN and SpikingResNet"):
        rate_forward(torch.nn.Linear(2, 2), torch.zeros(2, 1, 2))
