"""The one NIR <-> Loihi neuron mapping: export.interpreter.loihi_neuron and its inverse nir_neuron
(what export.to_nir writes for a LoihiCUBA layer) give back the same integers."""
import numpy as np
import pytest
import torch

import nir
from common.loihi import DECAY_UNITY
from export.paths import neuron_params
from export.interpreter import GRID_RTOL, NIRError, loihi_neuron, nir_neuron
from export.to_nir import neuron_node
from train.neurons import LoihiCUBA

STEP = 1 / 64


def layer(shape, i_decay, v_decay, vth):
    cuba = LoihiCUBA(shape, weight_step=STEP)
    with torch.no_grad():
        cuba.alpha.copy_(torch.as_tensor(1 - i_decay / DECAY_UNITY, dtype=torch.float32))
        cuba.beta.copy_(torch.as_tensor(1 - v_decay / DECAY_UNITY, dtype=torch.float32))
        cuba.threshold.copy_(torch.as_tensor(vth * STEP, dtype=torch.float32))
    return cuba


def integers(ratio, what):
    """ratio * 4096 as integers, asserting they sit on the grid as the readers require."""
    x = DECAY_UNITY * np.asarray(ratio, dtype=np.float64)
    assert np.all(np.abs(x - np.rint(x)) <= GRID_RTOL), what
    return np.rint(x).astype(np.int64)


@pytest.mark.parametrize("dt", [1e-4, 1e-3, 1.0])
@pytest.mark.parametrize("kind", ["CubaLIF", "LIF", "IF"])
def test_loihi_params_to_nir_and_back_are_the_same_integers(tmp_path, dt, kind):
    rng = np.random.default_rng(int(dt * 1e4) + len(kind))
    shape = (3, 4, 5)
    i_decay = np.full(shape, DECAY_UNITY)                 # LIF: alpha = 0, u = input each step
    if kind == "CubaLIF":
        i_decay = rng.integers(1, DECAY_UNITY + 1, shape)
        i_decay.flat[:2] = (1, DECAY_UNITY)               # the ends of the range
    v_decay = rng.integers(0, DECAY_UNITY + 1, shape)
    v_decay.flat[:3] = (DECAY_UNITY, 1, 0)                # 0: no leak, tau_mem = r = inf
    if kind == "IF":
        v_decay = np.zeros(shape, dtype=np.int64)         # no leak anywhere, no current
    vth = rng.integers(1, 1 << 17, shape)
    node = neuron_node("x", layer(shape, i_decay, v_decay, vth), shape, dt)
    assert type(node).__name__ == kind
    nir.write(str(tmp_path / "n.nir"), nir.NIRGraph(
        nodes={"in": nir.Input(input_type=np.array(shape)), "x": node,
               "out": nir.Output(output_type=np.array(shape))},
        edges=[("in", "x"), ("x", "out")]))
    node = nir.read(str(tmp_path / "n.nir")).nodes["x"]   # as a reader sees it
    m = loihi_neuron(node, dt)
    assert np.array_equal(integers(m["i"], "iDecay"), i_decay)
    assert np.array_equal(integers(m["v"], "vDecay"), v_decay)
    assert np.all(m["gain"] == 1.0) and not np.any(m["leak"] * getattr(node, "v_leak", 0.0))
    assert np.array_equal(np.asarray(node.v_threshold) / STEP, vth)
    i_c, v_c, gain, theta, _ = neuron_params("x", node, dt, shape)  # the compiler's reading
    assert np.array_equal(i_c, i_decay) and np.array_equal(v_c, v_decay) and np.all(gain == 1.0)
    assert np.array_equal(theta / STEP, vth)


def test_the_integrator_and_what_has_no_inverse():
    node = nir_neuron(np.zeros(4), np.ones(4), None, 1e-4)
    m = loihi_neuron(node, 1e-4)
    assert isinstance(node, nir.I) and np.all(m["i"] == 0) and np.all(m["v"] == 1) \
        and np.all(m["gain"] == 1.0)
    with pytest.raises(NIRError, match="only as the integrator"):
        nir_neuron(np.zeros(4), np.full(4, 0.5), None, 1e-4)
    with pytest.raises(NIRError, match=r"dt/tau_syn must lie in \[0, 1\]"):
        nir_neuron(np.full(4, -0.5), np.ones(4), np.ones(4), 1e-4)
    with pytest.raises(NIRError, match=r"dt/tau_mem must lie in \[0, 1\]"):
        nir_neuron(np.ones(4), np.full(4, 1.5), np.ones(4), 1e-4)


def test_a_spiking_neuron_whose_current_never_decays():
    """iDecay 0 with vDecay 4096 (an IF reset by subtraction, export.subtract_reset): CubaLIF
    with tau_syn = w_in = inf and tau_mem = dt, read back as the same decays and gain 1."""
    node = neuron_node("x", layer((4,), np.zeros(4), np.full(4, 4096), np.ones(4)), (4,), 1e-4)
    assert isinstance(node, nir.CubaLIF)
    assert np.all(np.isinf(node.tau_syn)) and np.all(np.isinf(node.w_in))
    assert np.allclose(node.tau_mem, 1e-4)
    m = loihi_neuron(node, 1e-4)
    assert np.all(m["i"] == 0) and np.all(m["v"] == 1) and np.all(m["gain"] == 1.0)
    i_c, v_c, gain, _, _ = neuron_params("x", node, 1e-4, (4,))  # the compiler's reading
    assert np.all(i_c == 0) and np.all(v_c == DECAY_UNITY) and np.all(gain == 1.0)
