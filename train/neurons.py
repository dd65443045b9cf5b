"""Loihi-deployable spiking neurons built on snnTorch.

`LoihiCUBA` is snnTorch's `Synaptic` (current-based LIF) with the order of operations of Loihi's
neuron, per step t:

    I[t] = alpha * I[t-1] + x[t]            alpha = 1 - iDecay / 4096
    V[t] = beta  * V[t-1] + I[t]            beta  = 1 - vDecay / 4096
    S[t] = V[t] > theta                     strict, as Lava's `v > vth << 6`
    V[t] = 0 where S[t]                     reset to zero at once; I is not reset

snnTorch's own reset_mechanism="zero" zeroes V one step later (and drops that step's input), which
Loihi does not do; everything else (parameters as buffers, `fire`, surrogate gradients) is snnTorch's.
alpha = 0 is a plain LIF (snnTorch `Leaky`): I[t] = x[t].
"""
import snntorch as snn
import torch
from snntorch import surrogate

from .quant import quantize_decay, quantize_threshold


class LoihiCUBA(snn.Synaptic):
    """Current-based LIF with per-channel alpha, beta, theta on Loihi's grids (see module docstring).

    `param_shape` is (C, 1, 1) for conv layers (per channel) or (N,) for dense layers (per neuron).
    `weight_step` is the grid of the incoming weights; theta is kept on that grid (vThMant = theta/step).
    """

    def __init__(self, param_shape, alpha=0.5, beta=0.75, threshold=1.0, weight_step=1 / 64,
                 spike_grad=None):
        full = lambda v: torch.full(tuple(param_shape), float(v))  # noqa: E731
        super().__init__(
            alpha=quantize_decay(full(alpha)), beta=quantize_decay(full(beta)),
            threshold=quantize_threshold(full(threshold), weight_step),
            spike_grad=spike_grad or surrogate.atan(), reset_mechanism="zero")
        self.weight_step = float(weight_step)
        self.param_shape = tuple(param_shape)

    def quantized(self):
        """(alpha, beta, theta) exactly as the forward pass and Loihi use them."""
        return (quantize_decay(self.alpha), quantize_decay(self.beta),
                quantize_threshold(self.threshold, self.weight_step))

    def forward(self, input_, syn, mem):  # noqa: D401 - snnTorch's step signature
        alpha, beta, theta = self.quantized()
        syn = alpha * syn + input_
        mem = beta * mem + syn
        spk = self.spike_grad(mem - theta)
        mem = mem * (1.0 - spk.detach())
        return spk, syn, mem

    def run(self, x):
        """Run the whole sequence x of shape (T, B, ...) from zero state; returns spikes (T, B, ...)."""
        syn = torch.zeros_like(x[0])
        mem = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            spk, syn, mem = self.forward(x[t], syn, mem)
            out.append(spk)
        return torch.stack(out)
