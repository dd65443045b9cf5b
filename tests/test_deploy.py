"""deploy.compile (NIR graph -> Loihi Net) and the deploy.verify command."""
import importlib.util
import json
import subprocess
import sys

import h5py
import nir
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from deploy.compile import CompileError, build_net, compile_graph
from export.from_nir import float_model
from hwmodels.loihi import Emulator
from hwmodels.netfile import read_net

HAS_LAVA = importlib.util.find_spec("lava") is not None
lava = pytest.mark.skipif(not HAS_LAVA, reason="lava-nc / lava-dl not installed")
STEP, DT = 1 / 64, 1e-4


def cuba(shape, i_decay, v_decay, vth, dt=DT):
    """CubaLIF as docs/nir.md writes it: alpha = 1 - iDecay/4096, beta = 1 - vDecay/4096."""
    tau_syn = np.full(shape, dt * 4096 / i_decay)
    tau_mem = np.full(shape, dt * 4096 / v_decay)
    return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / dt, v_leak=np.zeros(shape),
                       v_threshold=np.full(shape, vth * STEP), v_reset=np.zeros(shape),
                       w_in=tau_syn / dt, metadata={"reset": "zero", "dt": dt})


def student_graph(seed=0, **over):
    """Input(1,8,8) -> conv(4,k3,s2,p1) -> lif -> flatten -> affine(64->10) -> lif -> readout -> I."""
    rng = np.random.default_rng(seed)
    meta = {"weight_step": STEP, "weight_bits": 8}
    nodes = {
        "input": nir.Input(input_type=np.array([1, 8, 8])),
        "conv1": nir.Conv2d(input_shape=(8, 8), weight=rng.integers(-128, 128, (4, 1, 3, 3)) * STEP,
                            stride=2, padding=1, dilation=1, groups=1, bias=np.zeros(4),
                            metadata=meta),
        "lif1": cuba((4, 4, 4), 1024, 512, 60),
        "flatten": nir.Flatten(input_type={"input": np.array([4, 4, 4])}, start_dim=0),
        "fc2": nir.Affine(weight=rng.integers(-128, 128, (10, 64)) * STEP, bias=np.zeros(10),
                          metadata=meta),
        "lif2": cuba((10,), 2048, 100, 100),
        "readout": nir.Affine(weight=rng.integers(-128, 128, (3, 10)) * STEP, bias=np.zeros(3),
                              metadata=meta),
        "integrator": nir.I(r=np.full(3, 1 / DT)),
        "output": nir.Output(output_type=np.array([3])),
    }
    nodes.update(over)
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False,
                        metadata={"dt": DT, "timesteps": 6})


def test_compile_chain_writes_net_and_netx_layers(tmp_path):
    g = student_graph()
    net, fit = compile_graph(g, tmp_path / "s.net")
    back = read_net(tmp_path / "s.net")
    assert [x.name for x in back.neurons] == ["lif1", "lif2", "integrator"]
    assert [(x.src, x.dst, x.kind) for x in back.synapses] == [
        ("input", "lif1", "conv"), ("lif1", "lif2", "dense"), ("lif2", "integrator", "dense")]
    conv = back.synapses[0]
    assert conv.stride == (2, 2) and conv.padding == (1, 1)
    assert np.array_equal(conv.weight, np.rint(g.nodes["conv1"].weight / STEP))
    lif1, lif2, ro = back.neurons
    assert (lif1.i_decay, lif1.v_decay, lif1.vth) == (1024, 512, 60)
    assert (lif2.i_decay, lif2.v_decay, lif2.vth) == (2048, 100, 100)
    assert not ro.spiking and back.readout == "state" and back.output == "integrator"
    assert all(r["exact"] and r["weight_rel_error"] == 0 for r in fit["groups"])
    assert fit["alignment"]["relay_groups"] == 0 and fit["dt_source"] == "graph metadata"
    with h5py.File(tmp_path / "s.net") as f:  # netx can express a chain: it gets layer/ too
        types = [f[f"layer/{i}/type"][()].reshape(-1)[0].decode() for i in range(len(f["layer"]))]
    assert types == ["input", "conv", "flatten", "dense", "dense"]


