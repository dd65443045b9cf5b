"""Energy per inference of a compiled student (lava-dl netx HDF5) on Loihi and at 45 nm.

    python -m hwmodels.energy [--run runs/default] [--profile {loihi,45nm,all}] [--samples N]

Counts per synaptic layer l (conv or dense, with the neuron group that follows it), per sample:

    fan-out f_l(i)  = neurons of layer l that input position i reaches; exact per position, so the
                      borders of a padded / strided conv reach fewer neurons than the middle:
                      conv: f(c, y, x) = (C_out / groups) * n_H(y) * n_W(x) with
                      n_H(y) = #{(o, j): o*s - p + j*d = y, 0 <= o < H_out, 0 <= j < k};
                      dense: f(i) = N_out
    SynOps_l        = sum_t sum_i s_{l-1}(t, i) * f_l(i)       (s_{l-1}: input spikes of layer l)
    updates_l       = neurons_l * T;  firing rate_l = spikes_l / updates_l
    ANN MACs_l      = dense: N_in * N_out;  conv: out elements * C_in * kh * kw / groups
A first layer fed with analog input ('direct' encoding) also counts MACs_l * T (one ANN pass per
step); SynOps then counts non-zero inputs (graded spikes). Energies: hwmodels.profiles;
neurocores: hwmodels.resources.
"""
import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import loihi
from .profiles import PROFILES, ann_energy
from .resources import CoreLimits, chip_usage, layer_cores

class EnergyError(RuntimeError):
    """Bad input for the energy model; the message is one line."""


# ---- structure: the netx HDF5 file ------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One synaptic layer of a netx network and the neurons it drives.

    Shapes are (C, H, W) for conv and (N,) for dense, as stored in the file; a dense layer sees its
    input flattened. weight_shape is (out, in / groups, kh, kw) or (out, in).
    """
    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    weight_shape: tuple
    has_neuron: bool
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    nodes: tuple = ()

    @property
    def neurons(self) -> int:
        return math.prod(self.out_shape)

    @property
    def synapses(self) -> int:
        """Stored weights."""
        return math.prod(self.weight_shape)

    @property
    def ann_macs(self) -> int:
        """MACs of this layer as an ANN, one pass."""
        if self.kind == "dense":
            return self.weight_shape[0] * self.weight_shape[1]
        _, c_in_per_group, kh, kw = self.weight_shape
        return self.neurons * c_in_per_group * kh * kw

    def fanout(self) -> torch.Tensor:
        """Exact fan-out of every input position, int64 of shape in_shape (formula: module doc)."""
        if self.kind == "dense":
            return torch.full(self.in_shape, self.out_shape[0], dtype=torch.int64)
        c_in = self.in_shape[0]
        per_group = self.out_shape[0] // self.groups
        n_h, n_w = (_reach(self.in_shape[1 + a], self.out_shape[1 + a], self.weight_shape[2 + a],
                           self.stride[a], self.padding[a], self.dilation[a]) for a in (0, 1))
        return per_group * (n_h[:, None] * n_w[None, :]).expand(c_in, -1, -1).clone()


def _reach(n_in, n_out, k, s, p, d) -> torch.Tensor:
    """n(y) = #{(o, j): o*s - p + j*d = y, 0 <= o < n_out, 0 <= j < k} for y in [0, n_in)."""
    count = torch.zeros(n_in, dtype=torch.int64)
    for o in range(n_out):
        for j in range(k):
            y = o * s - p + j * d
            if 0 <= y < n_in:
                count[y] += 1
    return count


def read_netx(path) -> tuple:
    """(input shape, [Layer, ...]) of a lava-dl netx HDF5 file (hwmodels.loihi.read_netx).

    Layer names: conv<k> / dense<k> with k the position among synaptic layers, as deploy.compile
    and hwmodels.loihi name them (a last dense without neuron group is the integrator readout);
    `nodes` are the NIR nodes a layer came from when the file says so. Raises EnergyError on
    anything this model cannot count.
    """
    net, layers = _parse(path)
    return net.in_shape, layers


