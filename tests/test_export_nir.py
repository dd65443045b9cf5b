"""Student -> NIR file -> reference interpreter / rebuilt student, all exactly equal."""
import numpy as np
import pytest
import torch
from torch import nn

import nir
from export.from_nir import NIRError, NIRStudent, read_graph, student_from_nir
from export.interpreter import run_graph
from export.to_nir import ExportError, compare, main, student_to_nir
from train.checkpoint import save_checkpoint
from train.data import encode, load_dataset
from train.models import SpikingCNN, SpikingResNet

ENCODING = {"kind": "rate", "timesteps": 8, "seed": 0}


def spiking(model, gain=4.0):
    """Scale random weights up so that every layer spikes."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(gain)
    return model.eval()


@pytest.fixture(scope="module")
def mnist_spikes():
    _, test, _ = load_dataset("mnist5k")
    items = [test[i] for i in range(16)]
    x = torch.stack([it[0] for it in items])
    return encode(x, torch.tensor([it[2] for it in items]), ENCODING)


@pytest.fixture(scope="module")
def scnn():
    torch.manual_seed(0)
    return spiking(SpikingCNN())


@pytest.fixture(scope="module")
def sresnet():
    torch.manual_seed(1)
    return spiking(SpikingResNet(in_shape=(3, 32, 32), widths=(8, 16, 32)))


def write_read(graph, path):
    nir.write(str(path), graph)
    return nir.read(str(path))  # type-checks the graph


def assert_same_output(a, b):
    assert set(a.spikes) == set(b.spikes)
    for name in a.spikes:
        assert torch.equal(a.spikes[name], b.spikes[name]), name
    assert torch.equal(a.logits_t, b.logits_t)


def assert_all_layers_spike(out):
    for name, s in out.spikes.items():
        assert 0 < s.mean() < 1, f"{name} is silent or saturated; the test would prove nothing"


def test_scnn_round_trip_is_exact(scnn, mnist_spikes, tmp_path):
    graph = write_read(student_to_nir(scnn, {"encoding": ENCODING}), tmp_path / "s.nir")
    with torch.no_grad():
        out = scnn(mnist_spikes)
    assert_all_layers_spike(out)
    report = compare(graph, out, mnist_spikes)
    assert report["ok"] and report["readout_max_abs"] == 0, report
    rebuilt = student_from_nir(tmp_path / "s.nir")
    assert isinstance(rebuilt, SpikingCNN) and rebuilt.config == scnn.config
    with torch.no_grad():
        assert_same_output(out, rebuilt(mnist_spikes))
    for (name, a), b in zip(scnn.layers.items(), rebuilt.layers.values()):
        if hasattr(a, "quantized_weight"):
            assert torch.equal(a.quantized_weight(), b.quantized_weight()), name
        if hasattr(a, "quantized"):
            assert all(torch.equal(p, q) for p, q in zip(a.quantized(), b.quantized())), name


def test_sresnet_round_trip_is_exact(sresnet, tmp_path):
    graph = write_read(student_to_nir(sresnet), tmp_path / "r.nir")
    assert ("stem_lif", "blocks.0.lif_b") in graph.edges  # identity shortcut
    assert {("blocks.1.conv_b", "blocks.1.lif_b"), ("blocks.1.shortcut", "blocks.1.lif_b")} \
        <= set(graph.edges)
    x = torch.rand(4, 4, 3, 32, 32)  # direct (analog) input
    with torch.no_grad():
        out = sresnet(x)
    assert_all_layers_spike(out)
    assert compare(graph, out, x)["ok"]
    rebuilt = student_from_nir(graph)
    assert isinstance(rebuilt, NIRStudent)
    with torch.no_grad():
        assert_same_output(out, rebuilt(x))


def test_graph_follows_docs_conventions(scnn):
    g = student_to_nir(scnn, {"encoding": ENCODING})
    chain = ["input", "conv1", "lif1", "conv2", "lif2", "flatten", "fc3", "lif3", "readout",
             "integrator", "output"]
    assert list(g.nodes) == chain and g.edges == list(zip(chain, chain[1:]))
    assert g.metadata == {"dt": 1e-4, "reset": "zero", "producer": "snn-kd-loihi export.to_nir",
                          "weight_step": 1 / 64, "timesteps": 8, "encoding": ENCODING}
    lif, conv = g.nodes["lif1"], g.nodes["conv1"]
    assert lif.metadata == {"reset": "zero", "dt": 1e-4}
    assert conv.metadata == {"weight_step": 1 / 64, "weight_bits": 8}
    assert tuple(lif.v_threshold.shape) == (16, 14, 14)
    np.testing.assert_allclose(1 - 1e-4 / lif.tau_syn, 0.5)
    np.testing.assert_allclose(1 - 1e-4 / lif.tau_mem, 0.75)
    np.testing.assert_allclose(lif.w_in, lif.tau_syn / 1e-4)
    np.testing.assert_allclose(g.nodes["integrator"].r, 1e4)
    k = conv.weight / conv.metadata["weight_step"]
    assert np.array_equal(k, np.round(k)) and np.abs(k).max() <= 128
    assert not np.any(conv.bias) and not np.any(g.nodes["readout"].bias)


def test_plain_lif_when_alpha_is_zero(mnist_spikes, tmp_path):
    torch.manual_seed(2)
    model = spiking(SpikingCNN(alpha=0.0))
    graph = write_read(student_to_nir(model), tmp_path / "lif.nir")
    assert all(isinstance(graph.nodes[n], nir.LIF) for n in ("lif1", "lif2", "lif3"))
    x = mnist_spikes[:, :4]
    with torch.no_grad():
        out = model(x)
        assert compare(graph, out, x)["ok"]
        assert_same_output(out, student_from_nir(graph)(x))


def test_per_channel_parameters_round_trip(tmp_path):
    torch.manual_seed(4)
    model = spiking(SpikingCNN(in_shape=(1, 8, 8), kernels=(3, 3), strides=(1, 2), hidden=(24,)))
    with torch.no_grad():  # per-neuron values on Loihi's grids, some channels plain LIF
        for lif in (m for m in model.modules() if type(m).__name__ == "LoihiCUBA"):
            lif.alpha.copy_(torch.randint(0, 5, lif.alpha.shape) / 4 % 1)
            lif.beta.copy_(1 - torch.randint(1, 4096, lif.beta.shape) / 4096)
            lif.threshold.copy_(torch.randint(32, 96, lif.threshold.shape) / 64)
    graph = write_read(student_to_nir(model), tmp_path / "pc.nir")
    x = (torch.rand(8, 6, 1, 8, 8) < 0.4).float()
    with torch.no_grad():
        out = model(x)
        assert_all_layers_spike(out)
        assert compare(graph, out, x)["ok"]
        rebuilt = student_from_nir(graph)
        assert isinstance(rebuilt, SpikingCNN)
        assert_same_output(out, rebuilt(x))


def test_cli_writes_a_checked_file(scnn, tmp_path, capsys):
    save_checkpoint(tmp_path / "student.pt", scnn, "student", encoding=ENCODING,
                    dataset="mnist5k")
    main(["--run", str(tmp_path), "--samples", "8"])
    text = capsys.readouterr().out
    assert "PASS" in text and "lif3" in text and "CubaLIF" in text
    assert "integrator" in nir.read(str(tmp_path / "student.nir")).nodes


def test_cli_refuses_a_mismatch(scnn, tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "student.pt", scnn, "student", encoding=ENCODING,
                    dataset="mnist5k")

    def broken(graph, x, **kw):
        out = run_graph(graph, x, **kw)
        out["lif2"] = 1 - out["lif2"]
        return out

    monkeypatch.setattr("export.to_nir.run_graph", broken)
    with pytest.raises(SystemExit) as e:
        main(["--run", str(tmp_path), "--samples", "4"])
    assert "lif2" in str(e.value) and "FAIL" in str(e.value)
    assert not (tmp_path / "student.nir").exists()


def test_cli_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["--run", str(tmp_path)])
    assert str(tmp_path / "student.pt") in str(e.value) and "\n" not in str(e.value)


# ---- what NIR / Loihi cannot represent ---------------------------------------------------------

def with_layer(model, name, layer, after=None):
    """A copy of a SpikingCNN with `layer` replacing `name` (or inserted after `after`)."""
    items = []
    for key, old in model.layers.items():
        items.append((key, layer if key == name else old))
        if key == after:
            items.append((name, layer))
    model = SpikingCNN(**model.config)
    model.layers = nn.ModuleDict(items)
    return model


def test_pooling_layer_is_refused(scnn):
    model = with_layer(scnn, "pool", nn.MaxPool2d(2), after="lif1")
    with pytest.raises(ExportError, match="'pool'.*MaxPool2d"):
        student_to_nir(model)


def test_linear_with_bias_is_refused(scnn):
    model = with_layer(scnn, "fc3", nn.Linear(1568, 128))
    with pytest.raises(ExportError, match="'fc3'.*bias"):
        student_to_nir(model)


def test_subtractive_reset_is_refused():
    model = SpikingCNN()
    model.layers["lif2"].reset_mechanism = "subtract"
    with pytest.raises(ExportError, match="'lif2'.*reset"):
        student_to_nir(model)


@pytest.mark.parametrize("alpha, kind", [(0.5, nir.CubaLIF), (0.0, nir.IF)])
def test_no_leak_is_an_infinite_time_constant_or_if(alpha, kind, mnist_spikes, tmp_path):
    """beta = 1 (vDecay 0) is tau_mem = r = inf, and an IF node when alpha = 0 too; the file
    reproduces every spike; so does a current that never decays (alpha = 1, iDecay 0: tau_syn =
    w_in = inf, as export.subtract_reset writes an IF reset by subtraction)."""
    torch.manual_seed(3)
    model = spiking(SpikingCNN(alpha=alpha, beta=1.0), gain=2.0)
    graph = write_read(student_to_nir(model), tmp_path / "noleak.nir")
    assert all(isinstance(graph.nodes[n], kind) for n in ("lif1", "lif2", "lif3"))
    if kind is nir.CubaLIF:
        assert np.all(np.isinf(graph.nodes["lif1"].tau_mem))
    x = mnist_spikes[:, :4]
    with torch.no_grad():
        out = model(x)
    assert_all_layers_spike(out)
    assert compare(graph, out, x)["ok"]
    model.layers["lif1"].alpha.fill_(1.0)
    graph = write_read(student_to_nir(model), tmp_path / "nodecay.nir")
    assert isinstance(graph.nodes["lif1"], nir.CubaLIF)
    assert np.all(np.isinf(graph.nodes["lif1"].tau_syn))
    with torch.no_grad():
        out = model(x)
    assert_all_layers_spike(out)
    assert compare(graph, out, x)["ok"]


def test_foreign_model_is_refused():
    with pytest.raises(ExportError, match="Sequential"):
        student_to_nir(nn.Sequential(nn.Linear(2, 2)))


# ---- unreadable files --------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(NIRError, match="nope.nir: NIR file not found$"):
        student_from_nir(tmp_path / "nope.nir")


def test_truncated_and_garbage_files(scnn, tmp_path):
    good = tmp_path / "good.nir"
    nir.write(str(good), student_to_nir(scnn))
    cut = tmp_path / "cut.nir"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = tmp_path / "junk.nir"
    junk.write_text("not hdf5\n")
    for path in (cut, junk):
        with pytest.raises(NIRError) as e:
            read_graph(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_hdf5_that_is_not_nir(tmp_path):
    import h5py
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(NIRError, match="other.h5: not a valid NIR graph"):
        read_graph(path)


def test_graph_without_neuron_readout_or_with_unknown_node_is_refused():
    """(Biases are part of the student now: tests/test_nir_student.py.)"""
    w = np.ones((2, 3), dtype=np.float32) / 64
    no_neuron = nir.NIRGraph.from_list(nir.Affine(weight=w, bias=np.ones(2)))
    with pytest.raises(NIRError, match="'output'.*'affine', not by one neuron"):
        student_from_nir(no_neuron)
    delayed = nir.NIRGraph.from_list(nir.Linear(weight=w), nir.Delay(delay=np.ones(2)),
                                     type_check=False)
    with pytest.raises(NIRError, match="delay.*Delay"):
        student_from_nir(delayed)


# ---- snnTorch's own export ---------------------------------------------------------------------

def test_snntorch_export_is_readable(tmp_path):
    import snntorch as snn
    from snntorch.export_nir import export_to_nir
    torch.manual_seed(3)
    fc1, fc2 = nn.Linear(64, 32, bias=False), nn.Linear(32, 10, bias=False)
    with torch.no_grad():  # weights on the 1/64 grid, decays on the 1/4096 grid
        fc1.weight.copy_(torch.randint(-40, 41, (32, 64)) / 64)
        fc2.weight.copy_(torch.randint(-40, 41, (10, 32)) / 64)
    net = nn.Sequential(
        nn.Flatten(), fc1,
        snn.Synaptic(alpha=torch.full((32,), 0.5), beta=torch.full((32,), 0.75),
                     threshold=torch.ones(32), init_hidden=True),
        fc2, snn.Leaky(beta=torch.full((10,), 0.875), threshold=torch.ones(10),
                       init_hidden=True, output=True))
    graph = export_to_nir(net, torch.zeros(1, 1, 8, 8), ignore_dims=[0])
    nir.write(str(tmp_path / "snntorch.nir"), graph)
    model = student_from_nir(tmp_path / "snntorch.nir")
    cubas = [m for m in model.layers.values() if type(m).__name__ == "LoihiCUBA"]
    assert torch.equal(cubas[0].quantized()[0], torch.full((32,), 0.5))
    assert torch.equal(cubas[1].quantized()[0], torch.zeros(10))  # Leaky: alpha = 0
    assert torch.equal(cubas[1].quantized()[1], torch.full((10,), 0.875))
    weights = [m.quantized_weight() for m in model.layers.values() if hasattr(m, "weight")]
    assert torch.equal(weights[0], fc1.weight) and torch.equal(weights[1], fc2.weight)
    x = (torch.rand(6, 5, 1, 8, 8) < 0.5).float() * 3
    ref = run_graph(nir.read(str(tmp_path / "snntorch.nir")), x)
    with torch.no_grad():
        out = model(x)
    for name, s in out.spikes.items():
        assert s.any() and torch.equal(s, ref[name]), name
    assert torch.equal(out.logits_t, ref["output"])


def test_rebuilt_student_trains(sresnet):
    model = student_from_nir(student_to_nir(sresnet)).train()
    out = model(torch.rand(2, 2, 3, 32, 32))
    out.logits.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert grads and all(g is not None for g in grads)
    assert out.features["last"].shape[2:] == (32, 4, 4)


# ---- the interpreter against hand-computed equations -------------------------------------------

def test_interpreter_neuron_equations():
    dt = 1e-4
    n = np.ones(1)
    cuba = nir.CubaLIF(tau_syn=n * dt / 0.5, tau_mem=n * dt / 0.25, r=n * 4.0, v_leak=0 * n,
                       v_threshold=n * 1.0, w_in=n * 2.0)  # alpha 0.5, beta 0.75
    lif = nir.LIF(tau=n * dt / 0.5, r=n * 2.0, v_leak=0 * n, v_threshold=n * 1.0)  # beta 0.5
    graph = nir.NIRGraph(nodes={"input": nir.Input(np.array([1])), "cuba": cuba, "lif": lif,
                                "sum": nir.I(r=n / dt), "output": nir.Output(np.array([1]))},
                         edges=[("input", "cuba"), ("input", "lif"), ("cuba", "sum"),
                                ("lif", "sum"), ("sum", "output")])
    x = torch.tensor([0.5, 0.5, 0.0, 1.0, 0.0]).reshape(5, 1, 1)
    out = run_graph(graph, x)
    i = v = u = 0.0
    spikes_c, spikes_l = [], []
    for xt in x.flatten().tolist():
        i = 0.5 * i + xt
        v = 0.75 * v + i
        spikes_c.append(float(v > 1.0))
        v = 0.0 if v > 1.0 else v
        u = 0.5 * u + xt
        spikes_l.append(float(u > 1.0))
        u = 0.0 if u > 1.0 else u
    assert out["cuba"].flatten().tolist() == spikes_c == [0, 1, 0, 1, 0]
    assert out["lif"].flatten().tolist() == spikes_l == [0, 0, 0, 1, 0]
    assert out["sum"].flatten().tolist() == [0, 1, 1, 3, 3]  # sum of both inputs, integrated


def test_interpreter_refuses_cycles():
    w = np.eye(2)
    graph = nir.NIRGraph(nodes={"input": nir.Input(np.array([2])), "a": nir.Linear(weight=w),
                                "b": nir.Linear(weight=w), "output": nir.Output(np.array([2]))},
                         edges=[("input", "a"), ("a", "b"), ("b", "a"), ("b", "output")],
                         type_check=False)
    with pytest.raises(ValueError, match="cycle through a, b"):
        run_graph(graph, torch.zeros(2, 1, 2))


def test_interpreter_loihi_arithmetic_is_what_the_student_computes():
    """Our students compute Loihi's integer neuron: the interpreter's loihi mode reproduces every
    spike; NIR's float equations (no truncation) do not on long runs with leaky decays."""
    torch.manual_seed(0)
    model = SpikingCNN(in_shape=(1, 8, 8), channels=(4,), kernels=(3,), strides=(2,),
                       hidden=(16,), alpha=0.3, beta=0.9).eval()
    graph = student_to_nir(model)
    x = (torch.rand(32, 64, 1, 8, 8) < 0.3).float()
    with torch.no_grad():
        out = model(x)
    assert_all_layers_spike(out)
    assert compare(graph, out, x)["ok"]
    ref = run_graph(graph, x)  # float
    assert sum(int((ref[n] != out.spikes[n]).sum()) for n in ("lif1", "lif2")) > 0


