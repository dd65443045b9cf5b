"""Loihi-deployable spiking neurons built on snnTorch.

`LoihiCUBA` is snnTorch's `Synaptic` (current-based LIF, zero reset) computing Loihi's fixed-point
neuron exactly (lava-nc 0.10.0 `PyLifModelBitAcc`, `hwmodels.loihi.neuron_step`). Its state is in
Loihi's units: one unit = weight_step / 64, since Loihi adds a synaptic sum of integer weights k as
(sum k) << 6 and compares v with vThMant << 6. With alpha = 1 - iDecay/4096, beta = 1 - vDecay/4096,
a[t] = x[t] / unit (x = the synaptic input in weight units, sum of weight_step * k over the input
spikes) and vth = (theta / weight_step) << 6, per step t:

    u[t] = wrap24( trunc(alpha u[t-1]) + a[t] )      trunc: toward zero, as sign(u) (|u| dI >> 12)
    v[t] = clip24( trunc(beta  v[t-1]) + u[t] )      clip24: to [-(2^23 - 1), 2^23 - 1]
    s[t] = v[t] > vth                                strict
    v[t] = 0 where s[t]                              same step; u is not reset

wrap24 is Lava's single wrap (u - 2^24 if u > 2^23, u + 2^24 if u <= -2^23). alpha = 0 is a plain
LIF (snnTorch `Leaky`): u[t] = a[t].

Why our own step and not snnTorch's (checked in snnTorch 1.0.0's `_neurons/synaptic.py`):
`Synaptic(reset_mechanism="zero", reset_delay=False)` has Loihi's order of operations (update u and
v, fire on v > threshold, zero v in the same step, keep the current); its default reset_delay=True
zeroes v one step late, together with that step's input. We pass reset_delay=False so the
inherited attributes say what this step does. What snnTorch lacks is Loihi's integer arithmetic:
it keeps the fraction that Loihi truncates from the decayed state, and it has no 24-bit wrap of u
or clip of v. Those fractions moved v across the threshold for a few spikes in 10^5 (issue 13),
so the float student and Loihi disagreed. This step holds every Loihi value as an integer-valued
float32 (exact below 2^24) and forms the products alpha u in float64 (|u| 4096 < 2^53, exact), on
CPU and CUDA alike.

Gradients: the spike is snnTorch's surrogate (`spike_grad`, default atan) of (v - vth) * unit, i.e.
of V - theta in weight units as before; truncation, wrap, clip and the rounding of the input onto
the unit grid are straight-through (d trunc(alpha u)/du = alpha, du/dx = 1/unit), and the reset's
spike is detached (snnTorch's reset_delay=False reset is not). So the gradients are those of the
float recursion I = alpha I + x, V = beta V + I, S = V > theta, evaluated at Loihi's exact state.

Exact when the synaptic input x is weight_step times an integer (binary input spikes, or any layer
after the first; a power-of-two weight_step such as the default 1/64 makes x / unit exact in
float32), each step's |sum k| << 6 stays below 2^23 (deploy.compile's fit report bounds the
state) and each conv's integer sum fits 24 bits (Lava wraps it; this step does not).
Analog input (direct encoding) is rounded to the unit grid. `run_steps` (the NIRStudent of a
foreign graph, export.nir_student) takes the input in weight steps instead (integer sums of the
int8 weights, exact for any step) and adds Loihi's biases (`BIAS_RANGES`: the neuron bias on v
before the clip, the weights of the compiler's bias sources into u) and a recurrent input of the
previous step's spikes, as hwmodels.loihi's emulator does. Loihi's ranges: docs/loihi_net.md and
the docstring of hwmodels/loihi.py.
"""
import snntorch as snn
import torch
from snntorch import surrogate

from common.loihi import clip24, wrap24

from .quant import (ACT_SHIFT, BIAS_MAX, WEIGHT_MAX, WEIGHT_MIN, quantize_decay,
                    quantize_threshold, weight_steps)

# Loihi's biases of a group in weight steps: its own bias on v (13 bit), and the weights of the
# compiler's bias sources (int8) into the current, at every step ("u") or from step 1 ("late")
BIAS_RANGES = {"v": (-BIAS_MAX - 1, BIAS_MAX), "u": (WEIGHT_MIN, WEIGHT_MAX),
               "late": (WEIGHT_MIN, WEIGHT_MAX)}


def decay_add(x, keep, add):
    """trunc(x * keep) + add, exact for integer-valued x (|x| < 2^24) and keep on the 1/4096 grid
    (float64): the product has at most 36 significant bits, the int32 conversion truncates toward
    zero. The result has add's dtype."""
    return x.double().mul_(keep).to(torch.int32).to(add.dtype).add_(add)


class LoihiState(torch.autograd.Function):
    """(x, u, v) -> (u, v) of one step before the spike (module docstring), on float32 tensors
    holding integers in Loihi units; `bias` (state units, or None) is Loihi's neuron bias, added
    to v before the clip. Straight-through backward: du/dx = inv_unit, du/du_prev = alpha,
    dv/du = 1, dv/dv_prev = beta, dv/dbias = 1. `params`: LoihiCUBA.step_params()."""

    @staticmethod
    def forward(ctx, x, u, v, params, inv_unit, bias=None):
        alpha64, beta64, ctx.alpha, ctx.beta, _ = params
        ctx.inv_unit, ctx.bias = inv_unit, bias is not None
        u = wrap24(decay_add(u, alpha64, torch.mul(x, inv_unit).round_()))
        v = decay_add(v, beta64, u)
        v = clip24(v if bias is None else v.add_(bias))
        return u, v

    @staticmethod
    def backward(ctx, grad_u, grad_v):
        g = grad_u + grad_v
        return (g * ctx.inv_unit, g * ctx.alpha, grad_v * ctx.beta, None, None,
                grad_v if ctx.bias else None)


