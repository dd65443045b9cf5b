"""Energy model: SynOps and MAC counts against hand counts, energy arithmetic, core mapping, and an
end-to-end report from a hand-written netx HDF5 file."""
import json

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hwmodels.energy import (EnergyError, Layer, Tally, build_report, count_macs, main, read_netx,
                             write_report)
from hwmodels.profiles import PROFILES, ann_energy
from hwmodels.resources import CoreLimits, chip_usage, layer_cores

PJ = 1e-12

# conv 1 -> 2 channels, 3x3 kernel, stride 2, padding 1 on a 5x5 input: 3x3 outputs per channel.
# Along one axis, output o covers inputs 2o-1 .. 2o+1, so input y is reached by
#   y=0: o=0;  y=1: o=0,1;  y=2: o=1;  y=3: o=1,2;  y=4: o=2   -> counts 1 2 1 2 1
# and the fan-out of pixel (y, x) is 2 channels * count(y) * count(x).
HAND_FANOUT = 2 * torch.tensor([[1, 2, 1, 2, 1],
                                [2, 4, 2, 4, 2],
                                [1, 2, 1, 2, 1],
                                [2, 4, 2, 4, 2],
                                [1, 2, 1, 2, 1]])
CONV = Layer("conv1", "conv", (1, 5, 5), (2, 3, 3), (2, 1, 3, 3), True, (2, 2), (1, 1))
DENSE = Layer("dense2", "dense", (18,), (4,), (4, 18), True)
READOUT = Layer("dense3", "dense", (4,), (3,), (3, 4), False, nodes=("readout", "integrator"))


def input_spikes():
    """One sample, T = 2: step 0 spikes at (0,0) and (1,1); step 1 at (1,1) and (4,4)."""
    x = torch.zeros(1, 2, 1, 5, 5)
    x[0, 0, 0, 0, 0] = x[0, 0, 0, 1, 1] = x[0, 1, 0, 1, 1] = x[0, 1, 0, 4, 4] = 1
    return x


HAND_CONV_SYNOPS = 2 * (1 + 4 + 4 + 1)  # fan-outs of (0,0), (1,1), (1,1), (4,4)


def test_conv_fanout_matches_hand_count():
    assert torch.equal(CONV.fanout(), HAND_FANOUT[None])
    assert int(CONV.fanout().sum()) == 2 * 7 * 7  # 9 taps per axis, 2 fall on the padding


@pytest.mark.parametrize("cfg", [dict(cin=4, cout=6, k=3, s=2, p=1, d=1, g=2, h=9, w=7),
                                 dict(cin=3, cout=3, k=3, s=1, p=2, d=2, g=3, h=6, w=6),
                                 dict(cin=2, cout=5, k=4, s=3, p=0, d=1, g=1, h=11, w=8)])
