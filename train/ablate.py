"""Ablation: every method x seed under the same budget, one teacher per seed.

    python -m train.ablate --methods none,kd,fkd,ckd,ckd-samd,ckd-nld,tser,esd --seeds 0,1,2 \\
        --out results/ablation_mnist5k --dataset mnist5k --epochs 12

Arguments this script does not know are passed to `python -m train.distill` for every run (so
--dataset, --epochs, --timesteps, --train-samples, --batch-size, --lr, --backprop and method flags
all work). Per seed the teacher is trained once (OUT/runs/seed<S>/teacher/teacher.pt) and loaded
by every run that needs one, so all students of a seed start from the same initial weights.
Variants: ckd-samd = ckd --no-nld, ckd-nld = ckd --no-samd, esd = esd with rate-based backprop
(as the ESD paper trains), esd-bptt = esd with BPTT, none-rate = cross-entropy with rate backprop.

Writes OUT/ablation.json (per method: accs per seed, mean, std, train_time_s; the command, package
versions, machine) and OUT/ablation.md (method | accuracy mean +- std | time).
"""
import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from . import distill
from .checkpoint import atomic_write
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
    "esd": ["--method", "esd", "--backprop", "rate"],
    "esd-bptt": ["--method", "esd"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.ablate", description=__doc__.split("\n")[0],
                                allow_abbrev=False,
                                epilog="Other arguments are passed on to python -m train.distill.")
    p.add_argument("--methods", default="none,kd,fkd,ckd,ckd-samd,ckd-nld,tser,esd",
                   help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated integer seeds")
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
    """Train one student; returns (test accuracy, student training seconds)."""
    metrics_path = run_dir / "train_metrics.json"
    if not (reuse and metrics_path.exists()):
        argv = passthrough + VARIANTS[variant] + ["--run", str(run_dir), "--seed", str(seed)]
        if teacher_path is not None:
            argv += ["--teacher", str(teacher_path)]
        if distill.main(argv) != 0:
            raise SystemExit(f"error: run {variant} seed {seed} failed ({run_dir})")
    metrics = json.loads(metrics_path.read_text())
    seconds = sum(h["time_s"] for h in metrics["history"])
    return metrics["student_accuracy"], seconds


def summarize(accs, times):
    return {"accs": accs, "mean": statistics.fmean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "train_time_s": statistics.fmean(times), "train_time_s_per_seed": times}


def environment():
    import numpy
    import snntorch
    return {"python": platform.python_version(), "torch": torch.__version__,
            "snntorch": snntorch.__version__, "numpy": numpy.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_markdown(path, report):
    lines = [f"# Ablation ({report['settings']})", "",
             f"Seeds {', '.join(map(str, report['seeds']))}; accuracy = final-epoch test accuracy, "
             "mean ± sample std over seeds; time = student training seconds per run (mean).", "",
             "| method | accuracy (%) | time (s) |", "|---|---|---|"]
    for name, m in report["methods"].items():
        lines.append(f"| {name} | {100 * m['mean']:.2f} ± {100 * m['std']:.2f} | "
                     f"{m['train_time_s']:.1f} |")
    teachers = ", ".join(f"{100 * a:.2f}" for a in report["teacher_accs"].values() if a is not None)
    lines += ["", f"Teacher accuracy per seed (%): {teachers or 'n/a'}", "",
              f"Command: `{report['command']}`", ""]
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines)))


def main(argv=None):
    args, passthrough = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results = {m: ([], []) for m in args.methods}
    teacher_accs = {}
    for seed in args.seeds:
        seed_dir = out / "runs" / f"seed{seed}"
        teacher_path = None
        if any(needs_teacher(m) for m in args.methods):
            teacher_accs[seed] = train_teacher(passthrough, seed, seed_dir / "teacher")
            teacher_path = seed_dir / "teacher" / "teacher.pt"
        for variant in args.methods:
            acc, seconds = run_one(passthrough, variant, seed, seed_dir / variant,
                                   teacher_path if needs_teacher(variant) else None, args.reuse)
            results[variant][0].append(acc)
            results[variant][1].append(seconds)
            print(f"ablation: {variant} seed {seed}: acc {acc:.4f} ({seconds:.0f}s)")
    report = {
        "command": shlex.join(["python", "-m", "train.ablate", *(argv if argv is not None
                                                                  else sys.argv[1:])]),
        "settings": " ".join(passthrough) or "train.distill defaults",
        "seeds": args.seeds,
        "variants": {m: VARIANTS[m] for m in args.methods},
        "methods": {m: summarize(*results[m]) for m in args.methods},
        "teacher_accs": teacher_accs,
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
