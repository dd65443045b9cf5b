"""Graphs written by other tools' own NIR exporters (tests/fixtures/producers, made by
bench/producers/make_fixtures.py with the real tools; docs/producers.md) against the tools' own
outputs on the same held-out digits.

Each fixture is read as a user would, with only the documented workaround of its exporter
(docs/producers.md): the dt to pass, and the field edits that an exporter gets wrong. Then:
- the float model agrees with the tool run under the file's semantics on >= 99 % of the
  predictions (where the fixture has such a run: `file_pred`, or the tool itself when its
  semantics are the file's);
- the compiled net (hwmodels.loihi.Emulator, proven equal to Lava elsewhere) agrees with the
  float model on >= 95 % of the predictions.
A case below the bar for a measured reason is marked xfail naming the number and its cause,
limited to the assertion; any other failure (an error reading or compiling) fails.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy.compile import CompileError, build_net
from export.from_nir import NIRError, float_model, read_graph
from hwmodels.loihi import Emulator

ROOT = Path(__file__).resolve().parent / "fixtures" / "producers"
MIN_TOOL, MIN_LOIHI = 0.99, 0.95

# Measured gaps, not bugs of the reading: an xfail names the number and its cause, and is limited
# to the assertion, so a reading error (an exception) still fails.
SNNTORCH_CNN_GAP = (
    "float vs Loihi 0.875 on the 200 digits (0.886 on the 1000 x_distill digits), issue 20 asks "
    "0.95; measured cause (bench/producers_gap.py, results/producers_gap_snntorch_cnn.json): the "
    "8-bit weights, rounding them alone gives 0.870 (0.888), random noise of the same size "
    "0.87-0.91, and the weights need 11 bits for 0.975 (0.966); the truncated decay, threshold "
    "and bias grids alone give 0.99, 0.97, 0.915 (0.973, 0.989, 0.919); 16 of the 25 "
    "disagreements are ties of the float model's spike counts (8 more differ by one spike); "
    "compiled with --weight-bits 12 it reaches 0.975 (a passing case below)")


def _norse_w_in(graph):
    """norse 1.1.0 writes no w_in for LIFCell: w_in = 1 / (dt tau_syn_inv) = tau_syn / dt^2
    with the written tau_syn = dt / tau_syn_inv and dt = 1e-3 (docs/producers.md)."""
    import nir
    for node in graph.nodes.values():
        if isinstance(node, nir.CubaLIF):
            node.w_in = np.asarray(node.tau_syn, float) / 1e-6
    return graph


def _spyx_r(graph):
    """spyx 1.0.0 writes r = beta: r = tau / dt (dt = 1, its default) (docs/producers.md)."""
    import nir
    for node in graph.nodes.values():
        if isinstance(node, nir.LIF):
            node.r = np.asarray(node.tau, float).copy()
    return graph


def _rockpool(graph):
    """Rockpool 3.1.0 (dt = 1e-3): tau, r, w_in rewritten so that NIR's Euler step is
    LIFTorch's exponential one (the bias it drops cannot be restored from the file)."""
    import nir
    dt = 1e-3
    for node in graph.nodes.values():
        if isinstance(node, nir.CubaLIF):
            a = np.exp(-dt / np.asarray(node.tau_mem, float))
            b = np.exp(-dt / np.asarray(node.tau_syn, float))
            node.tau_mem, node.r = dt / (1 - a), 1 / (1 - a)
            node.tau_syn, node.w_in = dt / (1 - b), b / (1 - b)
    return graph


# name: (dt to pass, graph edit, reference for the float model, xfail of the float model,
#        xfail of the compiled net)
CASES = {
    "snntorch_mlp": (None, None, "file_pred", None, None),
    "snntorch_cnn": (None, None, "file_pred", None, SNNTORCH_CNN_GAP),
    "sinabs_if_cnn": (None, None, "file_pred", None, None),
    "sinabs_lif_mlp": (1.0, None, "file_pred", None, None),
    "spikingjelly_if_cnn": (None, None, "tool_pred", None, None),   # dt 1e-4 from r
    "norse_lif_mlp": (1e-6, None, "tool_pred", None, None),
    "norse_lifcell_mlp": (1e-6, _norse_w_in, "tool_pred", None, None),
    "rockpool_lif_mlp": (1e-3, _rockpool, None, None, None),
    "spyx_lif_mlp": (1.0, _spyx_r, None, None, None),
}