def test_conv_fanout_matches_autograd(cfg):
    """d(sum of a conv with all-ones weights)/d(input) counts the neurons each input reaches."""
    weight = (cfg["cout"], cfg["cin"] // cfg["g"], cfg["k"], cfg["k"])
    x = torch.zeros(1, cfg["cin"], cfg["h"], cfg["w"], dtype=torch.float64, requires_grad=True)
    y = F.conv2d(x, torch.ones(weight, dtype=torch.float64), None, cfg["s"], cfg["p"], cfg["d"],
                 cfg["g"])
    y.sum().backward()
    layer = Layer("c", "conv", (cfg["cin"], cfg["h"], cfg["w"]), tuple(y.shape[1:]), weight, True,
                  (cfg["s"],) * 2, (cfg["p"],) * 2, (cfg["d"],) * 2, cfg["g"])
    assert torch.equal(layer.fanout(), x.grad[0].round().long())


def test_synops_hand_counted():
    spikes_conv = torch.zeros(1, 2, 2, 3, 3)
    spikes_conv[0, 0, 1, 2, 2] = 1                 # 1 spike at step 0
    spikes_conv[0, 1, 0, :, 0] = 1                 # 3 spikes at step 1
    spikes_dense = torch.zeros(1, 2, 4, dtype=torch.bool)
    spikes_dense[0, 1, :2] = True                  # 2 spikes
    tally = Tally([CONV, DENSE, READOUT])
    tally.add(input_spikes(), {"conv1": spikes_conv, "dense2": spikes_dense})
    conv, dense, readout = tally.layer_stats()
    assert conv["synops_per_sample"] == HAND_CONV_SYNOPS
    assert conv["input_spikes_per_sample"] == 4 and conv["spikes_per_sample"] == 4
    assert conv["neuron_updates_per_sample"] == 18 * 2
    assert conv["firing_rate"] == pytest.approx(4 / 36)
    assert dense["synops_per_sample"] == 4 * 4     # 4 input spikes, each reaching 4 neurons
    assert readout["synops_per_sample"] == 2 * 3   # 2 input spikes, each reaching 3 outputs
    assert readout["spikes_per_sample"] is None and readout["firing_rate"] is None


def test_counts_average_over_samples_and_batches():
    tally = Tally([DENSE])
    x = torch.zeros(2, 3, 18)
    x[0, :, 0] = 1                                 # sample 0: 3 spikes; sample 1: none
    tally.add(x, {"dense2": torch.zeros(2, 3, 4)})
    tally.add(x[1:], {"dense2": torch.ones(1, 3, 4)})
    stats = tally.layer_stats()[0]
    assert stats["synops_per_sample"] == 3 * 4 / 3
    assert stats["spikes_per_sample"] == 12 / 3


def test_analog_first_layer_counts_macs():
    x = torch.rand(1, 2, 1, 5, 5) + 0.1            # all non-zero
    tally = Tally([CONV], analog_input=True)
    tally.add(x, {"conv1": torch.zeros(1, 2, 2, 3, 3)})
    stats = tally.layer_stats()[0]
    assert stats["input"] == "analog"
    assert stats["macs_per_sample"] == 2 * (2 * 3 * 3 * 1 * 9)  # T x one ANN pass
    assert stats["synops_per_sample"] == 2 * 98                 # graded spikes: every input
    assert PROFILES["45nm"].layer_energy(1, stats["macs_per_sample"], 0, 0) == pytest.approx(
        324 * 4.6 * PJ)


def test_ann_macs_reference():
    conv = Layer("c", "conv", (3, 8, 8), (8, 8, 8), (8, 3, 3, 3), True, (1, 1), (1, 1))
    assert conv.ann_macs == 8 * 8 * 8 * 3 * 9
    grouped = Layer("g", "conv", (4, 8, 8), (8, 4, 4), (8, 2, 3, 3), True, (2, 2), (1, 1),
                    groups=2)
    assert grouped.ann_macs == 8 * 4 * 4 * 4 * 9 // 2
    assert DENSE.ann_macs == 18 * 4
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, 2, 1, groups=4), nn.Flatten(), nn.Linear(128, 10))
    macs = dict(count_macs(model, (3, 8, 8)))
    assert macs == {"0": 8 * 8 * 8 * 3 * 9, "3": 8 * 4 * 4 * 2 * 9, "5": 128 * 10}


def test_energy_arithmetic():
    loihi, nm45 = PROFILES["loihi"], PROFILES["45nm"]
    assert loihi.layer_energy(1000, None, 100, 10) == pytest.approx(
        (1000 * 23.6 + 10 * 81 + 90 * 52) * PJ)
    assert loihi.layer_energy(1000, 5, 100, 10) == pytest.approx(
        (1000 * 23.6 + 10 * 81 + 90 * 52) * PJ)    # Loihi: analog input as graded spikes
    assert nm45.layer_energy(1000, None, 100, 10) == pytest.approx(900 * PJ)
    assert ann_energy(1000) == pytest.approx(4600 * PJ)


def test_core_mapping():
    assert layer_cores(8192, 0) == 1 and layer_cores(8193, 0) == 2
    assert layer_cores(10, 937_501) == 2
    assert layer_cores(100, 1000, CoreLimits(neurons_per_core=30)) == 4
    assert chip_usage([100, 28])["fits"]
    usage = chip_usage([100, 29])
    assert not usage["fits"] and usage["chips"] == 2 and usage["cores_used"] == 129
    with pytest.raises(ValueError):
        CoreLimits(neurons_per_core=0)