def _parse(path):
    """(hwmodels.loihi.Net, [Layer]) of a chain network; EnergyError for graphs it cannot count."""
    try:
        net = loihi.read_net(path)
    except loihi.NetxError as e:
        raise EnergyError(str(e)) from None
    layers, prev = [], "input"
    for g in net.neurons:
        syn = net.incoming(g.name)
        if len(syn) != 1 or syn[0].src != prev or syn[0].recurrent:
            raise EnergyError(f"{path}: group {g.name!r} has fan-in, a skip or a recurrent "
                              f"connection; this energy model counts chains only")
        s, src = syn[0], net.shape_of(prev)
        layers.append(Layer(g.name, s.kind, tuple(src) if s.kind == "conv" else
                            (int(np.prod(src)),), tuple(g.shape), tuple(s.weight.shape),
                            g.spiking, s.stride, s.padding, s.dilation, s.groups, tuple(g.nodes)))
        prev = g.name
    return net, layers


# ---- activity: spike counts --------------------------------------------------------------------

class Tally:
    """Running activity sums of a network over samples; add() one batch at a time.

    Layer l's input is the network input for l = 0, else the spikes of layer l-1.
    """

    def __init__(self, layers, analog_input=False):
        self.layers = layers
        self.analog_input = analog_input
        self.fanouts = [layer.fanout().reshape(-1) for layer in layers]
        self.samples, self.steps = 0, None
        n = len(layers)  # per-layer totals over samples:
        self.input_events, self.synops, self.spikes = [0] * n, [0] * n, [0] * n
        self.updates = [0] * n

    def add(self, inputs: torch.Tensor, spikes: dict):
        """inputs (B, T, *in_shape); spikes: layer name -> (B, T, *out_shape) for every layer with
        a neuron group (bool or {0, 1})."""
        b, t = inputs.shape[:2]
        if self.steps not in (None, t):
            raise EnergyError(f"batches disagree on the number of steps ({self.steps} vs {t})")
        self.steps = t
        events = _events(inputs)
        for i, layer in enumerate(self.layers):
            fits = (tuple(inputs.shape[2:]) == layer.in_shape if layer.kind == "conv"
                    else events.shape[1] == layer.in_shape[0])  # dense: flattened input
            if not fits:
                raise EnergyError(f"{layer.name}: input of shape {tuple(inputs.shape)}, "
                                  f"expected (B={b}, T={t}, *{layer.in_shape})")
            self.input_events[i] += int(events.sum())
            self.synops[i] += int((events * self.fanouts[i].to(events.device)).sum())
            self.updates[i] += layer.neurons * t * b
            if not layer.has_neuron:
                continue
            if layer.name not in spikes:
                raise EnergyError(f"no spikes given for layer {layer.name}")
            out = spikes[layer.name]
            if tuple(out.shape) != (b, t, *layer.out_shape):
                raise EnergyError(f"{layer.name}: spikes of shape {tuple(out.shape)}, expected "
                                  f"(B={b}, T={t}, *{layer.out_shape})")
            inputs, events = out, _events(out)
            self.spikes[i] += int(events.sum())
        self.samples += b

    def layer_stats(self) -> list:
        """Per-sample counts of every layer (dicts; see the module docstring)."""
        if not self.samples:
            raise EnergyError("no samples counted")
        n, t = self.samples, self.steps
        stats = []
        for i, layer in enumerate(self.layers):
            analog = self.analog_input and i == 0
            spikes = self.spikes[i] / n if layer.has_neuron else None
            stats.append({
                "name": layer.name, "kind": layer.kind, "nodes": list(layer.nodes),
                "in_shape": list(layer.in_shape),
                "out_shape": list(layer.out_shape), "has_neuron": layer.has_neuron,
                "input": "analog" if analog else "spikes",
                "neurons": layer.neurons, "synapses": layer.synapses,
                "connections": int(self.fanouts[i].sum()),
                "fanout_min": int(self.fanouts[i].min()), "fanout_max": int(self.fanouts[i].max()),
                "input_spikes_per_sample": self.input_events[i] / n,
                "spikes_per_sample": spikes,
                "firing_rate": spikes / (layer.neurons * t) if layer.has_neuron else None,
                "synops_per_sample": self.synops[i] / n,
                "macs_per_sample": layer.ann_macs * t if analog else None,
                "neuron_updates_per_sample": self.updates[i] / n,
                "ann_macs_per_sample": layer.ann_macs,
            })
        return stats