def _fixture(name):
    folder = ROOT / name
    data = np.load(folder / "data.npz")
    return folder, {k: data[k] for k in data.files}, json.loads((folder / "meta.json").read_text())


def _graph(name):
    dt, edit = CASES[name][:2]
    graph = read_graph(ROOT / name / "graph.nir")
    return (edit(graph) if edit else graph), dt


def _float_predictions(graph, dt, x):
    model = float_model(graph, dt=dt)
    with torch.no_grad():
        out = model(torch.from_numpy(x).float().transpose(0, 1))
    return out.logits_t.sum(0).argmax(-1).numpy()


def _case(name, column):
    reason = CASES[name][column]
    if reason is None:
        return name
    return pytest.param(name, marks=pytest.mark.xfail(strict=False, raises=AssertionError,
                                                      reason=reason))


def test_fixtures_are_listed_and_small():
    on_disk = sorted(p.name for p in ROOT.iterdir() if p.is_dir())
    assert on_disk == sorted(CASES)
    total = sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file())
    assert total < 5 * 2 ** 20, total
    for name in on_disk:
        _, data, meta = _fixture(name)
        n, t = data["x"].shape[:2]
        assert data["tool_out"].shape[:2] == (n, t) and len(data["labels"]) == n
        np.testing.assert_array_equal(data["tool_pred"], data["tool_out"].sum(1).argmax(-1))
        assert meta["tool_accuracy"] == pytest.approx((data["tool_pred"] == data["labels"]).mean())


@pytest.mark.parametrize("name", [_case(n, 3) for n in CASES if CASES[n][2]])
def test_float_model_agrees_with_the_tool(name):
    """The float model of the file (with its exporter's workaround) predicts what the tool
    predicts when run under the file's semantics."""
    _, data, _ = _fixture(name)
    graph, dt = _graph(name)
    pred = _float_predictions(graph, dt, data["x"])
    agree = float(np.mean(pred == data[CASES[name][2]]))
    assert agree >= MIN_TOOL, f"{name}: float model vs {CASES[name][2]}: {agree:.3f}"


@pytest.mark.parametrize("name", [_case(n, 4) for n in CASES])
def test_compiled_net_agrees_with_the_float_model(name):
    _, data, _ = _fixture(name)
    graph, dt = _graph(name)
    net, fit = build_net(graph, dt=dt, timesteps=data["x"].shape[1])
    emu = Emulator(net).run(torch.from_numpy(data["x"]).float()).predictions.numpy()
    pred = _float_predictions(graph, dt, data["x"])
    agree = float(np.mean(emu == pred))
    assert agree >= MIN_LOIHI, f"{name}: float vs Loihi emulator: {agree:.3f}"


# The 8-bit gap closed by wider weights (deploy.compile --weight-bits; bench/weight_bits.py,
# results/weight_bits_snntorch_cnn.json): 10 bits 0.945, 11 bits 0.950, 12 bits 0.975 (0.977 on
# the 1000 x_distill digits), at 1.94x the SynOps of 8 bits.
WIDER = {"snntorch_cnn": 12}


@pytest.mark.parametrize("name", list(WIDER))
def test_compiled_net_with_wider_weights_agrees_with_the_float_model(name):
    _, data, _ = _fixture(name)
    graph, dt = _graph(name)
    net, fit = build_net(graph, dt=dt, timesteps=data["x"].shape[1], weight_bits=WIDER[name])
    assert fit["weight_bits"] == WIDER[name] and any(s.exp for s in net.synapses)
    emu = Emulator(net).run(torch.from_numpy(data["x"]).float()).predictions.numpy()
    agree = float(np.mean(emu == _float_predictions(graph, dt, data["x"])))
    assert agree >= MIN_LOIHI, f"{name} at {WIDER[name]} bits: float vs Loihi emulator: {agree:.3f}"


