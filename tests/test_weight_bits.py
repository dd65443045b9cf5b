"""deploy.compile --weight-bits B: a connection of B-bit weights as two int8 connections into the
same group (weight_exp B - 8 and 0), exact, off by default (docs/loihi_net.md "Weights above 8
bits"). Lava == emulator on split connections: tests/test_lava_net.py."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nir
from deploy.compile import CompileError, build_net, split_max, split_weights, write
from deploy.netx import problem
from export.from_nir import float_model
from hwmodels.loihi import Emulator, Synapses
from hwmodels.netfile import has_layers, read_net

ROOT = Path(__file__).resolve().parents[1]


def if_cnn(scale, seed=0, theta=1.0):
    """IF CNN (SpikingJelly's form, r = 1/dt, dt = 1e-4) whose weights lie on a 1/scale grid
    with a largest |weight| of (scale - 1) / scale: exact on (1 + log2 scale)-bit weights."""
    rng = np.random.default_rng(seed)

    def weights(shape):
        w = rng.integers(-scale + 1, scale, shape)
        w.flat[0] = scale - 1
        return w / scale

    def ifn(*s):
        return nir.IF(r=np.full(s, 1e4), v_threshold=np.full(s, theta), v_reset=np.zeros(s))

    nodes = {"input": nir.Input(input_type=np.array([1, 6, 6])),
             "conv": nir.Conv2d(input_shape=(6, 6), weight=weights((3, 1, 3, 3)), stride=1,
                                padding=1, dilation=1, groups=1, bias=np.zeros(3)),
             "if1": ifn(3, 6, 6),
             "flat": nir.Flatten(input_type={"input": np.array([3, 6, 6])}, start_dim=0),
             "fc": nir.Affine(weight=weights((4, 108)) / 4, bias=np.zeros(4)),
             "if2": ifn(4),
             "output": nir.Output(output_type=np.array([4]))}
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False,
                        metadata={"dt": 1e-4})


def spikes(shape, seed=0, rate=0.4):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < rate).float()


def differing_spikes(graph, net, x):
    """Spikes of the emulator that differ from the float model's, over all groups."""
    r = Emulator(net).run(x)
    with torch.no_grad():
        out = float_model(graph)(x.transpose(0, 1))
    assert sum(int(s.sum()) for s in out.spikes.values()) > 0
    return sum(int((s.transpose(0, 1).bool() != r.spikes[k]).sum()) for k, s in out.spikes.items())


@pytest.mark.parametrize("bits", range(9, 17))
def test_split_is_exact_int8(bits):
    exp = bits - 8
    hi = split_max(exp)
    k = np.concatenate([np.arange(-hi - 1, -hi + 300), np.arange(-300, 301),
                        np.arange(hi - 300, hi + 1)]).reshape(1, -1)
    parts = split_weights([Synapses("c", "input", "g", "dense", k)], exp)
    total = sum(s.weight * 2 ** s.exp for s in parts)
    np.testing.assert_array_equal(total, k)
    assert {s.exp for s in parts} == {exp, 0}
    for s in parts:
        assert s.weight.min() >= -128 and s.weight.max() <= 127
    assert hi >= (1 << (bits - 1)) - 1 - (128 if bits == 16 else 0)


def test_weights_on_a_finer_grid_run_exactly_with_more_bits():
    """Weights on a 12-bit grid: at 8 bits the emulator's spikes differ from the float model's,
    at 12 bits every spike of every group is the float model's (IF: no decay to truncate)."""
    graph, x = if_cnn(2048), spikes((16, 12, 1, 6, 6))
    net8, fit8 = build_net(graph)
    net12, fit12 = build_net(graph, weight_bits=12)
    assert all(s.exp == 0 for s in net8.synapses)
    assert sorted(s.exp for s in net12.synapses) == [0, 0, 4, 4]
    assert differing_spikes(graph, net8, x) > 0
    assert differing_spikes(graph, net12, x) == 0
    for row8, row12 in zip(fit8["groups"], fit12["groups"]):
        assert row12["weight_bits"] == 12 and row12["weight_rel_error"] == 0
        assert row8["weight_rel_error"] > 0 and "weight_bits" not in row8
        assert 15 * row8["vThMant"] < row12["vThMant"] <= 17 * row8["vThMant"]  # ~2^(12 - 8)


def test_default_and_8_bits_are_todays_file(tmp_path):
    """weight_bits=8 writes the same bytes as no option; a graph already on the 8-bit grid is
    not split at any B (same bytes too); a split net gets no netx layer/ chain."""
    for graph in (if_cnn(2048), if_cnn(128)):
        write(tmp_path / "a.net", build_net(graph)[0], 8)
        write(tmp_path / "b.net", build_net(graph, weight_bits=8)[0], 8)
        assert (tmp_path / "a.net").read_bytes() == (tmp_path / "b.net").read_bytes()
    write(tmp_path / "c.net", build_net(if_cnn(128), weight_bits=14)[0], 8)
    assert (tmp_path / "a.net").read_bytes() == (tmp_path / "c.net").read_bytes()
    net, _ = build_net(if_cnn(2048), weight_bits=12)
    write(tmp_path / "d.net", net, 8)
    back = read_net(tmp_path / "d.net")
    assert [(s.name, s.exp) for s in back.synapses] == [(s.name, s.exp) for s in net.synapses]
    assert "weight exponent" in problem(net) and not has_layers(tmp_path / "d.net")


def test_threshold_that_does_not_fit_names_the_group():
    """The threshold grows by 2^(B - 8): past 17 bits a one-line CompileError names the group."""
    graph = if_cnn(2048, theta=100.0)
    build_net(graph)  # 8 bits: fits
    with pytest.raises(CompileError, match=r"node 'if1'.*17 bits.*--weight-bits 12"):
        build_net(graph, weight_bits=12)
    for bad in (7, 17, 10.5):
        with pytest.raises(CompileError, match="weight_bits"):
            build_net(graph, weight_bits=bad)


def test_cli_weight_bits(tmp_path):
    path = tmp_path / "g.nir"
    nir.write(path, if_cnn(2048))
    run = lambda *a: subprocess.run([sys.executable, "-m", "deploy.compile", str(path),  # noqa
                                     str(tmp_path / "g.net"), *a], cwd=ROOT, text=True,
                                    capture_output=True)
    bad = run("--weight-bits", "17")
    assert bad.returncode == 2 and "--weight-bits" in bad.stderr
    good = run("--weight-bits", "12")
    assert good.returncode == 0, good.stderr
    assert "(12 bit, error 0.00%)" in good.stdout
    assert sorted(s.exp for s in read_net(tmp_path / "g.net").synapses) == [0, 0, 4, 4]


@pytest.mark.skipif(importlib.util.find_spec("lava") is None, reason="lava-nc not installed")
def test_verify_weight_bits(tmp_path):
    """deploy.verify --weight-bits 12: the split net passes (Lava == emulator on 2 samples; float
    == emulator, the weights being on the 12-bit grid) and verify.json records the bits."""
    nir.write(tmp_path / "g.nir", if_cnn(2048))
    np.save(tmp_path / "x.npy", spikes((6, 8, 1, 6, 6)).numpy().astype(np.uint8))
    r = subprocess.run([sys.executable, "-m", "deploy.verify", "--nir", str(tmp_path / "g.nir"),
                        "--inputs", str(tmp_path / "x.npy"), "--lava-samples", "2",
                        "--lava-workers", "1", "--device", "cpu", "--weight-bits", "12"],
                       cwd=ROOT, text=True, capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert rep["fit"]["weight_bits"] == 12 and rep["bit_exact"]["mismatched_samples"] == 0
    assert rep["verdict"].startswith("PASS")
    assert sorted(s.exp for s in read_net(tmp_path / "student.net").synapses) == [0, 0, 4, 4]


def test_per_neuron_decay_parts_keep_the_exponent():
    """spyx's per-neuron betas split a group into one group per value (deploy.compile.
    split_group); at 12 bits each part gets both halves of every connection, with their
    exponents, and the net agrees with the float model at least as well as at 8 bits
    (measured: 0.99 at 8 bits, 0.995 at 12, on the fixture's 200 digits)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_producers import _float_predictions, _fixture, _graph
    _, data, _ = _fixture("spyx_lif_mlp")
    graph, dt = _graph("spyx_lif_mlp")
    x = torch.from_numpy(data["x"]).float()
    pred = _float_predictions(graph, dt, data["x"])
    agree = {}
    for bits in (8, 12):
        net, _ = build_net(graph, dt=dt, timesteps=x.shape[1], weight_bits=bits)
        agree[bits] = float(np.mean(Emulator(net).run(x).predictions.numpy() == pred))
    parts = [g.name for g in net.neurons if g.name.startswith("layer_1.")]
    assert len(parts) > 1
    for part in parts:
        assert sorted(s.exp for s in net.incoming(part)) == [0, 4], part
    assert agree[12] >= agree[8] >= 0.95, agree
