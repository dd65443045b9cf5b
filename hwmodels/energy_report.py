"""The energy report of `python -m hwmodels.energy`: energy.json, energy.md, energy.png.

energy.json keys: `layers` (one row per neuron group, relays included: name, role, kind, nodes,
neurons, synapses, spikes_per_sample, firing_rate, synops_per_sample, neuron_updates_per_sample,
energy_j per profile, ann_energy_j, cores, cores_shared_kernel), `connections` (one row per
connection: src, dst, fan-out, SynOps, energy_j), `input`, `total` (synops_per_sample,
energy_j_per_sample per profile, ann_macs_per_sample, ann_energy_j_per_sample, ann_over_snn,
relays), `chip` (convolutions unrolled: cores_used, chips, fits, system, relay_cores,
relay_share, ...; `chip.shared_kernel`: the same with one shared kernel per core; see
hwmodels.resources), `profiles`, `teacher_layers` (when the run has a teacher).
"""
import json
from pathlib import Path

import numpy as np

from .profiles import ann_energy
from .resources import CoreLimits, map_groups


# ---- content -----------------------------------------------------------------------------------

def price_connections(connections, profiles) -> list:
    """Connection rows with their synaptic energy per profile and as an ANN layer."""
    return [{**c, "energy_j": {p.name: p.synaptic_energy(c["synops_per_sample"],
                                                         c["macs_per_sample"]) for p in profiles},
             "ann_energy_j": ann_energy(c["ann_macs_per_sample"])} for c in connections]


def price_groups(groups, connections, profiles, cores, cores_shared=None) -> list:
    """Group rows: the energy of the incoming connections plus the neuron updates; cores with
    convolutions unrolled, and with one shared kernel per core (hwmodels.resources)."""
    rows = []
    for g in groups:
        into = [c for c in connections if c["dst"] == g["name"]]
        active = g["spikes_per_sample"] or 0.0
        energy = {p.name: sum(c["energy_j"][p.name] for c in into)
                  + p.neuron_energy(g["neuron_updates_per_sample"], active) for p in profiles}
        rows.append({**g, "energy_j": energy, "ann_energy_j": ann_energy(g["ann_macs_per_sample"]),
                     "cores": cores[g["name"]],
                     "cores_shared_kernel": (cores_shared or cores)[g["name"]]})
    return rows


def totals(layers, connections, profiles, teacher_macs) -> dict:
    """Per-sample totals, the ANN comparison and what the relay groups cost."""
    snn = {p.name: sum(g["energy_j"][p.name] for g in layers) for p in profiles}
    ann_macs = {"student_ann": sum(g["ann_macs_per_sample"] for g in layers)}
    if teacher_macs is not None:
        ann_macs["teacher"] = sum(m for _, m in teacher_macs)
    ann = {k: ann_energy(v) for k, v in ann_macs.items()}
    macs = [c["macs_per_sample"] for c in connections if c["macs_per_sample"] is not None]
    relays = [g for g in layers if g["role"] == "relay"]
    return {
        "synops_per_sample": sum(c["synops_per_sample"] for c in connections),
        "macs_per_sample": sum(macs) if macs else None,
        "spikes_per_sample": sum(g["spikes_per_sample"] or 0.0 for g in layers),
        "neuron_updates_per_sample": sum(g["neuron_updates_per_sample"] for g in layers),
        "energy_j_per_sample": snn,
        "ann_macs_per_sample": ann_macs,
        "ann_energy_j_per_sample": ann,
        "ann_over_snn": {p: {k: (e / snn[p] if snn[p] else None) for k, e in ann.items()}
                         for p in snn},
        "relays": {"groups": len(relays), "neurons": sum(g["neurons"] for g in relays),
                   "synapses": sum(g["synapses"] for g in relays),
                   "cores": sum(g["cores"] for g in relays),
                   "cores_shared_kernel": sum(g["cores_shared_kernel"] for g in relays),
                   "synops_per_sample": sum(g["synops_per_sample"] for g in relays),
                   "neuron_updates_per_sample": sum(g["neuron_updates_per_sample"]
                                                    for g in relays),
                   "energy_j_per_sample": {p.name: sum(g["energy_j"][p.name] for g in relays)
                                           for p in profiles}},
    }


