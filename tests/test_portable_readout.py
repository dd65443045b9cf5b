"""export.to_nir --readout portable: a file that snnTorch's own importer runs exactly, and that our
readers read back as the integrator readout (docs/nir.md "The portable readout")."""
import warnings

import numpy as np
import pytest
import torch

import nir
from deploy.compile import build_net, compile_graph
from export.from_nir import NIRError, read_graph, student_from_nir
from export.interpreter import run_graph
from export.readout import integrator_readout, portable_readout
from export.to_nir import check_file, student_to_nir, write_nir
from hwmodels.loihi import Emulator
from train.models import SpikingCNN

ENCODING = {"kind": "rate", "timesteps": 8, "seed": 0}


def student(in_shape=(1, 12, 12), **config):
    torch.manual_seed(0)
    model = SpikingCNN(in_shape=in_shape, channels=(4, 8), hidden=(16,), **config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)  # every layer spikes (checked below)
    return model.eval()


def inputs(seed=0, batch=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(ENCODING["timesteps"], batch, 1, 12, 12, generator=g) < 0.3).float()


def portable_file(model, path):
    write_nir(path, student_to_nir(model, {"encoding": ENCODING}, readout="portable"))
    return path


def test_portable_form_has_no_integrator_and_reads_back_as_the_default(tmp_path):
    model = student()
    default = student_to_nir(model, {"encoding": ENCODING})
    path = portable_file(model, tmp_path / "p.nir")
    raw = nir.read(str(path))
    assert not any(isinstance(n, nir.I) for n in raw.nodes.values())
    assert ("readout", "output") in raw.edges
    assert raw.nodes["readout"].metadata["readout"] == "integrator"
    back = read_graph(path)
    assert set(back.edges) == set(default.edges) and set(back.nodes) == set(default.nodes)
    for name, node in default.nodes.items():
        assert type(back.nodes[name]) is type(node), name
        assert back.nodes[name].metadata == node.metadata, name
    assert np.array_equal(back.nodes["integrator"].r, default.nodes["integrator"].r)
    from train.from_nir import read_graph_bytes  # a checkpoint's copy of the user's file
    assert isinstance(read_graph_bytes(path.read_bytes()).nodes["integrator"], nir.I)
    # our reader's round trip: the rebuilt student and the compiled net are the default file's
    x = inputs()
    with torch.no_grad():
        out, rebuilt = model(x), student_from_nir(path)(x)
    assert all(torch.equal(out.spikes[n], rebuilt.spikes[n]) for n in out.spikes)
    assert torch.equal(out.logits_t, rebuilt.logits_t)
    assert check_file(path, model, [x])["ok"]
    write_nir(tmp_path / "d.nir", default)
    a, _ = compile_graph(path, tmp_path / "p.net")
    b, _ = compile_graph(tmp_path / "d.nir", tmp_path / "d.net")
    assert [vars(g) == vars(h) for g, h in zip(a.neurons, b.neurons)] == [True] * len(b.neurons)
    syn_a, syn_b = ({s.name: s for s in n.synapses} for n in (a, b))
    assert set(syn_a) == set(syn_b)
    for k, s in syn_a.items():
        assert np.array_equal(s.weight, syn_b[k].weight) and (s.src, s.dst) == \
            (syn_b[k].src, syn_b[k].dst), k
    assert (a.readout, a.output) == (b.readout, b.output) == ("state", "integrator")


def test_a_marker_that_does_not_feed_the_output_alone_is_refused(tmp_path):
    graph = student_to_nir(student(), {"encoding": ENCODING}, readout="portable")
    nodes = dict(graph.nodes)
    nodes["lif3"] = nir.CubaLIF(**{k: getattr(nodes["lif3"], k) for k in (
        "tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in")},
        metadata={**nodes["lif3"].metadata, "readout": "integrator"})
    bad = nir.NIRGraph(nodes=nodes, edges=graph.edges, metadata=graph.metadata)
    with pytest.raises(NIRError, match="node 'lif3': metadata readout = 'integrator'"):
        integrator_readout(bad)
    # an unmarked Affine straight into the Output is not read as a sum (no guess)
    plain = dict(graph.nodes)
    plain["readout"] = nir.Affine(weight=graph.nodes["readout"].weight,
                                  bias=graph.nodes["readout"].bias)
    unmarked = nir.NIRGraph(nodes=plain, edges=graph.edges, metadata=graph.metadata)
    assert integrator_readout(unmarked) is unmarked
    with pytest.raises(NIRError, match="fed by .readout., not by one neuron node"):
        build_net(unmarked)