def _events(x: torch.Tensor) -> torch.Tensor:
    """Non-zero values of x (B, T, ...) per sample and position, summed over steps: (B, N) int64."""
    return (x != 0).sum(1, dtype=torch.int64).reshape(x.shape[0], -1)


# ---- ANN comparison ----------------------------------------------------------------------------

def count_macs(model: nn.Module, in_shape) -> list:
    """[(module name, MACs)] of every Conv2d / Linear for one input of shape in_shape.

    Conv2d: output elements * C_in / groups * kh * kw; Linear: output elements * in_features.
    (Batch norm, pooling and activations are not counted.)
    """
    found, hooks = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            per_out = module.in_features
        else:
            continue
        hook = lambda m, i, o, name=name, per_out=per_out: found.append(  # noqa: E731
            (name, o[0].numel() * per_out))
        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *in_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return found


# ---- report ------------------------------------------------------------------------------------

def build_report(stats, profiles, limits=CoreLimits(), teacher_macs=None, meta=None) -> dict:
    """energy.json content from Tally.layer_stats(); teacher_macs: count_macs() of the teacher."""
    layers = []
    for s in stats:
        active = s["spikes_per_sample"] or 0.0
        energy = {p.name: p.layer_energy(s["synops_per_sample"], s["macs_per_sample"],
                                         s["neuron_updates_per_sample"], active)
                  for p in profiles}
        cores = layer_cores(s["neurons"], s["connections"], limits)
        layers.append({**s, "energy_j": energy, "cores": cores,
                       "ann_energy_j": ann_energy(s["ann_macs_per_sample"])})
    snn = {p.name: sum(layer["energy_j"][p.name] for layer in layers) for p in profiles}
    ann_macs = {"student_ann": sum(layer["ann_macs_per_sample"] for layer in layers)}
    if teacher_macs is not None:
        ann_macs["teacher"] = sum(m for _, m in teacher_macs)
    ann = {k: ann_energy(v) for k, v in ann_macs.items()}
    macs = [s["macs_per_sample"] for s in stats if s["macs_per_sample"] is not None]
    total = {
        "synops_per_sample": sum(s["synops_per_sample"] for s in stats),
        "macs_per_sample": sum(macs) if macs else None,
        "spikes_per_sample": sum(s["spikes_per_sample"] or 0.0 for s in stats),
        "neuron_updates_per_sample": sum(s["neuron_updates_per_sample"] for s in stats),
        "energy_j_per_sample": snn,
        "ann_macs_per_sample": ann_macs,
        "ann_energy_j_per_sample": ann,
        "ann_over_snn": {p: {k: (e / snn[p] if snn[p] else None) for k, e in ann.items()}
                         for p in snn},
    }
    report = {**(meta or {}), "layers": layers, "total": total,
              "chip": chip_usage([layer["cores"] for layer in layers], limits),
              "profiles": {p.name: {"e_synop_j": p.e_synop, "e_mac_j": p.e_mac,
                                    "e_neuron_active_j": p.e_neuron_active,
                                    "e_neuron_inactive_j": p.e_neuron_inactive,
                                    "source": p.source} for p in profiles}}
    if teacher_macs is not None:
        report["teacher_layers"] = [{"name": n, "macs": m, "energy_j": ann_energy(m)}
                                    for n, m in teacher_macs]
    return report


