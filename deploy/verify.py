"""Compile the student to Loihi (netx) and prove it: float vs emulator vs Lava, bit for bit.

    python -m deploy.verify                        # runs/default: student.nir + student.pt
    python -m deploy.verify --nir net.nir --inputs spikes.npy [--labels y.npy]

Steps: compile the NIR graph to `student.net` (deploy.compile); run the float student (student.pt,
or export.from_nir when only a NIR file is given) and the fixed-point emulator
(hwmodels.loihi) on the whole test set, Lava (deploy.lava_run) on the first --lava-samples;
compare every layer's spikes at every step and the readout state (u and v) of emulator and Lava.
Writes verify.json and verify.md (atomically) next to student.net.

verify.json keys: float.{accuracy,n,device}, emulator.{accuracy,n,samples_per_s},
lava.{accuracy,n,samples_per_s}, bit_exact.{n,mismatched_samples,mismatched_indices},
agreement.{float_vs_emulator,emulator_vs_lava}, drop_points.{float_vs_emulator,
float_vs_lava_same_samples} (float minus Loihi accuracy, in points), fit (per-layer compile
report), files, energy.
Exit status: 0 when Lava and the emulator agree bit for bit, 1 when they do not, 2 on bad input.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hwmodels.loihi import Emulator, NetxError

from .compile import CompileError, compile_graph, load_graph


class VerifyError(ValueError):
    """Bad input: the message names the file or option."""


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise VerifyError("--device cuda: no CUDA device available")
    return name


# ---- inputs ------------------------------------------------------------------------------------

def load_npy_inputs(path, labels_path):
    """(N, T, ...) spikes from a .npy file, labels (N,) optional."""
    try:
        x = np.load(path)
    except (OSError, ValueError) as e:
        raise VerifyError(f"{path}: cannot read as .npy ({type(e).__name__})") from None
    if x.ndim < 3:
        raise VerifyError(f"{path}: expected spikes of shape (N, T, ...), got {x.shape}")
    if not np.isin(x, (0, 1)).all():
        raise VerifyError(f"{path}: spikes must be 0/1")
    y = None
    if labels_path:
        try:
            y = np.load(labels_path).astype(np.int64).reshape(-1)
        except (OSError, ValueError) as e:
            raise VerifyError(f"{labels_path}: cannot read as .npy ({type(e).__name__})") from None
        if len(y) != len(x):
            raise VerifyError(f"{labels_path}: {len(y)} labels for {len(x)} samples")
    return torch.from_numpy(x.astype(np.float32)), None if y is None else torch.from_numpy(y)


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
    return torch.cat(xs), torch.cat(ys)


# ---- the three runs ----------------------------------------------------------------------------

def run_float(model, x, batch_size, device):
    """Float student predictions (N,) on spikes (N, T, ...)."""
    model = model.to(device).eval()
    preds = []
    with torch.no_grad():
        for i in tqdm(range(0, len(x), batch_size), desc="float", unit="batch"):
            out = model(x[i:i + batch_size].to(device).transpose(0, 1))
            preds.append(out.logits.argmax(-1).cpu())
    return torch.cat(preds)


def run_emulator(emu, x, batch_size):
    """Emulator predictions (N,) and samples/s on spikes (N, T, ...)."""
    preds = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(x), batch_size), desc="emulator", unit="batch"):
        preds.append(emu.run(x[i:i + batch_size]).predictions.cpu())
    elapsed = time.perf_counter() - start
    return torch.cat(preds), len(x) / max(elapsed, 1e-9)


def compare(emu_result, lava_result, n):
    """Indices of samples (< n) where any layer's spikes or the readout u / v differ."""
    bad = np.zeros(n, dtype=bool)
    for name, s in lava_result.spikes.items():
        e = emu_result.spikes[name][:n].cpu().numpy()
        bad |= (e != s).reshape(n, -1).any(1)
    for key in ("readout", "readout_u"):
        e = getattr(emu_result, key)[:n].cpu().numpy()
        bad |= (e != getattr(lava_result, key)).reshape(n, -1).any(1)
    return np.flatnonzero(bad)


def accuracy(pred, labels):
    return None if labels is None else float((pred == labels[: len(pred)]).float().mean())


# ---- report ------------------------------------------------------------------------------------

