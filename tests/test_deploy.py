"""deploy.compile (NIR -> netx) and the deploy.verify command."""
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

from deploy.compile import CompileError, compile_graph
from hwmodels.loihi import Emulator, read_netx

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


def test_compile_writes_netx_layers(tmp_path):
    g = student_graph()
    fit = compile_graph(g, tmp_path / "s.net")
    with h5py.File(tmp_path / "s.net") as f:
        types = [f[f"layer/{i}/type"][0].decode() for i in range(len(f["layer"]))]
        assert types == ["input", "conv", "flatten", "dense", "dense"]
        assert f["layer/0/shape"][()].tolist() == [1, 8, 8] and "neuron" not in f["layer/0"]
        conv = f["layer/1"]
        assert conv["shape"][()].tolist() == [4, 4, 4]
        assert conv["stride"][()].tolist() == [2, 2] and conv["padding"][()].tolist() == [1, 1]
        assert np.array_equal(conv["weight"][()], np.rint(g.nodes["conv1"].weight / STEP))
        assert [int(conv[f"neuron/{k}"][()]) for k in ("iDecay", "vDecay", "vThMant")] == \
            [1024, 512, 60]
        assert [int(f[f"layer/3/neuron/{k}"][()]) for k in ("iDecay", "vDecay", "vThMant")] == \
            [2048, 100, 100]
        assert "neuron" not in f["layer/4"]  # integrator readout
    assert [r["layer"] for r in fit] == ["conv1", "dense2", "dense3"]
    assert fit[2]["integrator"] and all(r["weight_fits_8bit"] for r in fit)
    assert fit[0]["nodes"] == ["conv1", "lif1"]


def test_lif_if_and_dt_override(tmp_path):
    lif = nir.LIF(tau=np.full(10, DT * 4), r=np.full(10, 4.0), v_leak=np.zeros(10),
                  v_threshold=np.full(10, 2.0), v_reset=np.zeros(10))
    compile_graph(student_graph(lif2=lif), tmp_path / "a.net")
    with h5py.File(tmp_path / "a.net") as f:
        assert int(f["layer/3/neuron/iDecay"][()]) == 4096      # LIF: u = a_in
        assert int(f["layer/3/neuron/vDecay"][()]) == 1024      # dt/tau = 1/4
        assert int(f["layer/3/neuron/vThMant"][()]) == 128
    compile_graph(student_graph(), tmp_path / "b.net", dt=DT / 2)
    with h5py.File(tmp_path / "b.net") as f:
        assert int(f["layer/1/neuron/iDecay"][()]) == 512       # decays scale with dt


def test_fit_report_flags_possible_overflow(tmp_path):
    g = student_graph()
    g.nodes["lif2"] = cuba((10,), 1, 1, 100)  # almost no decay: state bound far above 2^23
    fit = compile_graph(g, tmp_path / "s.net")
    assert fit[1]["may_overflow_24bit"] and not fit[0]["may_overflow_24bit"]


@pytest.mark.parametrize("change, message", [
    (dict(lif2=nir.LI(tau=np.ones(10), r=np.ones(10), v_leak=np.zeros(10))), "type LI"),
    (dict(fc2=nir.Affine(weight=np.full((10, 64), STEP / 3), bias=np.zeros(10),
                         metadata={"weight_step": STEP})), "weight_step"),
    (dict(fc2=nir.Affine(weight=np.full((10, 64), 200 * STEP), bias=np.zeros(10),
                         metadata={"weight_step": STEP})), "8 bits"),
    (dict(fc2=nir.Affine(weight=np.ones((10, 64)) * STEP, bias=np.ones(10),
                         metadata={"weight_step": STEP})), "bias"),
    (dict(lif2=cuba((10,), 2048, 100, 200000)), "17 bits"),
    (dict(lif2=nir.CubaLIF(tau_syn=np.r_[np.full(5, 2e-4), np.full(5, 4e-4)],
                           tau_mem=np.full(10, 4e-4), r=np.full(10, 4.0), v_leak=np.zeros(10),
                           v_threshold=np.ones(10), v_reset=np.zeros(10),
                           w_in=np.r_[np.full(5, 2.0), np.full(5, 4.0)])), "differs"),
    (dict(fc2=nir.Affine(weight=np.zeros((10, 64)), bias=np.zeros(10),
                         metadata={"weight_step": STEP})), "all weights are zero"),
])
def test_compile_errors_name_the_node(tmp_path, change, message):
    with pytest.raises(CompileError, match=message) as err:
        compile_graph(student_graph(**change), tmp_path / "s.net")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "s.net").exists()


