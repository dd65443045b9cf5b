"""The student's Loihi constraints (8-bit weights, integer thresholds, 12-bit decays, reset to zero),
its outputs, rebuilding it from its arch, and checkpoints (round trip, every kind of bad file)."""
import copy
import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from train.checkpoint import (FORMAT, VERSION, CheckpointError, atomic_write, load_checkpoint,
                              load_model, save_checkpoint)
from train.data import DatasetInfo
from train.layers import QuantConv2d, QuantLinear
from train.models import (SmallCNN, SpikingBlock, SpikingCNN, SpikingResNet, StudentOutput,
                          arch_of, build_model, default_arch, identity_int)
from train.neurons import LoihiCUBA
from common.loihi import DECAY_UNITY as DECAY_SCALE, WEIGHT_MAX, WEIGHT_MIN

T, B = 3, 4


def small_scnn():
    return SpikingCNN(in_shape=(1, 8, 8), num_classes=10, channels=(4, 8), kernels=(3, 3),
                      strides=(1, 2), hidden=(16,))


def small_sresnet():
    return SpikingResNet(in_shape=(3, 8, 8), num_classes=5, widths=(4, 8), blocks=(1, 1))


STUDENTS = [pytest.param(small_scnn, id="scnn"), pytest.param(small_sresnet, id="sresnet")]


def spikes_for(model, seed=0):
    shape = model.config["in_shape"]
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, *shape, generator=g) < 0.5).float()


