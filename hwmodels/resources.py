"""Map neuron groups (relay groups included) onto Loihi 2 neurocores, under two assumptions on
how synapses are stored, side by side, and name the smallest Intel system that holds the cores.

A group's neurons and the weights of all its incoming connections live in the same cores (Loihi
stores synapses at the destination core); a core holds one group (no packing of small groups);
the input is fed from outside (host or sensor) and takes no neurocore.

(a) unrolled: every (presynaptic, postsynaptic) pair with a non-zero weight is one synapse entry,
    i.e. convolutions unrolled (as Loihi 1 stores them; conservative for Loihi 2):

        cores(group) = max(ceil(neurons / neurons_per_core), ceil(synapses / synapses_per_core), 1)

(b) shared kernel: Loihi 2's convolutional connectivity: a core stores the kernel slice of each
    output channel it holds once, whatever the number of positions it serves; zeros included
    (a dense kernel). A conv-fed group of C channels x P positions with w kernel weights per
    output channel (summed over its incoming convs: C_in / groups x kh x kw each) is split into
    cores by whole channels, c per core:

        c = min(C, floor(neurons_per_core / P), floor(synapses_per_core / w)),  cores = ceil(C / c)

    and when not even one channel fits (c = 0), each channel takes
    max(ceil(P / neurons_per_core), ceil(w / synapses_per_core)) cores of its own (an assumption:
    a channel's positions or its kernel split over cores). Dense connections share nothing: a
    group fed only by dense connections maps as in (a); a dense input into a conv-fed group adds
    ceil(dense synapses / C) to w.

chips = ceil(cores / cores_per_chip); the system is the smallest of one chip, Kapoho Point (8
chips) and Hala Point (1,152 chips) that has that many (docs/energy.md has the sources). Relay
groups (delay alignment) are mapped like any group and also reported apart, with their share of
the cores.

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
# Intel's multi-chip Loihi 2 systems by chip count (docs/energy.md)
SYSTEMS = (("one Loihi 2 chip", 1), ("Kapoho Point", 8), ("Hala Point", 1152))


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


def shared_kernel_cores(neurons, channels, kernel_per_channel, dense_synapses,
                        limits: CoreLimits = CoreLimits()) -> int:
    """Neurocores one group needs under (b), shared kernels (module docstring)."""
    if not kernel_per_channel:  # fed by dense connections only: nothing is shared
        return layer_cores(neurons, dense_synapses, limits)
    positions = max(neurons // channels, 1)
    w = kernel_per_channel + math.ceil(dense_synapses / channels)
    c = min(channels, limits.neurons_per_core // positions, limits.synapses_per_core // w)
    if c >= 1:
        return math.ceil(channels / c)
    return channels * max(math.ceil(positions / limits.neurons_per_core),
                          math.ceil(w / limits.synapses_per_core))


def intel_system(chips: int) -> str:
    """The smallest Intel Loihi 2 system with at least `chips` chips (SYSTEMS)."""
    for name, n in SYSTEMS:
        if chips <= n:
            return name if n == 1 else f"{name} ({n:,} chips)"
    return f"more than Hala Point ({chips:,} chips)"


def map_groups(groups, limits: CoreLimits = CoreLimits()) -> dict:
    """groups: dicts with name, role, neurons, synapses (incoming, unrolled), and for (b)
    channels, kernel_per_channel (0 when no conv feeds it) and dense_synapses (both default to a
    dense-only group) -> {'cores': {name: cores (a)}, 'cores_shared_kernel': {name: cores (b)},
    'chip': chip_usage of (a) with relay_* added, and under 'shared_kernel' the same for (b)}."""
    cores = {g["name"]: layer_cores(g["neurons"], g["synapses"], limits) for g in groups}
    shared = {g["name"]: shared_kernel_cores(g["neurons"], g.get("channels", g["neurons"]),
                                             g.get("kernel_per_channel", 0),
                                             g.get("dense_synapses", g["synapses"]), limits)
              for g in groups}
    relays = [g for g in groups if g["role"] == "relay"]

    def usage(per_group):
        chip = chip_usage(per_group.values(), limits)
        relay_cores = sum(per_group[g["name"]] for g in relays)
        chip.update(relay_groups=len(relays), relay_cores=relay_cores,
                    relay_share=relay_cores / chip["cores_used"] if chip["cores_used"] else 0.0,
                    relay_neurons=sum(g["neurons"] for g in relays),
                    relay_synapses=sum(g["synapses"] for g in relays))
        return chip

    chip = usage(cores)
    chip["shared_kernel"] = usage(shared)
    return {"cores": cores, "cores_shared_kernel": shared, "chip": chip}


def chip_usage(cores_per_layer, limits: CoreLimits = CoreLimits()) -> dict:
    """{'cores_used', 'cores_per_chip', 'chips', 'fits', 'system', ...} for the given cores per
    layer."""
    used = int(sum(cores_per_layer))
    chips = max(1, math.ceil(used / limits.cores_per_chip))
    return {"cores_used": used, "cores_per_chip": limits.cores_per_chip, "chips": chips,
            "fits": used <= limits.cores_per_chip, "system": intel_system(chips),
            "neurons_per_core": limits.neurons_per_core,
            "synapses_per_core": limits.synapses_per_core}