class LoihiCUBA(snn.Synaptic):
    """Current-based LIF with per-channel alpha, beta, theta on Loihi's grids, computing Loihi's
    integer arithmetic (module docstring).

    `param_shape` is (C, 1, 1) for conv layers (per channel) or (N,) for dense layers (per neuron).
    `weight_step` is the grid of the incoming weights; theta is kept on that grid (vThMant = theta/step).
    The state (syn = u, mem = v) is in Loihi units of weight_step / 64.
    """

    def __init__(self, param_shape, alpha=0.5, beta=0.75, threshold=1.0, weight_step=1 / 64,
                 spike_grad=None):
        full = lambda v: torch.full(tuple(param_shape), float(v))  # noqa: E731
        super().__init__(
            alpha=quantize_decay(full(alpha)), beta=quantize_decay(full(beta)),
            threshold=quantize_threshold(full(threshold), weight_step),
            spike_grad=spike_grad or surrogate.atan(), reset_mechanism="zero", reset_delay=False)
        self.weight_step = float(weight_step)
        self.param_shape = tuple(param_shape)
        for kind in BIAS_RANGES:
            self.register_parameter(f"bias_{kind}", None)

    @property
    def unit(self) -> float:
        """Weight value of one Loihi state unit: weight_step / 2^6."""
        return self.weight_step / (1 << ACT_SHIFT)

    def quantized(self):
        """(alpha, beta, theta) exactly as the forward pass and Loihi use them (theta in weight
        units)."""
        return (quantize_decay(self.alpha), quantize_decay(self.beta),
                quantize_threshold(self.threshold, self.weight_step))

    def step_params(self):
        """(alpha, beta in float64, alpha, beta, vth in Loihi units) for `step`; compute once per
        sequence."""
        alpha, beta, theta = (p.detach() for p in self.quantized())
        return alpha.double(), beta.double(), alpha, beta, torch.round(theta / self.unit)

    def step(self, x, syn, mem, params, fire=None, inv_unit=None, bias=None):
        """One step: returns (spikes, u, v after the reset, (v - vth) * unit before the reset).
        `fire` (default `spike_grad`) maps (v - vth) * unit to the spikes; x is in weight units
        (inv_unit None: 1 / unit) or in any unit inv_unit converts to state units; `bias` is
        added to v in state units."""
        syn, mem = LoihiState.apply(x, syn, mem, params,
                                    1.0 / self.unit if inv_unit is None else inv_unit, bias)
        vth = params[-1]
        shifted = (mem - vth) * self.unit
        spk = (fire or self.spike_grad)(shifted)
        return spk, syn, mem * (1.0 - spk.detach()), shifted

    def forward(self, input_, syn, mem):  # noqa: D401 - snnTorch's step signature
        spk, syn, mem, _ = self.step(input_, syn, mem, self.step_params())
        return spk, syn, mem

    def run(self, x):
        """Run the whole sequence x of shape (T, B, ...) from zero state; returns spikes (T, B, ...)."""
        params = self.step_params()
        syn = torch.zeros_like(x[0])
        mem = torch.zeros_like(x[0])
        out = []
        for xt in x.unbind(0):  # unbind: one backward node for all steps (x[t] adds a zero-filled
            spk, syn, mem, _ = self.step(xt, syn, mem, params)  # (T, ...) gradient per step)
            out.append(spk)
        return torch.stack(out)

    def set_bias(self, kind, value):
        """A trainable bias of `kind` (BIAS_RANGES) in weight units, of the parameters' shape."""
        setattr(self, f"bias_{kind}", torch.nn.Parameter(torch.as_tensor(
            value, dtype=torch.float32).reshape(self.param_shape).clone()))

    def bias_steps(self, kind):
        """The bias of `kind` in weight steps on its integer range (STE), or None."""
        bias = getattr(self, f"bias_{kind}")
        return None if bias is None else weight_steps(bias, self.weight_step, *BIAS_RANGES[kind])

    def run_steps(self, a, recurrent=None):
        """Run a (T, B, ...) input current in weight steps from zero state, with the biases
        (BIAS_RANGES: "u" added to the current at every step, "late" from step 1 on, "v" to v)
        and `recurrent`, a function of the previous step's spikes (B, ...) giving a current in
        weight steps from step 1 on (a recurrent connection: zeros at step 0). The emulator's
        group with its bias sources and recurrent connections, step by step. Returns spikes
        (T, B, ...)."""
        shift = float(1 << ACT_SHIFT)
        u_bias, late, v_bias = (self.bias_steps(k) for k in ("u", "late", "v"))
        params = self.step_params()
        syn = torch.zeros_like(a[0])
        mem = torch.zeros_like(a[0])
        bias = None if v_bias is None else (v_bias * shift).expand_as(syn)
        out = []
        for t, at in enumerate(a.unbind(0)):
            if u_bias is not None:
                at = at + u_bias
            if t > 0 and late is not None:
                at = at + late
            if t > 0 and recurrent is not None:
                at = at + recurrent(out[-1])
            spk, syn, mem, _ = self.step(at, syn, mem, params, inv_unit=shift, bias=bias)
            out.append(spk)
        return torch.stack(out)
