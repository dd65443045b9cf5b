"""Energy model over a compiled Net: fan-out and SynOps against hand counts (conv with padding and
stride, a residual block with a relay group, a recurrent connection), MACs, energy arithmetic,
core mapping with relays, the report files and the command line."""
import json

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hwmodels.energy import (EnergyError, Tally, ann_macs, count_macs, fanout, main,
                             student_source)
from hwmodels.energy_report import build_report, write_report
from hwmodels.loihi import INTEGRATOR, Emulator, Net, Neurons, Synapses
from hwmodels.netfile import save_net
from hwmodels.profiles import PROFILES, ann_energy
from hwmodels.resources import (CoreLimits, chip_usage, intel_system, layer_cores,
                                map_groups, shared_kernel_cores)

PJ = 1e-12
LIF = dict(i_decay=2048, v_decay=1024, vth=64)
RELAY = dict(i_decay=4096, v_decay=4096, vth=0, role="relay")


def conv(name, src, dst, weight, **geometry):
    return Synapses(name=name, src=src, dst=dst, kind="conv",
                    weight=np.asarray(weight, dtype=np.int64), **geometry)


def dense(name, src, dst, weight, recurrent=False):
    return Synapses(name=name, src=src, dst=dst, kind="dense",
                    weight=np.asarray(weight, dtype=np.int64), recurrent=recurrent)


def readout(name, shape):
    return Neurons(name, shape, INTEGRATOR["iDecay"], INTEGRATOR["vDecay"],
                   INTEGRATOR["vThMant"], role="readout", nodes=["integrator"])


# ---- fan-out -----------------------------------------------------------------------------------

# conv 1 -> 2 channels, 3x3 kernel, stride 2, padding 1 on a 5x5 input: 3x3 outputs per channel.
# Along one axis, output o covers inputs 2o-1 .. 2o+1, so input y is reached by
#   y=0: o=0;  y=1: o=0,1;  y=2: o=1;  y=3: o=1,2;  y=4: o=2   -> counts 1 2 1 2 1
# and the fan-out of pixel (y, x) is 2 channels * count(y) * count(x).
HAND_FANOUT = 2 * torch.tensor([[1, 2, 1, 2, 1],
                                [2, 4, 2, 4, 2],
                                [1, 2, 1, 2, 1],
                                [2, 4, 2, 4, 2],
                                [1, 2, 1, 2, 1]])
CONV = conv("conv1.w", "input", "conv1", np.ones((2, 1, 3, 3)), stride=(2, 2), padding=(1, 1))


def test_conv_fanout_matches_hand_count():
    f = fanout(CONV, (1, 5, 5), (2, 3, 3))
    assert torch.equal(f, HAND_FANOUT[None])
    assert int(f.sum()) == 2 * 7 * 7  # 9 taps per axis, 2 fall on the padding


def test_fanout_counts_only_non_zero_weights():
    w = np.ones((2, 1, 3, 3))
    w[1] = 0                       # output channel 1 has no synapse: fan-out halves
    w[0, 0, 0, 0] = 0              # tap (0, 0): pixel (y, x) is no longer reached from o = (y+1)/2
    f = fanout(conv("c", "input", "g", w, stride=(2, 2), padding=(1, 1)), (1, 5, 5), (2, 3, 3))
    hand = HAND_FANOUT[None] // 2
    for y in (1, 3):               # y = 2o - 1 + 0 for o = 1, 2 (tap row 0), same for x
        for x in (1, 3):
            hand[0, y, x] -= 1
    assert torch.equal(f, hand)
    d = dense("d", "input", "g", [[1, 0, 2], [0, 0, 3]])
    assert fanout(d, (3,), (2,)).tolist() == [1, 0, 2]