def test_spikingjelly_dt_is_pinned_or_asked_for():
    """SpikingJelly's IF r = 1/dt with no dt metadata: read as the dt it pins (1e-4), or an
    error naming --dt; never dt = 1."""
    graph = read_graph(ROOT / "spikingjelly_if_cnn" / "graph.nir")
    try:
        net, fit = build_net(graph, timesteps=20)
    except CompileError as e:
        assert "--dt" in str(e)
        return
    assert fit["dt"] == pytest.approx(1e-4)
    # the no-flag net (CASES runs this fixture with no flag) is the `--dt 1e-4` one
    flagged, _ = build_net(graph, dt=1e-4, timesteps=20)
    assert len(net.neurons) == len(flagged.neurons) and len(net.synapses) == len(flagged.synapses)
    for a, b in zip(net.neurons, flagged.neurons):
        assert (a.name, a.shape, a.i_decay, a.v_decay, a.vth) == \
            (b.name, b.shape, b.i_decay, b.v_decay, b.vth)
        assert np.array_equal(0 if a.bias is None else a.bias, 0 if b.bias is None else b.bias)
    for a, b in zip(net.synapses, flagged.synapses):
        assert (a.name, a.src, a.dst, a.kind) == (b.name, b.src, b.dst, b.kind)
        assert np.array_equal(a.weight, b.weight)


def test_gap_study_reproduces_both_ends():
    """bench/producers_gap.py's simulation (the compiled net in float64, each Loihi
    approximation switchable), whose numbers SNNTORCH_CNN_GAP quotes: all approximations off it
    gives the float model's spike counts, all on the emulator's, on 8 digits."""
    from bench.producers_gap import KNOBS, compile_with_floats, float_counts, run
    _, data, _ = _fixture("snntorch_cnn")
    x = data["x"][:8]
    graph, dt = _graph("snntorch_cnn")
    net, _, floats = compile_with_floats(graph, dt, x.shape[1])
    emu = Emulator(net).run(torch.from_numpy(x).float()).scores.numpy()
    assert emu.sum() > 0
    np.testing.assert_array_equal(run(net, floats, x), float_counts(graph, dt, x))
    np.testing.assert_array_equal(run(net, floats, x, **{k: True for k in KNOBS}), emu)


HAS_LAVA = importlib.util.find_spec("lava") is not None


@pytest.mark.skipif(not HAS_LAVA, reason="lava-nc not installed")
@pytest.mark.parametrize("name, bits", [(n, 8) for n in CASES] + list(WIDER.items()))
def test_lava_equals_the_emulator_on_every_spike(tmp_path, name, bits):
    """Each tool's graph, compiled as above (and with wider weights where WIDER says), runs in
    Lava exactly as the emulator computes it (every spike of every group, the output u and v)
    on 2 held-out digits."""
    from deploy.compile import write
    from deploy.lava_run import preload, run_lava
    preload()
    _, data, _ = _fixture(name)
    graph, dt = _graph(name)
    x = data["x"][:2].astype(np.int64)
    net, _ = build_net(graph, dt=dt, timesteps=x.shape[1], weight_bits=bits)
    write(tmp_path / "net.net", net, x.shape[1])
    emu = Emulator(net).run(torch.from_numpy(x))
    got = run_lava(tmp_path / "net.net", x, net, progress=False)
    assert sum(int(s.sum()) for s in emu.spikes.values()) > 0
    for group in emu.spikes:
        assert np.array_equal(emu.spikes[group].numpy(), got.spikes[group]), group
    assert np.array_equal(emu.readout.numpy(), got.readout)
    assert np.array_equal(emu.readout_u.numpy(), got.readout_u)
