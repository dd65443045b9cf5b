"""Graphs as other tools' NIR exporters write them (docs/nir.md "Graphs of other tools") compile,
or are refused by name, and the float model accepts exactly what the compiler accepts.

Graphs are built here with the `nir` package, in the form the issue-20 table says each exporter
writes (SpikingJelly IF r = 1/dt, norse tau = dt/tau_mem_inv, snnTorch Conv2d -> AvgPool2d ->
Leaky, Rockpool per-neuron thresholds, Norse LIFCell biases, scalar parameters, batch dims)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nir
from deploy.compile import CompileError, build_net
from export.from_nir import NIRError, float_model
from export.interpreter import resolve_dt
from hwmodels.loihi import Emulator


def chain(nodes, metadata=None):
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False,
                        metadata=dict(metadata or {}))


def grid(rng, shape, scale=8):
    """Weights on a 1/scale grid (exact on Loihi's int8 grid)."""
    return rng.integers(-scale, scale + 1, shape) / scale


def spikes(shape, seed=0, rate=0.4):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < rate).float()


def same_spikes(graph, x, dt=None):
    """Emulator spikes == float-model spikes for every spiking group of the graph; the net."""
    net, fit = build_net(graph, dt)
    r = Emulator(net).run(x)
    with torch.no_grad():
        out = float_model(graph, dt)(x.transpose(0, 1))
    for name, s in out.spikes.items():
        assert torch.equal(s.transpose(0, 1).bool(), r.spikes[name]), name
    assert any(int(s.sum()) > 0 for s in out.spikes.values())
    return net, fit, r, out


# ---- 1. never silently wrong -------------------------------------------------------------------

def spikingjelly_cnn(dt=1e-4, seed=0, r=None):
    """SpikingJelly's exporter: IFNode as IF(r = 1/dt, v_threshold, v_reset = 0), no dt."""
    rng = np.random.default_rng(seed)
    ifn = lambda *s: nir.IF(r=np.full(s, 1 / dt if r is None else r),  # noqa: E731
                            v_threshold=np.ones(s), v_reset=np.zeros(s))
    return chain({
        "input": nir.Input(input_type=np.array([1, 6, 6])),
        "conv": nir.Conv2d(input_shape=(6, 6), weight=grid(rng, (3, 1, 3, 3)), stride=1,
                           padding=1, dilation=1, groups=1, bias=np.zeros(3)),
        "if1": ifn(3, 6, 6),
        "flat": nir.Flatten(input_type={"input": np.array([3, 6, 6])}, start_dim=0),
        "fc": nir.Affine(weight=grid(rng, (4, 108)), bias=np.zeros(4)),
        "if2": ifn(4),
        "output": nir.Output(output_type=np.array([4]))})


def test_spikingjelly_if_r_pins_dt():
    g = spikingjelly_cnn()
    assert resolve_dt(g) == (1e-4, "IF / I r = 1/dt")
    net, fit, r, out = same_spikes(g, spikes((8, 6, 1, 6, 6)))
    assert fit["dt"] == 1e-4 and fit["dt_source"] == "IF / I r = 1/dt"
    assert all(not row["notes"] for row in fit["groups"])  # thresholds on the grid: exact


def test_if_r_that_pins_no_single_dt_names_the_flag():
    g = spikingjelly_cnn()
    g.nodes["if2"] = nir.IF(r=np.full(4, 2e4), v_threshold=np.ones(4), v_reset=np.zeros(4))
    for call in (resolve_dt, build_net, float_model):
        with pytest.raises(NIRError, match="node 'if2': r = 20000..20000 differs from r = 10000 "
                                           "of 'if1'.*pass --dt"):
            call(g)
    assert build_net(g, dt=1e-4)[1]["dt_source"] == "override"


def test_threshold_of_zero_steps_is_refused_by_compiler_and_float_model():
    g = spikingjelly_cnn()  # read at dt = 1 the input gain is 1e4: thresholds drown
    for call in (build_net, float_model):
        with pytest.raises(CompileError, match="node 'if1': threshold 1 rounds to 0 weight steps"):
            call(g, 1.0)


