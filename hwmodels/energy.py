"""Energy per inference of a compiled student (`student.net`, a `hwmodels.loihi.Net`) on Loihi and
at 45 nm, from the spikes of the Loihi emulator.

    python -m hwmodels.energy [--run runs/default] [--profile {loihi,45nm,all}] [--samples N]

The net is a graph of neuron groups joined by connections (docs/loihi_net.md); relay groups are
the compiler's delay alignment. Per connection c: src -> dst and per sample (float-model time):

    synapse      a (source, destination) pair whose weight is non-zero (what Lava's synapse
                 really uses; assumption: zero weights are not stored and cost nothing)
    fan-out      f_c(i) = synapses of c leaving source position i; exact per position, so the
                 borders of a padded / strided conv reach fewer neurons than the middle:
                 dense: f(i) = #{j: W[j, i] != 0}
                 conv:  f(c, y, x) = sum_{j, l} M_c(j, l) R_H(y, j) R_W(x, l) with
                        M_c(j, l) = #{o in c's group: W[o, c mod C_in/g, j, l] != 0} and
                        R_H(y, j) = 1 if some output row o (0 <= o < H_out) has o*s - p + j*d = y
    SynOps_c     = sum_t sum_i s_src(t, i) f_c(i)     s_input = the input spikes; a recurrent
                   connection sees the source's previous step: s_src(t - 1, i), s_src(-1) = 0
    ANN MACs_c   = dense: N_dst N_src;  conv: N_dst C_in kh kw / groups  (one pass); 0 for a
                   connection into a relay group (the same-architecture ANN has no relays)

Per group g: updates_g = neurons_g T; spikes_g; firing rate = spikes_g / updates_g;
SynOps_g = sum of its incoming connections. A connection from an analog input ('direct'
encoding) also counts MACs_c T (one ANN pass per step); its SynOps count non-zero inputs (graded
spikes). Energies: hwmodels.profiles; neurocores (convolutions unrolled, and one shared kernel per
core) and the Intel system: hwmodels.resources; the report files: hwmodels.energy_report.
"""
import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.cli import check_writable_dir, device_arg, positive_int, run_guarded

from . import loihi, netfile
from .energy_report import build_report, si, write_report
from .profiles import PROFILES
from .resources import CoreLimits


class EnergyError(ValueError):
    """Bad input for the energy model; the message is one line."""


# ---- structure: fan-out and MACs of a connection -----------------------------------------------

def nonzero_weight(syn) -> np.ndarray:
    """Where Lava's synapse has a weight (dense: after netx's and Lava's weight scaling)."""
    try:
        return np.asarray(syn.lava_weight) != 0
    except loihi.NetxError as e:
        raise EnergyError(f"connection {syn.name!r}: {e}") from None


def reach(n_in, n_out, k, s, p, d) -> torch.Tensor:
    """R(y, j) = 1 if some output o in [0, n_out) has o*s - p + j*d = y; shape (n_in, k)."""
    r = torch.zeros(n_in, k, dtype=torch.int64)
    for j in range(k):
        for o in range(n_out):
            y = o * s - p + j * d
            if 0 <= y < n_in:
                r[y, j] = 1
    return r


def conv_fanout(mask, in_shape, out_shape, stride, padding, dilation, groups) -> torch.Tensor:
    """f(c, y, x) of the module docstring; mask (C_out, C_in / groups, kh, kw): non-zero weights."""
    m = torch.as_tensor(mask, dtype=torch.int64)
    # M[c, j, l]: input channel c = group * C_in/g + k meets the C_out/g outputs of its group
    counts = m.reshape(groups, m.shape[0] // groups, *m.shape[1:]).sum(1).reshape(
        in_shape[0], *m.shape[2:])
    r_h, r_w = (reach(in_shape[1 + a], out_shape[1 + a], m.shape[2 + a], stride[a], padding[a],
                      dilation[a]) for a in (0, 1))
    return torch.einsum("cjl,yj,xl->cyx", counts, r_h, r_w)


def fanout(syn, in_shape, out_shape) -> torch.Tensor:
    """Synapses leaving each source position of `syn`, int64 of shape in_shape (module doc)."""
    mask = nonzero_weight(syn)
    if syn.kind == "dense":
        return torch.as_tensor(mask.sum(0), dtype=torch.int64).reshape(in_shape)
    return conv_fanout(mask, in_shape, out_shape, syn.stride, syn.padding, syn.dilation,
                       syn.groups)