def build_report(tally, profiles, limits=CoreLimits(), teacher_macs=None, meta=None) -> dict:
    """energy.json content from an energy.Tally; teacher_macs: energy.count_macs() of a teacher."""
    connections = price_connections(tally.connection_stats(), profiles)
    groups = tally.group_stats(connections)
    mapping = map_groups(groups, limits)
    layers = price_groups(groups, connections, profiles, mapping["cores"],
                          mapping["cores_shared_kernel"])
    report = {**(meta or {}), "input": tally.input_stats(), "layers": layers,
              "connections": connections,
              "total": totals(layers, connections, profiles, teacher_macs),
              "chip": mapping["chip"],
              "profiles": {p.name: {"e_synop_j": p.e_synop, "e_mac_j": p.e_mac,
                                    "e_neuron_active_j": p.e_neuron_active,
                                    "e_neuron_inactive_j": p.e_neuron_inactive,
                                    "source": p.source} for p in profiles}}
    if teacher_macs is not None:
        report["teacher_layers"] = [{"name": n, "macs": m, "energy_j": ann_energy(m)}
                                    for n, m in teacher_macs]
    return report


# ---- energy.md ---------------------------------------------------------------------------------

def si(joules) -> str:
    if joules is None:
        return "-"
    for unit, scale in (("mJ", 1e-3), ("uJ", 1e-6), ("nJ", 1e-9)):
        if abs(joules) >= scale:
            return f"{joules / scale:.3g} {unit}"
    return f"{joules / 1e-12:.3g} pJ"


def num(v) -> str:
    return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) and v < 1000 else f"{v:,.0f}")


def table(head, rows) -> list:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def group_table(report) -> list:
    profiles = list(report["profiles"])
    head = ["group", "role", "kind", "neurons", "synapses", "in spikes", "out spikes", "rate",
            "SynOps", "MACs (analog)", "updates", *[f"E {p}" for p in profiles], "ANN MACs",
            "E ANN", "cores (a)", "cores (b)"]
    rows = []
    for g in report["layers"]:
        rate = "-" if g["firing_rate"] is None else f"{g['firing_rate']:.3f}"
        nodes = [n for n in g["nodes"] if n != g["name"]]
        name = g["name"] + (f" ({', '.join(nodes)})" if nodes else "")
        rows.append([name, g["role"], g["kind"], num(g["neurons"]), num(g["synapses"]),
                     num(g["input_spikes_per_sample"]), num(g["spikes_per_sample"]), rate,
                     num(g["synops_per_sample"]), num(g["macs_per_sample"]),
                     num(g["neuron_updates_per_sample"]),
                     *[si(g["energy_j"][p]) for p in profiles],
                     num(g["ann_macs_per_sample"]), si(g["ann_energy_j"]), str(g["cores"]),
                     str(g["cores_shared_kernel"])])
    return table(head, rows)


def connection_table(report) -> list:
    profiles = list(report["profiles"])
    head = ["connection", "src -> dst", "kind", "synapses", "fan-out", "in spikes", "SynOps",
            *[f"E {p}" for p in profiles]]
    rows = [[c["name"] + (" (recurrent)" if c["recurrent"] else ""),
             f"{c['src']} -> {c['dst']}", c["kind"], num(c["synapses"]),
             f"{c['fanout_min']}-{c['fanout_max']}", num(c["input_spikes_per_sample"]),
             num(c["synops_per_sample"]), *[si(c["energy_j"][p]) for p in profiles]]
            for c in report["connections"]]
    return table(head, rows)


def total_lines(report) -> list:
    t = report["total"]
    lines = [f"- SynOps: {num(t['synops_per_sample'])}; spikes: {num(t['spikes_per_sample'])}; "
             f"neuron updates: {num(t['neuron_updates_per_sample'])}"]
    lines += [f"- SNN energy ({p}): {si(e)}" for p, e in t["energy_j_per_sample"].items()]
    lines += [f"- ANN energy ({k}, {num(t['ann_macs_per_sample'][k])} MACs at 45 nm): {si(e)}"
              for k, e in t["ann_energy_j_per_sample"].items()]
    lines += [f"- ANN / SNN ({p}): " + ", ".join(f"{k} {r:.3g}x" for k, r in ratios.items()
                                                  if r is not None)
              for p, ratios in t["ann_over_snn"].items()]
    if "teacher" not in t["ann_macs_per_sample"]:
        lines.append("- No teacher.pt in the run dir: no teacher comparison.")
    r = t["relays"]
    lines.append(f"- Delay alignment: {r['groups']} relay group(s), {num(r['neurons'])} "
                 f"neurons, {num(r['synapses'])} synapses, {r['cores']} cores, "
                 f"{num(r['synops_per_sample'])} SynOps per sample; " + ", ".join(
                     f"{si(e)} ({p})" for p, e in r["energy_j_per_sample"].items()))
    return lines


