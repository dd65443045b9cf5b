"""The float reference of any NIR graph: graph utilities, dt, recurrence, readout, oracles."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import nir
from export.from_nir import NIRError, NIRFloatModel, float_model, readout_kind
from export.interpreter import (DtError, flatten_graph, recurrent_edges, resolve_dt, run_graph,
                                topological_order)
from export.to_nir import student_to_nir
from train.models import SpikingCNN, StudentOutput

PEER = Path(__file__).resolve().parents[2] / "shared" / "peer"
SINABS, BRAILLE = PEER / "cnn_sinabs.nir", PEER / "braille_noDelay_noBias_subtract.nir"
peer = pytest.mark.skipif(not (SINABS.is_file() and BRAILLE.is_file()),
                          reason="reference graphs of ../shared/peer not present")
DT = 1e-4


def cuba(n, alpha, beta, theta=1.0, dt=DT):
    """snnTorch's reading: tau = dt/(1 - decay), w_in = tau_syn/dt, r = tau_mem/dt."""
    tau_syn, tau_mem = np.full(n, dt / (1 - alpha)), np.full(n, dt / (1 - beta))
    return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / dt, v_leak=np.zeros(n),
                       v_threshold=np.full(n, theta), w_in=tau_syn / dt)


def lif(n, beta, dt=DT, r=None):
    tau = np.full(n, dt / (1 - beta))
    return nir.LIF(tau=tau, r=tau / dt if r is None else np.full(n, r), v_leak=np.zeros(n),
                   v_threshold=np.ones(n))


def io(n):
    return nir.Input(np.array([n])), nir.Output(np.array([n]))


