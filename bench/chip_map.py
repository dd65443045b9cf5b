"""A seed paper's ResNet on Loihi 2 (issue 19): neurocores, chips and Intel system under both
storage assumptions, relays' share, and energy per layer, for a random student at CIFAR size.

    python -m bench.chip_map [--student resnet19] [--size 32] [--timesteps 4] [--samples 2]
                             [--rate 0.2] [--seed 0] [--activity student|emulator]
                             [--neurons-per-core N] [--synapses-per-core N] [--cores-per-chip N]
                             [--out results/chip_map_resnet19]

The student is `train.models.default_arch(..., name=--student)` for 3 x size x size inputs and 10
classes, weights as initialised after torch.manual_seed(--seed); it is exported to NIR
(export.to_nir), compiled (deploy.compile, relay groups included) and fed seeded Bernoulli(--rate)
input spikes for --timesteps steps. Spikes come from the float student (default; float ==
emulator on every spike is what deploy.verify checks; for resnet19 at seed 0 both gave the same
SynOps on every connection) or from the emulator. Per-core limits default to
hwmodels.resources.CoreLimits (docs/energy.md). The report is
hwmodels.energy's (energy.json, energy.md, energy.png in --out); a summary is printed.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from common.cli import positive_int, run_guarded
from hwmodels.energy import EnergyError, emulator_source, measure, student_source
from hwmodels.energy_report import build_report, si, write_report
from hwmodels.profiles import PROFILES
from hwmodels.resources import CoreLimits
from train.data import DatasetInfo
from train.models import STUDENTS, build_model, default_arch


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.chip_map",
                                description=__doc__.split("\n")[0])
    p.add_argument("--student", default="resnet19", choices=STUDENTS)
    p.add_argument("--size", type=positive_int, default=32, help="input height and width")
    p.add_argument("--timesteps", type=positive_int, default=4)
    p.add_argument("--samples", type=positive_int, default=2)
    p.add_argument("--rate", type=float, default=0.2, help="input spike probability per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--activity", choices=("student", "emulator"), default="student")
    p.add_argument("--neurons-per-core", type=positive_int, default=CoreLimits.neurons_per_core)
    p.add_argument("--synapses-per-core", type=positive_int, default=CoreLimits.synapses_per_core)
    p.add_argument("--cores-per-chip", type=positive_int, default=CoreLimits.cores_per_chip)
    p.add_argument("--out", default=None, help="report folder (default results/chip_map_STUDENT)")
    return p.parse_args(argv)


def run(args) -> dict:
    from deploy.compile import compile_graph
    from export.to_nir import student_to_nir

    if not 0 <= args.rate <= 1:
        raise EnergyError(f"--rate {args.rate}: a probability in [0, 1]")
    out = Path(args.out or f"results/chip_map_{args.student}")
    info = DatasetInfo("random", (3, args.size, args.size), 10)
    torch.manual_seed(args.seed)
    arch = default_arch(info, student=True, name=args.student)
    model = build_model(arch).eval()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        net, _ = compile_graph(student_to_nir(model), Path(tmp) / "student.net",
                               timesteps=args.timesteps)
    compile_s = time.time() - t0
    gen = torch.Generator().manual_seed(args.seed)
    x = (torch.rand(args.samples, args.timesteps, *info.in_shape, generator=gen)
         < args.rate).float()
    source = (student_source(model, net, "cpu") if args.activity == "student"
              else emulator_source(net, "cpu"))
    t0 = time.time()
    tally, _ = measure(net, source, [(x, torch.zeros(args.samples, dtype=torch.long))],
                       args.samples)
    meta = {"run": f"random {args.student} ({arch['name']} {arch['config']}), seed {args.seed}",
            "samples": tally.samples, "timesteps": tally.steps, "input_rate": args.rate,
            "activity_source": args.activity, "accuracy": None,
            "weights": sum(p.numel() for p in model.parameters() if p.dim() > 1),
            "compile_s": compile_s, "measure_s": time.time() - t0}
    limits = CoreLimits(args.neurons_per_core, args.synapses_per_core, args.cores_per_chip)
    report = build_report(tally, list(PROFILES.values()), limits, None, meta)
    out.mkdir(parents=True, exist_ok=True)
    write_report(report, out)
    return report, out


def summary(report, out) -> str:
    lines = [f"{report['run']}: {report['weights']:,} weights, T = {report['timesteps']}, "
             f"{report['samples']} samples, compiled in {report['compile_s']:.0f} s",
             f"{'group':24} {'role':7} {'neurons':>10} {'synapses (a)':>14} {'cores a':>8} "
             f"{'cores b':>8} {'E loihi':>10} {'E 45nm':>10}"]
    for g in report["layers"]:
        lines.append(f"{g['name'][:24]:24} {g['role'][:7]:7} {g['neurons']:>10,} "
                     f"{g['synapses']:>14,} {g['cores']:>8,} {g['cores_shared_kernel']:>8,} "
                     f"{si(g['energy_j']['loihi']):>10} {si(g['energy_j']['45nm']):>10}")
    t = report["total"]
    lines.append("total energy per sample: " + ", ".join(
        f"{p} {si(e)}" for p, e in t["energy_j_per_sample"].items()) + "; relays " + ", ".join(
        f"{p} {si(e)}" for p, e in t["relays"]["energy_j_per_sample"].items()))
    for label, c in (("(a) unrolled", report["chip"]),
                     ("(b) shared kernel", report["chip"]["shared_kernel"])):
        lines.append(f"{label}: {c['cores_used']:,} cores, {c['chips']:,} chip(s) -> "
                     f"{c['system']}; relays {c['relay_cores']:,} cores "
                     f"({100 * c['relay_share']:.1f} %)")
    lines.append(f"-> {out}/energy.json, .md, .png")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_guarded(lambda: print(summary(*run(args))), EnergyError)


if __name__ == "__main__":
    sys.exit(main())