@pytest.mark.parametrize("cfg", [dict(cin=4, cout=6, k=3, s=2, p=1, d=1, g=2, h=9, w=7),
                                 dict(cin=3, cout=3, k=3, s=1, p=2, d=2, g=3, h=6, w=6),
                                 dict(cin=2, cout=5, k=4, s=3, p=0, d=1, g=1, h=11, w=8)])
def test_conv_fanout_matches_autograd(cfg):
    """d(sum of a conv with 0/1 weights)/d(input) counts the synapses each input reaches."""
    shape = (cfg["cout"], cfg["cin"] // cfg["g"], cfg["k"], cfg["k"])
    mask = (torch.rand(shape, generator=torch.Generator().manual_seed(cfg["h"])) < 0.7).double()
    x = torch.zeros(1, cfg["cin"], cfg["h"], cfg["w"], dtype=torch.float64, requires_grad=True)
    y = F.conv2d(x, mask, None, cfg["s"], cfg["p"], cfg["d"], cfg["g"])
    y.sum().backward()
    syn = conv("c", "input", "g", mask.long().numpy() * 3, stride=(cfg["s"],) * 2,
               padding=(cfg["p"],) * 2, dilation=(cfg["d"],) * 2, groups=cfg["g"])
    f = fanout(syn, (cfg["cin"], cfg["h"], cfg["w"]), tuple(y.shape[1:]))
    assert torch.equal(f, x.grad[0].round().long())


# ---- a chain: conv -> dense -> integrator readout ----------------------------------------------

def chain_net():
    return Net(in_shape=(1, 5, 5), neurons=[
        Neurons("conv1", (2, 3, 3), **LIF, nodes=["lif1"]),
        Neurons("dense2", (4,), **LIF, nodes=["lif2"]),
        readout("dense3", (3,))], synapses=[
        CONV, dense("dense2.w", "conv1", "dense2", np.ones((4, 18))),
        dense("dense3.w", "dense2", "dense3", np.ones((3, 4)))]).check()


def input_spikes():
    """One sample, T = 2: step 0 spikes at (0,0) and (1,1); step 1 at (1,1) and (4,4)."""
    x = torch.zeros(1, 2, 1, 5, 5)
    x[0, 0, 0, 0, 0] = x[0, 0, 0, 1, 1] = x[0, 1, 0, 1, 1] = x[0, 1, 0, 4, 4] = 1
    return x


HAND_CONV_SYNOPS = 2 * (1 + 4 + 4 + 1)  # fan-outs of (0,0), (1,1), (1,1), (4,4)


def test_chain_synops_hand_counted():
    spikes_conv = torch.zeros(1, 2, 2, 3, 3)
    spikes_conv[0, 0, 1, 2, 2] = 1                 # 1 spike at step 0
    spikes_conv[0, 1, 0, :, 0] = 1                 # 3 spikes at step 1
    spikes_dense = torch.zeros(1, 2, 4, dtype=torch.bool)
    spikes_dense[0, 1, :2] = True                  # 2 spikes
    tally = Tally(chain_net())
    tally.add(input_spikes(), {"conv1": spikes_conv, "dense2": spikes_dense})
    c1, c2, c3 = tally.connection_stats()
    assert (c1["synops_per_sample"], c2["synops_per_sample"], c3["synops_per_sample"]) == \
        (HAND_CONV_SYNOPS, 4 * 4, 2 * 3)           # dense: each input spike reaches all outputs
    assert c1["input_spikes_per_sample"] == 4 and c1["synapses"] == 98
    conv1, dense2, dense3 = tally.group_stats()
    assert conv1["spikes_per_sample"] == 4 and conv1["neuron_updates_per_sample"] == 18 * 2
    assert conv1["firing_rate"] == pytest.approx(4 / 36)
    assert dense3["spikes_per_sample"] is None and dense3["firing_rate"] is None
    assert tally.input_stats()["spikes_per_sample"] == 4


def test_counts_average_over_samples_and_batches():
    net = Net(in_shape=(18,), neurons=[Neurons("d", (4,), **LIF)],
              synapses=[dense("d.w", "input", "d", np.ones((4, 18)))])
    tally = Tally(net)
    x = torch.zeros(2, 3, 18)
    x[0, :, 0] = 1                                 # sample 0: 3 spikes; sample 1: none
    tally.add(x, {"d": torch.zeros(2, 3, 4)})
    tally.add(x[1:], {"d": torch.ones(1, 3, 4)})
    assert tally.connection_stats()[0]["synops_per_sample"] == 3 * 4 / 3
    assert tally.group_stats()[0]["spikes_per_sample"] == 12 / 3


def test_analog_first_connection_counts_macs():
    x = torch.rand(1, 2, 1, 5, 5) + 0.1            # all non-zero
    net = Net(in_shape=(1, 5, 5), neurons=[Neurons("conv1", (2, 3, 3), **LIF)], synapses=[CONV])
    tally = Tally(net, analog_input=True)
    tally.add(x, {"conv1": torch.zeros(1, 2, 2, 3, 3)})
    stats = tally.connection_stats()[0]
    assert stats["input"] == "analog"
    assert stats["macs_per_sample"] == 2 * (2 * 3 * 3 * 1 * 9)  # T x one ANN pass
    assert stats["synops_per_sample"] == 2 * 98                 # graded spikes: every input
    assert PROFILES["45nm"].synaptic_energy(1, stats["macs_per_sample"]) == pytest.approx(
        324 * 4.6 * PJ)


# ---- a residual block with a relay group -------------------------------------------------------

def residual_net():
    """input (2,4,4) -> A (conv 3x3 p1) -> B (conv 3x3 p1) -> readout (dense); skip input -> B
    through the relay group input.relay1 (depthwise 1x1 identity), then a full 1x1 conv.

    conv_b has no synapse from A's channel 0 to B's channel 1, so A's channel 0 reaches half."""
    w_b = np.ones((2, 2, 3, 3))
    w_b[1, 0] = 0
    return Net(in_shape=(2, 4, 4), neurons=[
        Neurons("A", (2, 4, 4), **LIF, nodes=["blocks.0.lif_a"]),
        Neurons("input.relay1", (2, 4, 4), **RELAY),
        Neurons("B", (2, 4, 4), **LIF, nodes=["blocks.0.lif_b"]),
        readout("out", (3,))], synapses=[
        conv("conv_a", "input", "A", np.ones((2, 2, 3, 3)), padding=(1, 1)),
        conv("input.relay1.in", "input", "input.relay1", np.ones((2, 1, 1, 1)), groups=2),
        conv("conv_b", "A", "B", w_b, padding=(1, 1)),
        conv("shortcut", "input.relay1", "B", np.ones((2, 2, 1, 1))),
        dense("readout", "B", "out", np.ones((3, 32)))]).check()


def residual_spikes():
    """T = 2. Input: (c0,0,0) t0, (c1,1,1) t0, (c0,1,1) t1. A: (c0,0,0) t0, (c1,0,2) t1.
    B: 3 spikes. The relay repeats the input (in the float model's time)."""
    x = torch.zeros(1, 2, 2, 4, 4)
    x[0, 0, 0, 0, 0] = x[0, 0, 1, 1, 1] = x[0, 1, 0, 1, 1] = 1
    a = torch.zeros(1, 2, 2, 4, 4)
    a[0, 0, 0, 0, 0] = a[0, 1, 1, 0, 2] = 1
    b = torch.zeros(1, 2, 2, 4, 4)
    b[0, 1, :, 2, 2] = b[0, 0, 1, 3, 3] = 1
    return x, {"A": a, "input.relay1": x.clone(), "B": b}


def test_residual_synops_hand_counted():
    x, spikes = residual_spikes()
    tally = Tally(residual_net())
    tally.add(x, spikes)
    got = {c["name"]: c["synops_per_sample"] for c in tally.connection_stats()}
    # 3x3 conv, padding 1, on 4x4: a corner reaches 2 x 2 positions, an interior pixel 3 x 3
    assert got == {
        "conv_a": 2 * 4 + 2 * 9 + 2 * 9,           # 2 output channels x (corner, inner, inner)
        "input.relay1.in": 3,                      # identity: one synapse per spike
        "conv_b": 1 * 4 + 2 * 6,                   # A (c0, corner): only B's c0; (c1, edge): both
        "shortcut": 2 * 3,                         # 1x1 conv 2 -> 2: two synapses per spike
        "readout": 3 * 3}
    groups = {g["name"]: g for g in tally.group_stats()}
    assert groups["B"]["synops_per_sample"] == got["conv_b"] + got["shortcut"]
    assert groups["B"]["connections"] == ["conv_b", "shortcut"]
    assert groups["input.relay1"]["role"] == "relay"
    # conv_b unrolled: (2 + 3 + 3 + 2)^2 = 100 per channel pair, 3 pairs non-zero; 1x1: 4 x 16
    assert groups["input.relay1"]["synapses"] == 32
    assert groups["B"]["synapses"] == 3 * 100 + 4 * 16
    assert groups["input.relay1"]["ann_macs_per_sample"] == 0   # no relays in the ANN
    assert groups["B"]["ann_macs_per_sample"] == 32 * 2 * 9 + 32 * 2


def test_residual_activity_from_the_emulator():
    """The emulator's relay spikes equal the input spikes, and the counts follow its spikes."""
    net = residual_net()
    x = (torch.rand(3, 5, 2, 4, 4, generator=torch.Generator().manual_seed(1)) < 0.3).long()
    result = Emulator(net).run(x)
    assert torch.equal(result.spikes["input.relay1"], x.bool())
    tally = Tally(net)
    tally.add(x, result.spikes)
    got = {c["name"]: c["synops_per_sample"] for c in tally.connection_stats()}
    assert got["input.relay1.in"] == int(x.sum()) / 3
    assert got["shortcut"] == 2 * int(x.sum()) / 3
    assert got["readout"] == 3 * int(result.spikes["B"].sum()) / 3


# ---- a recurrent connection --------------------------------------------------------------------

def test_recurrent_connection_sees_the_previous_step():
    rec = np.ones((3, 3)) - np.eye(3)              # no self-synapse: fan-out 2
    net = Net(in_shape=(2,), neurons=[Neurons("h", (3,), **LIF)], synapses=[
        dense("h.w", "input", "h", np.ones((3, 2))), dense("h.rec", "h", "h", rec, True)]).check()
    h = torch.tensor([[[1, 0, 0], [1, 1, 0], [0, 0, 1]]])   # (B=1, T=3, 3)
    tally = Tally(net)
    tally.add(torch.zeros(1, 3, 2), {"h": h})
    stats = {c["name"]: c for c in tally.connection_stats()}
    assert stats["h.rec"]["recurrent"]
    # steps 0 and 1 reach steps 1 and 2; the spike of the last step is never delivered
    assert stats["h.rec"]["input_spikes_per_sample"] == 3
    assert stats["h.rec"]["synops_per_sample"] == 3 * 2
    assert stats["h.w"]["synops_per_sample"] == 0


# ---- MACs, energy, cores -----------------------------------------------------------------------

def test_ann_macs_reference():
    c = conv("c", "input", "g", np.ones((8, 3, 3, 3)), padding=(1, 1))
    assert ann_macs(c, (3, 8, 8), (8, 8, 8)) == 8 * 8 * 8 * 3 * 9
    g = conv("g", "input", "g", np.ones((8, 2, 3, 3)), stride=(2, 2), padding=(1, 1), groups=2)
    assert ann_macs(g, (4, 8, 8), (8, 4, 4)) == 8 * 4 * 4 * 4 * 9 // 2
    assert ann_macs(dense("d", "input", "g", np.ones((4, 18))), (2, 3, 3), (4,)) == 18 * 4
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


def test_core_mapping_with_relays():
    groups = [dict(name="a", role="neuron", neurons=40, synapses=10),
              dict(name="a.relay1", role="relay", neurons=40, synapses=40),
              dict(name="b", role="neuron", neurons=10, synapses=500)]
    mapping = map_groups(groups, CoreLimits(neurons_per_core=16, synapses_per_core=100,
                                            cores_per_chip=8))
    assert mapping["cores"] == {"a": 3, "a.relay1": 3, "b": 5}
    chip = mapping["chip"]
    assert chip["cores_used"] == 11 and not chip["fits"] and chip["chips"] == 2
    assert (chip["relay_groups"], chip["relay_cores"], chip["relay_neurons"],
            chip["relay_synapses"]) == (1, 3, 40, 40)


def residual_groups(limits):
    x, spikes = residual_spikes()
    tally = Tally(residual_net())
    tally.add(x, spikes)
    return map_groups(tally.group_stats(), limits)


def test_chips_both_storage_assumptions_hand_counted():
    """residual_net under tight limits. Unrolled synapses (a): A 2 x 2 x 100 = 400 (3x3 pad 1 on
    4x4: (2+3+3+2)^2 = 100 per channel pair), relay 32, B 3 x 100 + 4 x 16 = 364, out 96.
    Shared kernels (b), per output channel: A 2 x 9 = 18, relay 1, B 2 x 9 + 2 x 1 = 20 (conv_b's
    zero weights are stored too); 16 positions per channel; out is dense: as (a)."""
    tight = residual_groups(CoreLimits(neurons_per_core=20, synapses_per_core=30,
                                       cores_per_chip=4))
    # (a): A max(ceil(32/20), ceil(400/30)) = 14, relay 2, B ceil(364/30) = 13, out ceil(96/30) = 4
    assert tight["cores"] == {"A": 14, "input.relay1": 2, "B": 13, "out": 4}
    # (b): 20 // 16 = 1 channel per core for every conv group; out as (a)
    assert tight["cores_shared_kernel"] == {"A": 2, "input.relay1": 2, "B": 2, "out": 4}
    a, b = tight["chip"], tight["chip"]["shared_kernel"]
    assert (a["cores_used"], a["chips"], a["relay_cores"]) == (33, 9, 2)
    assert (b["cores_used"], b["chips"], b["relay_cores"]) == (10, 3, 2)
    assert a["relay_share"] == pytest.approx(2 / 33) and b["relay_share"] == pytest.approx(0.2)
    assert a["system"] == "Hala Point (1,152 chips)" and b["system"] == "Kapoho Point (8 chips)"
    roomy = residual_groups(CoreLimits(neurons_per_core=40, synapses_per_core=40))
    # (a): A ceil(400/40) = 10, relay 1, B ceil(364/40) = 10, out ceil(96/40) = 3
    assert roomy["cores"] == {"A": 10, "input.relay1": 1, "B": 10, "out": 3}
    # (b): both channels in one core: 2 x 16 = 32 <= 40 neurons, 2 x 18 (A) / 2 x 20 (B) <= 40
    assert roomy["cores_shared_kernel"] == {"A": 1, "input.relay1": 1, "B": 1, "out": 3}
    assert roomy["chip"]["system"] == roomy["chip"]["shared_kernel"]["system"] == "one Loihi 2 chip"


def test_shared_kernel_cores_edge_cases():
    limits = CoreLimits(neurons_per_core=100, synapses_per_core=50)
    # 512 channels of 4x4 with 3x3x512 = 4608 weights each, real per-core limits: 203 per core
    assert shared_kernel_cores(512 * 16, 512, 4608, 0) == 3
    assert shared_kernel_cores(10, 10, 0, 70, limits) == layer_cores(10, 70, limits) == 2
    # 3 channels of 20x20 = 400 positions > 100: no whole channel fits; 4 cores each
    assert shared_kernel_cores(1200, 3, 9, 0, limits) == 3 * 4
    # a channel's kernel of 120 weights > 50: 3 cores each
    assert shared_kernel_cores(30, 3, 120, 0, limits) == 3 * 3
    # a dense input into a conv-fed group adds ceil(40 / 4) = 10 weights per channel
    assert shared_kernel_cores(8, 4, 15, 40, limits) == 2        # 50 // 25 = 2 channels per core


def test_intel_system_by_chip_count():
    assert [intel_system(n) for n in (1, 2, 8, 9, 1152)] == [
        "one Loihi 2 chip", "Kapoho Point (8 chips)", "Kapoho Point (8 chips)",
        "Hala Point (1,152 chips)", "Hala Point (1,152 chips)"]
    assert intel_system(1153) == "more than Hala Point (1,153 chips)"


def test_residual_report(tmp_path):
    """Energies, relays' cost and core mapping of the hand-counted residual net, and the files."""
    x, spikes = residual_spikes()
    tally = Tally(residual_net())
    tally.add(x, spikes)
    limits = CoreLimits(neurons_per_core=20)
    report = build_report(tally, list(PROFILES.values()), limits, teacher_macs=[("fc", 250)],
                          meta={"run": str(tmp_path), "samples": 1, "timesteps": 2})
    written = write_report(report, tmp_path)
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    data = json.loads((tmp_path / "energy.json").read_text())
    assert [g["name"] for g in data["layers"]] == ["A", "input.relay1", "B", "out"]
    for key in ("name", "kind", "role", "neurons", "synapses", "spikes_per_sample",
                "synops_per_sample", "neuron_updates_per_sample", "energy_j", "cores"):
        assert all(key in g for g in data["layers"]), key
    assert [g["cores"] for g in data["layers"]] == [2, 2, 2, 1]   # 32 neurons / 20 per core
    relay = data["total"]["relays"]
    assert (relay["groups"], relay["neurons"], relay["synapses"], relay["cores"],
            relay["synops_per_sample"]) == (1, 32, 32, 2, 3)
    # relay: 3 SynOps, 64 updates, 3 of them spiking
    assert relay["energy_j_per_sample"]["loihi"] == pytest.approx(
        (3 * 23.6 + 3 * 81 + 61 * 52) * PJ)
    assert data["chip"]["cores_used"] == 7 and data["chip"]["relay_cores"] == 2
    # shared kernels: 20 neurons per core hold one 16-position channel; out is dense
    assert [g["cores_shared_kernel"] for g in data["layers"]] == [2, 2, 2, 1]
    assert data["chip"]["shared_kernel"]["cores_used"] == 7 and relay["cores_shared_kernel"] == 2
    synops = 44 + 3 + 16 + 6 + 9
    assert data["total"]["synops_per_sample"] == synops
    spikes_, updates = 2 + 3 + 3, 3 * 64 + 6
    assert data["total"]["energy_j_per_sample"]["loihi"] == pytest.approx(
        (synops * 23.6 + spikes_ * 81 + (updates - spikes_) * 52) * PJ)
    assert data["total"]["energy_j_per_sample"]["45nm"] == pytest.approx(synops * 0.9 * PJ)
    student_ann = 32 * 2 * 9 + 32 * 2 * 9 + 32 * 2 + 32 * 3
    assert data["total"]["ann_macs_per_sample"] == {"student_ann": student_ann, "teacher": 250}
    md = (tmp_path / "energy.md").read_text()
    assert "| input.relay1 | relay | conv |" in md and "| shortcut | input.relay1 -> B |" in md
    assert "Delay alignment: 1 relay group(s), 32 neurons" in md
    for storage in ("(a) convolutions unrolled into synapses", "(b) one shared kernel per core"):
        assert f"| {storage} | 7 | 2 (28.6 %) | 1 | one Loihi 2 chip |" in md


def test_tally_errors():
    tally = Tally(chain_net())
    with pytest.raises(EnergyError, match="no spikes given for group conv1"):
        tally.add(input_spikes(), {})
    with pytest.raises(EnergyError, match="group conv1: spikes of shape"):
        tally.add(input_spikes(), {"conv1": torch.zeros(1, 2, 18), "dense2": torch.zeros(1, 2, 4)})
    with pytest.raises(EnergyError, match="inputs of shape"):
        tally.add(torch.zeros(1, 2, 25), {})
    with pytest.raises(EnergyError, match="no samples counted"):
        tally.group_stats()


# ---- command line ------------------------------------------------------------------------------

def test_cli_missing_net(tmp_path, capsys):
    assert main(["--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "student.net not found" in err and "deploy.verify" in err and len(err.splitlines()) == 1


def test_cli_unreadable_net(tmp_path, capsys):
    (tmp_path / "student.net").write_text("not hdf5")
    assert main(["--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a readable HDF5" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("flag", [["--samples", "0"], ["--profile", "7nm"], ["--batch-size", "x"]])
def test_cli_bad_flags(tmp_path, flag):
    with pytest.raises(SystemExit) as e:
        main(["--run", str(tmp_path), *flag])
    assert e.value.code == 2


def student_run(run_dir):
    """A tiny digits run: untrained scnn student + SmallCNN teacher checkpoints and a Net built by
    hand from the student's integer weights."""
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
    m = student.layers
    w = {name: m[name].int_weight().numpy() for name in ("conv1", "conv2", "fc3", "readout")}
    net = Net(in_shape=(1, 8, 8), neurons=[
        Neurons("conv1", (4, 8, 8), **LIF, nodes=["lif1"]),
        Neurons("conv2", (8, 4, 4), **LIF, nodes=["lif2"]),
        Neurons("dense3", (16,), **LIF, nodes=["lif3"]), readout("dense4", (10,))], synapses=[
        conv("conv1.w", "input", "conv1", w["conv1"], padding=(1, 1)),
        conv("conv2.w", "conv1", "conv2", w["conv2"], stride=(2, 2), padding=(1, 1)),
        dense("dense3.w", "conv2", "dense3", w["fc3"]),
        dense("dense4.w", "dense3", "dense4", w["readout"])]).check()
    with h5py.File(run_dir / "student.net", "w") as f:
        save_net(f, net)
    return student, teacher


@pytest.mark.parametrize("activity", ["student", "emulator"])
def test_cli_end_to_end(tmp_path, activity, capsys):
    student, teacher = student_run(tmp_path)
    assert main(["--run", str(tmp_path), "--samples", "12", "--batch-size", "5",
                 "--activity", activity, "--profile", "loihi"]) == 0
    assert "energy per sample" in capsys.readouterr().out
    data = json.loads((tmp_path / "energy.json").read_text())
    assert data["samples"] == 12 and data["timesteps"] == 4 and data["activity_source"] == activity
    assert list(data["total"]["energy_j_per_sample"]) == ["loihi"]
    assert [g["name"] for g in data["layers"]] == ["conv1", "conv2", "dense3", "dense4"]
    teacher_macs = sum(m for _, m in count_macs(teacher, (1, 8, 8)))
    assert data["total"]["ann_macs_per_sample"]["teacher"] == teacher_macs
    conv1, conv2, dense3, dense4 = data["layers"]
    assert conv2["input_spikes_per_sample"] == conv1["spikes_per_sample"]
    assert dense4["input_spikes_per_sample"] == dense3["spikes_per_sample"]
    assert conv1["neuron_updates_per_sample"] == 4 * 8 * 8 * 4
    assert data["input"]["spikes_per_sample"] == data["connections"][0]["input_spikes_per_sample"]
    assert (tmp_path / "energy.png").stat().st_size > 0


def test_student_source_fills_relays():
    """Student activity: groups take the spikes of the layer their nodes name; relays repeat
    their source's."""
    class Student(nn.Module):
        def forward(self, x):
            from train.models import StudentOutput
            t, b = x.shape[:2]
            out = StudentOutput(logits_t=torch.zeros(t, b, 3))
            out.spikes = {"blocks.0.lif_a": x, "blocks.0.lif_b": 1 - x}
            return out

    x, _ = residual_spikes()
    spikes, predictions = student_source(Student(), residual_net(), "cpu")(x)
    assert torch.equal(spikes["A"], x) and torch.equal(spikes["B"], 1 - x)
    assert spikes["input.relay1"] is x or torch.equal(spikes["input.relay1"], x)
    assert predictions.shape == (1,)


def test_cli_compiled_residual_student(tmp_path, capsys):
    """A residual student through the real compiler (relay groups included): the torch student and
    the emulator give the same spikes, hence the same SynOps on every connection."""
    from deploy.compile import compile_graph
    from export.to_nir import student_to_nir
    from train.checkpoint import save_checkpoint
    from train.models import SpikingResNet

    torch.manual_seed(0)
    student = SpikingResNet(in_shape=(1, 8, 8), widths=(4, 8), blocks=(1, 1)).eval()
    save_checkpoint(tmp_path / "student.pt", student, "student", dataset="digits",
                    encoding={"kind": "rate", "timesteps": 4, "seed": 0})
    net, _ = compile_graph(student_to_nir(student), tmp_path / "student.net", timesteps=4)
    relays = [g.name for g in net.neurons if g.role == "relay"]
    assert relays, "the residual student should need relay groups"
    reports = {}
    for activity in ("student", "emulator"):
        assert main(["--run", str(tmp_path), "--samples", "20", "--activity", activity]) == 0
        reports[activity] = json.loads((tmp_path / "energy.json").read_text())
    capsys.readouterr()
    by_student, by_emulator = (
        {c["name"]: c["synops_per_sample"] for c in reports[a]["connections"]}
        for a in ("student", "emulator"))
    assert by_student == by_emulator and sum(by_emulator.values()) > 0
    data = reports["emulator"]
    layers = {g["name"]: g for g in data["layers"]}
    assert data["total"]["relays"]["groups"] == len(relays)
    assert data["total"]["relays"]["cores"] == sum(layers[r]["cores"] for r in relays)
    for r in relays:  # a relay repeats its source's spikes: one SynOp per spike in, and as many out
        assert layers[r]["spikes_per_sample"] == layers[r]["input_spikes_per_sample"] == \
            layers[r]["synops_per_sample"]
    assert data["chip"]["cores_used"] == sum(g["cores"] for g in data["layers"])


def test_chip_map_bench_on_a_small_student(tmp_path, capsys):
    """bench.chip_map end to end on a small sresnet: compiled, measured, both mappings reported,
    and the float student's spikes give the same counts as the emulator's."""
    from bench.chip_map import main as chip_map
    reports = {}
    for activity in ("student", "emulator"):
        out = tmp_path / activity
        assert chip_map(["--student", "sresnet", "--size", "8", "--timesteps", "4",
                         "--samples", "2", "--activity", activity, "--out", str(out)]) == 0
        reports[activity] = json.loads((out / "energy.json").read_text())
    text = capsys.readouterr().out
    assert "(a) unrolled:" in text and "(b) shared kernel:" in text and "one Loihi 2 chip" in text
    a, b = reports["student"], reports["emulator"]
    assert a["timesteps"] == 4 and a["samples"] == 2 and a["total"]["relays"]["groups"] > 0
    assert [c["synops_per_sample"] for c in a["connections"]] == \
        [c["synops_per_sample"] for c in b["connections"]]
    assert a["chip"]["shared_kernel"]["cores_used"] <= a["chip"]["cores_used"]
    assert chip_map(["--rate", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--rate 2.0: a probability" in capsys.readouterr().err
