"""Norse fixtures: an MLP of LIFCell (current-based, Linear layers with biases) and one of
LIFBoxCell (plain LIF), at norse's default dt = 1e-3; exported with norse.torch.to_nir."""
import numpy as np
import norse
import norse.torch as nt
import torch
from torch import nn

from common import T, accuracy, save_fixture
from train_torch import train_and_test

DT = 1e-3


def lifcell_mlp():
    return nt.SequentialState(nn.Linear(196, 64), nt.LIFCell(),
                              nn.Linear(64, 10), nt.LIFCell())


def lifbox_mlp():
    return nt.SequentialState(nn.Linear(196, 64), nt.LIFBoxCell(),
                              nn.Linear(64, 10), nt.LIFBoxCell())


def per_step(net):
    """x (B, T, ...) -> output spikes (B, T, 10), norse's own stateful cells step by step
    (input flattened: norse.torch.to_nir maps no nn.Flatten, it writes a None node)."""
    def run(x):
        x = x.flatten(2)
        state, out = None, []
        for t in range(x.shape[1]):
            z, state = net(x[:, t], state)
            out.append(z)
        return torch.stack(out, 1)
    return run


def make_one(name, build, note, cell):
    torch.manual_seed(0)
    net = build()
    run = per_step(net)
    x, labels, tool_out, tool_pred = train_and_test(name, net, run, steps=300, lr=5e-3)
    graph = norse.torch.to_nir(net, torch.zeros(1, 196), dt=DT)
    tau_inv = float(net[1].p.tau_mem_inv)
    meta = dict(
        tool="norse", version=norse.__version__, net=note,
        exporter=f"norse.torch.to_nir(net, torch.zeros(1, 196), dt={DT})",
        dt_user=DT,
        reset_training="zero (norse default v_reset = 0)",
        readout="spike counts of the last cell over T steps; prediction = argmax (first on ties)",
        tool_accuracy=accuracy(tool_pred, labels),
        exporter_losses=f"{cell}: tau written as dt / tau_mem_inv = {DT / tau_inv:g} "
                        f"(the true tau_mem is 1 / tau_mem_inv = {1 / tau_inv:g}), so the file "
                        f"means dt^2 = {DT * DT:g} per step; no dt metadata; r = 1 "
                        + ("; CubaLIF w_in not written (1; norse adds the input to i "
                           "directly, NIR scales it by dt/tau_syn)" if cell == "LIFCell" else ""),
    )
    x = x.reshape(len(x), T, -1)  # as norse took it (and as the graph's Input says)
    data = dict(x=x, labels=labels, tool_out=tool_out.astype(np.uint8), tool_pred=tool_pred)
    save_fixture(name, graph, data, meta)


def make():
    make_one("norse_lifcell_mlp", lifcell_mlp,
             "SequentialState(Linear(196,64), LIFCell(), Linear(64,10), LIFCell()); "
             f"Linear with biases, default LIFParameters, dt {DT}, input flattened (196,), T = {T}",
             "LIFCell")
    make_one("norse_lif_mlp", lifbox_mlp,
             "SequentialState(Linear(196,64), LIFBoxCell(), Linear(64,10), LIFBoxCell()); "
             f"Linear with biases, default LIFBoxParameters, dt {DT}, "
             f"input flattened (196,), T = {T}",
             "LIFBoxCell")