def recurrent_graph(w_in, b_in, w_rec, w_out, nested=False):
    """input -> fc1 (Affine) -> lif1 (CubaLIF 0.5/0.75 with recurrent Linear) -> fc2 -> lif2 ->
    output; `nested`: lif1 is a subgraph {input, lif, w_rec, output} as snnTorch's RSynaptic."""
    n_in, n_hid, n_out = w_in.shape[1], w_in.shape[0], w_out.shape[0]
    cell, rec = cuba(n_hid, 0.5, 0.75), nir.Linear(weight=w_rec)
    nodes = {"input": io(n_in)[0], "fc1": nir.Affine(weight=w_in, bias=b_in)}
    if nested:
        sub_in, sub_out = io(n_hid)
        nodes["lif1"] = nir.NIRGraph(
            nodes={"input": sub_in, "lif": cell, "w_rec": rec, "output": sub_out},
            edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
            metadata={"note": "inner"}, type_check=False)
        edges = [("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2")]
    else:
        nodes.update({"lif1.lif": cell, "lif1.w_rec": rec})
        edges = [("input", "fc1"), ("fc1", "lif1.lif"), ("lif1.lif", "lif1.w_rec"),
                 ("lif1.w_rec", "lif1.lif"), ("lif1.lif", "fc2")]
    nodes.update({"fc2": nir.Linear(weight=w_out), "lif2": lif(n_out, 0.875),
                  "output": io(n_out)[1]})
    edges += [("fc2", "lif2"), ("lif2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


@pytest.fixture(scope="module")
def weights():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(6, 3, generator=g).numpy(), (torch.rand(6, generator=g) * 0.2).numpy(),
            (torch.randn(6, 6, generator=g) * 0.6).numpy(), torch.randn(2, 6, generator=g).numpy())


# ---- graph utilities ---------------------------------------------------------------------------

def test_flatten_inlines_a_subgraph(weights):
    nested = recurrent_graph(*weights, nested=True)
    flat = flatten_graph(nested)
    assert list(flat.nodes) == ["input", "fc1", "lif1.lif", "lif1.w_rec", "fc2", "lif2", "output"]
    assert set(flat.edges) == set(recurrent_graph(*weights).edges)
    assert flat.nodes["lif1.lif"] is nested.nodes["lif1"].nodes["lif"]
    assert flat.metadata["subgraph_metadata"] == {"lif1": {"note": "inner"}}
    same = recurrent_graph(*weights)
    assert flatten_graph(same) is same  # a flat graph comes back unchanged


def test_flatten_two_levels_and_named_ports():
    w = np.eye(2)
    inner = nir.NIRGraph(nodes={"in": io(2)[0], "lin": nir.Linear(weight=2 * w),
                                "out": io(2)[1]},
                         edges=[("in", "lin"), ("lin", "out")], type_check=False)
    middle = nir.NIRGraph(nodes={"a": io(2)[0], "deep": inner, "z": io(2)[1]},
                          edges=[("a", "deep.in"), ("deep.out", "z")], type_check=False)
    outer = nir.NIRGraph(nodes={"input": io(2)[0], "m": middle, "output": io(2)[1]},
                         edges=[("input", "m.a"), ("m.z", "output")], type_check=False)
    flat = flatten_graph(outer)
    assert list(flat.nodes) == ["input", "m.deep.lin", "output"]
    assert flat.edges == [("input", "m.deep.lin"), ("m.deep.lin", "output")]
    x = torch.rand(3, 1, 2)
    assert torch.equal(run_graph(outer, x, dt=1)["output"], 2 * x)


def test_recurrent_edges_and_topological_order(weights):
    graph = recurrent_graph(*weights)
    rec = recurrent_edges(graph)
    assert rec == {("lif1.w_rec", "lif1.lif")}
    order = topological_order(graph, skip=rec)
    assert order.index("lif1.lif") < order.index("lif1.w_rec") < order.index("output")
    with pytest.raises(NIRError, match="cycle through .*lif1.lif, lif1.w_rec"):
        topological_order(graph)
    self_loop = nir.NIRGraph(nodes={"input": io(2)[0], "n": lif(2, 0.5), "output": io(2)[1]},
                             edges=[("input", "n"), ("n", "n"), ("n", "output")],
                             type_check=False)
    assert recurrent_edges(self_loop) == {("n", "n")}
    assert recurrent_edges(flatten_graph(recurrent_graph(*weights, nested=True))) == rec
    assert recurrent_edges(student_to_nir(SpikingCNN())) == set()


# ---- dt ----------------------------------------------------------------------------------------

def chain(*nodes, metadata=None):
    graph = nir.NIRGraph.from_list(*nodes, type_check=False)
    graph.metadata = dict(metadata or {})
    return graph


def test_resolve_dt_sources():
    w = nir.Linear(weight=np.eye(3))
    assert resolve_dt(chain(w, lif(3, 0.5)), override=5e-4) == (5e-4, "override")
    assert resolve_dt(chain(w, lif(3, 0.5, r=1.0)), override=1e-3)[0] == 1e-3
    tagged = lif(3, 0.5, dt=1e-3)
    tagged.metadata = {"dt": 1e-3}
    assert resolve_dt(chain(w, tagged, metadata={"dt": 1e-3})) == (1e-3, "graph metadata")
    assert resolve_dt(chain(w, tagged)) == (1e-3, "node 'lif' metadata")
    assert resolve_dt(chain(w, lif(3, 0.5, dt=2e-4))) == (2e-4, "snntorch convention r = tau/dt")
    both = chain(w, cuba(3, 0.25, 0.9, dt=3e-4))
    assert resolve_dt(both) == (3e-4, "snntorch convention r = tau/dt")
    ifs = chain(w, nir.IF(r=np.ones(3), v_threshold=np.ones(3)), nir.I(r=np.ones(3)))
    assert resolve_dt(ifs) == (1.0, "no time constants: discrete time")
    ifs = chain(w, nir.IF(r=np.full(3, 2.0), v_threshold=np.ones(3)), nir.I(r=np.full(3, 2.0)))
    assert resolve_dt(ifs) == (0.5, "IF / I r = 1/dt")  # SpikingJelly's r = 1/dt
    ifs = chain(w, nir.IF(r=np.full(3, 2.0), v_threshold=np.ones(3)), nir.I(r=np.ones(3)))
    with pytest.raises(DtError, match="node 'i': r = 1..1 differs from r = 2 of 'if'.*--dt"):
        resolve_dt(ifs)
    assert resolve_dt(chain(w)) == (1.0, "no time constants: discrete time")


@peer
def test_resolve_dt_of_the_peer_graphs():
    assert resolve_dt(nir.read(str(BRAILLE))) == (1e-4, "snntorch convention r = tau/dt")
    assert resolve_dt(nir.read(str(SINABS))) == (1.0, "no time constants: discrete time")


@pytest.mark.parametrize("graph, match", [
    (chain(lif(3, 0.5, dt=1e-4), lif(3, 0.5, dt=2e-4)), "node 'lif_1': r\\*dt/tau != 1"),
    (chain(nir.CubaLIF(tau_syn=np.full(3, 1e-3), tau_mem=np.full(3, 2e-3), r=np.full(3, 20.0),
                       v_leak=np.zeros(3), v_threshold=np.ones(3), w_in=np.full(3, 5.0))),
     "node 'cubalif': w_in\\*dt/tau_syn != 1"),
    (chain(lif(3, 0.5, r=1.0)), "node 'lif': r = 1 everywhere"),
    (chain(nir.LI(tau=np.full(3, 1e-3), r=np.ones(3), v_leak=np.zeros(3))),
     "node 'li': LI has a time constant"),
    (chain(lif(3, 0.5), metadata={"dt": "fast"}), "graph metadata: dt = 'fast' is not a number"),
    (chain(lif(3, 0.5), metadata={"dt": -1.0}), "not a positive time step"),
])
def test_resolve_dt_errors_name_the_flag(graph, match):
    with pytest.raises(DtError, match=match) as e:
        resolve_dt(graph)
    assert "--dt" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, NIRError)


