"""Energy profiles: a few named constants per technology, each with its source (docs/energy.md).

Energy of one neuron group for one sample under a profile, summed over its incoming connections c:

    E = sum_c e_synop * SynOps_c + e_neuron_active * active + e_neuron_inactive * (updates - active)

with SynOps = sum over steps of input spikes x fan-out, updates = neurons x T and `active` the
neuron-steps that emitted a spike (our reading of "active" in Davies et al.; an assumption).
A first layer fed with analog input costs e_mac per MAC instead of SynOps when the profile has an
e_mac (the SNN papers' estimate E_SNN = E_AC * SynOps + E_MAC * MACs); on Loihi (no e_mac) the
analog values travel as graded spikes and each non-zero input x fan-out is one SynOp.
An ANN costs E_ANN = E_MAC * MACs with the 45 nm MAC (Loihi has no MAC figure).
"""
from dataclasses import dataclass

PJ = 1e-12

# Davies et al., "Loihi: a neuromorphic manycore processor with on-chip learning",
# IEEE Micro 38(1), 2018, Table 2 (pre-silicon figures, 14 nm).
LOIHI_SYNOP_J = 23.6 * PJ            # energy per synaptic spike operation
LOIHI_NEURON_ACTIVE_J = 81 * PJ      # neuron update, active
LOIHI_NEURON_INACTIVE_J = 52 * PJ    # neuron update, inactive
LOIHI_SOURCE = "Davies et al., IEEE Micro 38(1) 2018, Table 2 (pre-silicon)"

# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014 (45 nm, fp32).
E_AC_45NM_J = 0.9 * PJ               # fp32 add: one accumulate per SynOp
E_MAC_45NM_J = 4.6 * PJ              # fp32 multiply-add
HOROWITZ_SOURCE = "Horowitz, ISSCC 2014 (45 nm, 32-bit float add 0.9 pJ, mult+add 4.6 pJ)"

ANN_E_MAC_J = E_MAC_45NM_J           # every ANN baseline (teacher, student-as-ANN) uses this


@dataclass(frozen=True)
class Profile:
    name: str
    e_synop: float                   # J per SynOp
    e_mac: float | None              # J per MAC of an analog-input layer; None: graded spikes
    e_neuron_active: float           # J per neuron update that spikes
    e_neuron_inactive: float         # J per neuron update that does not spike
    source: str

    def synaptic_energy(self, synops, macs=None) -> float:
        """Joules of one connection; macs is None for spike input (module docstring)."""
        if macs is not None and self.e_mac is not None:
            return self.e_mac * macs
        return self.e_synop * synops

    def neuron_energy(self, updates, active) -> float:
        """Joules of a group's neuron updates, `active` of them spiking."""
        return self.e_neuron_active * active + self.e_neuron_inactive * (updates - active)

    def layer_energy(self, synops, macs, updates, active) -> float:
        """Joules for one group fed by one connection (formula in the module docstring)."""
        return self.synaptic_energy(synops, macs) + self.neuron_energy(updates, active)


PROFILES = {
    "loihi": Profile("loihi", LOIHI_SYNOP_J, None, LOIHI_NEURON_ACTIVE_J, LOIHI_NEURON_INACTIVE_J,
                     LOIHI_SOURCE),
    "45nm": Profile("45nm", E_AC_45NM_J, E_MAC_45NM_J, 0.0, 0.0, HOROWITZ_SOURCE),
}


def ann_energy(macs) -> float:
    """E_ANN = E_MAC * MACs (45 nm, Horowitz 2014)."""
    return ANN_E_MAC_J * macs
