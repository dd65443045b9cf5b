"""Training cost: BPTT vs rate-based backprop over T, and each KD method's overhead over `none`.

    python -m bench.train_cost [--timesteps 2,4,8,16] [--batch-size 64] [--steps 10] \\
        [--repeats 3] [--student {scnn,resnet19,resnet18}] [--out results/train_cost.json]

Per (backprop, T), in a fresh subprocess: one training step = student forward, cross-entropy,
backward, Adam step with a rate-coded batch, on the default mnist5k student (SpikingCNN, 1x28x28;
--student scnn) or on a seed paper's ResNet at CIFAR size (--student resnet19: CKDSNN's
ResNet-19, 3x32x32, 15.0 M weights; resnet18 likewise; the method overheads are then skipped:
they are measured on the scnn student only).
- step_s: median CPU time (time.process_time, all threads of the process) of `--steps` steps after
  one warm-up step; CPU time, not wall time, so that other work on the machine does not skew it
  (wall_s is recorded too); torch runs on `--threads` threads (default 1). The settings run
  interleaved, `--repeats` rounds of fresh processes, and each keeps its fastest round (the
  least disturbed, as timeit advises); every round's step_s is kept in step_s_rounds;
- graph_bytes: bytes autograd holds for backward when the loss is ready (saved tensors, counted
  once per storage through torch.autograd.graph.saved_tensors_hooks:
  train.ratebp.autograd_saved_bytes);
- peak_rss_delta_bytes: growth of the process's peak resident memory (getrusage ru_maxrss) over the
  training steps, measured after model and input are built (includes the allocator's slack).
Method overhead: step time of each method (teacher forward included where it needs one) at
--method-timesteps with BPTT, divided by the time of `none` (methods interleaved, --repeats
rounds, fastest round kept).
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from common.files import atomic_write
from train.distill import teacher_output
from train.losses import METHODS, add_method_args, build_loss
from train.data import DatasetInfo
from train.models import PAPER_STUDENTS, SmallCNN, SpikingCNN, build_model, default_arch
from train.ratebp import autograd_saved_bytes, rate_forward

SHAPE = (1, 28, 28)
STUDENT_SHAPES = {"scnn": SHAPE, **{name: (3, 32, 32) for name in PAPER_STUDENTS}}


def build_student(name):
    """The mnist5k default SpikingCNN, or a paper ResNet student for 3x32x32 CIFAR inputs."""
    if name == "scnn":
        return SpikingCNN(in_shape=SHAPE)
    return build_model(default_arch(DatasetInfo("cifar10", STUDENT_SHAPES[name], 10), True, name))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.train_cost",
                                description=__doc__.split("\n")[0])
    p.add_argument("--timesteps", default="2,4,8,16", help="comma-separated T values")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per setting and round")
    p.add_argument("--repeats", type=int, default=3, help="rounds of fresh worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--method-timesteps", type=int, default=8, help="T for the method overheads")
    p.add_argument("--student", default="scnn", choices=tuple(STUDENT_SHAPES),
                   help="student to time (scnn: the mnist5k default; resnet19/resnet18 at 32 px)")
    p.add_argument("--out", default="results/train_cost.json")
    p.add_argument("--worker", nargs=2, metavar=("BACKPROP", "T"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def batch(timesteps, batch_size, seed=0, shape=SHAPE):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(timesteps, batch_size, *shape, generator=gen) < 0.3).float()
    return x, torch.randint(0, 10, (batch_size,), generator=gen)


def timed_steps(step, n):
    """Median (CPU seconds, wall seconds) per step over n steps after one warm-up step."""
    step()
    cpu, wall = [], []
    for _ in range(n):
        c0, w0 = time.process_time(), time.perf_counter()
        step()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(backprop, timesteps, batch_size, steps, student_name="scnn"):
    """One (backprop, T) setting in this process; returns its measurements."""
    torch.manual_seed(0)
    student = build_student(student_name)
    forward = student if backprop == "bptt" else (lambda x: rate_forward(student, x))
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    x, y = batch(timesteps, batch_size, shape=STUDENT_SHAPES[student_name])
    loss_of = lambda: torch.nn.functional.cross_entropy(forward(x).logits, y)  # noqa: E731

    def step():
        opt.zero_grad(set_to_none=True)
        loss_of().backward()
        opt.step()

    base = maxrss_bytes()
    step_s, wall_s = timed_steps(step, steps)
    rss = maxrss_bytes() - base
    _, graph = autograd_saved_bytes(loss_of)
    return {"step_s": step_s, "wall_s": wall_s, "graph_bytes": graph, "peak_rss_delta_bytes": rss}


def method_step(name, args, x, y):
    """One training step of `name` at BPTT (teacher forward included where the method needs it)."""
    torch.manual_seed(0)
    student, teacher = SpikingCNN(in_shape=SHAPE), SmallCNN(in_shape=SHAPE).eval()
    loss_fn = build_loss(name, args, student, teacher)
    opt = torch.optim.Adam(list(student.parameters()) + list(loss_fn.parameters()), lr=1e-3)

    def step():
        # the teacher sees one frame per sample, as distill feeds it one image
        t_out = teacher_output(teacher, x[0]) if loss_fn.needs_teacher else None
        loss, _ = loss_fn(student(x), y, t_out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def method_overheads(timesteps, batch_size, steps, repeats):
    """Step time of every method at T (BPTT, fastest of `repeats` interleaved rounds), and its
    ratio to `none`."""
    parser = argparse.ArgumentParser()
    add_method_args(parser)
    args = parser.parse_args([])
    x, y = batch(timesteps, batch_size)
    steps_of = {name: method_step(name, args, x, y) for name in METHODS}
    rounds = [{name: timed_steps(step, steps) for name, step in steps_of.items()}
              for _ in range(repeats)]
    times = {name: min((r[name] for r in rounds), key=lambda cw: cw[0]) for name in METHODS}
    none = times["none"][0]
    return {name: {"step_s": cpu, "wall_s": wall, "ratio_to_none": cpu / none,
                   "step_s_rounds": [r[name][0] for r in rounds]}
            for name, (cpu, wall) in times.items()}


def run_worker(backprop, timesteps, args):
    cmd = [sys.executable, "-m", "bench.train_cost", "--worker", backprop, str(timesteps),
           "--batch-size", str(args.batch_size), "--steps", str(args.steps),
           "--threads", str(args.threads), "--student", args.student]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.batch_size, args.steps,
                                args.student)))
        return 0
    steps_list = [int(t) for t in args.timesteps.split(",")]
    results = {"batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
               "student": ("SpikingCNN (mnist5k)" if args.student == "scnn" else
                           f"{args.student} (sresnet, 3x32x32)"),
               "torch_threads": torch.get_num_threads(), "backprop": {}}
    print(f"{'T':>3} {'bptt CPU s':>12} {'rate CPU s':>12} {'speed-up':>9} "
          f"{'bptt graph MB':>14} {'rate graph MB':>14} {'bptt RSS MB':>12} {'rate RSS MB':>12}")
    rounds = [{(b, t): run_worker(b, t, args) for t in steps_list for b in ("bptt", "rate")}
              for _ in range(args.repeats)]
    for t in steps_list:
        row = {}
        for b in ("bptt", "rate"):
            runs = [r[b, t] for r in rounds]
            row[b] = dict(min(runs, key=lambda m: m["step_s"]),
                          step_s_rounds=[m["step_s"] for m in runs])
        row["speedup"] = row["bptt"]["step_s"] / row["rate"]["step_s"]
        results["backprop"][str(t)] = row
        mb = lambda v: v / 2 ** 20  # noqa: E731
        print(f"{t:>3} {row['bptt']['step_s']:>12.4f} {row['rate']['step_s']:>12.4f} "
              f"{row['speedup']:>9.2f} {mb(row['bptt']['graph_bytes']):>14.2f} "
              f"{mb(row['rate']['graph_bytes']):>14.2f} "
              f"{mb(row['bptt']['peak_rss_delta_bytes']):>12.1f} "
              f"{mb(row['rate']['peak_rss_delta_bytes']):>12.1f}")
    first, last = results["backprop"][str(steps_list[0])], results["backprop"][str(steps_list[-1])]
    for b in ("bptt", "rate"):
        results[f"{b}_graph_growth"] = last[b]["graph_bytes"] / first[b]["graph_bytes"]
        results[f"{b}_peak_rss_growth"] = (last[b]["peak_rss_delta_bytes"]
                                           / first[b]["peak_rss_delta_bytes"])
        print(f"{b}: autograd memory x{results[f'{b}_graph_growth']:.2f}, peak RSS "
              f"x{results[f'{b}_peak_rss_growth']:.2f} from T={steps_list[0]} to T={steps_list[-1]}")
    if args.student != "scnn":  # the method overheads are measured on the scnn student only
        return write_results(results, args.out)
    results["methods_timesteps"] = args.method_timesteps
    results["methods"] = method_overheads(args.method_timesteps, args.batch_size, args.steps,
                                          args.repeats)
    for name, m in results["methods"].items():
        print(f"method {name:>5}: {m['step_s']:.4f} CPU s/step, x{m['ratio_to_none']:.2f} of none")
    return write_results(results, args.out)


def write_results(results, path):
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
