"""Ablation: every method x seed under the same budget, one teacher per seed, paired statistics.

    python -m train.ablate --methods none,kd,ckd,esd --seeds 0,1,2,3,4 \
        --out results/ablation_digits --dataset digits --epochs 40 --train-samples 400 \
        --timesteps 4 --encoding direct

Arguments this script does not know are passed to `python -m train.distill` for every run (so
--dataset, --epochs, --timesteps, --train-samples, --batch-size, --lr, --backprop and method flags
all work). Per seed the teacher is trained once (OUT/runs/seed<S>/teacher/teacher.pt) and loaded
by every run that needs one; every student of a seed starts from the same initial weights and
sees the same data in the same order, so methods are compared seed by seed (paired).
Variants: ckd-samd = ckd --no-nld, ckd-nld = ckd --no-samd, tser-noent = tser without the entropy
term (--tser-gamma 0), esd = esd with rate-based backprop (as the ESD paper trains), esd-bptt = esd
with BPTT, none-rate = cross-entropy with rate backprop.

Statistics, per method m and reference r (none, kd): the paired differences d_s = acc_m,s - acc_r,s
over the seeds s, their mean and the 95 % t-interval mean +- t_{0.975, n-1} sd(d) / sqrt(n).
Train accuracy is measured after training on the (subset of the) training set, without
augmentation, in the student's recorded encoding; gap = train - test accuracy.

Writes OUT/ablation.json (per method: accuracies per seed, train accuracies, gaps, paired
differences with intervals, times; teacher accuracies; the command, package versions, machine)
and OUT/ablation.md (the table, intervals that exclude zero marked).
"""
import argparse
import json
import os
import platform
import shlex
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from common.files import atomic_write

from . import distill
from .checkpoint import load_model
from .losses import METHODS