def mapping_lines(chip) -> list:
    """Both storage assumptions side by side (hwmodels.resources)."""
    rows = []
    for label, c in (("(a) convolutions unrolled into synapses", chip),
                     ("(b) one shared kernel per core", chip["shared_kernel"])):
        rows.append([label, f"{c['cores_used']:,}", f"{c['relay_cores']:,} "
                     f"({100 * c['relay_share']:.1f} %)", f"{c['chips']:,}", c["system"]])
    lines = table(["storage", "neurocores", "of them relays (share)", "chips", "Intel system"],
                  rows)
    return lines + [
        "", f"Limits assumed: {chip['neurons_per_core']:,} neurons and "
        f"{chip['synapses_per_core']:,} synapse entries per core, {chip['cores_per_chip']} cores "
        f"per chip (Intel Loihi 2 brief: 1M neurons, 120M synapses over 128 cores); one group per "
        f"core at least. (a) one entry per non-zero weight and connection; (b) each core stores "
        f"the kernel slices of the output channels it holds once (docs/energy.md). Relay groups: "
        f"{chip['relay_groups']}, {chip['relay_neurons']:,} neurons."]


def render_markdown(report) -> str:
    lines = [f"# Energy per inference: {report.get('run', '')}", "",
             f"{report.get('samples', '?')} test samples, T = {report.get('timesteps', '?')} "
             f"steps, activity from {report.get('activity_source', '?')} (its accuracy on them: "
             f"{num(report.get('accuracy'))}). Counts are per sample; in spikes of a group sum "
             f"its incoming connections' sources; those of an analog input are its non-zero "
             f"values.", "", "## Neuron groups", ""]
    lines += group_table(report) + ["", "## Connections", ""] + connection_table(report)
    lines += ["", "## Totals per sample", ""] + total_lines(report)
    lines += ["", "## Loihi 2 mapping", ""] + mapping_lines(report["chip"])
    lines += ["", "## Sources and assumptions", ""]
    lines += [f"- {p}: {v['source']}" for p, v in report["profiles"].items()]
    lines += ["- ANN baselines: E_ANN = 4.6 pJ x MACs (Horowitz, ISSCC 2014, 45 nm fp32 MAC); "
              "conv and linear layers only, relay connections excluded. The ANN / SNN ratio "
              "under 'loihi' sets a 45 nm ANN against the 14 nm Loihi figures; the 45nm ratio "
              "compares like with like.",
              "- SynOps = sum over steps of source spikes x exact fan-out (synapses with a "
              "non-zero weight) of each spiking source; a recurrent connection delivers the "
              "previous step's spikes. Loihi 'active' neuron update = a neuron-step that spikes.",
              "- Figures are estimates from published per-operation energies, not measurements."]
    return "\n".join(lines) + "\n"


# ---- energy.png and the files ------------------------------------------------------------------

def plot(report, path):
    """energy.png: per-group energy (SNN per profile vs the same layers as an ANN), firing rates."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.files import atomic_write

    layers = report["layers"]
    names = [g["name"] for g in layers]
    series = [(f"SNN, {p}", [g["energy_j"][p] for g in layers]) for p in report["profiles"]]
    series.append(("ANN (same layers, 45 nm)", [g["ann_energy_j"] for g in layers]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(12, 0.9 * len(names)), 4.8))
    x, width = np.arange(len(names)), 0.8 / len(series)
    for k, (label, values) in enumerate(series):
        left.bar(x - 0.4 + (k + 0.5) * width, np.asarray(values) * 1e9, width, label=label)
    left.set_yscale("log", nonpositive="clip")
    peak = max((v for _, values in series for v in values), default=0)
    if peak > 0:
        left.set_ylim(top=peak * 1e9 * 30)   # room for the legend above the bars
    left.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    left.set_ylabel("energy per sample (nJ)")
    left.set_title("Energy per neuron group")
    left.legend(fontsize=8, ncol=len(series), loc="upper left")
    spiking = [g for g in layers if g["firing_rate"] is not None]
    right.bar([g["name"] for g in spiking], [g["firing_rate"] for g in spiking],
              color=["tab:gray" if g["role"] == "relay" else "tab:green" for g in spiking])
    plt.setp(right.get_xticklabels(), rotation=45, ha="right", fontsize=8)
    right.set_ylabel("spikes per neuron per step")
    right.set_title("Firing rate per group (relays grey)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def write_report(report, run_dir) -> list:
    """energy.json, energy.md, energy.png in run_dir, each written atomically."""
    from common.files import atomic_write

    run_dir = Path(run_dir)
    text = json.dumps(report, indent=2)
    atomic_write(run_dir / "energy.json", lambda tmp: Path(tmp).write_text(text + "\n"))
    md = render_markdown(report)
    atomic_write(run_dir / "energy.md", lambda tmp: Path(tmp).write_text(md))
    plot(report, run_dir / "energy.png")
    return [run_dir / f"energy.{ext}" for ext in ("json", "md", "png")]
