"""Rockpool fixture: LinearTorch -> LIFTorch MLP with trained per-neuron thresholds and biases,
Rockpool's defaults otherwise (dt 1e-3, StepPWL multi-spike, reset by subtraction); exported
with rockpool.nn.modules.to_nir."""
import numpy as np
import rockpool
import torch
from rockpool.nn.combinators import Sequential
from rockpool.nn.modules import LIFTorch, LinearTorch

from common import T, accuracy, predictions, save_fixture, test_inputs
from train_torch import run_eval, train_cached

DT = 1e-3
TAU_MEM, TAU_SYN = 20e-3, 10e-3


def lif(n):
    return LIFTorch(n, tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=torch.ones(n),
                    bias=torch.zeros(n), dt=DT)


def mlp():
    return Sequential(LinearTorch((196, 64)), lif(64), LinearTorch((64, 10)), lif(10))


def per_step(net):
    """x (B, T, 1, 14, 14) -> output spikes (B, T, 10): Rockpool's (B, T, N) evolve."""
    def run(x):
        net.reset_state()
        out, _, _ = net(x.flatten(2))
        return out
    return run


def make():
    torch.manual_seed(0)
    net = mlp()
    run = per_step(net)
    # CE on spike counts / 200: StepPWL emits up to hundreds of spikes per step here
    train_cached("rockpool_lif_mlp", net, lambda x: run(x).sum(1) / 200, steps=300, lr=2e-3,
                 frozen=("tau_mem", "tau_syn"))
    x, labels = test_inputs()
    tool_out = run_eval(run, x)
    tool_pred = predictions(tool_out.sum(1))
    from rockpool.nn.modules import to_nir
    graph = to_nir(net, torch.zeros(1, 196))
    th = net[1].threshold.detach().numpy()
    bias = net[1].bias.detach().numpy()
    meta = dict(
        tool="rockpool", version=rockpool.__version__,
        net=f"Sequential(LinearTorch((196,64)), LIFTorch(64), LinearTorch((64,10)), LIFTorch(10)); "
            f"tau_mem {TAU_MEM}, tau_syn {TAU_SYN} (not trained), dt {DT}, "
            f"per-neuron threshold and bias trained (CE on spike counts / 200); "
            f"input flattened (196,), T = {T}",
        exporter="rockpool.nn.modules.to_nir(net, torch.zeros(1, 196))",
        dt_user=DT,
        reset_training="subtract (LIFTorch always subtracts), spike_generation_fn StepPWL "
                       "(floor(v / threshold) spikes per step, Rockpool's default)",
        readout="spike counts of the last LIFTorch over T steps; "
                "prediction = argmax (first on ties)",
        tool_accuracy=accuracy(tool_pred, labels),
        tool_max_spikes_per_step=int(tool_out.max()),
        hidden_threshold_range=[float(th.min()), float(th.max())],
        hidden_bias_range=[float(bias.min()), float(bias.max())],
        exporter_losses="LIF bias written as v_leak = 0 (dropped); w_in not written (1); "
                        "r = tau_mem exp(-dt/tau_mem)/dt; no dt metadata; reset by subtraction "
                        "and multi-spike not written; Input type keeps the batch dim (1, 196)",
    )
    x = x.reshape(len(x), T, -1)  # as Rockpool took it
    # StepPWL counts exceed 255: uint16
    data = dict(x=x, labels=labels, tool_out=tool_out.astype(np.uint16), tool_pred=tool_pred)
    save_fixture("rockpool_lif_mlp", graph, data, meta)