def test_lif_if_and_dt_override():
    lif = nir.LIF(tau=np.full(10, DT * 4), r=np.full(10, 4.0), v_leak=np.zeros(10),
                  v_threshold=np.full(10, 2.0), v_reset=np.zeros(10))
    net, _ = build_net(student_graph(lif2=lif))
    g = net.group("lif2")
    assert (g.i_decay, g.v_decay, g.vth) == (4096, 1024, 128)  # LIF: u = a_in; dt/tau = 1/4
    net, fit = build_net(student_graph(), dt=DT / 2)
    assert net.group("lif1").i_decay == 512 and fit["dt_source"] == "override"


def test_fit_report_flags_possible_overflow():
    g = student_graph()
    g.nodes["lif2"] = cuba((10,), 1, 1, 100)  # almost no decay: state bound far above 2^23
    rows = {r["group"]: r for r in build_net(g)[1]["groups"]}
    assert rows["lif2"]["may_overflow_24bit"] and not rows["lif1"]["may_overflow_24bit"]


@pytest.mark.parametrize("change, message", [
    (dict(fc2=nir.Affine(weight=np.full((10, 64), STEP / 3), bias=np.zeros(10),
                         metadata={"weight_step": STEP})), "weight_step"),
    (dict(fc2=nir.Affine(weight=np.full((10, 64), 200 * STEP), bias=np.zeros(10),
                         metadata={"weight_step": STEP})), "do not fit"),
    (dict(fc2=nir.Affine(weight=np.ones((10, 64)) * STEP, bias=np.full(10, STEP / 3),
                         metadata={"weight_step": STEP})), "not on the weight_step grid"),
    (dict(lif2=cuba((10,), 2048, 100, 200000)), "17 bits"),
    (dict(lif2=nir.CubaLIF(tau_syn=np.full(10, 2e-4), tau_mem=np.full(10, 4e-4),
                           r=np.full(10, 4.0), v_leak=np.zeros(10),
                           v_threshold=np.r_[np.zeros(5), np.ones(5)], v_reset=np.zeros(10),
                           w_in=np.full(10, 2.0))), "must be > 0 to fold"),
    (dict(fc2=nir.Affine(weight=np.zeros((10, 64)), bias=np.zeros(10),
                         metadata={"weight_step": STEP})), "zero"),
    (dict(lif1=nir.Delay(delay=np.ones((4, 4, 4)))), "Delay"),
    (dict(lif2=nir.LIF(tau=np.full(10, 4e-4), r=np.full(10, 4.0), v_leak=np.zeros(10),
                       v_threshold=np.ones(10), v_reset=np.zeros(10),
                       metadata={"reset": "subtract"})), "subtract"),
    (dict(lif2=nir.LIF(tau=np.full(10, 4e-4), r=np.full(10, 4.0), v_leak=np.zeros(10),
                       v_threshold=np.ones(10), v_reset=np.full(10, 0.5))), "v_reset"),
])
def test_compile_errors_name_the_node(tmp_path, change, message):
    with pytest.raises(CompileError, match=message) as err:
        compile_graph(student_graph(**change), tmp_path / "s.net")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "s.net").exists()


def test_missing_file_and_unknown_dt(tmp_path):
    with pytest.raises(CompileError, match="not found"):
        compile_graph(tmp_path / "nope.nir", tmp_path / "s.net")
    g = student_graph()
    g.metadata = {}
    g.nodes["lif1"].metadata = g.nodes["lif2"].metadata = {}
    g.nodes["lif2"] = nir.LIF(tau=np.full(10, 4e-4), r=np.ones(10), v_leak=np.zeros(10),
                              v_threshold=np.ones(10), v_reset=np.zeros(10))
    with pytest.raises(CompileError, match="--dt"):
        build_net(g)


