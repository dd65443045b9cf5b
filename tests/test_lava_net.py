"""Lava runs any Net exactly as the emulator does (deploy.lava_run): every spike of every group at
every step and the output group's u and v, through lava-dl netx (chains with a `layer/` entry)
and through Lava's own processes (any graph), in one process and sharded over workers.
Nets come from tests/test_loihi_emulator.py (built directly, not by the compiler)."""
import importlib.util
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from test_loihi_emulator import (CHAINS, chain_case, conv, dense, group, inputs,  # noqa: E402
                                 integrator, lively, random_graph, save)

from deploy.lava_run import check_aligned  # noqa: E402
from hwmodels.loihi import netx_weight_bits as weight_bits  # noqa: E402
from hwmodels.loihi import Emulator, Net, NetxError, Synapses, lava_dense_weights  # noqa: E402

HAS_LAVA = importlib.util.find_spec("lava") is not None and \
    importlib.util.find_spec("lava.lib.dl.netx") is not None
lava = pytest.mark.skipif(not HAS_LAVA, reason="lava-nc / lava-dl not installed")


def assert_same(emu, got, what):
    assert set(got.spikes) == set(emu.spikes), what
    for name in emu.spikes:
        assert np.array_equal(emu.spikes[name].numpy(), got.spikes[name]), (what, name)
    assert np.array_equal(emu.readout.numpy(), got.readout), what
    assert np.array_equal(emu.readout_u.numpy(), got.readout_u), what
    assert got.readout_kind == emu.readout_kind
    if emu.readout_kind == "spikes":
        assert np.array_equal(emu.output_spikes.numpy(), got.output_spikes), what


def run_both(tmp_path, net, x, layers, name):
    from deploy.lava_run import preload, run_lava
    preload()
    path = save(tmp_path, net, f"{name}.net", layers=layers)
    emu = Emulator(net).run(torch.from_numpy(x))
    return emu, run_lava(path, x, net, progress=False, samples_per_chunk=2)


@lava
@pytest.mark.parametrize("layers", [True, False], ids=["netx", "processes"])
@pytest.mark.parametrize("case", CHAINS)
def test_chains_equal_in_lava(tmp_path, case, layers):
    """Chains through netx's layer/ (dense_rec, flatten, bias, neuron-less integrators) and
    through Lava's processes. 'recurrent' fails unless the recurrent buffer is cleared between
    samples (checked by hand: the previous sample's last spikes leak into the next one)."""
    net, rate = chain_case(case, 0)
    x = inputs(net, 0, samples=3, steps=6, rate=rate)
    emu, got = run_both(tmp_path, net, x, layers, case)
    assert lively(emu), case
    assert_same(emu, got, case)


@lava
@settings(max_examples=6, deadline=None, suppress_health_check=[
    HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2 ** 32 - 1), in3d=st.booleans(), spikes=st.booleans(),
       edge=st.booleans())
def test_random_graphs_equal_in_lava(tmp_path, seed, in3d, spikes, edge):
    """Fan-in of 1-3, fan-out, relay-aligned conv and dense skips, recurrent dense (incl. -128 /
    127 weights), 13-bit biases, spiking and state readouts."""
    net = random_graph(seed, in3d=in3d, readout="spikes" if spikes else "state", edge=edge)
    x = inputs(net, seed % 1000, samples=2, steps=5)
    assume(lively(Emulator(net).run(torch.from_numpy(x))))
    emu, got = run_both(tmp_path, net, x, False, f"g{seed}_{in3d}_{spikes}_{edge}")
    assert_same(emu, got, seed)


@lava
def test_parallel_workers_equal_one_worker(tmp_path):
    from deploy.lava_run import preload, run_lava, run_lava_parallel
    preload()
    net = random_graph(7, readout="spikes")
    path = save(tmp_path, net)
    x = inputs(net, 7, samples=5, steps=4)
    one = run_lava(path, x, net, progress=False)
    for workers, start in ((2, "fork"), (2, "exec")):  # shards of 2 and 3 samples
        many = run_lava_parallel(path, x, net, workers=workers, progress=False, start=start)
        assert set(one.spikes) == set(many.spikes)
        for name in one.spikes:
            assert np.array_equal(one.spikes[name], many.spikes[name]), (start, name)
        assert np.array_equal(one.readout, many.readout), start
        assert np.array_equal(one.readout_u, many.readout_u), start
        assert np.array_equal(one.output_spikes, many.output_spikes), start
        assert_same(Emulator(net).run(torch.from_numpy(x)), many, start)