def ann_macs(syn, in_shape, out_shape) -> int:
    """MACs of connection `syn` as an ANN layer, one pass (module docstring)."""
    if syn.kind == "dense":
        return math.prod(out_shape) * math.prod(in_shape)
    return math.prod(out_shape) * math.prod(syn.weight.shape[1:])


# ---- activity: spike counts --------------------------------------------------------------------

def events(x: torch.Tensor, previous_step=False) -> torch.Tensor:
    """Non-zero values of x (B, T, ...) summed over steps, (B, N) int64; previous_step: the steps a
    recurrent connection delivers (all but the last)."""
    if previous_step:
        x = x[:, :-1]
    return (x != 0).sum(1, dtype=torch.int64).reshape(x.shape[0], -1)


class Tally:
    """Running activity sums of a Net over samples; add() one batch at a time."""

    def __init__(self, net, analog_input=False):
        self.net, self.analog_input = net, analog_input
        self.shapes = {"input": net.in_shape, **{g.name: g.shape for g in net.neurons}}
        self.fanouts = {s.name: fanout(s, self.shapes[s.src], self.shapes[s.dst]).reshape(-1)
                        for s in net.synapses}
        self.samples, self.steps = 0, None
        self.input_events = {s.name: 0 for s in net.synapses}
        self.synops = {s.name: 0 for s in net.synapses}
        self.spikes = {"input": 0, **{g.name: 0 for g in net.neurons}}

    def add(self, inputs: torch.Tensor, spikes: dict):
        """inputs (B, T, *in_shape); spikes: group name -> (B, T, *shape) (bool or {0, 1}) for
        every spiking group."""
        b, t = self._check(inputs, spikes)
        activity = {"input": inputs, **{g.name: spikes[g.name] for g in self.net.neurons
                                        if g.spiking}}
        for name, x in activity.items():
            self.spikes[name] += int((x != 0).sum())
        for s in self.net.synapses:
            if s.src not in activity:  # a group that never spikes sends nothing
                continue
            ev = events(activity[s.src], previous_step=s.recurrent)
            self.input_events[s.name] += int(ev.sum())
            self.synops[s.name] += int((ev * self.fanouts[s.name]).sum())
        self.samples += b

    def _check(self, inputs, spikes):
        b, t = inputs.shape[:2]
        if self.steps not in (None, t):
            raise EnergyError(f"batches disagree on the number of steps ({self.steps} vs {t})")
        if tuple(inputs.shape[2:]) != self.net.in_shape:
            raise EnergyError(f"inputs of shape {tuple(inputs.shape)}, expected "
                              f"(B={b}, T={t}, *{self.net.in_shape})")
        for g in self.net.neurons:
            if not g.spiking:
                continue
            if g.name not in spikes:
                raise EnergyError(f"no spikes given for group {g.name}")
            if tuple(spikes[g.name].shape) != (b, t, *g.shape):
                raise EnergyError(f"group {g.name}: spikes of shape {tuple(spikes[g.name].shape)}, "
                                  f"expected (B={b}, T={t}, *{g.shape})")
        self.steps = t
        return b, t

    def connection_stats(self) -> list:
        """Per-sample counts of every connection (dicts; module docstring)."""
        n, t = self._per_sample()
        roles = {g.name: g.role for g in self.net.neurons}
        stats = []
        for s in self.net.synapses:
            f = self.fanouts[s.name]
            macs = ann_macs(s, self.shapes[s.src], self.shapes[s.dst])
            analog = self.analog_input and s.src == "input"
            stats.append({
                "name": s.name, "src": s.src, "dst": s.dst, "kind": s.kind,
                "recurrent": bool(s.recurrent), "relay": roles[s.dst] == "relay",
                "nodes": list(s.nodes), "input": "analog" if analog else "spikes",
                "weights": int(np.asarray(s.weight).size), "synapses": int(f.sum()),
                "kernel_per_channel": (int(np.asarray(s.weight)[0].size) if s.kind == "conv"
                                       else None),
                "fanout_min": int(f.min()), "fanout_max": int(f.max()),
                "input_spikes_per_sample": self.input_events[s.name] / n,
                "synops_per_sample": self.synops[s.name] / n,
                "macs_per_sample": macs * t if analog else None,
                "ann_macs_per_sample": 0 if roles[s.dst] == "relay" else macs})
        return stats

    def group_stats(self, connections=None) -> list:
        """Per-sample counts of every group; its synaptic counts sum its incoming connections."""
        n, t = self._per_sample()
        connections = connections or self.connection_stats()
        stats = []
        for g in self.net.neurons:
            into = [c for c in connections if c["dst"] == g.name]
            spikes = self.spikes[g.name] / n if g.spiking else None
            macs = [c["macs_per_sample"] for c in into if c["macs_per_sample"] is not None]
            stats.append({
                "name": g.name, "role": g.role, "nodes": list(g.nodes),
                "kind": "+".join(sorted({c["kind"] for c in into})), "shape": list(g.shape),
                "neurons": g.size, "connections": [c["name"] for c in into],
                "synapses": sum(c["synapses"] for c in into),
                "channels": g.shape[0],
                "kernel_per_channel": sum(c["kernel_per_channel"] or 0 for c in into),
                "dense_synapses": sum(c["synapses"] for c in into if c["kind"] != "conv"),
                "input_spikes_per_sample": sum(c["input_spikes_per_sample"] for c in into),
                "spikes_per_sample": spikes,
                "firing_rate": spikes / (g.size * t) if g.spiking else None,
                "synops_per_sample": sum(c["synops_per_sample"] for c in into),
                "macs_per_sample": sum(macs) if macs else None,
                "neuron_updates_per_sample": g.size * t,
                "ann_macs_per_sample": sum(c["ann_macs_per_sample"] for c in into)})
        return stats

    def input_stats(self) -> dict:
        n, t = self._per_sample()
        size = math.prod(self.net.in_shape)
        return {"shape": list(self.net.in_shape), "spikes_per_sample": self.spikes["input"] / n,
                "rate": self.spikes["input"] / (n * t * size)}

    def _per_sample(self):
        if not self.samples:
            raise EnergyError("no samples counted")
        return self.samples, self.steps


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