def _si(joules) -> str:
    if joules is None:
        return "-"
    for unit, scale in (("mJ", 1e-3), ("uJ", 1e-6), ("nJ", 1e-9)):
        if abs(joules) >= scale:
            return f"{joules / scale:.3g} {unit}"
    return f"{joules / 1e-12:.3g} pJ"


def _num(v) -> str:
    return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) and v < 1000 else f"{v:,.0f}")


def render_markdown(report) -> str:
    profiles = list(report["profiles"])
    head = ["layer", "kind", "neurons", "synapses", "fan-out", "in spikes", "out spikes", "rate",
            "SynOps", "MACs (analog)", "updates", *[f"E {p}" for p in profiles], "ANN MACs",
            "E ANN", "cores"]
    rows = []
    for row in report["layers"]:
        rate = "-" if row["firing_rate"] is None else f"{row['firing_rate']:.3f}"
        name = row["name"] + (f" ({', '.join(row['nodes'])})" if row["nodes"] else "")
        rows.append([name, row["kind"], _num(row["neurons"]), _num(row["synapses"]),
                     f"{row['fanout_min']}-{row['fanout_max']}",
                     _num(row["input_spikes_per_sample"]), _num(row["spikes_per_sample"]), rate,
                     _num(row["synops_per_sample"]), _num(row["macs_per_sample"]),
                     _num(row["neuron_updates_per_sample"]),
                     *[_si(row["energy_j"][p]) for p in profiles],
                     _num(row["ann_macs_per_sample"]), _si(row["ann_energy_j"]), str(row["cores"])])
    t, chip = report["total"], report["chip"]
    lines = [f"# Energy per inference: {report.get('run', '')}", "",
             f"{report.get('samples', '?')} test samples, T = {report.get('timesteps', '?')} "
             f"steps, "
             f"activity from {report.get('activity_source', '?')} (its accuracy on them: "
             f"{_num(report.get('accuracy'))}). Counts are per sample; in spikes of an analog "
             f"first layer are its non-zero inputs.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## Totals per sample", "",
              f"- SynOps: {_num(t['synops_per_sample'])}; spikes: {_num(t['spikes_per_sample'])}; "
              f"neuron updates: {_num(t['neuron_updates_per_sample'])}"]
    lines += [f"- SNN energy ({p}): {_si(e)}" for p, e in t["energy_j_per_sample"].items()]
    lines += [f"- ANN energy ({k}, {_num(t['ann_macs_per_sample'][k])} MACs at 45 nm): {_si(e)}"
              for k, e in t["ann_energy_j_per_sample"].items()]
    lines += [f"- ANN / SNN ({p}): " + ", ".join(f"{k} {r:.3g}x" for k, r in ratios.items()
                                                  if r is not None)
              for p, ratios in t["ann_over_snn"].items()]
    if "teacher" not in t["ann_macs_per_sample"]:
        lines.append("- No teacher.pt in the run dir: no teacher comparison.")
    lines += ["", "## Loihi 2 mapping", "",
              f"{chip['cores_used']} of {chip['cores_per_chip']} neurocores "
              f"({'fits one chip' if chip['fits'] else 'needs %d chips' % chip['chips']}); "
              f"limits assumed: {chip['neurons_per_core']:,} neurons and "
              f"{chip['synapses_per_core']:,} synapses per core (Intel Loihi 2 brief: 1M neurons, "
              f"120M synapses over 128 cores); convolutions counted unrolled (one synapse per "
              f"connection).", "", "## Sources and assumptions", ""]
    lines += [f"- {p}: {v['source']}" for p, v in report["profiles"].items()]
    lines += ["- ANN baselines: E_ANN = 4.6 pJ x MACs (Horowitz, ISSCC 2014, 45 nm fp32 MAC); "
              "conv and linear layers only. The ANN / SNN ratio under 'loihi' sets a 45 nm ANN "
              "against the 14 nm Loihi figures; the 45nm ratio compares like with like.",
              "- SynOps = sum over steps of input spikes x exact fan-out of each spiking input; "
              "Loihi 'active' neuron update = a neuron-step that spikes.",
              "- Figures are estimates from published per-operation energies, not measurements."]
    return "\n".join(lines) + "\n"