VARIANTS = {
    "none": ["--method", "none"],
    "none-rate": ["--method", "none", "--backprop", "rate"],
    "kd": ["--method", "kd"],
    "fkd": ["--method", "fkd"],
    "ckd": ["--method", "ckd"],
    "ckd-samd": ["--method", "ckd", "--no-nld"],
    "ckd-nld": ["--method", "ckd", "--no-samd"],
    "tser": ["--method", "tser"],
    "tser-noent": ["--method", "tser", "--tser-gamma", "0"],
    "esd": ["--method", "esd", "--backprop", "rate"],
    "esd-bptt": ["--method", "esd"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.ablate", description=__doc__.split("\n")[0],
                                allow_abbrev=False,
                                epilog="Other arguments are passed on to python -m train.distill.")
    p.add_argument("--methods", default="none,kd,fkd,ckd,ckd-samd,ckd-nld,tser,tser-noent,esd,"
                                        "esd-bptt",
                   help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2,3,4",
                   help="comma-separated integer seeds (paired intervals need at least 2)")
    p.add_argument("--out", default="results/ablation_mnist5k", help="output folder")
    p.add_argument("--reuse", action="store_true",
                   help="keep finished runs found under OUT/runs (their settings are not checked)")
    args, passthrough = p.parse_known_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in VARIANTS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    banned = {"--run", "--seed", "--method", "--teacher", "--resume"} & {
        a.split("=")[0] for a in passthrough}
    if banned:
        p.error(f"{', '.join(sorted(banned))} are set per run by the ablation; leave them out")
    distill.parse_args(passthrough)  # fail early on a bad pass-through flag
    return args, passthrough


def needs_teacher(variant):
    return METHODS[VARIANTS[variant][1]].needs_teacher


def train_teacher(passthrough, seed, run_dir):
    """Train (or load a finished) teacher exactly as `train.distill` would for this seed."""
    args = distill.parse_args(passthrough + ["--run", str(run_dir), "--seed", str(seed)])
    device, rank, world = distill.setup(args)
    _, _, info, _, train_dl, test_dl = distill.prepare_data(args, world)
    run_dir.mkdir(parents=True, exist_ok=True)
    _, acc = distill.train_teacher(args, info, train_dl, test_dl, device, rank, world, run_dir)
    return acc


def run_one(passthrough, variant, seed, run_dir, teacher_path, reuse):
    """Train one student; returns {test_acc, train_acc, train_acc_running, seconds}."""
    metrics_path = run_dir / "train_metrics.json"
    argv = passthrough + VARIANTS[variant] + ["--run", str(run_dir), "--seed", str(seed)]
    if not (reuse and metrics_path.exists()):
        if teacher_path is not None:
            argv += ["--teacher", str(teacher_path)]
        if distill.main(argv) != 0:
            raise SystemExit(f"error: run {variant} seed {seed} failed ({run_dir})")
    metrics = json.loads(metrics_path.read_text())
    return {"test_acc": metrics["student_accuracy"],
            "train_acc": train_accuracy(argv, run_dir / "student.pt"),
            "train_acc_running": metrics["history"][-1]["train_acc"],
            "seconds": sum(h["time_s"] for h in metrics["history"])}


def train_accuracy(argv, student_path):
    """Accuracy of a trained student on the training set it saw (after --train-samples), without
    augmentation, in its recorded encoding (the test set's epoch-0 spikes for rate codes)."""
    args = distill.parse_args(argv)
    train_ds = distill.prepare_data(args, 1)[0]
    student, ckpt = load_model(student_path, "student")
    dl = DataLoader(train_ds, batch_size=256, shuffle=False)
    return distill.evaluate(student, dl, torch.device("cpu"), 1, ckpt["encoding"])


def t_quantile(n):
    """t_{0.975} with n degrees of freedom (scipy, which scikit-learn brings)."""
    from scipy.stats import t
    return float(t.ppf(0.975, n))


def paired(a, b):
    """Paired differences d_s = a_s - b_s: mean, sample sd, n and the 95 % t-interval."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    out = {"diffs": d, "n": n, "mean": statistics.fmean(d), "sd": None, "ci95": None,
           "excludes_zero": False}
    if n >= 2:
        sd = statistics.stdev(d)
        half = t_quantile(n - 1) * sd / math.sqrt(n)
        lo, hi = out["mean"] - half, out["mean"] + half
        out.update(sd=sd, ci95=[lo, hi], excludes_zero=lo > 0 or hi < 0)
    return out


def summarize(runs, refs):
    """Per-method summary of its runs (one per seed); `refs` maps a reference name to its test
    accuracies per seed (same seed order)."""
    test = [r["test_acc"] for r in runs]
    train = [r["train_acc"] for r in runs]
    times = [r["seconds"] for r in runs]
    std = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    return {"accs": test, "mean": statistics.fmean(test), "std": std(test),
            "train_accs": train, "train_mean": statistics.fmean(train),
            "train_accs_running": [r["train_acc_running"] for r in runs],
            "gaps": [a - b for a, b in zip(train, test)],
            "gap_mean": statistics.fmean(train) - statistics.fmean(test),
            "vs": {name: paired(test, ref) for name, ref in refs.items()},
            "train_time_s": statistics.fmean(times), "train_time_s_per_seed": times}


def environment():
    import numpy
    import snntorch
    return {"python": platform.python_version(), "torch": torch.__version__,
            "snntorch": snntorch.__version__, "numpy": numpy.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _diff(stats):
    """'+1.23 [+0.40, +2.06] **≠0**' in points; **≠0** when the 95 % interval excludes zero."""
    if stats is None:
        return "–"
    if stats["ci95"] is None:
        return f"{100 * stats['mean']:+.2f}"
    lo, hi = stats["ci95"]
    mark = " **≠0**" if stats["excludes_zero"] else ""
    return f"{100 * stats['mean']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]{mark}"


def write_markdown(path, report):
    methods, seeds = report["methods"], report["seeds"]
    refs = [r for r in ("none", "kd") if r in methods]
    n = len(seeds)
    lines = [f"# Ablation ({report['settings']})", "",
             f"{n} seeds ({', '.join(map(str, seeds))}), paired: per seed one teacher, and every "
             "student starts from the same weights and sees the same data order. Test = final-epoch "
             "test accuracy (mean ± sample std over seeds); train = accuracy on the training set "
             "after training (no augmentation); gap = train − test. Δ = mean paired difference in "
             f"points with its 95 % t-interval (t_0.975,{n - 1}); **≠0** marks an interval that "
             "excludes zero.", "",
             "| method | test (%) | train (%) | gap (pts) | "
             + "".join(f"Δ vs {r} (pts) | " for r in refs) + "time (s) |",
             "|---|---|---|---|" + "---|" * len(refs) + "---|"]
    for name, m in methods.items():
        cells = [f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}", f"{100 * m['train_mean']:.2f}",
                 f"{100 * m['gap_mean']:+.2f}"]
        cells += [_diff(m["vs"].get(r)) if r != name else "–" for r in refs]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['train_time_s']:.1f} |")
    lines += ["", "Test accuracy per seed (%):", "",
              "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * n]
    for name, m in methods.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * a:.2f}" for a in m["accs"]) + " |")
    teachers = [a for a in report["teacher_accs"].values() if a is not None]
    if teachers:
        lines += ["", "Teacher test accuracy per seed (%): "
                  + ", ".join(f"{100 * a:.2f}" for a in teachers)
                  + f" (mean {100 * statistics.fmean(teachers):.2f})"]
    else:
        lines += ["", "Teacher: none trained (no method here needs one)."]
    lines += ["", f"Command: `{report['command']}`", ""]
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines)))


def main(argv=None):
    args, passthrough = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results = {m: [] for m in args.methods}
    teacher_accs = {}
    for seed in args.seeds:
        seed_dir = out / "runs" / f"seed{seed}"
        teacher_path = None
        if any(needs_teacher(m) for m in args.methods):
            teacher_accs[seed] = train_teacher(passthrough, seed, seed_dir / "teacher")
            teacher_path = seed_dir / "teacher" / "teacher.pt"
        for variant in args.methods:
            r = run_one(passthrough, variant, seed, seed_dir / variant,
                        teacher_path if needs_teacher(variant) else None, args.reuse)
            results[variant].append(r)
            print(f"ablation: {variant} seed {seed}: test {r['test_acc']:.4f} train "
                  f"{r['train_acc']:.4f} ({r['seconds']:.0f}s)")
    refs = {r: [x["test_acc"] for x in results[r]] for r in ("none", "kd") if r in results}
    report = {
        "command": shlex.join(["python", "-m", "train.ablate", *(argv if argv is not None
                                                                  else sys.argv[1:])]),
        "settings": " ".join(passthrough) or "train.distill defaults",
        "seeds": args.seeds,
        "variants": {m: VARIANTS[m] for m in args.methods},
        "methods": {m: summarize(results[m], {r: v for r, v in refs.items() if r != m})
                    for m in args.methods},
        "teacher_accs": teacher_accs,
        "teacher_mean": (statistics.fmean(teacher_accs.values()) if teacher_accs else None),
        "wall_time_s": time.time() - start,
        "environment": environment(),
    }
    atomic_write(out / "ablation.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    write_markdown(out / "ablation.md", report)
    print(f"ablation: wrote {out / 'ablation.json'} and {out / 'ablation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