# ---- activity sources --------------------------------------------------------------------------

def emulator_source(net, device):
    """run(inputs (B, T, ...)) -> (spikes per group name (B, T, ...), predictions)."""
    try:
        emulator = loihi.Emulator(net, device=device)
    except loihi.NetxError as e:
        raise EnergyError(f"emulator: {e}") from None

    def run(inputs):
        result = emulator.run(inputs.to(device))
        return result.spikes, result.predictions

    return run


def student_source(model, net, device):
    """run(inputs (B, T, ...)) -> (spikes per group, predictions) from the torch student: a group
    takes the spikes of the student layer named in its `nodes`; a relay those of its source
    (relays repeat their source's spikes, in the float model's time)."""
    model = model.to(device).eval()

    def run(inputs):
        with torch.no_grad():
            out = model(inputs.transpose(0, 1).to(device))
        layers = {name: s.transpose(0, 1) for name, s in out.spikes.items()}
        spikes = {"input": inputs}
        for g in net.neurons:
            if g.role == "relay":
                spikes[g.name] = spikes[net.incoming(g.name)[0].src]
            elif g.spiking:
                found = [layers[n] for n in g.nodes if n in layers]
                if not found:
                    raise EnergyError(f"group {g.name}: no student layer among its nodes "
                                      f"{g.nodes} (student layers: {', '.join(layers)})")
                spikes[g.name] = found[0].reshape(*found[0].shape[:2], *g.shape)
        del spikes["input"]
        return spikes, out.logits.argmax(-1)

    return run


def measure(net, source, batches, total=None, analog_input=False):
    """Run source over batches of (inputs (B, T, ...), labels); returns (Tally, accuracy)."""
    from tqdm import tqdm

    tally, correct = Tally(net, analog_input), 0
    with tqdm(total=total, desc="energy", unit="sample") as bar:
        for inputs, labels in batches:
            spikes, predictions = source(inputs)
            tally.add(inputs.cpu(), {n: s.cpu() for n, s in spikes.items()})
            correct += int((predictions.cpu() == labels).sum())
            bar.update(inputs.shape[0])
    return tally, correct / tally.samples


# ---- command line ------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m hwmodels.energy",
                                description="Energy per inference of runs/<name>/student.net on "
                                            "Loihi and at 45 nm, against the ANN baselines.")
    p.add_argument("--run", default="runs/default", help="run dir with student.net, student.pt")
    p.add_argument("--profile", choices=(*PROFILES, "all"), default="all")
    p.add_argument("--samples", type=positive_int, default=None, help="test samples (default all)")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--device", type=device_arg, default="cpu", metavar="{auto,cpu,cuda}")
    p.add_argument("--activity", choices=("auto", "emulator", "student"), default="auto",
                   help="where spikes come from: the Loihi emulator (hwmodels.loihi), the torch "
                        "student, or auto (the emulator, the student for analog input)")
    p.add_argument("--data-dir", default="data", help="for on-disk datasets")
    p.add_argument("--neurons-per-core", type=positive_int, default=CoreLimits.neurons_per_core)
    p.add_argument("--synapses-per-core", type=positive_int, default=CoreLimits.synapses_per_core)
    p.add_argument("--cores-per-chip", type=positive_int, default=CoreLimits.cores_per_chip)
    return p.parse_args(argv)


