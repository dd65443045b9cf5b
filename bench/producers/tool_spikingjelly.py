"""SpikingJelly fixture: a CNN of IFNode (hard reset to 0, its default), multi-step mode;
exported with spikingjelly.activation_based.nir_exchange.export_to_nir (dt = 1e-4, its
default). Needs nir >= 1.0.7 (a separate environment from sinabs / rockpool)."""
import numpy as np
import spikingjelly
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate

from common import T, accuracy, save_fixture
from train_torch import train_and_test

DT = 1e-4


def cnn():
    net = torch.nn.Sequential(
        layer.Conv2d(1, 8, 3, padding=1), neuron.IFNode(surrogate_function=surrogate.ATan()),
        layer.AvgPool2d(2),                                                   # 14 -> 7
        layer.Flatten(), layer.Linear(8 * 7 * 7, 10),
        neuron.IFNode(surrogate_function=surrogate.ATan()))
    functional.set_step_mode(net, "m")
    return net


def per_step(net):
    """x (B, T, ...) -> output spikes (B, T, 10): SpikingJelly's multi-step (T, B, ...) mode."""
    def run(x):
        functional.reset_net(net)
        return net(x.transpose(0, 1)).transpose(0, 1)
    return run


def make():
    torch.manual_seed(0)
    net = cnn()
    run = per_step(net)
    x, labels, tool_out, tool_pred = train_and_test("spikingjelly_if_cnn", net, run, steps=300)
    from spikingjelly.activation_based.nir_exchange import export_to_nir
    functional.reset_net(net)
    graph = export_to_nir(net, torch.zeros(T, 1, 1, 14, 14), dt=DT)
    functional.reset_net(net)
    meta = dict(
        tool="spikingjelly", version=getattr(spikingjelly, "__version__", None) or "2.0.0",
        net="Conv2d(1,8,3,p1) -> IFNode -> AvgPool2d(2) -> Flatten -> Linear(392,10) -> IFNode; "
            f"multi-step mode, ATan surrogate, threshold 1, input (1, 14, 14), T = {T}",
        exporter=f"spikingjelly.activation_based.nir_exchange.export_to_nir(net, "
                 f"torch.zeros({T}, 1, 1, 14, 14), dt={DT})",
        dt_user=DT,
        reset_training="zero (IFNode default v_reset = 0)",
        readout="spike counts of the last IFNode over T steps; prediction = argmax (first on ties)",
        tool_accuracy=accuracy(tool_pred, labels),
        exporter_losses=f"IF written with r = 1/dt = {1 / DT:g} and no dt metadata (the "
                        "file runs as the tool only at dt = 1e-4); soft reset is refused by "
                        "the exporter",
    )
    data = dict(x=x, labels=labels, tool_out=tool_out.astype(np.uint8), tool_pred=tool_pred)
    save_fixture("spikingjelly_if_cnn", graph, data, meta)
