"""hwmodels.loihi reproduces Lava's fixed-point arithmetic bit for bit.

Lava-marked tests run random netx networks in Lava (deploy.lava_run) and compare every spike of
every layer at every step and the readout u and v with the emulator. The others run anywhere.
"""
import importlib.util

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy.compile import NetLayer, write_netx
from hwmodels.loihi import Emulator, lava_dense_weights, read_netx

HAS_LAVA = importlib.util.find_spec("lava") is not None and \
    importlib.util.find_spec("lava.lib.dl.netx") is not None
lava = pytest.mark.skipif(not HAS_LAVA, reason="lava-nc / lava-dl not installed")


def neuron(rng, edge=False):
    if edge:
        pick = lambda: int(rng.choice([0, 1, 4095, 4096]))  # noqa: E731
        return {"iDecay": pick(), "vDecay": pick(), "vThMant": int(rng.choice([1, 7, 50]))}
    return {"iDecay": int(rng.integers(0, 4097)), "vDecay": int(rng.integers(0, 4097)),
            "vThMant": int(rng.integers(1, 400))}


def conv(rng, cin, hw, cout, k=3, s=1, p=1, d=1, g=1, edge=False, lo=-128, hi=128):
    out = ((hw[0] + 2 * p - d * (k - 1) - 1) // s + 1, (hw[1] + 2 * p - d * (k - 1) - 1) // s + 1)
    w = rng.integers(lo, hi, (cout, cin // g, k, k))
    return NetLayer(name="", kind="conv", nodes=[], in_shape=(cin, *hw), out_shape=(cout, *out),
                    weight=w, stride=(s, s), padding=(p, p), dilation=(d, d), groups=g,
                    neuron=neuron(rng, edge))


def dense(rng, fin, fout, integrator=False, edge=False, lo=-128, hi=128):
    return NetLayer(name="", kind="dense", nodes=[], in_shape=(fin,), out_shape=(fout,),
                    weight=rng.integers(lo, hi, (fout, fin)),
                    neuron=None if integrator else neuron(rng, edge))


def flatten(shape):
    return NetLayer(name="flatten", kind="flatten", nodes=[], in_shape=shape,
                    out_shape=(int(np.prod(shape)),))


def network(case, seed):
    """(layers, input shape, input rate) of a named random network."""
    rng = np.random.default_rng(seed)
    if case == "scnn":
        c1 = conv(rng, 1, (10, 10), 4, k=3, s=2, p=1)
        c2 = conv(rng, 4, c1.out_shape[1:], 6, k=3, s=1, p=1)
        return [c1, c2, flatten(c2.out_shape), dense(rng, int(np.prod(c2.out_shape)), 12),
                dense(rng, 12, 5, integrator=True)], (1, 10, 10), 0.4
    if case == "edges":  # decays 0 / 1 / 4095 / 4096, thresholds 1 / 7 / 50
        c1 = conv(rng, 2, (6, 6), 5, k=3, s=1, p=0, edge=True)
        return [c1, flatten(c1.out_shape), dense(rng, int(np.prod(c1.out_shape)), 8, edge=True),
                dense(rng, 8, 4, edge=True), dense(rng, 4, 3, integrator=True)], (2, 6, 6), 0.5
    if case == "overflow":  # a_in beyond int16, u wraps at 24 bits, vThMant = 2^17 - 1 reached
        d1 = dense(rng, 2500, 6, lo=100, hi=128)
        d1.neuron = {"iDecay": 0, "vDecay": 0, "vThMant": 131071}
        d1.weight[1] = -d1.weight[1]
        return [d1, dense(rng, 6, 3, lo=120, hi=128, integrator=False),
                dense(rng, 3, 2, integrator=True)], (2500,), 0.95
    if case == "integrator_overflow":
        return [dense(rng, 3000, 4, lo=126, hi=128, integrator=True)], (3000,), 0.97
    if case == "inhibitory":  # all-negative matrices: netx/Lava clip -256 -> -255 (emulated)
        d1 = dense(rng, 20, 6, lo=-1, hi=4)
        d1.neuron["vThMant"] = 1
        d2 = dense(rng, 6, 4, lo=-128, hi=-1, integrator=True)
        d2.weight[0, 0] = -128
        return [d1, d2], (20,), 0.5
    if case == "conv_variants":  # groups, dilation, stride 2, no padding, conv output layer
        c1 = conv(rng, 2, (9, 9), 4, k=3, s=1, p=2, d=2, g=2)
        c2 = conv(rng, 4, c1.out_shape[1:], 3, k=2, s=2, p=0)
        return [c1, c2], (2, 9, 9), 0.5
    if case == "spiking_output":  # dense-first net on (C, H, W) input, last layer spikes
        return [flatten((1, 4, 4)), dense(rng, 16, 10), dense(rng, 10, 3)], (1, 4, 4), 0.6
    raise KeyError(case)


CASES = ["scnn", "edges", "overflow", "integrator_overflow", "inhibitory", "conv_variants",
         "spiking_output"]


def make(tmp_path, case, seed):
    layers, in_shape, rate = network(case, seed)
    path = tmp_path / f"{case}_{seed}.net"
    write_netx(path, layers, in_shape, {})
    rng = np.random.default_rng(seed + 100)
    x = (rng.random((4, 6, *in_shape)) < rate).astype(np.int64)
    return path, torch.from_numpy(x)


# ---- reference transcription of Lava's models (one sample, with the synaptic delay) -----------

def reference(path, x):
    """Literal numpy transcription of PyLifModelBitAcc / PyDenseModelBitAcc / PyConvModelFixed,
    stepping with Lava's one-step-per-synapse delay; returns (spikes dict, v of last layer) with the
    delay removed."""
    in_shape, layers = read_netx(path)
    steps = x.shape[0]
    depth = len(layers)
    u = [np.zeros(layer.out_shape, np.int64) for layer in layers]
    v = [np.zeros(layer.out_shape, np.int64) for layer in layers]
    buf = [np.zeros(layer.out_shape, np.int64) for layer in layers]
    spikes = {layer.name: [] for layer in layers}
    ro = []
    for t in range(steps + depth):
        s = x[t].numpy() if t < steps else np.zeros(in_shape, np.int64)
        for i, layer in enumerate(layers):
            a_in, w = buf[i], layer.lava_weight.numpy()
            if layer.kind == "conv":
                acc = torch.nn.functional.conv2d(
                    torch.from_numpy(s.astype(np.float64))[None], torch.from_numpy(w).double(),
                    None, layer.stride, layer.padding, layer.dilation, layer.groups)[0]
                acc = acc.numpy().astype(np.int64)
                buf[i] = (acc + (1 << 23)) % (1 << 24) - (1 << 23)
            else:
                acc = w[:, s.reshape(-1) != 0].sum(1)
                e = layer.weight_exp
                buf[i] = acc << e if e > 0 else acc >> -e
            du = u[i] * (4096 - layer.i_decay)
            d = np.sign(du) * (np.abs(du) >> 12) + (a_in << 6)
            d = np.where(d > 1 << 23, d - (1 << 24), d)
            u[i] = np.where(d <= -(1 << 23), d + (1 << 24), d)
            dv = v[i] * (4096 - layer.v_decay)
            vv = np.clip(np.sign(dv) * (np.abs(dv) >> 12) + u[i], -(1 << 23) + 1, (1 << 23) - 1)
            s = vv > (layer.vth << 6)
            vv[s] = 0
            v[i] = vv
            spikes[layer.name].append(s.copy())
        ro.append(v[-1].reshape(-1).copy())
    out = {layer.name: np.stack(spikes[layer.name])[i + 1: i + 1 + steps]
           for i, layer in enumerate(layers) if layer.has_neuron}
    return out, np.stack(ro)[depth: depth + steps]


@pytest.mark.parametrize("case", CASES)
def test_emulator_matches_reference_transcription(tmp_path, case):
    path, x = make(tmp_path, case, 0)
    result = Emulator.from_netx(path).run(x)
    for b in range(x.shape[0]):
        spikes, ro = reference(path, x[b].reshape(x.shape[1], *read_netx(path)[0]))
        for name, s in spikes.items():
            assert np.array_equal(result.spikes[name][b].numpy(), s), (case, name, b)
        assert np.array_equal(result.readout[b].numpy(), ro), (case, b)


def test_batch_rows_are_independent(tmp_path):
    path, x = make(tmp_path, "scnn", 3)
    emu = Emulator.from_netx(path)
    full = emu.run(x)
    for b in range(x.shape[0]):
        one = emu.run(x[b:b + 1])
        assert torch.equal(one.readout[0], full.readout[b])
        for name in full.spikes:
            assert torch.equal(one.spikes[name][0], full.spikes[name][b])


def test_result_contract(tmp_path):
    path, x = make(tmp_path, "scnn", 1)
    r = Emulator.from_netx(path).run(x)
    assert [layer.name for layer in r.layers] == ["conv1", "conv2", "dense3", "dense4"]
    assert set(r.spikes) == {"conv1", "conv2", "dense3"}
    assert r.spikes["conv1"].dtype == torch.bool and r.spikes["conv1"].shape == (4, 6, 4, 5, 5)
    assert r.readout.shape == (4, 6, 5) and r.readout.dtype == torch.int64
    assert torch.equal(r.predictions, r.readout[:, -1].argmax(-1))
    assert r.layers[3].has_neuron is False and r.layers[0].kind == "conv"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu(tmp_path):
    path, x = make(tmp_path, "overflow", 2)
    a, b = Emulator.from_netx(path).run(x), Emulator.from_netx(path, device="cuda").run(x)
    assert torch.equal(a.readout, b.readout.cpu())
    assert all(torch.equal(a.spikes[k], b.spikes[k].cpu()) for k in a.spikes)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 6), st.integers(2, 9))
def test_mixed_sign_int8_weights_survive_netx_and_lava(seed, rows, cols):
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (rows, cols)) << int(rng.integers(0, 4))
    w = np.clip(w, -128, 127)
    w[0, 0], w[-1, -1] = max(w[0, 0], 1), min(w[-1, -1], -1)  # both signs present
    realised, exp = lava_dense_weights(w)
    assert np.array_equal(realised >> -exp if exp < 0 else realised, w)
    assert np.all(realised % (1 << -exp) == 0)