def write_reports(out_dir, report):
    from train.checkpoint import atomic_write
    atomic_write(out_dir / "verify.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    atomic_write(out_dir / "verify.md", lambda tmp: Path(tmp).write_text(markdown(report)))


def _fmt(v, pct=False):
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if pct else (f"{v:.1f}" if isinstance(v, float) else str(v))


def _pts(v):
    return "-" if v is None else f"{v:+.2f} points"


def markdown(r):
    lines = ["# Loihi deployment check", "",
             f"Network: `{r['files']['net']}` compiled from `{r['files']['nir']}`.", "",
             "| run | accuracy | samples | samples/s |", "|---|---|---|---|"]
    for key in ("float", "emulator", "lava"):
        row = r[key]
        lines.append(f"| {key} | {_fmt(row.get('accuracy'), True)} | {row.get('n', '-')} | "
                     f"{_fmt(row.get('samples_per_s'))} |")
    be, ag = r["bit_exact"], r["agreement"]
    lines += ["", f"- Bit exact (emulator vs Lava, every spike of every layer at every step and "
                  f"the readout u, v): {be['n'] - be['mismatched_samples']}/{be['n']} samples",
              f"- Prediction agreement: float vs emulator {_fmt(ag['float_vs_emulator'], True)}, "
              f"emulator vs Lava {_fmt(ag['emulator_vs_lava'], True)}",
              f"- Float-to-Loihi accuracy drop: {_pts(r['drop_points']['float_vs_emulator'])} "
              f"(float vs emulator, {r['emulator']['n']} samples), "
              f"{_pts(r['drop_points']['float_vs_lava_same_samples'])} "
              f"(float vs Lava on the same {r['lava']['n']} samples)", "",
              "## Per-layer fit (8-bit weights, 17-bit vThMant, 12-bit decays, 24-bit state)", "",
              "| layer | NIR nodes | kind | weights | iDecay | vDecay | vThMant | max a_in | "
              "24-bit risk | notes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for f in r["fit"]:
        vth = "integrator" if f["integrator"] else f["vThMant"]
        lines.append(f"| {f['layer']} | {', '.join(f['nodes'])} | {f['kind']} | "
                     f"{f['weight_min']}..{f['weight_max']} | {f['iDecay']} | {f['vDecay']} | "
                     f"{vth} | {f['max_abs_input']} | "
                     f"{'may overflow' if f['may_overflow_24bit'] else 'no'} | "
                     f"{'; '.join(f['notes'])} |")
    lines += ["", f"Energy estimate: see [energy.md]({r['energy']}) "
                  f"(`python -m hwmodels.energy`).", ""]
    return "\n".join(lines)


# ---- main --------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m deploy.verify", description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None,
                   help="run folder with student.nir (+ student.pt); reports go here "
                        "(default runs/default, or the --nir file's folder)")
    p.add_argument("--nir", help="NIR file to verify instead of RUN/student.nir")
    p.add_argument("--inputs", help=".npy spikes (N, T, ...) instead of a dataset")
    p.add_argument("--labels", help=".npy labels (N,) for --inputs")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--data-dir", default="data", help="folder of on-disk datasets")
    p.add_argument("--lava-samples", type=int, default=100, help="samples run in Lava")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dt", type=float, default=None, help="time step (overrides the graph's)")
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args(argv)
    if args.lava_samples < 0 or args.batch_size < 1:
        p.error("--lava-samples must be >= 0 and --batch-size >= 1")
    return args


def verify(args):
    run = Path(args.run or "runs/default")
    if args.lava_samples:
        from .lava_run import preload
        preload()
    device = pick_device(args.device)
    nir_path = Path(args.nir) if args.nir else run / "student.nir"
    if not nir_path.is_file():
        hint = "" if args.nir else f"; run `python -m export.to_nir --run {run}` first"
        raise VerifyError(f"{nir_path}: NIR file not found{hint}")
    out_dir = nir_path.parent if args.nir and args.run is None else run
    graph = load_graph(nir_path)
    meta = graph.metadata or {}
    ckpt_path = run / "student.pt"
    model, ckpt, float_note = None, {}, None
    if not args.nir and ckpt_path.is_file():
        from train.checkpoint import CheckpointError, load_model
        try:
            model, ckpt = load_model(ckpt_path, "student")
        except CheckpointError as e:
            raise VerifyError(str(e)) from None
    else:
        try:
            from export.from_nir import student_from_nir
            model = student_from_nir(graph)
        except Exception as e:  # a foreign graph the float rebuild does not cover
            float_note = f"export.from_nir: {str(e).splitlines()[0] if str(e) else type(e).__name__}"

    if args.inputs:
        x, y = load_npy_inputs(args.inputs, args.labels)
    else:
        encoding = ckpt.get("encoding") or meta.get("encoding")
        dataset = args.dataset or ckpt.get("dataset") or meta.get("dataset")
        if not encoding or not dataset:
            raise VerifyError(f"{nir_path}: no dataset/encoding recorded; pass --inputs FILE.npy "
                              f"or --dataset NAME with a checkpoint")
        if isinstance(encoding, str):
            encoding = json.loads(encoding)
        x, y = load_dataset_inputs(dataset, encoding, args.data_dir, args.batch_size)
    steps = x.shape[1]

    net_path = out_dir / "student.net"
    fit = compile_graph(graph, net_path, dt=args.dt, timesteps=steps)
    emu = Emulator.from_netx(net_path, device=device)
    if tuple(x.shape[2:]) != emu.in_shape and x[0, 0].numel() != int(np.prod(emu.in_shape)):
        raise VerifyError(f"inputs: sample shape {tuple(x.shape[2:])} does not match the "
                          f"network input {emu.in_shape}")

    float_pred = run_float(model, x, args.batch_size, device) if model is not None else None
    emu_pred, emu_rate = run_emulator(emu, x, args.batch_size)

    n_lava = min(args.lava_samples, len(x))
    lava_pred, lava_rate, bad = None, None, np.zeros(0, dtype=np.int64)
    if n_lava:
        from .lava_run import run_lava
        first = emu.run(x[:n_lava])
        start = time.perf_counter()
        lava = run_lava(net_path, x[:n_lava].numpy(), emu.layers)
        lava_rate = n_lava / (time.perf_counter() - start)
        lava_pred = torch.from_numpy(lava.predictions)
        bad = compare(first, lava, n_lava)

    agree = lambda a, b: None if a is None or b is None else float(  # noqa: E731
        (a[: len(b)] == b[: len(a)]).float().mean())
    points = lambda a, b: None if a is None or b is None else 100 * (a - b)  # noqa: E731
    report = {
        "float": {"accuracy": accuracy(float_pred, y), "n": 0 if float_pred is None else len(x),
                  "device": device, "note": float_note},
        "emulator": {"accuracy": accuracy(emu_pred, y), "n": len(x),
                     "samples_per_s": emu_rate, "device": device},
        "lava": {"accuracy": None if lava_pred is None else accuracy(lava_pred, y),
                 "n": n_lava, "samples_per_s": lava_rate},
        "bit_exact": {"n": n_lava, "mismatched_samples": int(len(bad)),
                      "mismatched_indices": bad[:20].tolist()},
        "agreement": {"float_vs_emulator": agree(float_pred, emu_pred),
                      "emulator_vs_lava": agree(emu_pred[:n_lava], lava_pred)},
        # Accuracy lost from float to Loihi, in points: over the whole set through the bit-exact
        # emulator, and on the Lava samples themselves (float and Lava on the same inputs).
        "drop_points": {
            "float_vs_emulator": points(accuracy(float_pred, y), accuracy(emu_pred, y)),
            "float_vs_lava_same_samples": points(
                None if float_pred is None or lava_pred is None else accuracy(float_pred[:n_lava], y),
                None if lava_pred is None else accuracy(lava_pred, y))},
        "timesteps": int(steps),
        "fit": fit,
        "files": {"nir": str(nir_path), "net": str(net_path)},
        "energy": "energy.md",
    }
    write_reports(out_dir, report)
    return report, out_dir


def main(argv=None):
    args = parse_args(argv)
    try:
        report, out_dir = verify(args)
    except (VerifyError, CompileError, NetxError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    f, e, la, be, ag = (report[k] for k in ("float", "emulator", "lava", "bit_exact", "agreement"))
    print(f"float    acc {_fmt(f['accuracy'], True)} (n={f['n']})")
    print(f"emulator acc {_fmt(e['accuracy'], True)} (n={e['n']}, {e['samples_per_s']:.0f} samples/s)")
    if la["n"]:
        print(f"lava     acc {_fmt(la['accuracy'], True)} (n={la['n']}, "
              f"{la['samples_per_s']:.2f} samples/s)")
    print(f"bit exact: {be['n'] - be['mismatched_samples']}/{be['n']} samples; agreement float/emu "
          f"{_fmt(ag['float_vs_emulator'], True)}, emu/lava {_fmt(ag['emulator_vs_lava'], True)}")
    d = report["drop_points"]
    print(f"float-to-Loihi drop: {_pts(d['float_vs_emulator'])} (all {e['n']} samples, emulator), "
          f"{_pts(d['float_vs_lava_same_samples'])} (same {la['n']} samples, Lava)")
    print(f"wrote {out_dir / 'verify.json'}, {out_dir / 'verify.md'}")
    if be["mismatched_samples"]:
        print(f"error: {be['mismatched_samples']} samples differ between emulator and Lava",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
