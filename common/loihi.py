"""Loihi's number formats (Lava's fixed-point CUBA neuron, lava-nc 0.10.0), shared by training,
export, compilation and the emulator; docs/loihi_net.md describes the neuron they belong to."""
WEIGHT_BITS = 8
WEIGHT_MIN, WEIGHT_MAX = -(1 << (WEIGHT_BITS - 1)), (1 << (WEIGHT_BITS - 1)) - 1   # int8 weights
BIAS_MAX = 4095              # bias_mant is 13-bit signed
DECAY_UNITY = 4096           # decays are fractions of 2^12
STATE_MAX = 1 << 23          # u, v are 24-bit signed
VTH_MAX = (1 << 17) - 1      # vThMant is 17-bit unsigned
ACT_SHIFT = VTH_SHIFT = 6    # a_in and vth are MSB-aligned by 6 bits
