"""snnTorch fixtures: the tutorial CNN (Conv2d -> AvgPool2d -> Leaky, 2x2 pooling of a 7x7 map)
and an MLP, trained with snnTorch's default reset by subtraction; exported with
snntorch.export_nir.export_to_nir."""
import numpy as np
import snntorch as snn
from snntorch import utils as snn_utils
import torch
from torch import nn

from common import T, accuracy, predictions, save_with_file_run
from train_torch import run_eval, train_and_test

BETA = 0.9


def leaky(shape, reset):
    """snn.Leaky with beta and threshold as tensors of the layer's shape: snnTorch 1.0.0's
    exporter with nir 1.0.8 fails on scalar ones ('Type inference error: type mismatch:
    ... -> ...input: []'), and with nir 1.0.4 (no v_reset argument) on every Leaky."""
    return snn.Leaky(beta=torch.full(shape, BETA), threshold=torch.ones(shape),
                     init_hidden=True, reset_mechanism=reset)


def cnn(reset):
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.AvgPool2d(2), leaky((8, 7, 7), reset),     # 14 -> 7
        nn.Conv2d(8, 16, 3, padding=1), nn.AvgPool2d(2), leaky((16, 3, 3), reset),  # 7 -> 3
        nn.Flatten(), nn.Linear(16 * 3 * 3, 10), leaky((10,), reset))


def mlp(reset):
    return nn.Sequential(nn.Flatten(), nn.Linear(196, 64), leaky((64,), reset),
                         nn.Linear(64, 10), leaky((10,), reset))


def per_step(net):
    """x (B, T, ...) -> output spikes (B, T, 10), snnTorch's own time loop."""
    def run(x):
        snn_utils.reset(net)
        return torch.stack([net(x[:, t]) for t in range(x.shape[1])], 1)
    return run


def same_weights(build, net, reset):
    """The trained weights in a copy of the net whose Leaky layers use `reset`."""
    other = build(reset)
    state = {k: v for k, v in net.state_dict().items() if "reset_mechanism_val" not in k}
    other.load_state_dict(state, strict=False)
    return other.eval()


def make_one(name, build, note, distill=False):
    torch.manual_seed(0)
    net = build("subtract")
    run = per_step(net)
    x, labels, tool_out, tool_pred = train_and_test(name, net, run, steps=300)
    zero = per_step(same_weights(build, net, "zero"))
    file_out = run_eval(zero, x)
    file_pred = predictions(file_out.sum(1))
    from snntorch.export_nir import export_to_nir
    graph = export_to_nir(net, torch.zeros(1, 1, 14, 14), ignore_dims=[0])
    meta = dict(
        tool="snntorch", version=snn.__version__, net=note,
        exporter="snntorch.export_nir.export_to_nir(net, torch.zeros(1, 1, 14, 14), "
                 "ignore_dims=[0])",
        dt_user="none (snnTorch is discrete time; its exporter writes tau = 1e-4/(1-beta), "
                "r = tau/1e-4)",
        reset_training="subtract (snnTorch default)",
        readout="spike counts of the last Leaky over T steps; prediction = argmax (first on ties)",
        tool_accuracy=accuracy(tool_pred, labels),
        file_semantics_accuracy=accuracy(file_pred, labels),
        file_semantics="the same trained weights in the same nn.Sequential with every "
                       "snn.Leaky(reset_mechanism='zero'), run by snnTorch itself",
        exporter_losses="reset by subtraction written as v_reset = 0 (NIR has no reset mode); "
                        "no dt metadata (1e-4 hard-coded in tau and r); AvgPool2d's padding "
                        "and ceil_mode not written; a Leaky with scalar beta / threshold fails "
                        "to export with nir 1.0.8 (type inference error), so beta and threshold "
                        "are tensors of the layer's shape here; ignore_dims=[0] drops the "
                        "sample's batch dim (else the Conv2d type inference fails)",
    )
    save_with_file_run(name, graph, meta, x, labels, tool_out, tool_pred, file_out, file_pred,
                       run_eval, run, distill)


def make():
    make_one("snntorch_cnn", cnn, "Conv2d(1,8,3,p1) -> AvgPool2d(2) -> Leaky -> Conv2d(8,16,3,p1) "
             "-> AvgPool2d(2) (7x7 -> 3x3, floor) -> Leaky -> Flatten -> Linear(144,10) -> Leaky; "
             f"beta {BETA}, input (1, 14, 14), T = {T}", distill=True)
    make_one("snntorch_mlp", mlp, f"Flatten -> Linear(196,64) -> Leaky -> Linear(64,10) -> Leaky; "
             f"beta {BETA}, input (1, 14, 14), T = {T}")