def write_netx(path, layers):
    """A netx-style HDF5 file: layer/<i>/{type, shape, weight, stride, ...}, as lava-dl writes."""
    with h5py.File(path, "w") as f:
        for i, spec in enumerate(layers):
            g = f.create_group(f"layer/{i}")
            g.create_dataset("type", data=np.array([spec.pop("type").encode()], dtype="S10"))
            neuron = spec.pop("neuron", False)
            if "nodes" in spec:
                g.attrs["nodes"] = spec.pop("nodes")
            for key, value in spec.items():
                g.create_dataset(key, data=np.asarray(value))
            if neuron:
                n = g.create_group("neuron")
                for key, value in dict(type=b"CUBA", iDecay=2048, vDecay=1024, vThMant=64).items():
                    n.create_dataset(key, data=value)


def tiny_net(path):
    write_netx(path, [dict(type="input", shape=[1, 5, 5]),
                      dict(type="conv", shape=[2, 3, 3], weight=np.ones((2, 1, 3, 3)),
                           stride=[2, 2], padding=[1, 1], dilation=[1, 1], groups=1, neuron=True),
                      dict(type="flatten"),
                      dict(type="dense", shape=[4], weight=np.ones((4, 18)), neuron=True),
                      dict(type="dense", shape=[3], weight=np.ones((3, 4)),
                           nodes="readout,integrator")])


def test_end_to_end_report(tmp_path):
    tiny_net(tmp_path / "student.net")
    in_shape, layers = read_netx(tmp_path / "student.net")
    assert in_shape == (1, 5, 5)
    assert layers == [CONV, DENSE, READOUT]
    spikes = {"conv1": torch.ones(1, 2, 2, 3, 3, dtype=torch.bool),
              "dense2": torch.zeros(1, 2, 4, dtype=torch.bool)}
    tally = Tally(layers)
    tally.add(input_spikes(), spikes)
    teacher = [("fc", 25 * 10)]
    report = build_report(tally.layer_stats(), list(PROFILES.values()), teacher_macs=teacher,
                          meta={"run": str(tmp_path), "samples": 1, "timesteps": 2})
    written = write_report(report, tmp_path)
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    data = json.loads((tmp_path / "energy.json").read_text())
    for key in ("name", "kind", "neurons", "synapses", "spikes_per_sample", "synops_per_sample",
                "neuron_updates_per_sample", "energy_j", "cores"):
        assert all(key in layer for layer in data["layers"]), key
    for key in ("synops_per_sample", "energy_j_per_sample", "ann_energy_j_per_sample",
                "ann_over_snn"):
        assert key in data["total"], key
    assert set(data["chip"]) >= {"cores_used", "fits"}
    conv, dense, readout = data["layers"]
    assert conv["synops_per_sample"] == HAND_CONV_SYNOPS
    assert dense["synops_per_sample"] == 36 * 4     # 36 conv spikes, fan-out 4
    assert readout["synops_per_sample"] == 0
    assert readout["nodes"] == ["readout", "integrator"]
    synops = HAND_CONV_SYNOPS + 36 * 4
    assert data["total"]["synops_per_sample"] == synops
    loihi = synops * 23.6 + 36 * 81 + (8 + 6) * 52  # conv all spike; dense, readout none
    assert data["total"]["energy_j_per_sample"]["loihi"] == pytest.approx(loihi * PJ)
    assert data["total"]["energy_j_per_sample"]["45nm"] == pytest.approx(synops * 0.9 * PJ)
    student_ann = 18 * 9 + 18 * 4 + 4 * 3
    assert data["total"]["ann_macs_per_sample"] == {"student_ann": student_ann, "teacher": 250}
    assert data["total"]["ann_over_snn"]["45nm"]["student_ann"] == pytest.approx(
        student_ann * 4.6 / (synops * 0.9))
    assert [layer["cores"] for layer in data["layers"]] == [1, 1, 1]
    assert data["chip"] == {**data["chip"], "cores_used": 3, "fits": True}
    assert "| conv1 | conv |" in (tmp_path / "energy.md").read_text()