def test_inhibitory_power_of_two_quirk():
    """All-negative matrix with min -128: netx scales to -256, Lava clips it to -255 (then
    truncates) -- documented, emulated, flagged by the compiler's fit report."""
    realised, exp = lava_dense_weights(np.array([[-128, -3]]))
    assert exp == -1 and realised.tolist() != [[-256, -6]]


@lava
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 5), st.integers(1, 7))
def test_lava_dense_weights_equal_lava_functions(seed, rows, cols):
    from deploy.lava_run import preload
    preload()
    from lava.lib.dl.netx.utils import optimize_weight_bits
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights
    rng = np.random.default_rng(seed)
    lo, hi = [(-128, 128), (0, 128), (-128, 1), (-128, 0), (-4, 5)][seed % 5]
    w = rng.integers(lo, hi, (rows, cols))
    if not w.any():
        w[0, 0] = 1
    scaled, bits, exp, _ = optimize_weight_bits(w.copy())
    mode = determine_sign_mode(scaled)
    lava_w = truncate_weights(clip_weights(scaled, mode, num_bits=8), mode, bits)
    ours, our_exp = lava_dense_weights(w)
    assert our_exp == exp and np.array_equal(ours, lava_w)


@lava
@pytest.mark.parametrize("case", CASES)
def test_emulator_equals_lava_bit_for_bit(tmp_path, case):
    from deploy.lava_run import run_lava
    for seed in (0, 1):
        path, x = make(tmp_path, case, seed)
        emu = Emulator.from_netx(path).run(x)
        got = run_lava(path, x.numpy(), emu.layers, samples_per_chunk=4, progress=False)
        assert set(got.spikes) == set(emu.spikes)
        for name in emu.spikes:
            assert np.array_equal(emu.spikes[name].numpy(), got.spikes[name]), (case, seed, name)
        assert np.array_equal(emu.readout.numpy(), got.readout), (case, seed)
        assert np.array_equal(emu.readout_u.numpy(), got.readout_u), (case, seed)
        assert emu.readout.abs().sum() > 0, "vacuous case: the readout never moved"