def test_branching_and_missing_file(tmp_path):
    g = student_graph()
    g.edges.append(("lif1", "output"))
    with pytest.raises(CompileError, match="'lif1': 2 outgoing edges"):
        compile_graph(g, tmp_path / "s.net")
    with pytest.raises(CompileError, match="not found"):
        compile_graph(tmp_path / "nope.nir", tmp_path / "s.net")


def test_sum_pool_is_fused_into_the_next_conv(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (3, 1, 3, 3))
    g = student_graph(
        conv1=nir.Conv2d(input_shape=(4, 4), weight=w * STEP, stride=1, padding=1, dilation=1,
                         groups=1, bias=np.zeros(3), metadata={"weight_step": STEP}),
        lif1=cuba((3, 4, 4), 1024, 512, 60),
        flatten=nir.Flatten(input_type={"input": np.array([3, 4, 4])}, start_dim=0),
        fc2=nir.Affine(weight=rng.integers(-128, 128, (10, 48)) * STEP, bias=np.zeros(10),
                       metadata={"weight_step": STEP}))
    nodes = {"input": g.nodes["input"], "pool": nir.SumPool2d(np.array([2, 2]), np.array([2, 2]),
                                                              np.array([0, 0]))}
    nodes.update({k: v for k, v in g.nodes.items() if k != "input"})
    names = list(nodes)
    g = nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False)
    fit = compile_graph(g, tmp_path / "p.net")
    assert fit[0]["nodes"] == ["pool", "conv1", "lif1"]
    emu = Emulator.from_netx(tmp_path / "p.net")
    x = (torch.rand(5, 1, 8, 8) < 0.5).float()
    want = F.conv2d(F.avg_pool2d(x, 2) * 4, torch.from_numpy(w).float(), padding=1)
    assert torch.equal(emu._synapse(0, emu.layers[0], x), want.long())


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


def test_snntorch_export_is_accepted(tmp_path):
    fit = compile_graph(snntorch_graph(), tmp_path / "snn.net")
    assert [(r["iDecay"], r["vDecay"]) for r in fit] == [(2048, 1024), (4096, 512)]
    assert all(r["weight_fits_8bit"] and max(abs(r["weight_min"]), r["weight_max"]) == 127
               or r["weight_min"] == -128 for r in fit)  # scaled to use the 8-bit range
    _, layers = read_netx(tmp_path / "snn.net")
    assert [layer.name for layer in layers] == ["dense1", "dense2"]
    x = (torch.rand(3, 5, 12) < 0.7).long()
    assert Emulator.from_netx(tmp_path / "snn.net").run(x).spikes["dense2"].shape == (3, 5, 3)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "deploy.verify", *args], capture_output=True,
                          text=True, timeout=300)


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


@lava
def test_verify_end_to_end_with_npy_inputs(tmp_path):
    nir.write(tmp_path / "g.nir", student_graph())
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", (rng.random((12, 6, 1, 8, 8)) < 0.5).astype(np.uint8))
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 12))
    r = run_cli("--nir", str(tmp_path / "g.nir"), "--inputs", str(tmp_path / "x.npy"),
                "--labels", str(tmp_path / "y.npy"), "--lava-samples", "12", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert rep["bit_exact"] == {"n": 12, "mismatched_samples": 0, "mismatched_indices": []}
    assert rep["agreement"]["emulator_vs_lava"] == 1.0
    assert rep["emulator"]["n"] == 12 and rep["lava"]["samples_per_s"] > 0
    assert (tmp_path / "student.net").is_file() and "energy.md" in \
        (tmp_path / "verify.md").read_text()


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
    drop = rep["drop_points"]
    assert drop["float_vs_emulator"] == pytest.approx(
        100 * (rep["float"]["accuracy"] - rep["emulator"]["accuracy"]))
    assert drop["float_vs_lava_same_samples"] is not None
    assert "float-to-Loihi drop" in r.stdout and "Float-to-Loihi" in \
        (tmp_path / "verify.md").read_text()