def plot(report, path):
    """energy.png: per-layer energy (SNN per profile vs the same layers as an ANN), firing rates."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from train.checkpoint import atomic_write

    layers = report["layers"]
    names = [layer["name"] for layer in layers]
    series = [(f"SNN, {p}", [layer["energy_j"][p] for layer in layers])
              for p in report["profiles"]]
    series.append(("ANN (same layers, 45 nm)", [layer["ann_energy_j"] for layer in layers]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x, width = np.arange(len(names)), 0.8 / len(series)
    for k, (label, values) in enumerate(series):
        left.bar(x - 0.4 + (k + 0.5) * width, np.asarray(values) * 1e9, width, label=label)
    left.set_yscale("log", nonpositive="clip")
    left.set_xticks(x, names)
    left.set_ylabel("energy per sample (nJ)")
    left.set_title("Energy per layer")
    left.legend(fontsize=8)
    spiking = [layer for layer in layers if layer["firing_rate"] is not None]
    right.bar([layer["name"] for layer in spiking], [layer["firing_rate"] for layer in spiking],
              color="tab:green")
    right.set_ylabel("spikes per neuron per step")
    right.set_title("Firing rate per layer")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def write_report(report, run_dir) -> list:
    """energy.json, energy.md, energy.png in run_dir, each written atomically."""
    from train.checkpoint import atomic_write

    run_dir = Path(run_dir)
    text = json.dumps(report, indent=2)
    atomic_write(run_dir / "energy.json", lambda tmp: Path(tmp).write_text(text + "\n"))
    md = render_markdown(report)
    atomic_write(run_dir / "energy.md", lambda tmp: Path(tmp).write_text(md))
    plot(report, run_dir / "energy.png")
    return [run_dir / f"energy.{ext}" for ext in ("json", "md", "png")]


# ---- glue: run the network over the test set ---------------------------------------------------

def test_batches(ckpt, samples=None, batch_size=100, data_dir="data"):
    """(number of samples, info, batches), batches yielding (inputs (B, T, *in_shape), labels): the
    first `samples` test items encoded exactly as the student was trained (train.data)."""
    from train.data import test_batches as encoded_test_batches

    n, info, batches = encoded_test_batches(ckpt["dataset"], ckpt["encoding"], data_dir, samples,
                                            batch_size)
    return n, info, ((x.transpose(0, 1), y) for x, y in batches)


def emulator_source(net, device):
    """run(inputs) -> (spikes per neuron layer in order, predictions) from hwmodels.loihi."""
    try:
        emulator = loihi.Emulator(net, device=device)
    except loihi.NetxError as e:
        raise EnergyError(f"emulator: {e}") from None

    def run(inputs):
        res = emulator.run(inputs.to(device))
        return [res.spikes[g.name] for g in net.neurons if g.spiking], res.predictions

    return run


def student_source(model, device):
    """run(inputs) -> (spikes per neuron layer in order, predictions) from the torch student."""
    model = model.to(device).eval()

    def run(inputs):
        with torch.no_grad():
            out = model(inputs.transpose(0, 1).to(device))
        return [s.transpose(0, 1) for s in out.spikes.values()], out.logits.argmax(-1)

    return run


def measure(layers, source, batches, total=None, analog_input=False):
    """Run source over batches; returns (Tally, accuracy of the source's predictions)."""
    from tqdm import tqdm

    tally, correct = Tally(layers, analog_input), 0
    neuron_layers = [layer.name for layer in layers if layer.has_neuron]
    with tqdm(total=total, desc="energy", unit="sample") as bar:
        for inputs, labels in batches:
            spikes, predictions = source(inputs)
            if len(spikes) != len(neuron_layers):
                raise EnergyError(f"activity has {len(spikes)} spiking layers, the netx file "
                                  f"{len(neuron_layers)}")
            tally.add(inputs.cpu(), {n: s.cpu() for n, s in zip(neuron_layers, spikes)})
            correct += int((predictions.cpu() == labels).sum())
            bar.update(inputs.shape[0])
    return tally, correct / tally.samples


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m hwmodels.energy",
                                description="Energy per inference of runs/<name>/student.net on "
                                            "Loihi and at 45 nm, against the ANN baselines.")
    p.add_argument("--run", default="runs/default", help="run dir with student.net, student.pt")
    p.add_argument("--profile", choices=(*PROFILES, "all"), default="all")
    p.add_argument("--samples", type=positive_int, default=None, help="test samples (default all)")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--activity", choices=("auto", "emulator", "student"), default="auto",
                   help="where spikes come from: the Loihi emulator (hwmodels.loihi), the torch "
                        "student, or auto (the emulator, the student for analog input)")
    p.add_argument("--data-dir", default="data", help="for on-disk datasets")
    p.add_argument("--neurons-per-core", type=positive_int, default=CoreLimits.neurons_per_core)
    p.add_argument("--synapses-per-core", type=positive_int, default=CoreLimits.synapses_per_core)
    p.add_argument("--cores-per-chip", type=positive_int, default=CoreLimits.cores_per_chip)
    return p.parse_args(argv)