@lava
def test_worker_failure_names_the_worker(tmp_path):
    from deploy.lava_run import run_lava_parallel
    net = random_graph(3)
    path = save(tmp_path, net)
    path.write_bytes(b"not hdf5")
    for start in ("fork", "exec"):
        with pytest.raises(RuntimeError, match=r"lava worker 0 .*not a readable HDF5 file"):
            run_lava_parallel(path, inputs(net, 0, samples=2), net, workers=2, progress=False,
                              start=start)


@lava
def test_preload_unfixes_a_fixed_start_method(tmp_path):
    """Lava sets the 'fork' start method at import; preload() makes that work after something
    else has fixed another one (a fresh interpreter, as deploy.verify runs)."""
    net, rate = chain_case("spiking_output", 0)
    x = inputs(net, 0, rate=rate)
    np.save(tmp_path / "x.npy", x)
    code = ("import multiprocessing as mp, numpy as np; mp.set_start_method('spawn'); "
            "from deploy.lava_run import preload, run_lava; preload(); "
            f"r = run_lava({str(save(tmp_path, net))!r}, np.load({str(tmp_path / 'x.npy')!r}), "
            "progress=False); print(int(r.output_spikes.sum()))")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    emu = Emulator(net).run(torch.from_numpy(x))
    assert int(done.stdout.split()[-1]) == int(emu.output_spikes.sum()) > 0


def test_unaligned_paths_are_refused():
    net = next(n for n in map(random_graph, range(40)) if any(
        s.src.startswith("r") for s in n.synapses))
    skip = next(s for s in net.synapses if s.src.startswith("r"))
    relay = net.group(skip.src)
    feed = next(s for s in net.synapses if s.dst == relay.name)
    skip_around = Synapses("around", feed.src, skip.dst, "dense",
                           np.ones((net.group(skip.dst).size, int(np.prod(net.shape_of(feed.src)))),
                                   np.int64))
    net.synapses.append(skip_around)
    with pytest.raises(NetxError, match="'around'.*equal path lengths"):
        check_aligned(net)


# ---- weights: our numpy mirrors of netx + Lava's weight handling -------------------------------

def _lava_functions():
    from deploy.lava_run import preload
    preload()
    from lava.lib.dl.netx.utils import optimize_weight_bits
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    def realise(w, bits):
        mode = determine_sign_mode(w)
        return truncate_weights(clip_weights(w, mode, num_bits=8), mode, bits)
    return optimize_weight_bits, realise


RANGES = [(-128, 128), (0, 128), (-128, 1), (-128, 0), (-4, 5), (1, 3)]


@lava
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 5), st.integers(1, 7))
def test_lava_dense_weights_equal_lava_functions(seed, rows, cols):
    optimize_weight_bits, realise = _lava_functions()
    rng = np.random.default_rng(seed)
    lo, hi = RANGES[seed % 6]
    w = rng.integers(lo, hi, (rows, cols))
    if not w.any():
        w[0, 0] = 1
    scaled, bits, exp, _ = optimize_weight_bits(w.copy())
    ours, our_exp = lava_dense_weights(w)
    assert our_exp == exp and np.array_equal(ours, realise(scaled, bits))
    netx_scaled, netx_bits, netx_exp = weight_bits(w)
    assert np.array_equal(netx_scaled, scaled) and (netx_bits, netx_exp) == (bits, exp)