def test_metadata_dts_must_agree():
    node = lif(3, 0.5)
    node.metadata = {"dt": 2e-4}
    with pytest.raises(DtError, match="node 'lif' metadata: dt = 0.0002 disagrees with graph "
                                      "metadata dt = 0.0001; pass --dt"):
        resolve_dt(chain(node, metadata={"dt": 1e-4}))
    with pytest.raises(DtError, match="--dt 0 is not a positive"):
        resolve_dt(chain(node), override=0)


# ---- recurrence against a hand-written loop ----------------------------------------------------

def hand_loop(x, w_in, b_in, w_rec, w_out):
    """I = 0.5 I + (W_in x + b + W_rec s[t-1]); V = 0.75 V + I; s = V > 1, V = 0 where s;
    then LIF beta 0.875 on W_out s, all in float32."""
    w_in, b_in, w_rec, w_out = (torch.as_tensor(a, dtype=torch.float32)
                                for a in (w_in, b_in, w_rec, w_out))
    batch = x.shape[1]
    i = v = s = torch.zeros(batch, w_in.shape[0])
    u = torch.zeros(batch, w_out.shape[0])
    hidden, out = [], []
    for xt in x:
        i = 0.5 * i + (F.linear(xt, w_in, b_in) + F.linear(s, w_rec))
        v = 0.75 * v + i
        s = (v > 1).float()
        v = torch.where(s > 0, torch.zeros_like(v), v)
        u = 0.875 * u + F.linear(s, w_out)
        z = (u > 1).float()
        u = torch.where(z > 0, torch.zeros_like(u), u)
        hidden.append(s)
        out.append(z)
    return torch.stack(hidden), torch.stack(out)