def test_sum_pool_is_fused_into_the_next_conv():
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (3, 1, 3, 3))
    g = student_graph(
        conv1=nir.Conv2d(input_shape=(4, 4), weight=w * STEP, stride=1, padding=1, dilation=1,
                         groups=1, bias=np.zeros(3), metadata={"weight_step": STEP}),
        lif1=cuba((3, 4, 4), 1024, 512, 60),
        flatten=nir.Flatten(input_type={"input": np.array([3, 4, 4])}, start_dim=0),
        fc2=nir.Affine(weight=rng.integers(-128, 128, (10, 48)) * STEP, bias=np.zeros(10),
                       metadata={"weight_step": STEP}))
    nodes = {"input": nir.Input(input_type=np.array([1, 8, 8])),
             "pool": nir.SumPool2d(np.array([2, 2]), np.array([2, 2]), np.array([0, 0]))}
    nodes.update({k: v for k, v in g.nodes.items() if k != "input"})
    names = list(nodes)
    g = nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False,
                     metadata={"dt": DT})
    net, _ = build_net(g)
    conv = net.synapses[0]
    assert conv.nodes == ["pool", "conv1"] and conv.stride == (2, 2)
    emu = Emulator(net)
    x = (torch.rand(5, 1, 8, 8) < 0.5).float()
    want = F.conv2d(F.avg_pool2d(x, 2) * 4, torch.from_numpy(w).float(), padding=1)
    assert torch.equal(emu.synapse(conv, x), want.long())


# ---- graphs other tools write: IF + pooling CNN, recurrence, biases, residual blocks -----------

def if_cnn_graph(seed=0):
    """sinabs-style: Conv2d(bias) -> IF -> SumPool2d -> Conv2d -> IF -> Flatten -> Affine -> IF
    (spiking output), no dt and no time constants (discrete time), weights on a 1/8 grid."""
    rng = np.random.default_rng(seed)
    w = lambda *shape: rng.integers(-8, 9, shape) / 8  # noqa: E731
    ifn = lambda *shape: nir.IF(r=np.ones(shape), v_threshold=np.ones(shape),  # noqa: E731
                                v_reset=np.zeros(shape))
    nodes = {"input": nir.Input(input_type=np.array([2, 8, 8])),
             "c1": nir.Conv2d(input_shape=(8, 8), weight=w(4, 2, 3, 3), stride=1, padding=1,
                              dilation=1, groups=1, bias=np.full(4, 0.125)),
             "n1": ifn(4, 8, 8),
             "pool": nir.SumPool2d(np.array([2, 2]), np.array([2, 2]), np.array([0, 0])),
             "c2": nir.Conv2d(input_shape=(4, 4), weight=w(6, 4, 3, 3), stride=1, padding=1,
                              dilation=1, groups=1, bias=np.zeros(6)),
             "n2": ifn(6, 4, 4),
             "flat": nir.Flatten(input_type={"input": np.array([6, 4, 4])}, start_dim=0),
             "fc": nir.Affine(weight=w(5, 96), bias=np.zeros(5)),
             "n3": ifn(5), "output": nir.Output(output_type=np.array([5]))}
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False)