def test_interpreter_loihi_arithmetic_refusals(scnn):
    graph = student_to_nir(scnn)
    x = torch.zeros(2, 1, 1, 28, 28)
    bare = nir.NIRGraph(nodes=graph.nodes, edges=graph.edges, metadata={"dt": 1e-4},
                        type_check=False)
    with pytest.raises(NIRError, match="weight_step"):
        run_graph(bare, x, arithmetic="loihi")
    graph.nodes["lif1"].tau_syn = graph.nodes["lif1"].tau_syn * 1.001
    with pytest.raises(NIRError, match="'lif1'.*iDecay"):
        run_graph(graph, x, arithmetic="loihi")


def test_snntorch_import_from_nir_reads_our_export_as_we_do(scnn):
    """An outside oracle of the exported file: snnTorch's own import_from_nir of the default
    student's graph (up to the last spiking layer; snnTorch maps no I readout) gives the same
    spikes as our interpreter under NIR's float equations, at every step. snnTorch reads
    Flatten(start_dim=0) with the batch included, so samples run one at a time."""
    from snntorch.import_nir import import_from_nir
    graph = student_to_nir(scnn)
    last = graph_readout_source(graph)
    keep = [n for n in graph.nodes if n not in ("readout", "integrator", "output")]
    nodes = {n: graph.nodes[n] for n in keep}
    nodes["output"] = nir.Output(output_type=graph.nodes[last].output_type["output"])
    edges = [e for e in graph.edges if e[0] in keep and e[1] in keep] + [(last, "output")]
    head = nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph.metadata, type_check=False)
    x = (torch.rand(8, 6, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    ours = run_graph(head, x)[last]
    theirs = []
    for b in range(x.shape[1]):
        net, state, steps = import_from_nir(head), None, []
        with torch.no_grad():
            for t in range(x.shape[0]):
                out = net(x[t, b]) if state is None else net(x[t, b], state)
                out, state = out if isinstance(out, tuple) else (out, None)
                steps.append(out)
        theirs.append(torch.stack(steps))
    theirs = torch.stack(theirs, 1)
    assert 0 < float(ours.mean()) < 1
    assert torch.equal(theirs.float(), ours)


def graph_readout_source(graph):
    """The spiking layer that feeds the readout Affine."""
    return next(src for src, dst in graph.edges if dst == "readout")
