"""The seed papers' size in Lava (issue 19): a residual student on 32x32x3 inputs at T = 4 whose
relays carry 128 channels (Lava's Conv holds `groups` as int8, docs/loihi_net.md) runs in Lava
exactly as the emulator and the float student compute it: every spike of every group."""
import importlib.util

import numpy as np
import pytest
import torch

from deploy.compile import build_net, write
from export.to_nir import student_to_nir
from hwmodels.loihi import Emulator
from train.models import build_model

HAS_LAVA = importlib.util.find_spec("lava") is not None
lava = pytest.mark.skipif(not HAS_LAVA, reason="lava-nc / lava-dl not installed")


def resnet_32px(widths, blocks, seed=0):
    torch.manual_seed(seed)
    model = build_model({"name": "sresnet", "config": dict(
        in_shape=(3, 32, 32), num_classes=10, widths=widths, blocks=blocks)}).eval()
    net, _ = build_net(student_to_nir(model), timesteps=4)
    return model, net


def spikes(n, seed=0):
    return (np.random.default_rng(seed).random((n, 4, 3, 32, 32)) < 0.2).astype(np.int64)


def test_float_student_equals_emulator_at_32px():
    model, net = resnet_32px((32, 128), (1, 1))
    x = spikes(4)
    emu = Emulator(net).run(torch.from_numpy(x))
    with torch.no_grad():
        out = model(torch.from_numpy(x).float().transpose(0, 1))
    assert set(out.spikes) <= set(emu.spikes)
    for name, s in out.spikes.items():
        assert torch.equal(s.transpose(0, 1).bool(), emu.spikes[name]), name
    assert torch.equal(out.logits_t.sum(0).argmax(-1), emu.predictions)


@lava
def test_relays_of_128_channels_at_32px_equal_in_lava(tmp_path):
    """sresnet (128,) x (1,): its identity shortcut is relayed by a depthwise conv of 128 groups
    on a 128x32x32 map; before lava_run.lava_conv_groups Lava dropped that current."""
    from deploy.lava_run import preload, run_lava
    preload()
    _, net = resnet_32px((128,), (1,))
    relays = [s for s in net.synapses if s.kind == "conv" and s.groups == 128]
    assert relays, "the test needs a 128-group relay"
    path = tmp_path / "student.net"
    write(path, net, 4)
    x = spikes(1, seed=1)
    emu = Emulator(net).run(torch.from_numpy(x))
    got = run_lava(path, x, net, progress=False)
    assert all(emu.spikes[k].any() for k in emu.spikes)
    for name in emu.spikes:
        assert np.array_equal(emu.spikes[name].numpy(), got.spikes[name]), name
    assert np.array_equal(emu.readout.numpy(), got.readout)
    assert np.array_equal(emu.readout_u.numpy(), got.readout_u)