@pytest.mark.parametrize("nested", [False, True])
def test_recurrent_cuba_equals_hand_loop(weights, nested):
    graph = recurrent_graph(*weights, nested=nested)
    x = (torch.rand(25, 5, 3, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    out = run_graph(graph, x)
    hidden, spikes = hand_loop(x, *weights)
    assert torch.equal(out["lif1.lif"], hidden) and torch.equal(out["lif2"], spikes)
    assert 0.05 < hidden.mean() < 0.95 and spikes.sum() > 0
    no_rec = hand_loop(x, weights[0], weights[1], 0 * weights[2], weights[3])[0]
    assert not torch.equal(no_rec, hidden)  # the recurrent input matters in this test


def test_cycles_through_two_neurons_or_none_are_refused():
    w = np.eye(2)
    two = nir.NIRGraph(nodes={"input": io(2)[0], "a": lif(2, 0.5), "w": nir.Linear(weight=w),
                              "b": lif(2, 0.5), "v": nir.Linear(weight=w), "output": io(2)[1]},
                       edges=[("input", "a"), ("a", "w"), ("w", "b"), ("b", "v"), ("v", "a"),
                              ("b", "output")], type_check=False)
    with pytest.raises(NIRError, match="cycle through a, b, v, w passes 2 neurons"):
        float_model(two)
    delayed = chain(nir.Linear(weight=w), nir.Delay(delay=np.ones(2)), lif(2, 0.5))
    with pytest.raises(NIRError, match="node 'delay': Delay has no float meaning"):
        float_model(delayed)(torch.zeros(2, 1, 2))


# ---- readout -----------------------------------------------------------------------------------

def test_state_readout_increments_sum_to_the_final_state():
    w = np.array([[0.5, -0.25], [0.125, 1.0]])
    graph = chain(nir.Affine(weight=w, bias=np.array([0.1, 0.0])),
                  nir.CubaLI(tau_syn=np.full(2, 2e-4), tau_mem=np.full(2, 4e-4),
                             r=np.full(2, 4.0), v_leak=np.zeros(2), w_in=np.full(2, 2.0)),
                  metadata={"dt": DT})  # LI / CubaLI alone do not pin dt
    assert readout_kind(graph) == "state"
    x = torch.rand(12, 3, 2, generator=torch.Generator().manual_seed(2))
    out = float_model(graph)(x)
    v = run_graph(graph, x)["cubali"]
    assert out.spikes == {} and out.logits_t.shape == (12, 3, 2)
    torch.testing.assert_close(out.logits_t.sum(0), v[-1], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.logits_t.cumsum(0), v, rtol=0, atol=1e-6)


def test_readout_must_be_a_neuron():
    assert readout_kind(chain(nir.Linear(weight=np.eye(2)), lif(2, 0.5), nir.Flatten(
        input_type={"input": np.array([2])}))) == "spikes"
    with pytest.raises(NIRError, match="node 'linear': the Output reads a Linear"):
        readout_kind(chain(lif(2, 0.5), nir.Linear(weight=np.eye(2))))


def test_own_graph_gives_the_trained_student():
    torch.manual_seed(0)
    graph = student_to_nir(SpikingCNN().eval())
    assert readout_kind(graph) == "state"
    assert isinstance(float_model(graph), SpikingCNN)
    with pytest.raises(NIRError, match="--dt 0.001 differs from dt = 0.0001"):
        float_model(graph, dt=1e-3)


# ---- the reference graphs of other tools -------------------------------------------------------

@peer
@pytest.mark.parametrize("path, shape, hidden", [
    (SINABS, (2, 34, 34), ["1", "3", "6", "10", "12"]),
    (BRAILLE, (12,), ["lif1.lif", "lif2"]),
])
def test_float_model_of_peer_graphs(path, shape, hidden):
    model = float_model(path)
    assert isinstance(model, NIRFloatModel) and model.readout == "spikes"
    x = (torch.rand(40, 4, *shape, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    out = model(x)
    assert isinstance(out, StudentOutput) and list(out.spikes) == hidden
    k = out.logits_t.shape[-1]
    assert out.logits_t.shape == (40, 4, k) and torch.equal(out.logits_t, out.spikes[hidden[-1]])
    for name, s in out.spikes.items():
        assert s.shape[:2] == (40, 4) and s.sum() >= 10, name
        assert set(s.unique().tolist()) <= {0.0, 1.0}, name
    assert out.logits_t.sum(0).sum() >= 10  # spike counts are the score


@peer
def test_braille_recurrence_is_used():
    graph = nir.read(str(BRAILLE))
    x = (torch.rand(40, 4, 12, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    with_rec = run_graph(graph, x)["lif1.lif"]
    graph.nodes["lif1.w_rec"].weight = np.zeros_like(graph.nodes["lif1.w_rec"].weight)
    assert not torch.equal(run_graph(graph, x)["lif1.lif"], with_rec)


# ---- snnTorch as an outside oracle -------------------------------------------------------------

def test_snntorch_export_equals_snntorch(tmp_path):
    snn = pytest.importorskip("snntorch")
    from snntorch import utils
    from snntorch.export_nir import export_to_nir
    torch.manual_seed(5)
    grid = lambda *s: torch.randint(8, 16, s) / 16  # noqa: E731 - beta in [0.5, 1): docs/nir.md
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        snn.Leaky(beta=grid(4, 6, 6), threshold=0.5 + torch.rand(4, 6, 6), init_hidden=True,
                  reset_mechanism="zero"),
        nn.Flatten(), nn.Linear(144, 5),
        snn.Leaky(beta=grid(5), threshold=0.5 + torch.rand(5), init_hidden=True, output=True,
                  reset_mechanism="zero"))
    with torch.no_grad():
        net[0].weight.mul_(3)
        net[3].weight.mul_(8)
    assert net[0].bias.abs().min() > 0 and net[3].bias.abs().min() > 0
    nir.write(str(tmp_path / "net.nir"), export_to_nir(net, torch.zeros(1, 2, 6, 6),
                                                       ignore_dims=[0]))
    model = float_model(tmp_path / "net.nir")
    assert model.dt == 1e-4 and model.readout == "spikes"
    assert isinstance(model.graph.nodes["0"], nir.Conv2d) and np.any(model.graph.nodes["3"].bias)
    x = (torch.rand(30, 6, 2, 6, 6) < 0.3).float()
    utils.reset(net)
    ref = {"1": [], "4": []}
    with torch.no_grad():
        for xt in x:
            h = xt
            for i, m in enumerate(net):
                h = m(h)
                h = h[0] if isinstance(h, tuple) else h
                if str(i) in ref:
                    ref[str(i)].append(h)
    out = model(x)
    assert list(out.spikes) == ["1", "4"]
    for name, spikes in ref.items():
        spikes = torch.stack(spikes)
        assert 0.02 < spikes.mean() < 0.9, name
        assert torch.equal(out.spikes[name], spikes), name
    assert torch.equal(out.logits_t, out.spikes["4"])