def recurrent_graph(nested=False, seed=0):
    """Affine(bias) -> LIF with a recurrent Linear (flat, or as a subgraph) -> Affine -> CubaLIF."""
    rng = np.random.default_rng(seed)
    lif = nir.LIF(tau=np.full(8, 2e-4), r=np.full(8, 2.0), v_leak=np.zeros(8),
                  v_threshold=np.full(8, 1.0), v_reset=np.zeros(8))
    rec = nir.Linear(weight=rng.integers(-4, 5, (8, 8)) / 16)
    out = nir.CubaLIF(tau_syn=np.full(3, 2e-4), tau_mem=np.full(3, 4e-4), r=np.full(3, 4.0),
                      v_leak=np.zeros(3), v_threshold=np.full(3, 0.5), v_reset=np.zeros(3),
                      w_in=np.full(3, 2.0))
    nodes = {"input": nir.Input(input_type=np.array([6])),
             "fc1": nir.Affine(weight=rng.integers(-8, 9, (8, 6)) / 16, bias=np.full(8, 1 / 16))}
    edges = [("input", "fc1")]
    if nested:
        sub = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([8])), "lif": lif,
                                  "w_rec": rec, "output": nir.Output(output_type=np.array([8]))},
                           edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"),
                                  ("lif", "output")], type_check=False)
        nodes["rnn"] = sub
        edges += [("fc1", "rnn"), ("rnn", "fc2")]
    else:
        nodes.update({"lif": lif, "w_rec": rec})
        edges += [("fc1", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "fc2")]
    nodes.update({"fc2": nir.Affine(weight=rng.integers(-8, 9, (3, 8)) / 8, bias=np.zeros(3)),
                  "lif2": out, "output": nir.Output(output_type=np.array([3]))})
    edges += [("fc2", "lif2"), ("lif2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def agreement_and_spikes(graph, x):
    """(prediction agreement, spikes) of the float model and the emulator on x (B, T, ...)."""
    net, _ = build_net(graph)
    r = Emulator(net).run(x)
    with torch.no_grad():
        out = float_model(graph)(x.float().transpose(0, 1))
    f_pred = out.logits_t.sum(0).argmax(-1)
    return float((f_pred == r.predictions).float().mean()), net, r, out


def test_if_cnn_with_bias_pooling_and_spiking_output():
    g = if_cnn_graph()
    net, fit = build_net(g)
    assert fit["dt"] == 1.0 and "discrete" in fit["dt_source"]
    assert net.readout == "spikes" and net.output == "n3"
    step = {r["group"]: r["step"] for r in fit["groups"]}["n1"]
    assert np.all(net.group("n1").bias * step == 0.125)  # the synaptic bias, exactly
    x = (torch.rand(16, 6, 2, 8, 8) < 0.3).long()
    agree, net, r, out = agreement_and_spikes(g, x)
    for name in ("n1", "n2", "n3"):  # weights, bias and threshold on the grid: exact
        assert torch.equal(out.spikes[name].transpose(0, 1).bool(), r.spikes[name]), name
    assert agree == 1.0 and int(r.spikes["n2"].sum()) > 0


@pytest.mark.parametrize("nested", [False, True])
def test_recurrent_lif_with_bias(nested):
    g = recurrent_graph(nested)
    net, fit = build_net(g)
    rec = [s for s in net.synapses if s.recurrent]
    assert len(rec) == 1 and rec[0].src == rec[0].dst
    assert fit["dt_source"].startswith("snntorch")
    x = (torch.rand(32, 10, 6) < 0.5).long()
    agree, net, r, out = agreement_and_spikes(g, x)
    assert int(r.spikes[rec[0].dst].sum()) > 0
    assert agree >= 0.9


def test_recurrence_through_two_groups_is_refused():
    g = recurrent_graph()
    g.edges.append(("lif2", "w_back"))
    g.nodes["w_back"] = nir.Linear(weight=np.ones((8, 3)) / 8)
    g.edges.append(("w_back", "lif"))
    with pytest.raises(CompileError, match="recurrence"):
        build_net(g)


def test_residual_student_gets_relays_and_matches_the_float_model():
    from export.to_nir import student_to_nir
    from train.models import SpikingResNet
    torch.manual_seed(0)
    model = SpikingResNet(in_shape=(1, 12, 12), widths=(4, 8), blocks=(1, 1)).eval()
    net, fit = build_net(student_to_nir(model))
    depth = net.depths()
    for s in net.synapses:  # every feed-forward connection spans exactly one Lava step
        assert s.recurrent or depth[s.dst] == depth[s.src] + 1, s.name
    relays = [g for g in net.neurons if g.role == "relay"]
    assert len(relays) == 2 and fit["alignment"]["relay_neurons"] == sum(g.size for g in relays)
    x = (torch.rand(16, 5, 1, 12, 12) < 0.4).float()
    r = Emulator(net).run(x)
    with torch.no_grad():
        out = model(x.transpose(0, 1))
    assert torch.equal(out.logits.argmax(-1), r.predictions)
    total = sum(int(v.sum()) for v in out.spikes.values())
    diff = sum(int((out.spikes[k].transpose(0, 1).bool() != r.spikes[k]).sum()) for k in out.spikes)
    assert total > 1000 and diff == 0  # the student computes Loihi's integer neuron


def test_peer_graphs_compile_without_flags():
    from pathlib import Path
    peer = Path(__file__).resolve().parents[2] / "shared" / "peer"
    if not peer.is_dir():
        pytest.skip("../shared/peer not present")
    net, fit = build_net(nir.read(str(peer / "cnn_sinabs.nir")))
    assert fit["dt"] == 1.0 and net.readout == "spikes" and net.in_shape == (2, 34, 34)
    net, fit = build_net(nir.read(str(peer / "braille_noDelay_noBias_subtract.nir")))
    assert fit["dt"] == pytest.approx(1e-4) and net.readout == "spikes"
    assert sum(s.recurrent for s in net.synapses) == 1


def snntorch_graph():
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(12, 6, bias=False)
            self.lif1 = snn.Synaptic(alpha=torch.full((6,), 0.5), beta=torch.full((6,), 0.75),
                                     threshold=torch.ones(6), reset_mechanism="zero")
            self.fc2 = torch.nn.Linear(6, 3, bias=False)
            self.lif2 = snn.Leaky(beta=torch.full((3,), 0.875), threshold=torch.ones(3),
                                  reset_mechanism="zero")

        def forward(self, x):
            syn, mem = self.lif1.init_synaptic()
            mem2 = self.lif2.init_leaky()
            spk, syn, mem = self.lif1(self.fc1(x), syn, mem)
            return self.lif2(self.fc2(spk), mem2)

    torch.manual_seed(0)
    return export_to_nir(Net(), torch.zeros(12))


def test_snntorch_export_is_accepted():
    net, fit = build_net(snntorch_graph())
    assert [(g.i_decay, g.v_decay) for g in net.neurons] == [(2048, 1024), (4096, 512)]
    assert all(max(-r["weight_min"], r["weight_max"]) >= 127 for r in fit["groups"])
    x = (torch.rand(3, 5, 12) < 0.7).long()
    assert Emulator(net).run(x).spikes[net.output].shape == (3, 5, 3)


def snntorch_biased_graph():
    """An ordinary snnTorch net: biased nn.Conv2d / nn.Linear, snn.Leaky (uniform beta and
    threshold, given per neuron as snnTorch's exporter needs)."""
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(12, 6)
            self.lif1 = snn.Leaky(beta=torch.full((6,), 0.75), threshold=torch.ones(6),
                                  reset_mechanism="zero")
            self.fc2 = torch.nn.Linear(6, 3)
            self.lif2 = snn.Leaky(beta=torch.full((3,), 0.875), threshold=torch.ones(3),
                                  reset_mechanism="zero")

        def forward(self, x):
            m1, m2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            spk, m1 = self.lif1(self.fc1(x), m1)
            return self.lif2(self.fc2(spk), m2)

    torch.manual_seed(0)
    return export_to_nir(Net(), torch.zeros(12))


def test_snntorch_biased_leaky_net_compiles_with_loihi_bias():
    g = snntorch_biased_graph()
    net, fit = build_net(g)
    assert all(grp.bias is not None for grp in net.neurons)
    x = (torch.rand(64, 8, 12) < 0.5).long()
    agree, *_ = agreement_and_spikes(g, x)
    assert agree >= 0.9


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "deploy.verify", *args], capture_output=True,
                          text=True, timeout=600)


