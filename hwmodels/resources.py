"""Map neuron groups (relay groups included) onto Loihi 2 neurocores.

A group's neurons and the synapses of all its incoming connections live in the same cores (Loihi
stores synapses at the destination core), so

    cores(group) = max(ceil(neurons / neurons_per_core), ceil(synapses / synapses_per_core), 1)

and the network fits one chip when the cores of all groups add up to at most cores_per_chip; a
core holds one group (no packing of small groups). `synapses` is the synapse memory: one entry per
(presynaptic, postsynaptic) pair with a non-zero weight, i.e. convolutions unrolled (as Loihi 1
stores them; conservative for Loihi 2). The input is fed from outside (host or sensor) and takes
no neurocore. Relay groups (delay alignment) are mapped like any group and also reported apart.

The per-core limits are the chip-wide figures of the Intel Loihi 2 brief divided evenly over its
128 neurocores (assumptions: neuron state and 8-bit synapses share no memory budget; compilers may
pack fewer).
"""
import math
from dataclasses import dataclass

LOIHI2_CORES_PER_CHIP = 128                # Intel Loihi 2 technology brief (2021)
LOIHI2_NEURONS_PER_CHIP = 1 << 20          # "up to 1M neurons", same brief
LOIHI2_SYNAPSES_PER_CHIP = 120_000_000     # "up to 120M synapses", same brief
NEURONS_PER_CORE = LOIHI2_NEURONS_PER_CHIP // LOIHI2_CORES_PER_CHIP      # 8192
SYNAPSES_PER_CORE = LOIHI2_SYNAPSES_PER_CHIP // LOIHI2_CORES_PER_CHIP    # 937,500


@dataclass(frozen=True)
class CoreLimits:
    neurons_per_core: int = NEURONS_PER_CORE
    synapses_per_core: int = SYNAPSES_PER_CORE
    cores_per_chip: int = LOIHI2_CORES_PER_CHIP

    def __post_init__(self):
        for key, value in vars(self).items():
            if int(value) < 1:
                raise ValueError(f"{key} must be a positive integer, got {value}")


def layer_cores(neurons: int, synapses: int, limits: CoreLimits = CoreLimits()) -> int:
    """Neurocores one group needs (formula in the module docstring)."""
    return max(math.ceil(neurons / limits.neurons_per_core),
               math.ceil(synapses / limits.synapses_per_core), 1)


def map_groups(groups, limits: CoreLimits = CoreLimits()) -> dict:
    """groups: dicts with name, role, neurons, synapses (incoming) -> {'cores': {name: cores},
    'chip': chip_usage of all, with relay_cores / relay_neurons / relay_synapses added}."""
    cores = {g["name"]: layer_cores(g["neurons"], g["synapses"], limits) for g in groups}
    relays = [g for g in groups if g["role"] == "relay"]
    chip = chip_usage(cores.values(), limits)
    chip.update(relay_groups=len(relays), relay_cores=sum(cores[g["name"]] for g in relays),
                relay_neurons=sum(g["neurons"] for g in relays),
                relay_synapses=sum(g["synapses"] for g in relays))
    return {"cores": cores, "chip": chip}


def chip_usage(cores_per_layer, limits: CoreLimits = CoreLimits()) -> dict:
    """{'cores_used', 'cores_per_chip', 'chips', 'fits'} for the given cores per layer."""
    used = int(sum(cores_per_layer))
    return {"cores_used": used, "cores_per_chip": limits.cores_per_chip,
            "chips": max(1, math.ceil(used / limits.cores_per_chip)),
            "fits": used <= limits.cores_per_chip,
            "neurons_per_core": limits.neurons_per_core,
            "synapses_per_core": limits.synapses_per_core}