def run_snntorch(path, x):
    """snnTorch 1.0.0's own importer on our file, one sample at a time (its Flatten keeps NIR's
    start_dim 0, which on a batch would flatten the batch too: docs/producers.md).
    Returns (the imported module, {neuron node: (T, B, ...) spikes}, (T, B, K) readout output
    per step)."""
    import snntorch as snn
    from snntorch.import_nir import import_from_nir
    from snntorch.utils import reset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = import_from_nir(nir.read(str(path)))
    neurons = {n: m for n, m in net.named_children() if isinstance(m, snn.SpikingNeuron)}
    spikes = {n: [] for n in neurons}
    readout = []
    for b in range(x.shape[1]):
        reset(net)
        seen = {n: [] for n in neurons}
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen[n].append(o.clone()))
                 for n, m in neurons.items()]
        with torch.no_grad():
            readout.append(torch.stack([net(x[t, b])[0] for t in range(x.shape[0])]))
        for h in hooks:
            h.remove()
        for n in neurons:
            spikes[n].append(torch.stack(seen[n]))
    return net, {n: torch.stack(s, 1) for n, s in spikes.items()}, torch.stack(readout, 1)


@pytest.mark.parametrize("config,kinds", [
    ({}, {"lif1": "Synaptic", "lif2": "Synaptic", "lif3": "Synaptic"}),   # CubaLIF (0.5, 0.75)
    ({"alpha": 0.0, "beta": 0.5}, {"lif1": "Leaky", "lif2": "Leaky", "lif3": "Leaky"}),  # LIF
])
def test_snntorch_imports_our_portable_file_exactly(tmp_path, config, kinds):
    """snnTorch runs NIR's float Euler step; ours (student, emulator) Loihi's integer step. They
    agree wherever Loihi's truncated decays lose nothing, which this input reaches (asserted:
    the interpreter's float and Loihi readings of the file give the same spikes). There every
    spike of every layer and every per-step readout value of snnTorch's import equals ours."""
    model = student(**config)
    path = portable_file(model, tmp_path / "p.nir")
    x = inputs()
    net, spikes, readout = run_snntorch(path, x)
    assert {n: type(m).__name__ for n, m in net.named_children() if n in kinds} == kinds
    graph = read_graph(path)
    float_ref = run_graph(nir.read(str(path)), x, arithmetic="float")  # the raw file: the
    loihi_ref = run_graph(graph, x, arithmetic="loihi")                 # interpreter reads it too
    assert torch.equal(float_ref["integrator"][-1], readout.sum(0))
    with torch.no_grad():
        out = model(x)
    emu = Emulator(build_net(graph)[0]).run(x.transpose(0, 1))
    for name in ("lif1", "lif2", "lif3"):
        assert 0 < out.spikes[name].mean() < 1, f"{name} silent or saturated: proves nothing"
        assert torch.equal(spikes[name], float_ref[name]), name          # NIR's float semantics
        assert torch.equal(float_ref[name], loihi_ref[name]), name       # semantics agree here
        assert torch.equal(spikes[name], out.spikes[name]), name          # the student
        assert torch.equal(spikes[name].transpose(0, 1).bool(), emu.spikes[name]), name
    assert torch.equal(readout, out.logits_t)                            # W s[t], every step
    unit = model.config["weight_step"] / 64                               # Loihi state units
    assert torch.equal(readout.sum(0).double() / unit, emu.readout[:, -1].double())


def test_portable_of_a_spiking_readout_is_unchanged():
    graph = student_to_nir(student(), {"encoding": ENCODING})
    nodes = {k: v for k, v in graph.nodes.items() if k not in ("readout", "integrator")}
    edges = [(a, b) for a, b in graph.edges if "readout" not in (a, b) and
             "integrator" not in (a, b)] + [("lif3", "output")]
    nodes["output"] = nir.Output(output_type={"output": np.array([16])})
    spiking = nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph.metadata)
    assert portable_readout(spiking) is spiking


def test_cli_readout_portable(tmp_path, capsys):
    from export.to_nir import main
    from train.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "student.pt", student((1, 28, 28)), "student", encoding=ENCODING,
                    dataset="mnist5k")
    main(["--run", str(tmp_path), "--samples", "4", "--readout", "portable"])
    text = capsys.readouterr().out
    assert "PASS" in text and "portable readout: summed over steps" in text
    raw = nir.read(str(tmp_path / "student.nir"))
    assert "integrator" not in raw.nodes and ("readout", "output") in raw.edges
