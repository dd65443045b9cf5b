"""Compile a NIR graph to Loihi and prove it: float vs emulator vs Lava, spike for spike.

    python -m deploy.verify                        # runs/default: student.nir + student.pt
    python -m deploy.verify --nir net.nir --inputs spikes.npy [--labels y.npy]

Steps (one function each): read the inputs and check them against the graph; compile the graph to
`student.net` (deploy.compile); run the float model (student.pt, else export.from_nir.float_model),
the fixed-point emulator (hwmodels.loihi) on every sample, and Lava (deploy.lava_run) on the first
--lava-samples over --lava-workers processes; compare; write verify.json and verify.md next to
student.net. Every input is checked before the folder is touched; the outputs go to hidden temps
and are moved into place together at the end, under a lock on the folder (verify()).

Readout (verify.json `readout`): a spiking output layer scores each sample by its spike counts, a
non-spiking one (I, LI, CubaLI) by its final state; all three runs predict the argmax.

verify.json keys: float.{accuracy,n,device,note}, emulator.{accuracy,n,samples_per_s},
lava.{accuracy,n,samples_per_s,workers}, bit_exact.{n,mismatched_samples,mismatched_indices}
(emulator vs Lava: every spike of every group at every step and the output group's u and v),
bit_exact.float_vs_emulator.{n,mismatched_samples,mismatched_spikes,per_layer} (groups named as
float-model layers), agreement.{float_vs_emulator,emulator_vs_lava}, drop_points (float minus
Loihi accuracy, in points), readout, dt, dt_source, fit, verdict, passed, checked, not_checked
(what the verdict covers), thresholds (every threshold used), bit_exact.first_differences (per
failing sample: first differing group, step, neuron, both sides), nir_version, resources (neurons,
synapses, Loihi 2 chips, memory estimate), files.
Exit status (docs in README): 0 verified (PASS, or PASS (partial) naming what was not checked);
1 Lava and the emulator differ, float-vs-Loihi prediction agreement is below --min-agreement, or
nothing was compared (the last line says which); 2 bad input (before any output is touched);
130 interrupted.
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.cli import (CHECK_FAILED, INTERRUPTED, UsageError, check_writable_dir, device_arg,
                        load_npy, non_negative_int, positive_float, positive_int, run_guarded,
                        unit_float)
from common.files import Staged, folder_lock, new_folder, remove_stale_temps
from hwmodels.loihi import Emulator, NetxError
from hwmodels.resources import LOIHI2_NEURONS_PER_CHIP, CoreLimits, map_groups

from .compile import CompileError, build_net, load_graph, weight_bits_arg, write


OUTPUTS = ("student.net", "verify.json", "verify.md", "outputs.npz")
CHIP_LIMITS = CoreLimits()


class VerifyError(UsageError):
    """Bad input: the message names the file or option."""


def warn(line):
    print(f"warning: {line}", file=sys.stderr)


def pick_device(name):
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


# ---- inputs ------------------------------------------------------------------------------------

def load_npy_inputs(path, labels_path):
    """(N, T, ...) spikes from a .npy file, labels (N,) optional."""
    x = load_npy(path, "--inputs", VerifyError)
    if x.ndim < 3:
        raise VerifyError(f"--inputs {path}: expected spikes of shape (N, T, ...), got {x.shape}")
    if 0 in x.shape:
        raise VerifyError(f"--inputs {path}: empty: shape {x.shape} (N, T and every sample "
                          f"dimension must be >= 1)")
    if not np.isin(x, (0, 1)).all():
        raise VerifyError(f"--inputs {path}: spikes must be 0/1")
    y = load_labels(labels_path, len(x)) if labels_path else None
    return torch.from_numpy(x.astype(np.float32)), y


def load_labels(path, n):
    """Labels (n,) as int64: integers (integral floats allowed), checked against n samples; the
    class range is checked once the graph's output size is known (check_labels)."""
    y = load_npy(path, "--labels", VerifyError)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n,):
        raise VerifyError(f"--labels {path}: shape {y.shape} for {n} samples (expected ({n},))")
    if y.dtype.kind == "b" or y.dtype.kind not in "iuf":
        raise VerifyError(f"--labels {path}: dtype {y.dtype} (expected integer class indices)")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
        raise VerifyError(f"--labels {path}: label {y[bad]!r} at index {bad} is not an integer")
    return torch.from_numpy(y.astype(np.int64))


def check_labels(y, classes, source):
    """Every label a class index in [0, classes)."""
    if y is None:
        return
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if len(bad):
        raise VerifyError(f"{source}: label {int(y[bad[0]])} at index {int(bad[0])} is outside "
                          f"[0, {classes}) (the graph has {classes} outputs)")


