"""export.nir_student: the Loihi-exact student of graphs as other tools write them (pooling,
biases, IF neurons, recurrence, per-neuron parameters). For each: the untrained student equals
the graph compiled as it is on every spike, and after training steps that change its integers, the
student's own graph G' (nir_student_graph) compiles to a net whose emulator equals the student on
every spike; NIRStudent(G') is the same student."""
import importlib.util
import io
import sys
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

from deploy.compile import build_net
from export.from_nir import NIRError, NIRStudent, read_graph, student_from_nir
from export.nir_student import nir_student_graph
from hwmodels.loihi import Emulator

sys.path.insert(0, str(Path(__file__).parent))
import test_producers  # noqa: E402 - the producer fixtures with their dt and edits
import test_producers_compile as pc  # noqa: E402 - the producers' graph builders

FIXTURES = Path(__file__).parent / "fixtures" / "producers"
HAS_LAVA = importlib.util.find_spec("lava") is not None


def fixture(name, n=8):
    """(graph as tests/test_producers edits it, its first n inputs, the dt to pass)."""
    x = np.load(FIXTURES / name / "data.npz")["x"][:n]
    graph, dt = test_producers._graph(name)
    return graph, torch.from_numpy(x.astype(np.float32)), dt


def per_position_thresholds():
    """A conv into a neuron whose thresholds differ by position: the compiler's connection is
    dense (the student's neuron is 1-D in G')."""
    rng = np.random.default_rng(4)
    n1 = pc.lif((3, 6, 6), 0.5)
    th = np.array([0.25, 0.5, 1.0]).reshape(3, 1, 1) * 2.0 ** (np.arange(36).reshape(6, 6) % 2)
    n1.v_threshold = np.broadcast_to(th, (3, 6, 6)).copy()
    nodes = {"input": nir.Input(input_type=np.array([1, 6, 6])),
             "conv": pc.conv(rng, 3, 1, 3, padding=1, size=(6, 6)), "n1": n1}
    nodes.update(pc.head(108, rng))
    return pc.chain(nodes, {"dt": 1e-4})


def per_position_leak():
    """A conv into a LIF whose v_leak (a bias on v) differs by position: the student's neuron is
    1-D in G' (a Conv2d's bias is per channel)."""
    rng = np.random.default_rng(5)
    n1 = pc.lif((3, 6, 6), 0.5)
    n1.v_leak = np.broadcast_to(pc.grid(rng, (1, 6, 6)), (3, 6, 6)).copy()
    nodes = {"input": nir.Input(input_type=np.array([1, 6, 6])),
             "conv": pc.conv(rng, 3, 1, 3, padding=1, bias=True, size=(6, 6)), "n1": n1}
    nodes.update(pc.head(108, rng))
    return pc.chain(nodes, {"dt": 1e-4})


CASES = {  # name: (graph, input spikes (B, T, ...)[, dt])
    "snntorch_cnn (Conv2d+bias -> AvgPool2d -> LIF, 7x7 floor pooling)":
        lambda: fixture("snntorch_cnn"),
    "sinabs_if_cnn (IF -> SumPool2d -> Conv2d)": lambda: fixture("sinabs_if_cnn"),
    "spikingjelly_if_cnn (IF, r = 1/dt, biases)": lambda: fixture("spikingjelly_if_cnn"),
    "snntorch_mlp (biases into LIF)": lambda: fixture("snntorch_mlp"),
    **{f"{name} (--dt)": (lambda name=name: fixture(name)) for name in (
        "sinabs_lif_mlp", "norse_lif_mlp", "norse_lifcell_mlp", "rockpool_lif_mlp",
        "spyx_lif_mlp")},
    "recurrent CubaLIF, biases into the current and late": lambda: (
        pc.braille_like(), pc.spikes((8, 12, 6), rate=0.5)),
    "floor pooling then padded conv (dense into a conv-shaped neuron)": lambda: (
        pc.floor_pool_then_conv(1), pc.spikes((8, 6, 2, 9, 9), rate=0.5)),
    "pooling after a neuron": lambda: (pc.pool_after_neuron(), pc.spikes((8, 6, 1, 7, 7), 0,
                                                                         0.5)),
    "per-neuron thresholds (dense)": lambda: (pc.rockpool_net(), pc.spikes((8, 8, 5), rate=0.6)),
    "per-position thresholds (conv)": lambda: (per_position_thresholds(),
                                               pc.spikes((8, 6, 1, 6, 6), rate=0.5)),
    "per-position v_leak (conv)": lambda: (per_position_leak(),
                                           pc.spikes((8, 6, 1, 6, 6), rate=0.5)),
    "per-neuron decays (split groups)": lambda: (pc.spyx_net(out_betas=True),
                                                 pc.spikes((8, 8, 5), rate=0.6)),
}


def round_trip(graph):
    buf = io.BytesIO()
    nir.write(buf, graph)
    buf.seek(0)
    return nir.read(buf)


