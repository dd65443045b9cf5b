"""sinabs fixtures: an IF CNN (IAFSqueeze, SumPool2d after the neuron, 2x2 pooling of a 7x7 map)
and an LIF MLP with scalar tau_mem, trained with sinabs' defaults (MultiSpike, reset by
subtraction); exported with sinabs.nir.to_nir."""
import numpy as np
import sinabs
import sinabs.layers as sl
import torch
from sinabs.activation import MembraneReset, MembraneSubtract, MultiSpike, SingleSpike
from torch import nn

from common import T, accuracy, predictions, save_with_file_run
from train_torch import run_eval, train_and_test

TAU_MEM = 10.0


def if_cnn(spike_fn=MultiSpike, reset_fn=None):
    reset_fn = reset_fn or MembraneSubtract()
    iaf = lambda: sl.IAFSqueeze(num_timesteps=T, spike_fn=spike_fn, reset_fn=reset_fn)  # noqa
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), iaf(), sl.SumPool2d(2),      # 14 -> 7
        nn.Conv2d(8, 16, 3, padding=1, bias=False), iaf(), sl.SumPool2d(2),     # 7 -> 3 (floor)
        nn.Flatten(), nn.Linear(16 * 3 * 3, 10, bias=False), iaf())


def lif_mlp(spike_fn=MultiSpike, reset_fn=None):
    reset_fn = reset_fn or MembraneSubtract()
    lif = lambda: sl.LIFSqueeze(tau_mem=TAU_MEM, num_timesteps=T, spike_fn=spike_fn,  # noqa
                                reset_fn=reset_fn)
    return nn.Sequential(nn.Flatten(), nn.Linear(196, 64, bias=False), lif(),
                         nn.Linear(64, 10, bias=False), lif())


def euler_decays(net):
    """Each LIF's tau_mem set to -1 / ln(1 - 1/tau): sinabs' exp(-1/tau') decay and
    (1 - exp(-1/tau')) input scale are then NIR's Euler step at dt = 1 for the written tau."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, sl.LIF) and getattr(m, "tau_mem", None) is not None:  # not IAF
                m.tau_mem.copy_(-1.0 / torch.log(1.0 - 1.0 / m.tau_mem))


def per_step(net):
    """x (B, T, ...) -> output spikes (B, T, 10): sinabs' squeezed (B*T, ...) convention."""
    def run(x):
        for m in net.modules():
            if isinstance(m, sl.StatefulLayer):
                m.reset_states()
        b, t = x.shape[:2]
        return net(x.flatten(0, 1)).reshape(b, t, -1)
    return run


def make_one(name, build, note, sample, distill=False):
    torch.manual_seed(0)
    net = build()
    run = per_step(net)
    x, labels, tool_out, tool_pred = train_and_test(name, net, run, steps=300)
    one = build(SingleSpike, MembraneReset())
    one.load_state_dict({k: v for k, v in net.named_parameters()}, strict=False)
    euler_decays(one)
    file_out = run_eval(per_step(one.eval()), x)
    file_pred = predictions(file_out.sum(1))
    per_step(net)(torch.zeros(1, T, *sample))  # the exporter reads the layers' state shapes
    graph = sinabs.to_nir(net, torch.zeros(T, *sample))
    graph.infer_types()  # else nir.write fails (input_type None on Conv2d/SumPool2d/Flatten)
    meta = dict(
        tool="sinabs", version=sinabs.__version__, net=note,
        exporter=f"sinabs.to_nir(net, torch.zeros({T}, {', '.join(map(str, sample))})); "
                 "graph.infer_types() (nir.write raises TypeError without it)",
        dt_user="none (sinabs is discrete time: one step = 1)",
        reset_training="subtract (sinabs default MembraneSubtract), spike_fn MultiSpike "
                       "(several spikes per step allowed)",
        readout="spike counts of the last layer over T steps; prediction = argmax (first on ties)",
        tool_accuracy=accuracy(tool_pred, labels),
        file_semantics_accuracy=accuracy(file_pred, labels),
        file_semantics="the same trained weights with spike_fn=SingleSpike, "
                       "reset_fn=MembraneReset() (one spike per step, reset to zero) and each "
                       "LIF's tau_mem set to -1/ln(1 - 1/tau_mem) (so that sinabs' exp decay "
                       "is NIR's Euler step at dt = 1), run by sinabs",
        tool_max_spikes_per_step=int(tool_out.max()),
        exporter_losses="reset by subtraction and MultiSpike are not written (IF/LIF with no "
                        "v_reset: read as 0); LIF: tau_mem written as tau (steps) with r = 1 "
                        "and no dt, scalar parameters kept scalar (nir's type check then "
                        "fails on reading); sinabs decays by exp(-1/tau_mem) (norm_input: the "
                        "input scaled by 1 - exp(-1/tau_mem)), NIR's Euler step at dt = 1 by "
                        "1 - 1/tau",
    )
    save_with_file_run(name, graph, meta, x, labels, tool_out, tool_pred, file_out, file_pred,
                       run_eval, run, distill)


def make():
    make_one("sinabs_if_cnn", if_cnn,
             "Conv2d(1,8,3,p1) -> IAFSqueeze -> SumPool2d(2) -> Conv2d(8,16,3,p1) -> IAFSqueeze -> "
             "SumPool2d(2) (7x7 -> 3x3, floor) -> Flatten -> Linear(144,10) -> IAFSqueeze; "
             f"no biases, threshold 1, input (1, 14, 14), T = {T}", (1, 14, 14), distill=True)
    make_one("sinabs_lif_mlp", lif_mlp,
             f"Flatten -> Linear(196,64) -> LIFSqueeze(tau_mem={TAU_MEM}) -> Linear(64,10) -> "
             f"LIFSqueeze(tau_mem={TAU_MEM}); no biases, input (1, 14, 14), T = {T}", (1, 14, 14))