def norse_lif_net(dt=1e-3, tau_mem_inv=100.0):
    """norse 1.1.0 writes LIF(tau = dt / tau_mem_inv, r = 1): a decay dt/tau of 1/dt."""
    rng = np.random.default_rng(0)
    n = 5
    return chain({"input": nir.Input(input_type=np.array([4])),
                  "fc": nir.Linear(weight=grid(rng, (n, 4))),
                  "lif": nir.LIF(tau=np.full(n, dt / tau_mem_inv), r=np.ones(n),
                                 v_leak=np.zeros(n), v_threshold=np.ones(n)),
                  "output": nir.Output(output_type=np.array([n]))})


def test_norse_decay_outside_unit_interval_is_refused_alike():
    g = norse_lif_net()
    for call in (build_net, float_model):
        with pytest.raises(NIRError, match="r = 1 everywhere.*--dt"):
            call(g)
        with pytest.raises(CompileError, match="node 'lif': tau=1e-05 with dt=0.001 gives decay "
                                               "100 outside"):
            call(g, 1e-3)
    build_net(g, 1e-6)  # dt = dt_norse^2: decay 0.1, the file's intent (docs/nir.md)
    float_model(g, 1e-6)


def test_weight_layer_that_rounds_to_zero_is_refused_alike():
    rng = np.random.default_rng(0)
    big = nir.Linear(weight=grid(rng, (3, 4)))
    tiny = nir.Linear(weight=np.full((3, 4), 1e-5))
    lif = nir.IF(r=np.ones(3), v_threshold=np.ones(3), v_reset=np.zeros(3))
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([4])), "big": big,
                            "tiny": tiny, "n": lif, "output": nir.Output(np.array([3]))},
                     edges=[("input", "big"), ("input", "tiny"), ("big", "n"), ("tiny", "n"),
                            ("n", "output")], type_check=False)
    for call in (build_net, float_model):
        with pytest.raises(CompileError, match="node 'tiny': weights into 'n' all round to 0"):
            call(g)


# ---- 2. pooling wherever it is linear ----------------------------------------------------------

def lif(shape, beta=0.5, theta=1.0, dt=1e-4):
    """snnTorch's Leaky as its exporter writes it: tau = dt/(1 - beta), r = tau/dt."""
    tau = np.full(shape, dt / (1 - beta))
    return nir.LIF(tau=tau, r=tau / dt, v_leak=np.zeros(shape), v_threshold=np.full(shape, theta),
                   v_reset=np.zeros(shape))


def conv(rng, cout, cin, k, stride=1, padding=0, bias=False, size=(8, 8)):
    return nir.Conv2d(input_shape=size, weight=grid(rng, (cout, cin, k, k)), stride=stride,
                      padding=padding, dilation=1, groups=1,
                      bias=grid(rng, (cout,)) / 4 if bias else np.zeros(cout))


def pool(kind, k, stride=None):
    return kind(np.array([k, k]), np.array([stride or k] * 2), np.array([0, 0]))


def head(n_in, rng, n=4):
    """Flatten -> Affine -> LIF -> Output (the classifier after a conv stack)."""
    return {"flat": nir.Flatten(input_type={"input": np.array([n_in])}, start_dim=0),
            "fc": nir.Affine(weight=grid(rng, (n, n_in)), bias=np.zeros(n)),
            "out": lif((n,), 0.75), "output": nir.Output(output_type=np.array([n]))}


def snntorch_conv_pool(kind=nir.AvgPool2d, k=2, stride=None, conv_stride=1, size=8, seed=0):
    """The snnTorch tutorial CNN: Conv2d -> AvgPool2d -> Leaky (conv with bias)."""
    rng = np.random.default_rng(seed)
    c = conv(rng, 4, 1, 3, stride=conv_stride, padding=1, bias=True, size=(size, size))
    m = (size + 2 - 3) // conv_stride + 1
    p = (m - k) // (stride or k) + 1
    nodes = {"input": nir.Input(input_type=np.array([1, size, size])), "conv": c,
             "pool": pool(kind, k, stride), "lif": lif((4, p, p), 0.5, theta=0.5)}
    nodes.update(head(4 * p * p, rng))
    return chain(nodes, {"dt": 1e-4})