def synapses(model):
    return [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def neurons(model):
    return [m for m in model.modules() if isinstance(m, LoihiCUBA)]


def is_int(t):
    return torch.equal(t, torch.round(t))


def on_grid_copy(model):
    """The same model with its float shadow weights replaced by exactly step * int8."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for m in synapses(twin):
            m.weight.copy_(m.int_weight().to(m.weight.dtype) * m.weight_step)
    return twin


# ---- Loihi constraints -------------------------------------------------------------------------

@pytest.mark.parametrize("build", STUDENTS)
def test_weights_stay_on_the_8bit_grid_after_optimiser_steps(build):
    torch.manual_seed(0)
    model = build()
    # push one weight far off the int8 range: the grid clamps it to 127 / -128
    first = synapses(model)[0]
    with torch.no_grad():
        first.weight.view(-1)[0] = 10.0
        first.weight.view(-1)[1] = -10.0
    opt = torch.optim.Adam(model.parameters(), lr=0.05)  # big steps: lands anywhere off the grid
    x = spikes_for(model)
    y = torch.arange(B) % model.config["num_classes"]
    for _ in range(3):
        loss = F.cross_entropy(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert synapses(model)[-1].weight.grad.abs().sum() > 0  # the step did move the weights
    for m in synapses(model):
        k = m.quantized_weight() / m.weight_step
        assert is_int(k), m
        assert k.min() >= WEIGHT_MIN and k.max() <= WEIGHT_MAX, m
        assert torch.equal(k.to(torch.int64), m.int_weight())
        assert m.int_weight().dtype == torch.int64
    k = first.quantized_weight().detach() / first.weight_step
    assert k.view(-1)[0] == WEIGHT_MAX and k.view(-1)[1] == WEIGHT_MIN
    # what the network computes is the network with explicit step * int8 weights
    with torch.no_grad():
        out, ref = model(x), on_grid_copy(model)(x)
    assert torch.equal(out.logits_t, ref.logits_t)
    for name in out.spikes:
        assert torch.equal(out.spikes[name], ref.spikes[name]), name


def test_quant_layers_compute_with_the_explicit_integer_weights():
    torch.manual_seed(1)
    conv, lin = QuantConv2d(2, 3, 3, stride=2, padding=1, weight_step=1 / 32), QuantLinear(12, 5)
    with torch.no_grad():
        conv.weight.mul_(7.3)
        lin.weight.mul_(11.1)
    x = torch.rand(2, 2, 5, 5)
    wc = conv.int_weight().float() * conv.weight_step
    assert torch.equal(conv(x), F.conv2d(x, wc, None, 2, 1))
    v = torch.rand(2, 12)
    assert torch.equal(lin(v), F.linear(v, lin.int_weight().float() * lin.weight_step))
    # straight-through: the gradient reaches the float shadow weights
    lin(v).sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("build", STUDENTS)
def test_thresholds_and_decays_on_loihi_grids(build):
    model = build()
    assert neurons(model)
    for n in neurons(model):
        alpha, beta, theta = n.quantized()
        k = theta / n.weight_step
        assert is_int(k) and k.min() >= 1
        for keep in (alpha, beta):
            lost = DECAY_SCALE * (1 - keep)
            assert is_int(lost) and lost.min() >= 0 and lost.max() <= DECAY_SCALE
        # the stored buffers are already on the grid (what the exporter reads)
        assert torch.equal(n.alpha, alpha) and torch.equal(n.beta, beta)
        assert torch.equal(n.threshold, theta)


def test_off_grid_neuron_parameters_are_snapped():
    n = LoihiCUBA((3,), alpha=0.3, beta=0.9999, threshold=0.001, weight_step=1 / 64)
    alpha, beta, theta = n.quantized()
    assert torch.allclose(alpha, torch.full((3,), 1 - round(4096 * 0.7) / 4096))
    assert torch.allclose(beta, torch.full((3,), 1.0))  # 4096 * 0.0001 rounds to 0: no decay
    assert torch.equal(theta, torch.full((3,), 1 / 64))  # at least one weight step
    n = LoihiCUBA((1,), threshold=1.01, weight_step=1 / 64)
    assert n.quantized()[2].item() == 65 / 64


def cuba(alpha=0.5, beta=0.75, theta=1.0, shape=(1,)):
    return LoihiCUBA(shape, alpha=alpha, beta=beta, threshold=theta, weight_step=1 / 64)


U = 4096  # Loihi state units per weight unit (weight_step 1/64, << 6): syn, mem are u, v


def test_cuba_resets_voltage_to_zero_at_once_but_not_current():
    n = cuba()
    zero = torch.zeros(1)
    spk, syn, mem = n(torch.tensor([2.0]), zero, zero)
    assert spk.item() == 1.0
    assert mem.item() == 0.0  # reset in the same step, not the next one
    assert syn.item() == 2.0 * U  # current is not reset
    # next step: the kept current charges V from zero: V = 0.75*0 + (0.5*2 + 0) = 1.0 -> no spike
    spk, syn, mem = n(torch.zeros(1), syn, mem)
    assert (spk.item(), syn.item(), mem.item()) == (0.0, 1.0 * U, 1.0 * U)


def test_cuba_threshold_is_strict():
    n = cuba(theta=1.0)
    zero = torch.zeros(1)
    spk, _, mem = n(torch.tensor([1.0]), zero, zero)  # V == theta
    assert spk.item() == 0.0 and mem.item() == 1.0 * U
    spk, _, mem = n(torch.tensor([1.0 + 1 / 64]), zero, zero)
    assert spk.item() == 1.0 and mem.item() == 0.0


def test_cuba_hand_computed_trace():
    # alpha 0.5, beta 0.75, theta 1, input 0.5, 0.5, 0.25 (every product exact, so Loihi's
    # truncation changes nothing; tests/test_bit_exact.py covers the cases where it does):
    #   t1: I = 0.5,                 V = 0.5                         no spike
    #   t2: I = 0.25 + 0.5 = 0.75,   V = 0.375 + 0.75 = 1.125 > 1    spike, V -> 0
    #   t3: I = 0.375 + 0.25 = 0.625, V = 0 + 0.625 = 0.625           no spike
    n = cuba()
    syn = mem = torch.zeros(1)
    trace = []
    for x in (0.5, 0.5, 0.25):
        spk, syn, mem = n(torch.tensor([x]), syn, mem)
        trace.append((spk.item(), syn.item() / U, mem.item() / U))
    assert trace == [(0.0, 0.5, 0.5), (1.0, 0.75, 0.0), (0.0, 0.625, 0.625)]
    # run() over a (T, B, N) sequence from zero state gives the same spikes
    seq = torch.tensor([0.5, 0.5, 0.25]).reshape(3, 1, 1)
    assert cuba().run(seq).reshape(-1).tolist() == [0.0, 1.0, 0.0]


def test_cuba_alpha_zero_is_plain_lif():
    # alpha = 0: I[t] = x[t]; beta 0.5, theta 1, input 0.75 each step:
    #   V: 0.75, 0.375 + 0.75 = 1.125 -> spike, 0 ; then 0.75, 1.125 -> spike
    n = cuba(alpha=0.0, beta=0.5)
    seq = torch.full((4, 1, 1), 0.75)
    assert n.run(seq).reshape(-1).tolist() == [0.0, 1.0, 0.0, 1.0]


def test_cuba_per_channel_parameters():
    n = LoihiCUBA((2, 1, 1), threshold=1.0)
    with torch.no_grad():
        n.threshold[1] = 2.0
    x = torch.full((1, 1, 2, 1, 1), 1.5)
    assert n.run(x).reshape(-1).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("build", STUDENTS)
def test_no_biases_anywhere(build):
    model = build()
    for name, m in model.named_modules():
        assert getattr(m, "bias", None) is None, name
    assert not [k for k in model.state_dict() if "bias" in k]
    assert all(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ---- outputs and rebuilding --------------------------------------------------------------------

def test_scnn_output_shapes():
    model = small_scnn()
    out = model(spikes_for(model))
    assert isinstance(out, StudentOutput)
    assert out.logits_t.shape == (T, B, 10)
    assert torch.equal(out.logits, out.logits_t.mean(0))
    assert list(out.spikes) == ["lif1", "lif2", "lif3"]
    assert out.spikes["lif1"].shape == (T, B, 4, 8, 8)
    assert out.spikes["lif2"].shape == (T, B, 8, 4, 4)
    assert out.spikes["lif3"].shape == (T, B, 16)
    assert out.features["last"] is out.spikes["lif2"]
    for name, s in out.spikes.items():
        assert set(s.unique().tolist()) <= {0.0, 1.0}, name
        r = out.rates[name]
        assert r.shape == s.shape[1:] and r.min() >= 0 and r.max() <= 1
    assert out.rates["lif1"].mean() > 0  # the scaled init makes neurons fire


def test_sresnet_output_shapes():
    model = small_sresnet()
    out = model(spikes_for(model))
    assert out.logits_t.shape == (T, B, 5)
    assert torch.equal(out.logits, out.logits_t.mean(0))
    assert set(out.spikes) == {"stem_lif", "blocks.0.lif_a", "blocks.0.lif_b", "blocks.1.lif_a",
                               "blocks.1.lif_b", "head_lif"}
    assert out.spikes["stem_lif"].shape == (T, B, 4, 8, 8)
    assert out.spikes["blocks.1.lif_b"].shape == (T, B, 8, 4, 4)
    assert out.spikes["head_lif"].shape == (T, B, 8, 2, 2)
    assert out.features["last"] is out.spikes["blocks.1.lif_b"]
    for name, s in out.spikes.items():
        assert set(s.unique().tolist()) <= {0.0, 1.0}, name
        assert 0 <= out.rates[name].min() and out.rates[name].max() <= 1


def block_and_input(cin, cout, stride, seed=0):
    torch.manual_seed(seed)
    neuron = dict(alpha=0.5, beta=0.75, threshold=1.0, weight_step=1 / 64)
    block = SpikingBlock(cin, cout, stride, neuron, 1 / 64)
    x = (torch.rand(T, B, cin, 6, 6, generator=torch.Generator().manual_seed(seed)) < 0.4).float()
    return block, x


@pytest.mark.parametrize("cin, cout, stride", [(4, 4, 1), (4, 8, 2)])
def test_residual_block_adds_the_shortcut_to_lif_b_input_current(cin, cout, stride):
    """lif_b's input current = conv_b(s1) + shortcut(s_in), computed by hand per step from the
    integer weights: identity = weight 1 (64 steps of 1/64), else the strided 1x1 conv."""
    block, x = block_and_input(cin, cout, stride)
    spikes = {}
    out = block(x, spikes, "b")
    s1 = spikes["b.lif_a"]
    step = 1 / 64
    w_b = block.conv_b.int_weight().double() * step
    current = []
    for t in range(T):
        main = F.conv2d(s1[t].double(), w_b, padding=1)
        if block.shortcut is None:
            short = 64 * step * x[t].double()                      # identity: exactly 1.0
        else:
            w_s = block.shortcut.int_weight().double() * step
            short = F.conv2d(x[t].double(), w_s, stride=stride)
        current.append(main + short)                               # multiples of 1/64: exact
    assert torch.equal(out, block.lif_b.run(torch.stack(current).float()))
    assert (block.shortcut is None) == (cin == cout and stride == 1)


def test_residual_block_identity_shortcut_moves_lif_b():
    """With conv_b silenced, a spike into the block reaches lif_b through the shortcut alone:
    I = 1, V = 1 (not > 1), then I = 0.5 + 1, V = 0.75 + 1.5 -> spike (module LoihiCUBA trace)."""
    block, _ = block_and_input(2, 2, 1)
    with torch.no_grad():
        block.conv_b.weight.zero_()
    x = torch.zeros(3, 1, 2, 6, 6)
    x[:2, 0, 1, 3, 3] = 1                                        # two input spikes in a row
    spikes = {}
    out = block(x, spikes, "b")
    assert out[:, 0, 1, 3, 3].tolist() == [0.0, 1.0, 0.0]
    assert out.sum() == 1


def test_identity_shortcut_weight_must_fit_int8():
    assert identity_int(1 / 64) == 64 and identity_int(1 / 127) == 127 and identity_int(1.0) == 1
    for step in (1 / 128, 1 / 100.5, 2.0):
        with pytest.raises(ValueError, match="identity shortcut"):
            identity_int(step)
    neuron = dict(weight_step=1 / 128)
    SpikingBlock(4, 8, 2, neuron, 1 / 128)                # a 1x1 conv shortcut: any step
    with pytest.raises(ValueError, match="identity shortcut"):
        SpikingBlock(4, 4, 1, neuron, 1 / 128)            # weight 1.0 would be 128 steps
    with pytest.raises(ValueError, match="identity shortcut"):
        SpikingResNet(in_shape=(1, 8, 8), widths=(4,), blocks=(1,), weight_step=1 / 128)
    with pytest.raises(ValueError, match="widths"):
        SpikingResNet(widths=(4, 8), blocks=(1,))


@pytest.mark.parametrize("in_shape, name", [((1, 28, 28), "mnist5k"), ((3, 32, 32), "cifar10")])
def test_default_sresnet_shapes(in_shape, name):
    """default_arch's sresnet: stem (stride 2 for 28 px), blocks, head, readout fit together."""
    info = DatasetInfo(name, in_shape, 10)
    model = build_model(default_arch(info, student=True, name="sresnet"))
    x = (torch.rand(2, 3, *in_shape) < 0.3).float()
    out = model(x)
    assert out.logits_t.shape == (2, 3, 10)
    shapes = {k: tuple(v.shape[2:]) for k, v in out.spikes.items()}
    if in_shape[1] == 28:
        assert shapes == {"stem_lif": (16, 14, 14), "blocks.0.lif_a": (16, 14, 14),
                          "blocks.0.lif_b": (16, 14, 14), "blocks.1.lif_a": (32, 7, 7),
                          "blocks.1.lif_b": (32, 7, 7), "head_lif": (32, 4, 4)}
        assert model.readout.in_features == 32 * 4 * 4
    else:
        assert shapes["stem_lif"] == (64, 32, 32) and shapes["head_lif"] == (256, 4, 4)
        assert model.readout.in_features == 256 * 4 * 4
    assert out.features["last"] is out.spikes[f"blocks.{len(model.blocks) - 1}.lif_b"]


def test_readout_is_a_time_mean_of_linear_per_step_logits():
    model = small_scnn()
    out = model(spikes_for(model))
    w = model.layers["readout"].quantized_weight()
    per_step = torch.stack([F.linear(s, w) for s in out.spikes["lif3"]])
    assert torch.allclose(out.logits_t, per_step)


@pytest.mark.parametrize("build", STUDENTS)
def test_build_model_arch_of_round_trip(build):
    torch.manual_seed(3)
    model = build()
    arch = arch_of(model)
    assert arch["name"] == ("scnn" if isinstance(model, SpikingCNN) else "sresnet")
    twin = build_model(copy.deepcopy(arch))
    assert type(twin) is type(model) and twin.config == model.config
    assert arch_of(twin) == arch
    twin.load_state_dict(model.state_dict())
    x = spikes_for(model)
    assert torch.equal(twin(x).logits_t, model(x).logits_t)


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model({"name": "vgg", "config": {}})


# ---- checkpoints -------------------------------------------------------------------------------

ENC = {"kind": "rate", "timesteps": T, "seed": 0}


@pytest.fixture
def student_ckpt(tmp_path):
    torch.manual_seed(5)
    model = small_scnn()
    path = tmp_path / "student.pt"
    save_checkpoint(path, model, "student", encoding=ENC, epoch=1, history=[{"epoch": 1}])
    return model, path


def _raises(path, kind=None, loader=load_checkpoint):
    with pytest.raises(CheckpointError) as e:
        loader(path, kind)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, repr(msg)
    return msg


def test_checkpoint_round_trip(student_ckpt):
    model, path = student_ckpt
    loaded, ckpt = load_model(path, "student")
    assert not loaded.training
    assert ckpt["format"] == FORMAT and ckpt["version"] == VERSION and ckpt["kind"] == "student"
    assert ckpt["encoding"] == ENC and ckpt["epoch"] == 1 and ckpt["history"] == [{"epoch": 1}]
    assert ckpt["arch"] == arch_of(model)
    x = spikes_for(model)
    model.eval()
    a, b = model(x), loaded(x)
    assert torch.equal(a.logits_t, b.logits_t)
    for name in a.spikes:
        assert torch.equal(a.spikes[name], b.spikes[name])
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert load_checkpoint(path)["kind"] == "student"  # kind=None accepts any kind


def test_teacher_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    teacher = SmallCNN(in_shape=(1, 8, 8), channels=(4, 8, 8)).eval()
    save_checkpoint(tmp_path / "t.pt", teacher, "teacher", test_accuracy=0.5)
    loaded, ckpt = load_model(tmp_path / "t.pt", "teacher")
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(teacher(x), loaded(x)) and ckpt["test_accuracy"] == 0.5


def test_checkpoint_missing_file(tmp_path):
    msg = _raises(tmp_path / "nope.pt", "student")
    assert "not found" in msg
    _raises(tmp_path / "nope.pt", "student", loader=load_model)
    _raises(tmp_path, None)  # a directory is not a checkpoint file either


def test_checkpoint_truncated_file(student_ckpt):
    _, path = student_ckpt
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    _raises(path, "student")
    _raises(path, "student", loader=load_model)
    path.write_bytes(b"")
    _raises(path, None)


def test_checkpoint_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(os.urandom(4096))
    _raises(path, "teacher")


@pytest.mark.parametrize("payload", [
    pytest.param(lambda: {"state_dict": {}, "epoch": 3}, id="plain-dict"),
    pytest.param(lambda: torch.randn(4, 4), id="tensor"),
    pytest.param(lambda: SmallCNN(in_shape=(1, 8, 8), channels=(2, 2, 2)).state_dict(),
                 id="bare-state-dict"),
    pytest.param(lambda: [1, 2, 3], id="list"),
])
def test_checkpoint_foreign_file(tmp_path, payload):
    path = tmp_path / "foreign.pt"
    torch.save(payload(), path)
    msg = _raises(path, "student")
    assert "foreign" in msg or FORMAT in msg
    _raises(path, "student", loader=load_model)


def test_checkpoint_wrong_kind(student_ckpt):
    _, path = student_ckpt
    msg = _raises(path, "teacher")
    assert "student" in msg and "teacher" in msg
    _raises(path, "teacher", loader=load_model)


def test_checkpoint_wrong_version_and_missing_fields(student_ckpt):
    _, path = student_ckpt
    ckpt = torch.load(path, weights_only=False)
    torch.save({**ckpt, "version": VERSION + 1}, path)
    assert "version" in _raises(path, "student")
    torch.save({k: v for k, v in ckpt.items() if k != "arch"}, path)
    assert "arch" in _raises(path, "student")
    torch.save({k: v for k, v in ckpt.items() if k != "state_dict"}, path)
    assert "state_dict" in _raises(path, "student")


def test_checkpoint_that_does_not_fit_its_arch(student_ckpt):
    _, path = student_ckpt
    ckpt = torch.load(path, weights_only=False)
    ckpt["arch"]["config"]["hidden"] = (32,)  # weights no longer fit
    torch.save(ckpt, path)
    assert "rebuild" in _raises(path, "student", loader=load_model)
    ckpt["arch"] = {"name": "vgg", "config": {}}
    torch.save(ckpt, path)
    _raises(path, "student", loader=load_model)
    ckpt["arch"] = {"name": "scnn", "config": {"no_such_option": 1}}
    torch.save(ckpt, path)
    _raises(path, "student", loader=load_model)


def test_atomic_write_success_leaves_only_the_target(tmp_path):
    target = tmp_path / "sub" / "out.txt"  # parent is created
    atomic_write(target, lambda tmp: open(tmp, "w").write("hello"))
    assert target.read_text() == "hello"
    assert os.listdir(target.parent) == ["out.txt"]
    assert (target.stat().st_mode & 0o777) == 0o644
    atomic_write(target, lambda tmp: open(tmp, "w").write("again"))  # replaces
    assert target.read_text() == "again" and os.listdir(target.parent) == ["out.txt"]


def test_atomic_write_failure_keeps_the_old_target_and_no_temp_files(tmp_path):
    target = tmp_path / "out.bin"

    def half_then_fail(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of it")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert os.listdir(tmp_path) == []  # no target, no temp file
    target.write_bytes(b"old complete content")
    with pytest.raises(OSError):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old complete content"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_save_checkpoint_failure_keeps_the_previous_checkpoint(student_ckpt, monkeypatch):
    model, path = student_ckpt
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")  # save_checkpoint hands torch.save an open file
        raise KeyboardInterrupt  # interrupted mid-write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, "student", encoding=ENC, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["student.pt"]
    assert load_checkpoint(path, "student")["epoch"] == 1