@lava
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 5), st.integers(1, 6))
def test_dense_rec_joint_scaling_equals_netx(seed, rows, cols):
    """deploy.netx._joint_realised == netx's create_dense(rec=True) followed by Lava's Dense."""
    from deploy.netx import _joint_realised
    optimize_weight_bits, realise = _lava_functions()
    rng = np.random.default_rng(seed)
    w = rng.integers(*RANGES[seed % 6], (rows, cols))
    r = rng.integers(*RANGES[(seed // 6) % 6], (rows, rows))
    if rng.random() < 0.3:
        r[0, 0] = -128
    if not np.hstack([w, r]).any():
        w[0, 0] = 1
    cat, bits, exp, _ = optimize_weight_bits(np.hstack([w, r]).copy())
    lava_w, lava_r = realise(cat[:, :cols], bits), realise(cat[:, cols:], bits)
    ours = _joint_realised([w, r])
    assert np.array_equal(ours[0], lava_w * 2.0 ** exp)
    assert np.array_equal(ours[1], lava_r * 2.0 ** exp)


# ---- Lava's Conv holds `groups` as int8 (issue 19) ---------------------------------------------

WIDE_GROUPS = [(128, 128), (256, 256), (384, 192), (260, 130)]   # (channels, groups)


@pytest.mark.parametrize("channels, groups", WIDE_GROUPS + [(64, 64), (254, 127)])
def test_regrouped_conv_computes_the_same_sums(channels, groups):
    from deploy.lava_run import LAVA_CONV_GROUPS_MAX, lava_conv_groups
    rng = np.random.default_rng(channels)
    w = rng.integers(-128, 128, (channels, channels // groups, 3, 3))
    x = torch.from_numpy((rng.random((2, channels, 5, 5)) < 0.5).astype(np.float64))
    w2, g2 = lava_conv_groups(w, groups)
    assert g2 <= LAVA_CONV_GROUPS_MAX and channels % g2 == 0
    assert g2 == groups if groups <= LAVA_CONV_GROUPS_MAX else g2 < groups
    want = torch.nn.functional.conv2d(x, torch.from_numpy(w).double(), padding=1, groups=groups)
    got = torch.nn.functional.conv2d(x, torch.from_numpy(w2).double(), padding=1, groups=g2)
    assert torch.equal(want, got)


@lava
@pytest.mark.parametrize("channels, groups", WIDE_GROUPS)
@pytest.mark.parametrize("layers", [True, False], ids=["netx", "processes"])
def test_convs_with_over_127_groups_equal_in_lava(tmp_path, channels, groups, layers):
    """A depthwise / grouped conv of >= 128 groups (a relay of a 128-channel map, as every
    residual block of sresnet (64, 128, 256) and ResNet-19 has) sent no current in Lava before
    lava_run.lava_conv_groups: Lava's Conv holds `groups` as int8 (128 -> -128)."""
    rng = np.random.default_rng(groups)
    c, hw = channels, (3, 3)
    net = Net(in_shape=(c, *hw), neurons=[group(rng, "a", (c, *hw), vth=40),
                                          integrator("out", (4,))],
              synapses=[conv(rng, "input", "a", c, c, k=3, p=1, g=groups, lo=0, hi=60),
                        dense(rng, "a", "out", c * 9, 4)])
    net.check()
    x = inputs(net, groups, samples=2, steps=3, rate=0.3)
    emu, got = run_both(tmp_path, net, x, layers, f"g{groups}")
    assert emu.spikes["a"].sum() > 0
    assert_same(emu, got, (channels, groups))


@lava
def test_split_connections_with_weight_exp_equal_in_lava(tmp_path):
    """Connections with a weight exponent (deploy.compile --weight-bits: an int8 part with
    weight_exp 3 and one with 0 into the same group), dense and conv (which runs as a Lava Dense:
    Lava's Conv ignores weight_exp), equal in Lava on every spike, u and v."""
    rng = np.random.default_rng(3)
    parts = [conv(rng, "input", "c", 2, 3), conv(rng, "input", "c", 2, 3, lo=-4, hi=5),
             dense(rng, "c", "d", 75, 4), dense(rng, "c", "d", 75, 4, lo=-4, hi=5)]
    for s, suffix, e in zip(parts, ("hi", "lo", "hi", "lo"), (3, 0, 3, 0)):
        s.name, s.exp = f"{s.name}.{suffix}", e
    net = Net(in_shape=(2, 5, 5), neurons=[group(rng, "c", (3, 5, 5), vth=600),
                                           group(rng, "d", (4,), vth=300)],
              synapses=parts, readout="spikes").check()
    x = inputs(net, 0, samples=2, steps=8, rate=0.3)
    emu, got = run_both(tmp_path, net, x, True, "split")
    assert lively(emu) and all(int(s.sum()) > 0 for s in emu.spikes.values())
    assert_same(emu, got, "split")
    emulator = Emulator(net)  # exp 3 is 8 times the connection's current without it
    spk = {"input": torch.from_numpy(x[:, 0]), "c": emu.spikes["c"][:, 1].long()}
    for s in parts[::2]:
        plain = Emulator(Net(in_shape=net.in_shape, neurons=net.neurons,
                             synapses=[replace(p, exp=0) for p in parts]))
        assert torch.equal(emulator.synapse(s, spk[s.src]),
                           8 * plain.synapse(replace(s, exp=0), spk[s.src])), s.name
