"""Rate-based backpropagation (Yu et al., NeurIPS 2024; docs/kd.md) for the spiking students.

Training step, instead of backpropagation through time (BPTT):

1. Spike pass, no autograd: run the student step by step with each layer's own neuron step
   (`LoihiCUBA.step`, Loihi's integer arithmetic, the one the forward pass uses), keeping per
   spiking layer only its state, its spike count and its eligibility
       e = mean_t f_t * sigma'(V_t - theta)
   where V_t - theta is the membrane before reset minus the threshold, in weight units (the
   surrogate's input in `LoihiCUBA.step`) and sigma' the layer's surrogate derivative.
2. Rate pass, with autograd: one pass of the same network on firing rates. The input is the mean
   input r_in = mean_t x_t; synaptic layers are linear, so the current into a layer is the time
   mean of its BPTT current; each spiking layer outputs
       y = r + x*e - (x*e).detach()          (value r, the measured rate; dy/dx = e)
   with x the rate-domain input current. Autograd saves one step's worth of tensors whatever T is.

f_t for the CUBA neuron as BPTT differentiates it (train/neurons.py: truncation, wrap and clip are
straight-through, so the gradient is that of I_t = alpha I_{t-1} + x_t, V_t = beta V_{t-1} + I_t,
V_t <- V_t (1 - S_t) with the reset's spike detached). A constant input x gives
    dI_t/dx = g_t,  g_0 = 1, g_t = 1 + alpha g_{t-1}             (the current is not reset)
    dV_t/dx = f_t,  f_0 = 1, f_t = g_t + beta (1 - S_{t-1}) f_{t-1}   (V before its reset)
so d(mean_t S_t)/dx = mean_t sigma'(V_t - theta) f_t = e. The reset factor (1 - S_{t-1}) is the
reference's hard-reset trace (Tab-ct/rate-based-backpropagation, calcu_elig_factor_hard_reset,
without its sigma' term, which our detached reset does not have); without it (f_t = g_t + beta
f_{t-1}, the reset-free recursion) a neuron that fires keeps a growing trace and conv
gradients come out several times too large. With alpha = 0 (plain LIF) g_t = 1. For one spiking
layer and a constant input this is exactly the BPTT gradient, spikes or not (tests/test_ratebp.py);
with more layers it approximates it.

`rate_forward(model, x)` is a drop-in for `model(x)` in a training step and returns a StudentOutput:
- logits_t: the exact per-step logits of the spike pass plus (z - z.detach()) with z the rate-pass
  logits, so `logits` (their time mean) has the spike pass's value and the rate pass's gradient. A
  per-step loss sum_t l(z_t) (TSER) thus sends sum_t dl/dz_t into the rate pass: every z_t is given
  the parameter Jacobian of the mean logits.
- spikes[name] and features['last']: each layer's firing rate map repeated over T (an expand view,
  differentiable through the rate pass). Time means and sums (rates, spike counts, SAMD maps) are
  exact; the per-step spike pattern is not kept, so memory does not grow with T. Use `model(x)` when
  the per-step spikes are needed (evaluation, export checks).
"""
import weakref

import torch

from .models import SpikingCNN, SpikingResNet, StudentOutput, sum_inputs


def spike_and_derivative(spike_grad, u):
    """(spikes, sigma'(u)) of a surrogate spike function, elementwise, by autograd (any
    surrogate)."""
    with torch.enable_grad():
        u = u.detach().requires_grad_(True)
        spk = spike_grad(u)
        (grad,) = torch.autograd.grad(spk.sum(), u)
    return spk.detach(), grad


class StepOps:
    """A student's dataflow (`model.dataflow`) on one step or on rates (B, ...): stateless
    layers applied directly, each spiking layer through `neuron(name, layer, current)`."""

    def __init__(self, neuron):
        self.neuron_fn = neuron

    def synapse(self, name, layer, x):
        return layer(x)

    def neuron(self, name, layer, inputs):
        return self.neuron_fn(name, layer, sum_inputs(inputs))

    def flatten(self, name, x):
        return x.flatten(1)

    def readout(self, name, layer, x):
        return layer(x)


def check_student(model):
    if not isinstance(model, (SpikingCNN, SpikingResNet)):
        raise TypeError(f"rate-based backprop supports SpikingCNN and SpikingResNet, not "
                        f"{type(model).__name__}")


class _SpikePass:
    """Stateful neuron callback for the no-grad step-by-step pass: accumulates rates and e.
    The neuron update is the layer's own `LoihiCUBA.step` (Loihi's integer arithmetic)."""

    def __init__(self, timesteps):
        self.timesteps = timesteps
        self.params = {}  # name -> LoihiCUBA.step_params(), computed once per pass
        self.state = {}  # name -> [syn, mem, g, f, spike sum, eligibility sum]

    def __call__(self, name, layer, x):
        if name not in self.state:
            self.params[name] = layer.step_params()
            zero = torch.zeros_like(x)
            self.state[name] = [zero, zero, 0.0, 0.0, torch.zeros_like(x), torch.zeros_like(x)]
        _, _, alpha, beta, _ = self.params[name]
        syn, mem, g, f, count, elig = self.state[name]
        slope = []

        def fire(shifted):                   # the spikes and sigma' from one surrogate call
            spk, d = spike_and_derivative(layer.spike_grad, shifted)
            slope.append(d)
            return spk

        spk, syn, mem, _ = layer.step(x, syn, mem, self.params[name], fire)
        g = 1.0 + alpha * g
        f = g + beta * f                     # f holds (1 - S_{t-1}) f_{t-1} from the last step
        elig.addcmul_(f, slope[0])
        count.add_(spk)
        keep = 1.0 - spk                     # the hard reset clears V and its dependence on x
        self.state[name] = [syn, mem, g, f * keep, count, elig]
        return spk

    def rates_and_eligibility(self):
        t = self.timesteps
        return {name: (s[4] / t, s[5] / t) for name, s in self.state.items()}


def rate_forward(model, x) -> StudentOutput:
    """Spike pass (no autograd), then rate pass (autograd); x is (T, B, ...). See the module doc."""
    check_student(model)
    timesteps = x.shape[0]
    spike_pass = _SpikePass(timesteps)
    ops = StepOps(spike_pass)
    with torch.no_grad():
        logits_t = torch.stack([model.dataflow(xt, ops) for xt in x.unbind(0)])
    measured = spike_pass.rates_and_eligibility()

    out = StudentOutput(logits_t=None)

    def rate_neuron(name, layer, current):
        rate, elig = measured[name]
        y = rate + current * elig - (current * elig).detach()
        out.spikes[name] = y.unsqueeze(0).expand(timesteps, *y.shape)
        return y

    z = model.dataflow(x.mean(0), StepOps(rate_neuron))
    out.logits_t = logits_t + (z - z.detach()).unsqueeze(0)
    out.features["last"] = out.spikes[model.feature_layer]
    return out


def autograd_saved_bytes(fn):
    """Run fn() and return (its result, bytes autograd holds for backward once fn has returned).

    Every tensor saved for backward is seen through saved_tensors_hooks; those still alive at the
    end (held by the graph of the result) are summed, each storage once. Graphs built and freed
    inside fn (like the surrogate derivatives of the spike pass) do not count.
    """
    saved = []

    def pack(t):
        saved.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    storages = {}
    for ref in saved:
        t = ref()
        if t is not None:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return result, sum(storages.values())