def test_netx_errors(tmp_path):
    write_netx(tmp_path / "pool.net", [dict(type="input", shape=[1, 4, 4]),
                                       dict(type="pool", shape=[1, 2, 2])])
    with pytest.raises(EnergyError, match="type 'pool'"):
        read_netx(tmp_path / "pool.net")
    write_netx(tmp_path / "bad.net", [dict(type="input", shape=[6]),
                                      dict(type="dense", weight=np.ones((2, 5)))])
    with pytest.raises(EnergyError, match="does not take 6 inputs"):
        read_netx(tmp_path / "bad.net")
    (tmp_path / "junk.net").write_text("not hdf5")
    with pytest.raises(EnergyError, match="not a readable HDF5"):
        read_netx(tmp_path / "junk.net")
    tally = Tally([DENSE])
    with pytest.raises(EnergyError, match="no spikes given"):
        tally.add(torch.zeros(1, 2, 18), {})


def test_cli_missing_net(tmp_path, capsys):
    assert main(["--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "student.net not found" in err and "deploy.verify" in err and len(err.splitlines()) == 1


def student_run(run_dir):
    """A tiny digits run: untrained scnn student + SmallCNN teacher checkpoints and a netx file
    written by hand from the student's integer weights (Loihi's default CUBA parameters)."""
    from train.checkpoint import save_checkpoint
    from train.models import build_model

    torch.manual_seed(0)
    student = build_model({"name": "scnn", "config": dict(
        in_shape=(1, 8, 8), num_classes=10, channels=(4, 8), kernels=(3, 3), strides=(1, 2),
        hidden=(16,))})
    teacher = build_model({"name": "smallcnn", "config": dict(in_shape=(1, 8, 8),
                                                              channels=(4, 8, 8))})
    encoding = {"kind": "rate", "timesteps": 4, "seed": 0}
    save_checkpoint(run_dir / "student.pt", student, "student", dataset="digits", encoding=encoding)
    save_checkpoint(run_dir / "teacher.pt", teacher, "teacher", dataset="digits", encoding=encoding)
    shapes = {"conv1": [4, 8, 8], "conv2": [8, 4, 4], "fc3": [16], "readout": [10]}
    specs = [dict(type="input", shape=[1, 8, 8])]
    for name, m in student.layers.items():
        if name == "flatten":
            specs.append(dict(type="flatten"))
        elif name.startswith("conv"):
            specs.append(dict(type="conv", shape=shapes[name], weight=m.int_weight().numpy(),
                              stride=list(m.stride), padding=list(m.padding), dilation=[1, 1],
                              groups=1, neuron=True))
        elif name in shapes:
            specs.append(dict(type="dense", shape=shapes[name], weight=m.int_weight().numpy(),
                              neuron=name != "readout"))
    write_netx(run_dir / "student.net", specs)
    return student, teacher


@pytest.mark.parametrize("activity", ["student", "emulator"])
def test_cli_end_to_end(tmp_path, activity, capsys):
    if activity == "emulator":
        pytest.importorskip("hwmodels.loihi")
    student, teacher = student_run(tmp_path)
    assert main(["--run", str(tmp_path), "--samples", "12", "--batch-size", "5",
                 "--activity", activity, "--profile", "loihi"]) == 0
    assert "energy per sample" in capsys.readouterr().out
    data = json.loads((tmp_path / "energy.json").read_text())
    assert data["samples"] == 12 and data["timesteps"] == 4 and data["activity_source"] == activity
    assert list(data["total"]["energy_j_per_sample"]) == ["loihi"]
    assert [layer["name"] for layer in data["layers"]] == ["conv1", "conv2", "dense3", "dense4"]
    teacher_macs = sum(m for _, m in count_macs(teacher, (1, 8, 8)))
    assert data["total"]["ann_macs_per_sample"]["teacher"] == teacher_macs
    conv1, conv2, dense3, dense4 = data["layers"]
    assert conv2["input_spikes_per_sample"] == conv1["spikes_per_sample"]
    assert dense4["input_spikes_per_sample"] == dense3["spikes_per_sample"]
    assert conv1["neuron_updates_per_sample"] == 4 * 8 * 8 * 4
    assert (tmp_path / "energy.png").stat().st_size > 0