def load_dataset_inputs(dataset, encoding, data_dir, batch_size):
    """Encode the whole test split -> (N, T, C, H, W) spikes and (N,) labels."""
    from train.data import DataError, test_batches
    try:
        n, _, batches = test_batches(dataset, encoding, data_dir, batch_size=batch_size)
        xs, ys = [], []
        for x, y in tqdm(batches, total=-(-n // batch_size), desc="encode", unit="batch"):
            xs.append(x.transpose(0, 1))
            ys.append(y)
    except DataError as e:
        raise VerifyError(str(e)) from None
    if not xs:
        raise VerifyError(f"--dataset {dataset}: the test split is empty")
    return torch.cat(xs), torch.cat(ys)


def check_input_shape(x, in_shape, source):
    """Samples must have the graph's input shape (or, for a vector input, its element count)."""
    sample = tuple(x.shape[2:])
    if sample == tuple(in_shape) or (len(in_shape) == 1 and int(np.prod(sample)) == in_shape[0]):
        return
    raise VerifyError(f"{source}: sample shape {sample} does not match the graph's input "
                      f"{tuple(in_shape)} (inputs are (N, T, {', '.join(map(str, in_shape))}))")


# ---- the three runs ----------------------------------------------------------------------------

def run_batches(model, emu, x, batch_size, device):
    """Float model and emulator batch by batch on spikes (N, T, ...).

    Returns float scores (N, K) or None, float per-step readout (N, T, K) or None, emulator
    predictions (N,), emulator per-step readout (N, T, K), emulator samples/s, and per batch the
    float-vs-emulator spike comparison of the layers both runs have."""
    if model is not None:
        model = model.to(device).eval()
    f_scores, f_steps, e_preds, e_steps, rows, elapsed = [], [], [], [], [], 0.0
    for i in tqdm(range(0, len(x), batch_size), desc="float + emulator", unit="batch"):
        xb = x[i:i + batch_size]
        start = time.perf_counter()
        r = emu.run(xb)
        elapsed += time.perf_counter() - start
        e_preds.append(r.predictions.cpu())
        e_steps.append(readout_steps(r).cpu())
        if model is None:
            continue
        with torch.no_grad():
            out = model(xb.to(device).transpose(0, 1))
        f_scores.append(out.logits_t.sum(0).cpu())
        f_steps.append(out.logits_t.cumsum(0).transpose(0, 1).cpu())
        rows.append(spike_diff({k: v.transpose(0, 1).bool().cpu() for k, v in out.spikes.items()},
                               r.spikes))
    cat = lambda parts: torch.cat(parts) if parts else None  # noqa: E731
    return (cat(f_scores), cat(f_steps), torch.cat(e_preds), torch.cat(e_steps),
            len(x) / max(elapsed, 1e-9), rows)


def readout_steps(result):
    """Per-step output of the output group: spikes (spike readout) or v (state readout)."""
    if result.readout_kind == "spikes":
        return torch.as_tensor(result.output_spikes).to(torch.int64)
    return torch.as_tensor(result.readout)


def spike_diff(float_spikes, emu_spikes):
    """(mismatching samples mask, {layer: mismatching spikes}) over layers both runs have."""
    bad, per_layer = None, {}
    for name, e in emu_spikes.items():
        if name not in float_spikes:
            continue
        diff = (float_spikes[name] != e.cpu()).reshape(e.shape[0], -1)
        per_layer[name] = int(diff.sum())
        rows = diff.any(1)
        bad = rows if bad is None else bad | rows
    return bad, per_layer


def summarize_float_vs_emulator(rows, n):
    if not rows or all(r[0] is None for r in rows):
        return None
    per_layer = {}
    for _, layers in rows:
        for k, v in layers.items():
            per_layer[k] = per_layer.get(k, 0) + v
    return {"n": n, "mismatched_samples": int(sum(int(r[0].sum()) for r in rows)),
            "mismatched_spikes": int(sum(per_layer.values())), "per_layer": per_layer}


def compare_lava(emu_result, lava_result, n):
    """Indices of samples (< n) where any group's spikes or the output u / v differ."""
    bad = np.zeros(n, dtype=bool)
    for name, s in lava_result.spikes.items():
        e = emu_result.spikes[name][:n].cpu().numpy()
        bad |= (e != s).reshape(n, -1).any(1)
    for key in ("readout", "readout_u"):
        e = getattr(emu_result, key)[:n].cpu().numpy()
        bad |= (e != getattr(lava_result, key)).reshape(n, -1).any(1)
    return np.flatnonzero(bad)


def first_differences(emu_result, lava_result, order, output, samples, limit=20):
    """Where Lava and the emulator first part, for each of the first `limit` failing samples: the
    earliest time step at which any group differs (the earliest group in depth order at that
    step), the first neuron (flat (C, H, W) index) that differs there, and what each side had.
    Spikes are compared for every spiking group; u and v are recorded (both sides) for the
    output group only (docs/loihi_net.md), so a non-output group gives spikes alone."""
    def state(result, key, i, t, j):
        return int(np.asarray(getattr(result, key)[i, t]).reshape(-1)[j])

    rows = []
    for i in samples[:limit]:
        best = None  # (step, depth index, group, neuron, kind)
        for d, name in enumerate(order):
            diffs = []
            if name in lava_result.spikes:
                e = emu_result.spikes[name][i].cpu().numpy().reshape(
                    emu_result.spikes[name].shape[1], -1)
                diffs.append(("spikes", e != lava_result.spikes[name][i].reshape(len(e), -1)))
            if name == output:
                for key, kind in (("readout_u", "u"), ("readout", "v")):
                    e = getattr(emu_result, key)[i].cpu().numpy()
                    diffs.append((kind, e != getattr(lava_result, key)[i]))
            for kind, diff in diffs:
                steps = np.flatnonzero(diff.any(1))
                if len(steps) and (best is None or (steps[0], d) < best[:2]):
                    t = int(steps[0])
                    best = (t, d, name, int(np.flatnonzero(diff[t])[0]), kind)
        if best is None:
            continue
        t, _, name, j, kind = best
        row = {"sample": int(i), "group": name, "step": t, "neuron": j, "differs_in": kind}
        for side, result in (("emulator", emu_result), ("lava", lava_result)):
            cell = {}
            if name in result.spikes:
                cell["spike"] = bool(np.asarray(
                    result.spikes[name][i, t].cpu() if torch.is_tensor(result.spikes[name])
                    else result.spikes[name][i, t]).reshape(-1)[j])
            if name == output:
                cell["u"] = state(result, "readout_u", i, t, j)
                cell["v"] = state(result, "readout", i, t, j)
            row[side] = cell
        rows.append(row)
    return rows


def _where(row) -> str:
    """One line for a first difference: 'sample 3: group lif2 step 4 neuron 7 (spikes): emulator
    spike 1, Lava spike 0'."""
    sides = []
    for side in ("emulator", "lava"):
        cell = row[side]
        sides.append(f"{'Lava' if side == 'lava' else side} " + ", ".join(
            f"{k} {int(v) if isinstance(v, bool) else v}" for k, v in cell.items()))
    return (f"sample {row['sample']}: group {row['group']} step {row['step']} neuron "
            f"{row['neuron']} ({row['differs_in']}): {'; '.join(sides)}")


def run_lava(net_path, net, x, workers):
    from .lava_run import run_lava_parallel
    start = time.perf_counter()
    result = run_lava_parallel(net_path, x.numpy(), net, workers, isolate=True)
    return result, len(x) / (time.perf_counter() - start)


# ---- report ------------------------------------------------------------------------------------

def accuracy(pred, labels):
    return None if labels is None or pred is None else float(
        (pred == labels[: len(pred)]).float().mean())


def agreement(a, b):
    return None if a is None or b is None else float((a[: len(b)] == b[: len(a)]).float().mean())


def points(a, b):
    return None if a is None or b is None else 100 * (a - b)


def verdict(report, min_agreement):
    """(ok, one line). Checks: Lava == emulator on every spike (of the Lava samples); for our own
    students (whose float neuron computes Loihi's arithmetic) float == emulator on every spike;
    float-vs-Loihi prediction agreement >= min_agreement. A failed check fails; PASS names only
    checks that ran on >= 1 sample and adds 'not checked: ...' for those that did not; when none
    ran the verdict is NOT VERIFIED (not ok)."""
    be, ag = report["bit_exact"], report["agreement"]["float_vs_emulator"]
    fe = be["float_vs_emulator"]
    n = report.get("emulator", {}).get("n", fe and fe["n"])
    if be["mismatched_samples"]:
        where = be.get("first_differences") or []
        at = f"; first at {_where(where[0])}" if where else ""
        return False, (f"FAIL: {be['mismatched_samples']} of {be['n']} samples differ between "
                       f"Lava and the emulator{at}")
    if report["float"]["loihi_exact"] and fe and fe["mismatched_spikes"]:
        return False, (f"FAIL: {fe['mismatched_spikes']} spikes in {fe['mismatched_samples']} of "
                       f"{fe['n']} samples differ between the float student and the emulator "
                       f"(the student computes Loihi's arithmetic: they must be equal)")
    if ag is not None and ag < min_agreement:
        return False, (f"FAIL: float vs Loihi prediction agreement {ag:.4f} < --min-agreement "
                       f"{min_agreement:g} (see verify.md for the per-layer cause)")
    ran, missing = [], []
    if be["n"]:
        ran.append(f"Lava == emulator on every spike of {be['n']} samples")
    else:
        missing.append("Lava vs emulator (--lava-samples 0)")
    if ag is None:
        missing.append(f"float vs Loihi ({report['float'].get('source', 'no float model')})")
    else:
        ran.append(f"float/Loihi agreement {ag:.4f} >= {min_agreement:g} on {n} samples")
        if report["float"]["loihi_exact"] and fe:
            ran.append(f"float == emulator on every spike of {fe['n']} samples")
    report["checked"], report["not_checked"] = ran, missing
    if not ran:
        return False, f"NOT VERIFIED: nothing was compared; not checked: {'; '.join(missing)}"
    tail = f"; not checked: {'; '.join(missing)}" if missing else ""
    return True, f"PASS{' (partial)' if missing else ''}: {'; '.join(ran)}{tail}"


def write_reports(staged, report):
    """verify.json and verify.md into the run's staged temps (moved in place by the caller)."""
    staged.write("verify.json", lambda t: t.write_text(json.dumps(report, indent=2) + "\n"))
    staged.write("verify.md", lambda t: t.write_text(markdown(report)))


def _fmt(v, pct=False):
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if pct else (f"{v:.1f}" if isinstance(v, float) else str(v))


def _resource_lines(res):
    if not res:
        return []
    fits = "fits one chip" if res["fits_one_chip"] else "does NOT fit one chip"
    return [f"Size: {res['neurons']:,} neurons, {res['synapses']:,} synapses: "
            f"{res['loihi2_chips']} Loihi 2 chip(s) ({fits}, {res['cores_used']} cores)."]


def _pts(v):
    return "-" if v is None else f"{v:+.2f} points"


def markdown(r):
    lines = ["# Loihi deployment check", "",
             f"Network: `{r['files']['net']}` compiled from `{r['files']['nir']}`; dt {r['dt']:g} "
             f"({r['dt_source']}); readout: {r['readout']}.", "", f"**{r['verdict']}**", "",
             f"Thresholds: --min-agreement {r['thresholds']['min_agreement']:g}; Lava vs emulator: "
             f"{r['thresholds']['lava_vs_emulator']}; float vs emulator spikes: "
             f"{r['thresholds']['float_vs_emulator_spikes']}.",
             *([f"Not checked: {'; '.join(r['not_checked'])}."] if r.get("not_checked") else []),
             *_resource_lines(r.get("resources")), "",
             "| run | accuracy | samples | samples/s |", "|---|---|---|---|"]
    for key in ("float", "emulator", "lava"):
        row = r[key]
        lines.append(f"| {key} | {_fmt(row.get('accuracy'), True)} | {row.get('n', '-')} | "
                     f"{_fmt(row.get('samples_per_s'))} |")
    be, ag, fe = r["bit_exact"], r["agreement"], r["bit_exact"]["float_vs_emulator"]
    lines += ["", f"- Bit exact (emulator vs Lava, every spike of every group at every step and "
                  f"the output u, v): {be['n'] - be['mismatched_samples']}/{be['n']} samples",
              f"- Prediction agreement: float vs emulator {_fmt(ag['float_vs_emulator'], True)}, "
              f"emulator vs Lava {_fmt(ag['emulator_vs_lava'], True)}",
              f"- Float-to-Loihi accuracy drop: {_pts(r['drop_points']['float_vs_emulator'])} "
              f"({r['emulator']['n']} samples), "
              f"{_pts(r['drop_points']['float_vs_lava_same_samples'])} "
              f"(float vs Lava on the same {r['lava']['n']} samples)"]
    if fe:
        lines.append(f"- Float vs emulator spikes: {fe['mismatched_spikes']} spikes differ in "
                     f"{fe['mismatched_samples']}/{fe['n']} samples")
    for row in be.get("first_differences") or []:
        lines.append(f"- First Lava/emulator difference, {_where(row)}")
    a = r["fit"]["alignment"]
    lines += [f"- Delay alignment: {a['relay_groups']} relay groups, {a['relay_neurons']} neurons, "
              f"{a['relay_synapses']} synapses; latency {a['latency_steps']} steps "
              f"(+{a['extra_steps']} for alignment)", "",
              "## Per group: fit (8-bit weights, 13-bit bias, 17-bit vThMant, 24-bit state) and "
              "float-vs-emulator spikes", "",
              "| group | connections | weights | weight error | bias | iDecay | vDecay | vThMant | "
              "24-bit risk | float/emulator spike diffs | notes |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    per_layer = (fe or {}).get("per_layer", {})
    for f in r["fit"]["groups"]:
        vth = "readout" if f["role"] == "readout" else f["vThMant"]
        lines.append(f"| {f['group']} | {', '.join(f['connections'])} | {f['weight_min']}.."
                     f"{f['weight_max']} | {f['weight_rel_error']:.2%} | {f['bias_max_abs']} | "
                     f"{f['iDecay']} | {f['vDecay']} | {vth} | "
                     f"{'may overflow' if f['may_overflow_24bit'] else 'no'} | "
                     f"{per_layer.get(f['group'], '-')} | {'; '.join(f['notes'])} |")
    lines += ["", f"Energy estimate: see [energy.md]({r['energy']}) "
                  f"(`python -m hwmodels.energy`).", ""]
    return "\n".join(lines)


# ---- main --------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m deploy.verify", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", default=None,
                   help="run folder with student.nir (+ student.pt); reports go here "
                        "(None: runs/default, or the --nir file's folder)")
    p.add_argument("--nir", help="NIR file to verify instead of RUN/student.nir")
    p.add_argument("--inputs", help=".npy spikes (N, T, ...) instead of a dataset")
    p.add_argument("--labels", help=".npy labels (N,) for --inputs")
    p.add_argument("--dataset", help="dataset name (None: the checkpoint's)")
    p.add_argument("--data-dir", default="data", help="folder of on-disk datasets")
    p.add_argument("--lava-samples", type=non_negative_int, default=100, help="samples run in Lava")
    p.add_argument("--lava-workers", type=positive_int, default=max(1, len(_cores())),
                   help="Lava processes running shards of the Lava samples in parallel")
    p.add_argument("--min-agreement", type=unit_float, default=0.99,
                   help="fail when float-vs-Loihi prediction agreement is below this")
    p.add_argument("--save-outputs", action="store_true",
                   help="write outputs.npz: per-step output of float, emulator and Lava")
    p.add_argument("--device", type=device_arg, default="auto", metavar="{auto,cpu,cuda}")
    p.add_argument("--dt", type=positive_float, default=None,
                   help="time step (None: graph metadata, else the graph's own convention)")
    p.add_argument("--weight-bits", type=weight_bits_arg, default=8,
                   help="weight precision 8..16 for the compile (deploy.compile --weight-bits)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    args = p.parse_args(argv)
    if args.labels and not args.inputs:
        p.error("--labels needs --inputs (a dataset brings its own labels)")
    return args


def _cores():
    import os
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count())


def float_reference(args, run, graph):
    """(model or None, checkpoint dict, note): student.pt for our runs, else the graph's float
    model (our own student again when export.to_nir wrote the graph)."""
    ckpt_path = run / "student.pt"
    if not args.nir and ckpt_path.is_file():
        from train.checkpoint import CheckpointError, load_model
        try:
            model, ckpt = load_model(ckpt_path, "student")
        except CheckpointError as e:
            raise VerifyError(str(e)) from None
        return model, ckpt, "student.pt"
    from export.from_nir import NIRError, float_model
    try:
        return float_model(graph, dt=args.dt), {}, "export.from_nir.float_model"
    except NIRError as e:
        return None, {}, f"no float model: {str(e).splitlines()[0]}"


def is_our_student(graph, model):
    """True when export.to_nir wrote the graph and the float model runs LoihiCUBA neurons (our
    students), which compute Loihi's integer arithmetic: then float and emulator must agree on
    every spike."""
    from export.to_nir import PRODUCER
    from train.neurons import LoihiCUBA
    return model is not None and (graph.metadata or {}).get("producer") == PRODUCER and \
        any(isinstance(m, LoihiCUBA) for m in model.modules())


def load_inputs(args, ckpt, meta, nir_path):
    if args.inputs:
        return load_npy_inputs(args.inputs, args.labels)
    encoding = ckpt.get("encoding") or meta.get("encoding")
    dataset = args.dataset or ckpt.get("dataset") or meta.get("dataset")
    if not encoding or not dataset:
        raise VerifyError(f"{nir_path}: no dataset/encoding recorded; pass --inputs FILE.npy "
                          f"or --dataset NAME with a checkpoint")
    if isinstance(encoding, str):
        encoding = json.loads(encoding)
    return load_dataset_inputs(dataset, encoding, args.data_dir, args.batch_size)


def verify(args):
    """Check the inputs, compile, run float / emulator / Lava, write the reports.
    Returns (report, output folder, passed).

    Everything that can be checked is checked before the output folder is touched. The outputs
    (student.net, verify.json, verify.md, outputs.npz) are written to hidden temps and moved into
    place together at the end, the old verdict removed first, so a run that fails or is
    interrupted leaves the previous outputs as they were; the folder is locked for the run."""
    run, nir_path, out_dir = locate(args)
    graph = load_graph(nir_path)
    nir_version = check_nir_version(nir_path)
    check_dt(args, graph, nir_path)
    device = pick_device(args.device)
    model, ckpt, float_source = float_reference(args, run, graph)
    x, y = load_inputs(args, ckpt, graph.metadata or {}, nir_path)
    net, fit = build_net(graph, args.dt, int(x.shape[1]), getattr(args, "weight_bits", 8))
    source = f"--inputs {args.inputs}" if args.inputs else "dataset"
    check_input_shape(x, net.in_shape, source)
    check_labels(y, net.group(net.output).size, f"--labels {args.labels}" if args.labels
                 else source)
    resources = check_resources(net, x, args, model is not None)
    if args.lava_samples:
        from .lava_run import clean_stale_worker_dirs, preload
        preload()
        clean_stale_worker_dirs()
    with new_folder(out_dir), folder_lock(out_dir), Staged(out_dir) as staged:
        for name in OUTPUTS:  # temps of a killed run (none can be in use: we hold the lock)
            remove_stale_temps(out_dir, name)
        net_tmp = staged.write("student.net", lambda t: write(t, net, int(x.shape[1])))
        runs = run_all(model, net, net_tmp, x, args, device)
        if args.save_outputs:
            staged.write("outputs.npz", lambda t: save_outputs(t, runs.steps_f, runs.steps_e,
                                                               runs.lava))
        report = build_report(runs, y, args, device, float_source, is_our_student(graph, model),
                              net, fit, {"nir": str(nir_path), "net": str(out_dir / "student.net")})
        report.update(nir_version=nir_version, resources=resources)
        ok, report["verdict"] = verdict(report, args.min_agreement)
        report["passed"] = ok
        report.setdefault("checked", None)
        report.setdefault("not_checked", None)
        write_reports(staged, report)
        staged.commit(order=["outputs.npz", "student.net", "verify.md", "verify.json"],
                      first_remove=["verify.json", "verify.md"])
    return report, out_dir, ok


def check_nir_version(nir_path):
    """The NIR format version the file records; a warning when it is missing or newer than the
    installed nir package reads (its fields may then be misread)."""
    import h5py
    import nir
    try:
        with h5py.File(nir_path, "r") as f:
            version = f["version"][()].decode("utf8") if "version" in f else None
    except (OSError, AttributeError, TypeError):
        version = None
    ours = getattr(nir, "version", None) or getattr(nir, "__version__", "")
    if version is None:
        warn(f"{nir_path}: records no NIR version; read as NIR {ours}")
    elif _version_tuple(version) is None or \
            _version_tuple(version)[:2] > (_version_tuple(ours) or (0, 0))[:2]:
        warn(f"{nir_path}: NIR version {version!r} is not one the installed nir {ours} knows; "
             f"fields may be misread")
    return version


def _version_tuple(text):
    try:
        return tuple(int(p) for p in str(text).split(".")[:3])
    except ValueError:
        return None


def check_dt(args, graph, nir_path):
    """--dt must not contradict the dt export.to_nir recorded with the trained student (the
    float model and the weight grid were made at that dt)."""
    from export.to_nir import PRODUCER
    meta = graph.metadata or {}
    if args.dt is None or meta.get("producer") != PRODUCER or "dt" not in meta:
        return
    ours = float(meta["dt"])
    if not math.isclose(args.dt, ours, rel_tol=1e-9):
        raise VerifyError(f"--dt {args.dt:.6g} contradicts {nir_path}: export.to_nir wrote it with "
                          f"dt {ours:.6g} (the trained student's time step); drop --dt")


def check_resources(net, x, args, has_float) -> dict:
    """Loihi 2 chips the net needs (hwmodels.resources; a warning when more than one) and the
    memory this run will take, refused (exit 2) when it exceeds what the machine has free."""
    from hwmodels.energy import fanout
    groups = []
    for g in net.neurons:
        syn = sum(int(fanout(s, net.shape_of(s.src), net.shape_of(s.dst)).sum())
                  for s in net.incoming(g.name))
        groups.append({"name": g.name, "role": g.role, "neurons": g.size, "synapses": syn})
    chip = map_groups(groups, CHIP_LIMITS)["chip"]
    neurons = sum(g.size for g in net.neurons)
    out = {"neurons": neurons, "synapses": sum(g["synapses"] for g in groups),
           "loihi2_chips": chip["chips"], "fits_one_chip": chip["fits"],
           "cores_used": chip["cores_used"], "neurons_per_chip": LOIHI2_NEURONS_PER_CHIP}
    if not chip["fits"]:
        warn(f"the network needs {chip['chips']} Loihi 2 chips ({neurons:,} neurons, "
             f"{out['synapses']:,} synapses, {chip['cores_used']} cores of "
             f"{chip['cores_per_chip']} per chip); it does not fit one chip")
    need = memory_estimate(net, x, args, has_float)
    free = available_memory()
    out.update(memory_estimate_bytes=need, memory_available_bytes=free)
    if free is not None and need > free:
        raise VerifyError(f"this run needs about {need / 2**30:.1f} GiB of memory, the machine "
                          f"has {free / 2**30:.1f} GiB free; use fewer --lava-samples / "
                          f"--lava-workers, a smaller --batch-size or fewer inputs")
    if free is not None and need > free / 2:
        warn(f"this run needs about {need / 2**30:.1f} GiB of the {free / 2**30:.1f} GiB of memory "
             f"free")
    return out


def memory_estimate(net, x, args, has_float) -> int:
    """Bytes this run holds at its peak, roughly: the inputs (float32); per batch the emulator's
    spikes of every neuron at every step (1 byte), the float model's (4 bytes) and their
    comparison (1 byte), and the working currents of the largest group (~16 bytes); for the Lava
    samples both sides' spikes (2 bytes) and ~0.5 GiB per Lava worker (Lava's processes)."""
    n, steps = int(x.shape[0]), int(x.shape[1])
    neurons = sum(g.size for g in net.neurons)
    largest = max(g.size for g in net.neurons)
    batch = min(args.batch_size, n)
    n_lava = min(args.lava_samples, n)
    need = x.numel() * 4 + batch * steps * (neurons * (1 + (5 if has_float else 0)) + 16 * largest)
    if n_lava:
        need += n_lava * steps * neurons * 2 + min(args.lava_workers, n_lava) * 2**29
    return int(need)


def available_memory():
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def locate(args):
    """(run folder, NIR file, output folder), checked before any work: the folder writable, no
    output name taken by a folder, no input file that an output would overwrite."""
    run = Path(args.run or "runs/default")
    nir_path = Path(args.nir) if args.nir else run / "student.nir"
    if not nir_path.is_file():
        hint = "" if args.nir else f"; run `python -m export.to_nir --run {run}` first"
        raise VerifyError(f"{nir_path}: NIR file not found{hint}")
    out_dir = nir_path.parent if args.nir and args.run is None else run
    check_writable_dir(out_dir, "--run")
    outputs = {os.path.realpath(out_dir / name): out_dir / name for name in OUTPUTS}
    for flag, value in (("--nir", nir_path), ("--inputs", args.inputs), ("--labels", args.labels)):
        if value and os.path.realpath(value) in outputs:
            raise VerifyError(f"{flag} {value}: is an output of this run ("
                              f"{outputs[os.path.realpath(value)]}); copy it elsewhere first")
    for path in outputs.values():
        if path.exists() and not path.is_file():
            raise VerifyError(f"{path}: is a folder or special file, not a file; move it away")
    return run, nir_path, out_dir


@dataclass
class Runs:
    """What the float model, the emulator and Lava computed (float fields None without a float
    model, Lava fields None without Lava samples)."""
    float_pred: torch.Tensor
    steps_f: torch.Tensor
    emu_pred: torch.Tensor
    steps_e: torch.Tensor
    emu_rate: float
    spike_rows: list
    n_lava: int
    lava: object = None
    lava_pred: torch.Tensor = None
    lava_rate: float = None
    lava_bad: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    first_differences: list = field(default_factory=list)


def run_all(model, net, net_path, x, args, device) -> Runs:
    """Float model and emulator on every sample, Lava on the first --lava-samples (in worker
    processes, so that Ctrl-C and a killed main process end them cleanly)."""
    emu = Emulator(net, device=device)
    scores_f, steps_f, emu_pred, steps_e, emu_rate, rows = run_batches(
        model, emu, x, args.batch_size, device)
    runs = Runs(None if scores_f is None else scores_f.argmax(-1), steps_f, emu_pred, steps_e,
                emu_rate, rows, min(args.lava_samples, len(x)))
    if runs.n_lava:
        runs.lava, runs.lava_rate = run_lava(net_path, net, x[:runs.n_lava], args.lava_workers)
        runs.lava_pred = torch.as_tensor(runs.lava.predictions)
        emu_lava = emu.run(x[:runs.n_lava])
        runs.lava_bad = compare_lava(emu_lava, runs.lava, runs.n_lava)
        runs.first_differences = first_differences(
            emu_lava, runs.lava, [g.name for g in net.neurons], net.output, runs.lava_bad)
    return runs


def build_report(r: Runs, y, args, device, float_source, loihi_exact, net, fit, files) -> dict:
    n, n_lava, fp = len(r.emu_pred), r.n_lava, r.float_pred
    return {
        "float": {"accuracy": accuracy(fp, y), "n": 0 if fp is None else n, "device": device,
                  "source": float_source, "loihi_exact": loihi_exact},
        "emulator": {"accuracy": accuracy(r.emu_pred, y), "n": n, "samples_per_s": r.emu_rate,
                     "device": device},
        "lava": {"accuracy": accuracy(r.lava_pred, y), "n": n_lava,
                 "samples_per_s": r.lava_rate, "workers": args.lava_workers},
        "bit_exact": {"n": n_lava, "mismatched_samples": int(len(r.lava_bad)),
                      "mismatched_indices": r.lava_bad[:20].tolist(),
                      "first_differences": r.first_differences,
                      "float_vs_emulator": summarize_float_vs_emulator(r.spike_rows, n)},
        "agreement": {"float_vs_emulator": agreement(fp, r.emu_pred),
                      "emulator_vs_lava": agreement(r.emu_pred[:n_lava], r.lava_pred)},
        # accuracy lost from float to Loihi, in points: over the whole set through the bit-exact
        # emulator, and on the Lava samples themselves (float and Lava on the same inputs)
        "drop_points": {
            "float_vs_emulator": points(accuracy(fp, y), accuracy(r.emu_pred, y)),
            "float_vs_lava_same_samples": points(
                accuracy(None if fp is None else fp[:n_lava], y), accuracy(r.lava_pred, y))},
        # every threshold the verdict used, and what was asked for
        "thresholds": {"min_agreement": args.min_agreement,
                       "lava_vs_emulator": "every spike of every group and the output u, v",
                       "float_vs_emulator_spikes": "every spike" if loihi_exact else "not required",
                       "lava_samples_requested": args.lava_samples},
        "readout": net.readout, "dt": fit["dt"], "dt_source": fit["dt_source"],
        "timesteps": int(r.steps_e.shape[1]), "fit": fit, "files": files, "energy": "energy.md",
    }


def save_outputs(path, steps_f, steps_e, lava):
    arrays = {"emulator": steps_e.numpy()}
    if steps_f is not None:
        arrays["float"] = steps_f.numpy()
    if lava is not None:
        arrays["lava"] = np.asarray(readout_steps(lava))

    with open(path, "wb") as f:  # a staged temp (verify())
        np.savez_compressed(f, **arrays)


def print_summary(report, out_dir):
    f, e, la, be, ag = (report[k] for k in ("float", "emulator", "lava", "bit_exact", "agreement"))
    print(f"float    acc {_fmt(f['accuracy'], True)} (n={f['n']}, {f['source']})")
    print(f"emulator acc {_fmt(e['accuracy'], True)} (n={e['n']}, {e['samples_per_s']:.0f} "
          f"samples/s)")
    if la["n"]:
        print(f"lava     acc {_fmt(la['accuracy'], True)} (n={la['n']}, "
              f"{la['samples_per_s']:.2f} samples/s, {la['workers']} workers)")
    fe = be["float_vs_emulator"]
    spikes = "" if not fe else (f"; float/emu spikes: {fe['mismatched_spikes']} differ in "
                                f"{fe['mismatched_samples']}/{fe['n']} samples")
    print(f"bit exact: {be['n'] - be['mismatched_samples']}/{be['n']} samples{spikes}; agreement "
          f"float/emu {_fmt(ag['float_vs_emulator'], True)}, emu/lava "
          f"{_fmt(ag['emulator_vs_lava'], True)}")
    d = report["drop_points"]
    print(f"float-to-Loihi drop: {_pts(d['float_vs_emulator'])} (all {e['n']} samples, emulator), "
          f"{_pts(d['float_vs_lava_same_samples'])} (same {la['n']} samples, Lava)")
    print(f"wrote {out_dir / 'verify.json'}, {out_dir / 'verify.md'}")


def main(argv=None):
    args = parse_args(argv)

    def work():
        report, out_dir, ok = verify(args)
        print_summary(report, out_dir)
        if not ok:
            print(f"error: {report['verdict']}", file=sys.stderr)
            return CHECK_FAILED
        print(report["verdict"])
        return None

    code = run_guarded(work, CompileError, NetxError)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:
        if e.code != INTERRUPTED:
            raise
        # all cleaned up already (Lava workers ended, temps removed); exit at once, so that a
        # Ctrl-C that landed inside a library's exec() cannot turn 130 into death by SIGINT
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