def run(args) -> dict:
    """Measure, build and write the report for args (see parse_args)."""
    from train.checkpoint import load_model

    run_dir = Path(args.run)
    net = run_dir / "student.net"
    if not net.is_file():
        raise EnergyError(f"{net} not found; run `python -m deploy.verify --run {run_dir}` first")
    net_obj, layers = _parse(net)
    in_shape = net_obj.in_shape
    model, ckpt = load_model(run_dir / "student.pt", "student")
    analog = ckpt["encoding"]["kind"] == "direct"
    activity = args.activity
    if activity == "auto":
        activity = "student" if analog else "emulator"
    if activity == "emulator" and analog:
        raise EnergyError("analog ('direct') input cannot be fed to the Loihi emulator as spikes; "
                          "use --activity student")
    source = (emulator_source(net_obj, args.device) if activity == "emulator"
              else student_source(model, args.device))
    n, info, batches = test_batches(ckpt, args.samples, args.batch_size, args.data_dir)
    if tuple(info.in_shape) != tuple(in_shape):
        raise EnergyError(f"{net} takes input {tuple(in_shape)}, the dataset gives "
                          f"{tuple(info.in_shape)}")
    tally, accuracy = measure(layers, source, batches, n, analog)
    teacher_path = run_dir / "teacher.pt"
    teacher_macs = None
    if teacher_path.is_file():
        teacher, _ = load_model(teacher_path, "teacher")
        teacher_macs = count_macs(teacher, info.in_shape)
    profiles = list(PROFILES.values()) if args.profile == "all" else [PROFILES[args.profile]]
    limits = CoreLimits(args.neurons_per_core, args.synapses_per_core, args.cores_per_chip)
    meta = {"run": str(run_dir), "net": str(net), "samples": tally.samples,
            "timesteps": tally.steps, "encoding": dict(ckpt["encoding"]),
            "activity_source": activity, "accuracy": accuracy}
    report = build_report(tally.layer_stats(), profiles, limits, teacher_macs, meta)
    write_report(report, run_dir)
    return report


def main(argv=None) -> int:
    from train.checkpoint import CheckpointError
    from train.data import DataError

    args = parse_args(argv)
    try:
        report = run(args)
    except (EnergyError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = report["total"]
    snn = ", ".join(f"{p} {_si(e)}" for p, e in total["energy_j_per_sample"].items())
    ann = ", ".join(f"{k} {_si(e)}" for k, e in total["ann_energy_j_per_sample"].items())
    print(f"energy per sample: SNN {snn}; ANN (45 nm) {ann}; "
          f"{report['chip']['cores_used']} Loihi 2 cores -> {args.run}/energy.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