@pytest.mark.parametrize("kind, k, stride, conv_stride, size, kernel, step", [
    (nir.AvgPool2d, 2, None, 1, 8, 4, 2),     # k + s(p - 1) = 3 + 1, stride s p = 2
    (nir.SumPool2d, 3, 2, 2, 9, 7, 4),        # overlapping pool after a strided conv: 3 + 2 * 2
    (nir.AvgPool2d, 2, None, 1, 7, 4, 2),     # 7x7 -> 3x3 (floor): the last row and column unread
])
def test_conv_then_pooling_folds_into_one_convolution(kind, k, stride, conv_stride, size, kernel,
                                                      step):
    g = snntorch_conv_pool(kind, k, stride, conv_stride, size)
    x = spikes((6, 8, 1, size, size), rate=0.5)
    net, fit, r, out = same_spikes(g, x)
    syn = net.incoming("lif")[0]
    assert syn.kind == "conv" and syn.nodes == ["conv", "pool"]
    assert syn.weight.shape[2:] == (kernel, kernel) and syn.stride == (step, step)
    assert syn.padding == (1, 1) and int(r.spikes["lif"].sum()) > 0
    assert net.group("lif").bias is not None  # the conv bias, through the pooling


def test_pooling_derivation_equals_torch():
    """conv(W, s, p) then pool(P, S) == conv(W', s S, p) with W' of size k + s(P - 1)."""
    from export.paths import fold_conv
    rng = np.random.default_rng(3)
    w = rng.normal(size=(5, 2, 3, 3))
    c = nir.Conv2d(input_shape=(11, 11), weight=w, stride=2, padding=1, dilation=1, groups=1,
                   bias=np.zeros(5))
    g = chain({"c": c})
    stages = [("synapse", "c", None), ("pool", "p", dict(kernel=(3, 2), stride=(2, 1),
                                                         padding=(0, 0), value=1 / 6,
                                                         shape=(5, 6, 6)))]
    x = torch.rand(2, 2, 11, 11, dtype=torch.float64)
    want = torch.nn.functional.avg_pool2d(
        torch.nn.functional.conv2d(x, torch.from_numpy(w), stride=2, padding=1), (3, 2), (2, 1))
    w2, p2 = fold_conv(g, stages, (2, 11, 11), tuple(want.shape[1:]))
    assert w2.shape[2:] == (3 + 2 * 2, 3 + 2 * 1) and p2["stride"] == (4, 2)
    got = torch.nn.functional.conv2d(x, torch.from_numpy(w2), stride=p2["stride"],
                                     padding=p2["padding"])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def floor_pool_then_conv(padding):
    """sinabs / snnTorch: 2x2 pooling of a 9x9 map (floor mode) before a conv and a dense."""
    rng = np.random.default_rng(1)
    ifn = lambda *s: nir.IF(r=np.ones(s), v_threshold=np.ones(s), v_reset=np.zeros(s))  # noqa
    m = 4 + 2 * padding - 2
    nodes = {"input": nir.Input(input_type=np.array([2, 9, 9])),
             "pool": pool(nir.SumPool2d, 2),
             "conv": conv(rng, 3, 2, 3, padding=padding, size=(4, 4)), "n1": ifn(3, m, m),
             "pool2": pool(nir.SumPool2d, 2)}
    nodes.update(head(3 * (m // 2) ** 2, rng))
    nodes["out"] = ifn(4)
    return chain(nodes)


@pytest.mark.parametrize("padding, kind", [(0, "conv"), (1, "dense")])
def test_floor_mode_pooling_before_a_conv_and_a_dense(padding, kind):
    """Without padding the fold is one conv; with it the conv's right padding would read the
    unread 9th row, so the path becomes a dense matrix. pool2 -> flatten -> fc is dense."""
    g = floor_pool_then_conv(padding)
    net, fit, r, out = same_spikes(g, spikes((6, 5, 2, 9, 9), rate=0.5))
    assert net.incoming("n1")[0].kind == kind
    assert net.incoming("out")[0].kind == "dense"
    assert int(r.spikes["n1"].sum()) > 0


def pool_after_neuron(kind=nir.AvgPool2d, k=3, stride=2):
    rng = np.random.default_rng(2)
    nodes = {"input": nir.Input(input_type=np.array([1, 7, 7])),
             "conv": conv(rng, 3, 1, 3, padding=1, size=(7, 7)), "n1": lif((3, 7, 7), 0.5),
             "pool": pool(kind, k, stride), "n2": lif((3, 3, 3), 0.75, theta=0.25)}
    nodes.update(head(27, rng))
    return chain(nodes, {"dt": 1e-4})


@pytest.mark.parametrize("kind, k, stride", [(nir.SumPool2d, 2, None), (nir.AvgPool2d, 3, 2)])
def test_pooling_after_a_neuron_with_odd_sizes(kind, k, stride):
    g = pool_after_neuron(kind, k, stride)
    net, fit, r, out = same_spikes(g, spikes((6, 6, 1, 7, 7), rate=0.5))
    syn = net.incoming("n2")[0]
    assert syn.kind == "conv" and syn.groups == 3 and syn.stride == (stride or k,) * 2
    assert int(r.spikes["n2"].sum()) > 0


# ---- 4. a bias into a decaying current ---------------------------------------------------------

def cuba(n, alpha=0.5, beta=0.5, theta=1.0, dt=1e-4):
    tau_syn, tau_mem = np.full(n, dt / (1 - alpha)), np.full(n, dt / (1 - beta))
    return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / dt, w_in=tau_syn / dt,
                       v_leak=np.zeros(n), v_threshold=np.full(n, theta), v_reset=np.zeros(n))


def braille_like(seed=0, recurrent=True):
    """The NIR paper's Braille RNN with biases (and Norse's LIFCell): Affine(bias) -> CubaLIF
    with a recurrent Affine(bias) -> Affine(bias) -> CubaLIF, biases into decaying currents."""
    rng = np.random.default_rng(seed)
    nodes = {"input": nir.Input(input_type=np.array([6])),
             "fc1": nir.Affine(weight=grid(rng, (8, 6)), bias=grid(rng, (8,)) / 2),
             "lif1.lif": cuba(8), "fc2": nir.Affine(weight=grid(rng, (3, 8)),
                                                      bias=grid(rng, (3,)) / 2),
             "lif2": cuba(3, 0.5, 0.75, theta=0.5), "output": nir.Output(np.array([3]))}
    edges = [("input", "fc1"), ("fc1", "lif1.lif"), ("lif1.lif", "fc2"), ("fc2", "lif2"),
             ("lif2", "output")]
    if recurrent:
        nodes["lif1.w_rec"] = nir.Affine(weight=grid(rng, (8, 8)) / 2, bias=grid(rng, (8,)) / 4)
        edges += [("lif1.lif", "lif1.w_rec"), ("lif1.w_rec", "lif1.lif")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False, metadata={"dt": 1e-4})


@pytest.mark.parametrize("recurrent", [False, True])
def test_bias_into_a_decaying_current_comes_from_a_constant_source(recurrent):
    g = braille_like(recurrent=recurrent)
    net, fit, r, out = same_spikes(g, spikes((8, 6, 6), rate=0.5))
    src = net.group("bias.source")
    assert src.size == 1 and src.vth == 0 and bool(r.spikes["bias.source"].all())
    fed = {s.dst for s in net.synapses if s.src.startswith("bias.")}
    assert {"lif1.lif", "lif2"} <= fed | {s.dst for s in net.synapses if "relay" in s.src}
    assert net.group("lif1.lif").bias is None  # the bias reaches u, not v
    if recurrent:  # w_rec's bias arrives through the recurrent edge: from step 1
        late = r.spikes["bias.late"]
        assert not late[:, 0].any() and late[:, 1:].all()
    assert int(r.spikes["lif1.lif"].sum()) > 0 and int(r.spikes["lif2"].sum()) > 0


# ---- Lava runs the new mappings exactly as the emulator -----------------------------------------

HAS_LAVA = importlib.util.find_spec("lava") is not None


def lava_cases():
    return {"conv_avgpool": (snntorch_conv_pool(), (1, 8, 8)),
            "floor_pool_dense": (floor_pool_then_conv(1), (2, 9, 9)),
            "pool_after_neuron": (pool_after_neuron(), (1, 7, 7)),
            "bias_recurrent": (braille_like(), (6,)),
            "thresholds": (rockpool_net(), (5,)),
            "decays": (spyx_net(out_betas=True), (5,))}


@pytest.mark.skipif(not HAS_LAVA, reason="lava-nc not installed")
@pytest.mark.parametrize("case", ["conv_avgpool", "floor_pool_dense", "pool_after_neuron",
                                  "bias_recurrent", "thresholds", "decays"])
def test_new_mappings_equal_in_lava(tmp_path, case):
    from deploy.compile import compile_graph
    from deploy.lava_run import preload, run_lava
    sys.path.insert(0, str(Path(__file__).parent))
    from test_lava_net import assert_same
    preload()
    graph, shape = lava_cases()[case]
    net, _ = compile_graph(graph, tmp_path / "n.net")
    x = spikes((3, 6, *shape), seed=1, rate=0.5).numpy().astype(np.int8)
    emu = Emulator(net).run(torch.from_numpy(x))
    assert sum(int(s.sum()) for k, s in emu.spikes.items() if not k.startswith("bias")) > 0
    assert_same(emu, run_lava(tmp_path / "n.net", x, net, progress=False, samples_per_chunk=3),
                case)


# ---- 3. per-neuron parameters ------------------------------------------------------------------

def rockpool_net(seed=0):
    """Rockpool's LIFTorch with trained per-neuron thresholds (CubaLIF, dense)."""
    rng = np.random.default_rng(seed)
    hid = cuba(6, 0.5, 0.5)
    hid.v_threshold = np.array([0.5, 1.0, 2.0, 1.0, 0.25, 0.5])
    out = cuba(3, 0.5, 0.75)
    out.v_threshold = np.array([1.0, 0.5, 2.0])
    return chain({"input": nir.Input(input_type=np.array([5])),
                  "w1": nir.Linear(weight=grid(rng, (6, 5))), "lif1": hid,
                  "w2": nir.Linear(weight=grid(rng, (3, 6))), "lif2": out,
                  "output": nir.Output(output_type=np.array([3]))}, {"dt": 1e-4})


def test_per_neuron_thresholds_fold_into_the_weights():
    g = rockpool_net()
    net, fit, r, out = same_spikes(g, spikes((8, 8, 5), rate=0.6))
    row = {row["group"]: row for row in fit["groups"]}["lif1"]
    fold = row["threshold_fold"]
    assert fold["theta"] == 2.0 and (fold["scale_min"], fold["scale_max"]) == (1.0, 8.0)
    assert fold["neuron_weight_rel_error_max"] == 0.0  # thresholds on a binary grid: exact
    assert any("folded" in n for n in row["notes"])
    assert int(r.spikes["lif1"].sum()) > 0 and int(r.spikes["lif2"].sum()) > 0


@pytest.mark.parametrize("per_channel", [True, False])
def test_per_neuron_thresholds_of_a_conv_layer(per_channel):
    """Per channel: the conv stays a conv, each output channel scaled; per position: the
    connection becomes dense (a convolution shares its kernel across positions)."""
    rng = np.random.default_rng(4)
    n1 = lif((3, 6, 6), 0.5)
    th = np.array([0.25, 0.5, 1.0]).reshape(3, 1, 1)
    if not per_channel:
        th = th * 2.0 ** (np.arange(36).reshape(1, 6, 6) % 2)
    n1.v_threshold = np.broadcast_to(th, (3, 6, 6)).copy()
    nodes = {"input": nir.Input(input_type=np.array([1, 6, 6])),
             "conv": conv(rng, 3, 1, 3, padding=1, size=(6, 6)), "n1": n1}
    nodes.update(head(108, rng))
    g = chain(nodes, {"dt": 1e-4})
    net, fit, r, out = same_spikes(g, spikes((6, 6, 1, 6, 6), rate=0.5))
    assert net.incoming("n1")[0].kind == ("conv" if per_channel else "dense")
    assert "threshold_fold" in fit["groups"][0] and int(r.spikes["n1"].sum()) > 0


def spyx_net(seed=0, out_betas=False):
    """spyx's LIF with per-neuron betas (dense), as NIR LIF with per-neuron tau."""
    rng = np.random.default_rng(seed)
    betas = np.array([0.5, 0.75, 0.5, 0.875, 0.75, 0.5, 0.0])
    hid = lif((7,), 0.5)
    hid.tau = 1e-4 / (1 - betas)
    hid.r = hid.tau / 1e-4
    out = lif((3,), 0.75, theta=0.5)
    if out_betas:
        out.tau = 1e-4 / (1 - np.array([0.5, 0.75, 0.75]))
        out.r = out.tau / 1e-4
    return chain({"input": nir.Input(input_type=np.array([5])),
                  "w1": nir.Linear(weight=grid(rng, (7, 5))), "lif1": hid,
                  "w2": nir.Linear(weight=grid(rng, (3, 7))), "lif2": out,
                  "output": nir.Output(output_type=np.array([3]))}, {"dt": 1e-4})


@pytest.mark.parametrize("out_betas", [False, True])
def test_per_neuron_decays_split_into_groups(out_betas):
    g = spyx_net(out_betas=out_betas)
    net, fit, r, out = same_spikes(g, spikes((8, 8, 5), rate=0.6))
    row = {row["group"]: row for row in fit["groups"]}["lif1"]
    assert row["decay_groups"] == 4 and row["parts"]["lif1.3"] == [6]  # beta 0: vDecay 4096
    assert [net.group(f"lif1.{k}").v_decay for k in range(4)] == [512, 1024, 2048, 4096]
    assert net.group("lif1").role == "relay" and net.output == "lif2"
    for k, idx in row["parts"].items():
        assert torch.equal(r.spikes[k], r.spikes["lif1"][:, :, idx])
    assert int(r.spikes["lif1"].sum()) > 0 and int(r.spikes["lif2"].sum()) > 0


def test_per_neuron_decays_in_a_recurrent_or_state_group_are_refused():
    g = spyx_net()
    g.nodes["rec"] = nir.Linear(weight=np.eye(7) / 8)
    g.edges += [("lif1", "rec"), ("rec", "lif1")]
    with pytest.raises(CompileError, match="node 'lif1': per-neuron decays in a recurrent"):
        build_net(g)


BRAILLE_BIAS = Path(__file__).resolve().parents[2] / "shared" / "peer" / \
    "braille_noDelay_bias_zero.nir"


@pytest.mark.skipif(not (HAS_LAVA and BRAILLE_BIAS.is_file()),
                    reason="lava-nc or ../shared/peer/braille_noDelay_bias_zero.nir missing")
def test_nir_paper_braille_with_biases_is_bit_exact_in_lava(tmp_path):
    """The NIR paper's Braille RNN with biases (recurrent Affine with bias, CubaLIF): compiles
    with no flag and Lava == emulator on every spike of seeded random spikes."""
    from deploy.compile import compile_graph
    from deploy.lava_run import preload, run_lava
    sys.path.insert(0, str(Path(__file__).parent))
    from test_lava_net import assert_same
    preload()
    net, fit = compile_graph(BRAILLE_BIAS, tmp_path / "b.net")
    assert fit["dt_source"].startswith("snntorch") and "bias.late" in [g.name for g in net.neurons]
    x = spikes((3, 20, 12), seed=2, rate=0.3).numpy().astype(np.int8)
    emu = Emulator(net).run(torch.from_numpy(x))
    assert int(emu.spikes["lif1.lif"].sum()) > 0 and int(emu.spikes["lif2"].sum()) > 0
    assert_same(emu, run_lava(tmp_path / "b.net", x, net, progress=False, samples_per_chunk=3),
                "braille")


# ---- 5. a tolerant reader ----------------------------------------------------------------------

def write(tmp_path, graph, name="g.nir"):
    nir.write(str(tmp_path / name), graph)
    return tmp_path / name


def sinabs_scalar_lif():
    """sinabs writes LIF parameters as scalars (one value for the layer)."""
    rng = np.random.default_rng(0)
    one = lambda v: np.array([v], dtype=np.float32)  # noqa: E731
    return chain({"input": nir.Input(input_type=np.array([6])),
                  "fc": nir.Affine(weight=grid(rng, (4, 6)), bias=np.zeros(4)),
                  "lif": nir.LIF(tau=one(2e-4), r=one(2.0), v_leak=one(0.0),
                                 v_threshold=one(1.0), v_reset=one(0.0)),
                  "output": nir.Output(output_type=np.array([4]))})


def batch_dim_graph():
    """norse / Rockpool keep the batch dim in the Input (and Output) type."""
    rng = np.random.default_rng(0)
    return chain({"input": nir.Input(input_type=np.array([1, 6])),
                  "fc": nir.Linear(weight=grid(rng, (4, 6))),
                  "lif": lif((4,), 0.5),
                  "output": nir.Output(output_type=np.array([1, 4]))}, {"dt": 1e-4})


@pytest.mark.parametrize("make, fixed", [
    (sinabs_scalar_lif, ["node 'lif': scalar tau, r, v_leak, v_threshold, v_reset broadcast "
                         "to shape (4,)"]),
    (batch_dim_graph, ["node 'input': leading batch dim of 1 dropped from its type (1, 6)",
                       "node 'output': leading batch dim of 1 dropped from its type (1, 4)"]),
])
def test_reader_repairs_what_the_intent_makes_plain(tmp_path, make, fixed):
    from export.from_nir import read_graph
    path = write(tmp_path, make())
    with pytest.raises(Exception):
        nir.read(str(path))  # nir's own type check refuses the file
    with pytest.warns(UserWarning) as seen:
        g = read_graph(path)
    assert [str(w.message) for w in seen] == [f"{path}: {line}" for line in fixed]
    net, _ = build_net(g)
    assert net.readout == "spikes"
    with pytest.warns(UserWarning):
        same_spikes(read_graph(path), spikes((4, 6, 6), rate=0.6))


def test_reader_keeps_a_one_line_error_for_what_no_reading_fixes(tmp_path):
    from export.from_nir import read_graph
    g = batch_dim_graph()
    g.nodes["input"] = nir.Input(input_type=np.array([1, 5]))  # 5 inputs into a 6-wide layer
    path = write(tmp_path, g)
    with pytest.raises(NIRError, match=f"{path}: not a valid NIR graph") as e:
        read_graph(path)
    assert "\n" not in str(e.value)


# ---- 8. one table ------------------------------------------------------------------------------

def test_a_new_linear_node_type_is_one_table_entry(monkeypatch):
    """A node type none of the readers knew: one NODE_TYPES entry, and the interpreter, the
    float model and the compiler (a probed dense path) all run it."""
    from dataclasses import dataclass
    from export.interpreter import NODE_TYPES, Stateless

    @dataclass(eq=False)
    class Negate(nir.NIRNode):
        """y = -x"""
        def __post_init__(self):
            self.input_type, self.output_type = {"input": None}, {"output": None}

    g = spyx_net()
    g.nodes["neg"] = Negate()
    g.edges = [("w1", "neg") if e == ("w1", "lif1") else e for e in g.edges] + [("neg", "lif1")]
    g.nodes["w1"].weight = -g.nodes["w1"].weight
    with pytest.raises(NIRError, match="node 'neg'"):
        build_net(g)
    monkeypatch.setitem(NODE_TYPES, Negate, ("linear", lambda node, dt, dtype:
                                             Stateless(lambda x: -x)))
    net, fit, r, out = same_spikes(g, spikes((8, 8, 5), rate=0.6))
    assert net.incoming("lif1.0")[0].nodes == ["w1", "neg"] and int(r.spikes["lif1"].sum()) > 0