def read_student_net(run_dir) -> loihi.Net:
    path = Path(run_dir) / "student.net"
    if not path.is_file():
        raise EnergyError(f"{path} not found; run `python -m deploy.verify --run {run_dir}` first")
    try:
        return netfile.read_net(path)
    except loihi.NetxError as e:
        raise EnergyError(str(e)) from None


def pick_activity(args, analog):
    """'emulator' or 'student' for --activity and the encoding."""
    if args.activity == "auto":
        return "student" if analog else "emulator"
    if args.activity == "emulator" and analog:
        raise EnergyError("--activity emulator: analog ('direct') input cannot be fed to the "
                          "Loihi emulator as spikes; use --activity student")
    return args.activity


def teacher_macs(run_dir, in_shape):
    """count_macs of RUN/teacher.pt, None without one."""
    from train.checkpoint import load_model

    path = Path(run_dir) / "teacher.pt"
    if not path.is_file():
        return None
    teacher, _ = load_model(path, "teacher")
    return count_macs(teacher, in_shape)


REPORT_FILES = ("energy.json", "energy.md", "energy.png")


def check_outputs(run_dir):
    """The report files must be files (or absent), checked before measuring."""
    for name in REPORT_FILES:
        path = Path(run_dir) / name
        if path.exists() and not path.is_file():
            raise EnergyError(f"{path}: is a folder or special file, not a file; move it away")


def check_finite(model, path):
    """NaN / inf in a checkpoint's parameters would price NaN activity: refused by name."""
    for name, value in model.state_dict().items():
        if torch.is_tensor(value) and value.is_floating_point() and \
                not bool(torch.isfinite(value).all()):
            raise EnergyError(f"{path}: {name} contains NaN or inf")


def run(args) -> dict:
    """Measure, build and write the report for args (see parse_args)."""
    from train.checkpoint import load_model
    from train.data import test_batches

    run_dir = Path(args.run)
    net = read_student_net(run_dir)
    check_writable_dir(run_dir, "--run")  # before measuring
    check_outputs(run_dir)
    model, ckpt = load_model(run_dir / "student.pt", "student")
    check_finite(model, run_dir / "student.pt")
    analog = ckpt["encoding"]["kind"] == "direct"
    activity = pick_activity(args, analog)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    source = (emulator_source(net, device) if activity == "emulator"
              else student_source(model, net, device))
    n, info, batches = test_batches(ckpt["dataset"], ckpt["encoding"], args.data_dir,
                                    args.samples, args.batch_size)
    if tuple(info.in_shape) != net.in_shape:
        raise EnergyError(f"{run_dir / 'student.net'} takes input {net.in_shape}, the dataset "
                          f"gives {tuple(info.in_shape)}")
    batches = ((x.transpose(0, 1), y) for x, y in batches)  # (T, B, ...) -> (B, T, ...)
    tally, accuracy = measure(net, source, batches, n, analog)
    profiles = list(PROFILES.values()) if args.profile == "all" else [PROFILES[args.profile]]
    limits = CoreLimits(args.neurons_per_core, args.synapses_per_core, args.cores_per_chip)
    meta = {"run": str(run_dir), "net": str(run_dir / "student.net"), "samples": tally.samples,
            "timesteps": tally.steps, "encoding": dict(ckpt["encoding"]),
            "activity_source": activity, "accuracy": accuracy}
    report = build_report(tally, profiles, limits, teacher_macs(run_dir, info.in_shape), meta)
    write_report(report, run_dir)
    return report


def summary(report, run_dir) -> str:
    total = report["total"]
    snn = ", ".join(f"{p} {si(e)}" for p, e in total["energy_j_per_sample"].items())
    ann = ", ".join(f"{k} {si(e)}" for k, e in total["ann_energy_j_per_sample"].items())
    a, b = report["chip"], report["chip"]["shared_kernel"]
    return (f"energy per sample: SNN {snn}; ANN (45 nm) {ann}; Loihi 2 cores: {a['cores_used']} "
            f"with convolutions unrolled ({a['system']}), {b['cores_used']} with shared kernels "
            f"({b['system']}) -> {run_dir}/energy.json, .md, .png")


def main(argv=None) -> int:
    from train.checkpoint import CheckpointError
    from train.data import DataError

    args = parse_args(argv)
    return run_guarded(lambda: print(summary(run(args), args.run)), EnergyError, CheckpointError,
                       DataError)


if __name__ == "__main__":
    sys.exit(main())
