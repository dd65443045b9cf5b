"""Loihi's number formats and arithmetic primitives (Lava's fixed-point CUBA neuron, lava-nc
0.10.0), shared by training (train.neurons.LoihiState), export, compilation and the emulator
(hwmodels.loihi.neuron_step, Emulator); docs/loihi_net.md describes the neuron they belong to."""
import torch

WEIGHT_BITS = 8
WEIGHT_MIN, WEIGHT_MAX = -(1 << (WEIGHT_BITS - 1)), (1 << (WEIGHT_BITS - 1)) - 1   # int8 weights
BIAS_MAX = 4095              # bias_mant is 13-bit signed
DECAY_UNITY = 4096           # decays are fractions of 2^12
STATE_MAX = 1 << 23          # u, v are 24-bit signed
VTH_MAX = (1 << 17) - 1      # vThMant is 17-bit unsigned
ACT_SHIFT = VTH_SHIFT = 6    # a_in and vth are MSB-aligned by 6 bits


def trunc_decay(x, decay):
    """Loihi's decay of a state x (integers in an int64 or float64 tensor, exact below 2^41):
    x (4096 - decay) / 4096, truncated toward zero."""
    return torch.div(x * (DECAY_UNITY - decay), DECAY_UNITY, rounding_mode="trunc")


def wrap24(u):
    """Lava's one wrap of u into 24 bits: u - 2^24 where u > 2^23, u + 2^24 where u <= -2^23
    (a single subtraction, not a modulo)."""
    return torch.where(u > STATE_MAX, u - 2 * STATE_MAX,
                       torch.where(u <= -STATE_MAX, u + 2 * STATE_MAX, u))


def clip24(v, out=None):
    """Lava's clip of v to [-(2^23 - 1), 2^23 - 1] (into `out`, e.g. v itself, when given)."""
    return torch.clamp(v, -STATE_MAX + 1, STATE_MAX - 1, out=out)