def case(name):
    made = CASES[name]()
    return made if len(made) == 3 else (*made, None)


def student_graph(model):
    return round_trip(nir_student_graph(model, None, model.dt, {"producer": "test"}))


def mismatches(model, net, x):
    """(spikes that differ between the student and the emulator of `net`, spikes, predictions
    that differ)."""
    r = Emulator(net).run(x)
    with torch.no_grad():
        out = model(x.transpose(0, 1))
    bad = total = 0
    for name, s in out.spikes.items():
        e = r.spikes[name]
        bad += int((s.transpose(0, 1).reshape(e.shape).bool() != e).sum())
        total += int(s.sum())
    return bad, total, int((r.predictions != out.logits_t.sum(0).argmax(-1)).sum())


def sgd_steps(model, x, steps=3):
    """A few Adam steps (about one weight step each) on a cross-entropy to random labels;
    returns how many integer weights changed."""
    before = {n: m.step_weight().detach().clone() for n, m in model.layers.items()
              if hasattr(m, "step_weight")}
    opt = torch.optim.Adam([{"params": list(m.parameters()), "lr": m.weight_step}
                            for m in model.layers.values() if list(m.parameters())])
    model.train()
    for i in range(steps):
        scores = model(x.transpose(0, 1)).logits_t.sum(0)
        y = torch.randint(0, scores.shape[-1], (len(scores),),
                          generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(scores, y).backward()
        opt.step()
    model.eval()
    return sum(int((model.layers[n].step_weight() != w).sum()) for n, w in before.items())


@pytest.mark.parametrize("name", list(CASES))
def test_student_equals_the_compiled_graph_then_its_own_graph_every_spike(name):
    graph, x, dt = case(name)
    model = student_from_nir(graph, dt)
    assert isinstance(model, NIRStudent)
    net, _ = build_net(graph, dt)  # the file deployed as it is
    bad, total, preds = mismatches(model, net, x)
    assert total > 0 and (bad, preds) == (0, 0), (bad, total, preds)
    mine = student_graph(model)
    again = NIRStudent(mine)  # G' gives the same student: same names, same integers
    again.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    assert sgd_steps(model, x) > 0
    for student in (model, again):
        if student is again:
            again.load_state_dict(model.state_dict())
        bad, total, preds = mismatches(student, build_net(student_graph(model))[0], x)
        assert total > 0 and (bad, preds) == (0, 0), (bad, total, preds)


def test_student_trains_its_biases_and_writes_them_where_the_compiler_reads_them():
    graph, x, _ = case("recurrent CubaLIF, biases into the current and late")
    model = student_from_nir(graph)
    lif = model.layers["lif1_lif"]
    assert lif.bias_u is not None and lif.bias_late is not None and lif.bias_v is None
    with torch.no_grad():
        lif.bias_u.add_(2 * lif.weight_step)
        lif.bias_late.sub_(lif.weight_step)
    g = student_graph(model)
    assert np.any(g.nodes["fc1"].bias) and np.any(g.nodes["lif1.w_rec"].bias)
    net, _ = build_net(g)
    assert {"bias.source", "bias.late"} <= {grp.name for grp in net.neurons}
    bad, total, preds = mismatches(model, net, x)
    assert total > 0 and (bad, preds) == (0, 0)


def test_a_decaying_state_readout_is_refused_naming_the_node():
    rng = np.random.default_rng(0)
    li = nir.LI(tau=np.full(3, 2e-4), r=np.full(3, 2.0), v_leak=np.zeros(3))
    g = pc.chain({"input": nir.Input(input_type=np.array([5])),
                  "w1": nir.Affine(weight=pc.grid(rng, (4, 5)), bias=np.zeros(4)),
                  "n1": pc.cuba(4), "w2": nir.Affine(weight=pc.grid(rng, (3, 4)),
                                                     bias=np.zeros(3)),
                  "li": li, "output": nir.Output(output_type=np.array([3]))}, {"dt": 1e-4})
    build_net(g)  # the compiler runs it
    with pytest.raises(NIRError, match="node 'li': a LI readout whose state decays"):
        student_from_nir(g)


@pytest.mark.skipif(not HAS_LAVA, reason="lava-nc not installed")
def test_lava_runs_a_trained_recurrent_student_as_the_emulator(tmp_path):
    from deploy.compile import compile_graph
    from deploy.lava_run import preload, run_lava
    from test_lava_net import assert_same
    preload()
    graph, x, _ = case("recurrent CubaLIF, biases into the current and late")
    model = student_from_nir(graph)
    assert sgd_steps(model, x) > 0
    net, _ = compile_graph(student_graph(model), tmp_path / "s.net")
    xs = x[:3].numpy().astype(np.int8)
    emu = Emulator(net).run(torch.from_numpy(xs))
    assert int(emu.spikes["lif1.lif"].sum()) > 0
    assert_same(emu, run_lava(tmp_path / "s.net", xs, net, progress=False, samples_per_chunk=3),
                "recurrent student")