def test_verify_help_and_bad_input(tmp_path):
    assert run_cli("--help").returncode == 0
    r = run_cli("--run", str(tmp_path), "--lava-samples", "0")
    assert r.returncode == 2 and "python -m export.to_nir" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    nir.write(tmp_path / "g.nir", student_graph())
    np.save(tmp_path / "x.npy", np.full((2, 3, 5), 2))
    r = run_cli("--nir", str(tmp_path / "g.nir"), "--inputs", str(tmp_path / "x.npy"),
                "--lava-samples", "0")
    assert r.returncode == 2 and "x.npy" in r.stderr
    np.save(tmp_path / "y.npy", np.zeros((2, 3, 8, 8, 1), dtype=np.uint8))  # 64 elements, wrong layout
    r = run_cli("--nir", str(tmp_path / "g.nir"), "--inputs", str(tmp_path / "y.npy"),
                "--lava-samples", "0")
    assert r.returncode == 2 and "does not match" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "student.net").exists()


def test_verify_fails_on_low_agreement_and_saves_outputs(tmp_path, monkeypatch, capsys):
    import deploy.verify as verify
    nir.write(tmp_path / "g.nir", recurrent_graph())
    np.save(tmp_path / "x.npy", (np.random.default_rng(0).random((20, 8, 6)) < 0.5).astype(np.uint8))
    args = ("--nir", str(tmp_path / "g.nir"), "--inputs", str(tmp_path / "x.npy"),
            "--lava-samples", "0", "--save-outputs")
    r = run_cli(*args, "--min-agreement", "1.01")  # a threshold no run can meet: refused
    assert r.returncode == 2 and "--min-agreement" in r.stderr.strip().splitlines()[-1]
    real = verify.agreement  # float and emulator agree here; a low agreement is simulated
    monkeypatch.setattr(verify, "agreement", lambda a, b: None if a is None or b is None
                        else 0.5 * real(a, b))
    with pytest.raises(SystemExit) as e:
        verify.main([*args, "--min-agreement", "0.9", "--device", "cpu"])
    assert e.value.code == 1
    assert "--min-agreement 0.9" in capsys.readouterr().err.strip().splitlines()[-1]
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert rep["verdict"].startswith("FAIL") and (tmp_path / "outputs.npz").is_file()
    monkeypatch.undo()
    r = run_cli(*args, "--min-agreement", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert rep["readout"] == "spikes" and rep["dt_source"].startswith("snntorch")
    out = np.load(tmp_path / "outputs.npz")
    assert out["float"].shape == out["emulator"].shape == (20, 8, 3)


@lava
def test_verify_end_to_end_with_npy_inputs(tmp_path):
    nir.write(tmp_path / "g.nir", student_graph())
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", (rng.random((12, 6, 1, 8, 8)) < 0.5).astype(np.uint8))
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 12))
    r = run_cli("--nir", str(tmp_path / "g.nir"), "--inputs", str(tmp_path / "x.npy"),
                "--labels", str(tmp_path / "y.npy"), "--lava-samples", "12", "--device", "cpu",
                "--lava-workers", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert rep["bit_exact"]["n"] == 12 and rep["bit_exact"]["mismatched_samples"] == 0
    assert rep["agreement"]["emulator_vs_lava"] == 1.0
    assert rep["emulator"]["n"] == 12 and rep["lava"]["samples_per_s"] > 0
    assert (tmp_path / "student.net").is_file() and "energy.md" in \
        (tmp_path / "verify.md").read_text()


@lava
def test_verify_residual_and_recurrent_graphs_in_lava(tmp_path):
    """Graphs netx cannot express (relays, fan-in), a recurrent one and snnTorch's own export
    of a biased Linear/Leaky net: Lava == emulator."""
    from export.to_nir import student_to_nir
    from train.models import SpikingResNet
    torch.manual_seed(0)
    graphs = {"res": student_to_nir(SpikingResNet(in_shape=(1, 8, 8), widths=(4, 8),
                                                  blocks=(1, 1)).eval()),
              "rec": recurrent_graph(nested=True), "snntorch": snntorch_biased_graph()}
    shapes = {"res": (1, 8, 8), "rec": (6,), "snntorch": (12,)}
    for name, g in graphs.items():
        nir.write(tmp_path / f"{name}.nir", g)
        x = np.random.default_rng(1).random((6, 5, *shapes[name])) < 0.4
        np.save(tmp_path / f"{name}.npy", x.astype(np.uint8))
        r = run_cli("--nir", str(tmp_path / f"{name}.nir"), "--inputs",
                    str(tmp_path / f"{name}.npy"), "--lava-samples", "6", "--device", "cpu",
                    "--min-agreement", "0")
        assert r.returncode == 0, (name, r.stderr[-2000:])
        rep = json.loads((tmp_path / "verify.json").read_text())
        assert rep["bit_exact"]["n"] == 6 and rep["bit_exact"]["mismatched_samples"] == 0, name


def test_verdict_requires_every_spike_for_our_students():
    from deploy.verify import verdict
    fe = {"n": 10, "mismatched_samples": 1, "mismatched_spikes": 3, "per_layer": {"lif1": 3}}
    report = {"bit_exact": {"n": 5, "mismatched_samples": 0, "float_vs_emulator": fe},
              "agreement": {"float_vs_emulator": 1.0}, "float": {"loihi_exact": True}}
    ok, line = verdict(report, 0.99)
    assert not ok and "3 spikes in 1 of 10 samples" in line
    report["float"]["loihi_exact"] = False  # a foreign graph's float model: agreement decides
    assert verdict(report, 0.99)[0]
    fe.update(mismatched_samples=0, mismatched_spikes=0, per_layer={"lif1": 0})
    report["float"]["loihi_exact"] = True
    ok, line = verdict(report, 0.99)
    assert ok and "every spike of 10 samples" in line


@lava
def test_verify_run_folder_with_float_student(tmp_path):
    """The default path: student.pt + student.nir in a run folder, inputs from its dataset."""
    from export.to_nir import main as export_main
    from train.checkpoint import save_checkpoint
    from train.models import SpikingCNN
    torch.manual_seed(0)
    model = SpikingCNN(in_shape=(1, 8, 8), channels=(4,), kernels=(3,), strides=(2,), hidden=(16,))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)  # random weights scaled up so that every layer spikes
    save_checkpoint(tmp_path / "student.pt", model.eval(), "student", dataset="digits",
                    encoding={"kind": "rate", "timesteps": 4, "seed": 0})
    export_main(["--run", str(tmp_path), "--samples", "8"])
    r = run_cli("--run", str(tmp_path), "--lava-samples", "6", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert rep["float"]["n"] == rep["emulator"]["n"] == 360  # the digits test split
    assert rep["bit_exact"]["mismatched_samples"] == 0 and rep["lava"]["n"] == 6
    assert rep["agreement"]["float_vs_emulator"] >= 0.99
    fe = rep["bit_exact"]["float_vs_emulator"]
    assert fe["n"] == 360 and set(fe["per_layer"]) == {"lif1", "lif2"}
    assert rep["float"]["loihi_exact"] and fe["mismatched_spikes"] == 0  # every spike
    assert rep["float"]["accuracy"] == rep["emulator"]["accuracy"]
    drop = rep["drop_points"]
    assert drop["float_vs_emulator"] == pytest.approx(
        100 * (rep["float"]["accuracy"] - rep["emulator"]["accuracy"]))
    assert drop["float_vs_lava_same_samples"] is not None
    assert "float-to-Loihi drop" in r.stdout and "Float-to-Loihi" in \
        (tmp_path / "verify.md").read_text()
