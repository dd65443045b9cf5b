"""Verification speed side by side (issue 15): the exact emulator vs Lava on the same network.

    python bench/verify_speed.py [--run runs/default] [--samples 512] [--batch 256]
                                 [--lava-samples 32]
                                 [--workers N] [--timesteps 8] [--rate 0.2] [--repeats 3]
                                 [--growth-samples 256] [--growth-lava-samples 8]
                                 [--device cpu|cuda] [--out FILE]

Network: RUN/student.net when it exists, else a random (checkpoint-free) default mnist5k student
(train.models scnn, exported by export.to_nir, compiled by deploy.compile), weights as
initialised. Inputs: seeded Bernoulli(--rate) spikes. Measured, all in one run:

- emulator samples/s at 1 torch thread and at all threads (best of --repeats), and the same
  samples' Lava results compared bit for bit (mismatched samples);
- the emulator's multiply-adds/s (every connection counted as a dense conv / matmul over T x B)
  against plain torch float32 conv2d / matmul of the same shapes on the same data (the practical
  ceiling; each repeat times both, one after the other, so both see the same load), and where
  the emulator's time goes (cProfile: synapses vs neuron updates);
- Lava samples/s with 1 worker (in this process, after a 1-sample warm-up run) and with
  --workers worker processes forked from it (deploy.lava_run.run_lava_parallel; wall time
  including each worker's start-up and its own Lava runtime);
- Lava's fixed cost per run and steady-state samples/s (slope between a 2-sample run and the
  full run);
- growth with width (channels and hidden x1, x2, x4 at T = --timesteps) and with T (4, 8, 16 at
  width x1) on random students of the default shapes: emulator (1 thread) and Lava (1 worker).

Writes --out (default results/verify_speed.json) atomically and prints a table.
"""
import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.files import atomic_write  # noqa: E402
from hwmodels.loihi import Emulator, NetxError  # noqa: E402
from hwmodels.netfile import read_net  # noqa: E402

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def random_student(width=1, timesteps=8, seed=0):
    """The default mnist5k student (scnn) with channels / hidden x width, as initialised,
    through export.to_nir and deploy.compile -> Net."""
    from deploy.compile import build_net
    from export.to_nir import student_to_nir
    from train.models import build_model
    torch.manual_seed(seed)
    model = build_model({"name": "scnn", "config": dict(
        in_shape=(1, 28, 28), num_classes=10, channels=(16 * width, 32 * width),
        hidden=(128 * width,))})
    net, _ = build_net(student_to_nir(model), timesteps=timesteps)
    return net


def write_net(net, path, timesteps):
    from deploy.compile import write
    write(path, net, timesteps)
    return path


def spikes_in(net, samples, timesteps, rate, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(samples, timesteps, *net.in_shape, generator=g) < rate).to(torch.uint8)


def best_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def with_threads(n, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def macs(net, samples, steps) -> int:
    """Multiply-adds of every connection as a dense conv / matmul, over all samples and steps."""
    total = 0
    for s in net.synapses:
        out = int(np.prod(net.shape_of(s.dst)))
        per = out * int(np.prod(s.weight.shape[1:]))
        total += per
    return total * samples * steps


def ceiling_ops(net, x, batch):
    """Plain float32 conv2d / matmul of the net's shapes on its own spikes (T*B rows per batch):
    the emulator's synaptic work with nothing else, as a list of calls."""
    ops = []
    for i in range(0, len(x), batch):
        ops += _plain_ops(net, x[i:i + batch])
    return ops


def _plain_ops(net, x):
    res = Emulator(net).run(x)
    steps, b = x.shape[1], x.shape[0]
    acts = {"input": x.transpose(0, 1).reshape(steps * b, *net.in_shape).float()}
    for g in net.neurons:
        acts[g.name] = (res.spikes[g.name].transpose(0, 1).reshape(steps * b, *g.shape).float()
                        if g.name in res.spikes else None)
    ops = []
    for s in net.synapses:
        w = torch.from_numpy(np.asarray(s.weight, dtype=np.float32))
        a = acts[s.src]
        if a is None:  # a non-spiking group sends nothing
            continue
        if s.kind == "conv":
            ops.append(lambda a=a, w=w, s=s: F.conv2d(a, w, None, s.stride, s.padding,
                                                      s.dilation, s.groups))
        else:
            ops.append(lambda a=a.flatten(1), w=w.t().contiguous(): a @ w)
    return ops


def profile_split(emu, x):
    """Share of Emulator.run's time in synapses (Emulator._current: conv / matmul incl. casts,
    shift and wrap) and in the step-by-step neuron update (Emulator._steps / _steps_int64,
    less their recurrent connections' currents), from cProfile's cumulative times."""
    prof = cProfile.Profile()
    prof.enable()
    emu.run(x)
    prof.disable()
    cum = {}
    for (file, _, fn), (_, _, _, seconds, _) in pstats.Stats(prof).stats.items():
        if file.endswith("loihi.py"):
            cum[fn] = cum.get(fn, 0.0) + seconds
    total, syn = cum["run"], cum.get("_current", 0.0)
    neuron = cum.get("_steps", 0.0) + cum.get("_steps_int64", 0.0) - cum.get("_recurrent", 0.0)
    return {"synapses": syn / total, "neuron_updates": neuron / total,
            "other": 1 - (syn + neuron) / total}


def mismatched(emu_result, lava_result, n) -> int:
    bad = np.zeros(n, dtype=bool)
    for name, s in lava_result.spikes.items():
        bad |= (emu_result.spikes[name][:n].cpu().numpy() != s).reshape(n, -1).any(1)
    for key in ("readout", "readout_u"):
        e = getattr(emu_result, key)[:n].cpu().numpy()
        bad |= (e != getattr(lava_result, key)).reshape(n, -1).any(1)
    return int(bad.sum())


def cpu_seconds() -> float:
    """CPU time of this process and of all its finished (waited-for) descendants: Lava's
    processes and the worker processes."""
    import resource
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def lava_rate(path, net, x, workers, cpu=None):
    """(samples/s over the whole call, Result, seconds); cpu (a dict) gets the CPU seconds."""
    from deploy.lava_run import run_lava_parallel
    start, start_cpu = time.perf_counter(), cpu_seconds()
    result = run_lava_parallel(path, x.numpy(), net, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    if cpu is not None:
        cpu["cpu_s"] = cpu_seconds() - start_cpu
        cpu["wall_s"] = seconds
    return len(x) / seconds, result, seconds


def lava_steady(path, net, x, seconds_all):
    """Lava's per-sample cost without its fixed cost (building, compiling, starting and stopping
    a runtime): the slope between a 2-sample run and the run of all len(x) samples."""
    _, _, seconds_2 = lava_rate(path, net, x[:2], 1)
    per = (seconds_all - seconds_2) / (len(x) - 2)
    return {"steady_samples_per_s": 1 / per if per > 0 else None,
            "fixed_s": seconds_2 - 2 * per}


def emulator_rate(net, x, threads, repeats, batch, device="cpu", ceiling=None):
    """Emulator.run over x in batches of `batch` (as deploy.verify does): (samples/s, seconds,
    a Result for the first batch, the ceiling's seconds). With `ceiling` (ceiling_ops), each
    repeat times the emulator and then the plain ops, so that both see the same machine load;
    best of `repeats` for each."""
    emu = Emulator(net, device=device)
    xd = x.to(device)
    with_threads(threads, lambda: emu.run(xd[:2]))  # warm-up

    def run():
        first = None
        for i in range(0, len(xd), batch):
            r = emu.run(xd[i:i + batch])
            first = first or r
        if device == "cuda":
            torch.cuda.synchronize()
        return first
    seconds, ceil, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        s, result = with_threads(threads, lambda: best_time(run, 1))
        seconds = min(seconds, s)
        if ceiling is not None:
            ceil = min(ceil, with_threads(threads, lambda: best_time(
                lambda: [op() for op in ceiling], 1))[0])
    return len(x) / seconds, seconds, result, ceil


def growth_row(label, net, steps, args, tmp):
    x = spikes_in(net, args.growth_samples, steps, args.rate, seed=1)
    rate, _, _, _ = emulator_rate(net, x, 1, args.repeats, args.batch)
    path = write_net(net, Path(tmp) / f"{label}.net", steps)
    xl = x[: args.growth_lava_samples]
    emu = Emulator(net).run(xl)
    lrate, lava, seconds = lava_rate(path, net, xl, 1)
    steady = lava_steady(path, net, xl, seconds)
    return {"config": label, "timesteps": steps, "neurons": int(sum(g.size for g in net.neurons)),
            "macs_per_sample": macs(net, 1, steps), "emulator_samples_per_s": rate,
            "lava_samples_per_s": lrate, "speedup": rate / lrate,
            "lava_steady_samples_per_s": steady["steady_samples_per_s"],
            "lava_fixed_s": steady["fixed_s"],
            "mismatched_samples": mismatched(emu, lava, len(xl)), "lava_samples": len(xl)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/default")
    p.add_argument("--samples", type=int, default=512, help="emulator samples")
    p.add_argument("--batch", type=int, default=256, help="emulator batch (deploy.verify's)")
    p.add_argument("--lava-samples", type=int, default=32)
    p.add_argument("--workers", type=int, default=CORES, help="Lava worker processes")
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--growth-samples", type=int, default=256, help="emulator samples per row")
    p.add_argument("--growth-lava-samples", type=int, default=8)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", default="results/verify_speed.json")
    args = p.parse_args(argv)
    from deploy.lava_run import preload
    preload()

    with tempfile.TemporaryDirectory(prefix="verify_speed_") as tmp:
        path = Path(args.run) / "student.net"
        try:
            if path.is_file():
                net, source = read_net(path), str(path)
            else:
                net = random_student(timesteps=args.timesteps)
                path = write_net(net, Path(tmp) / "student.net", args.timesteps)
                source = "random default student (no RUN/student.net)"
        except NetxError as e:
            sys.exit(f"error: {e}")
        steps = args.timesteps
        x = spikes_in(net, args.samples, steps, args.rate)
        report = {"command": " ".join(["python bench/verify_speed.py", *(argv or sys.argv[1:])]),
                  "net": source, "timesteps": steps, "rate": args.rate, "cores": CORES,
                  "emulator_samples": args.samples, "emulator_batch": args.batch,
                  "torch": torch.__version__, "device": args.device,
                  "load_average_at_start": os.getloadavg()[0],
                  "macs_per_sample": macs(net, 1, steps)}
        emu = {}
        plain = ceiling_ops(net, x, args.batch)
        for threads in sorted({1, CORES}):
            rate, seconds, _, ceil = emulator_rate(net, x, threads, args.repeats, args.batch,
                                                   args.device, plain)
            emu[threads] = {"samples_per_s": rate,
                            "macs_per_s": macs(net, len(x), steps) / seconds,
                            "ceiling_macs_per_s": macs(net, len(x), steps) / ceil,
                            "ceiling_ratio": seconds / ceil}
        report["emulator"] = {f"threads_{k}": v for k, v in emu.items()}
        report["emulator_time_split"] = with_threads(1, lambda: profile_split(Emulator(net), x))
        xl = x[: args.lava_samples]
        exact = Emulator(net).run(xl)
        lava_rate(path, net, xl[:1], 1)  # warm-up: Lava's first run in a process finds its models
        cpu1, cpun = {}, {}
        l1, lava1, seconds = lava_rate(path, net, xl, 1, cpu1)
        ln, lavan, _ = lava_rate(path, net, xl, args.workers, cpun)
        report["lava"] = {"samples": len(xl), "workers_1_samples_per_s": l1,
                          "workers_1_cpu_s": cpu1["cpu_s"], "workers_1_wall_s": cpu1["wall_s"],
                          f"workers_{args.workers}_cpu_s": cpun["cpu_s"],
                          f"workers_{args.workers}_wall_s": cpun["wall_s"],
                          **lava_steady(path, net, xl, seconds),
                          f"workers_{args.workers}_samples_per_s": ln,
                          "worker_speedup": ln / l1,
                          "mismatched_samples_1": mismatched(exact, lava1, len(xl)),
                          f"mismatched_samples_{args.workers}": mismatched(exact, lavan, len(xl))}
        report["speedup_1_thread"] = emu[1]["samples_per_s"] / l1
        report["speedup_all"] = emu[CORES]["samples_per_s"] / ln
        rows = [growth_row(f"width x{w}", random_student(w, steps), steps, args, tmp)
                for w in (1, 2, 4)]
        rows += [growth_row(f"T {t}", random_student(1, t), t, args, tmp) for t in (4, 16)]
        report["growth"] = rows
        report["load_average_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    atomic_write(out, lambda t: Path(t).write_text(json.dumps(report, indent=2) + "\n"))
    print_table(report, args.workers)
    print(f"wrote {out}")


def print_table(r, workers):
    print(f"net: {r['net']}, T = {r['timesteps']}, {r['macs_per_sample'] / 1e6:.2f} M "
          f"multiply-adds per sample, {r['cores']} cores, load average "
          f"{r['load_average_at_start']:.1f} -> {r['load_average_at_end']:.1f}")
    print(f"{'':24s}{'samples/s':>12s}{'GMAC/s':>10s}{'ceiling':>10s}{'x ceiling':>10s}")
    for key, e in r["emulator"].items():
        print(f"{'emulator ' + key:24s}{e['samples_per_s']:12.1f}{e['macs_per_s'] / 1e9:10.2f}"
              f"{e['ceiling_macs_per_s'] / 1e9:10.2f}{e['ceiling_ratio']:10.2f}")
    la = r["lava"]
    steady = la["steady_samples_per_s"]
    print(f"{'lava 1 worker':24s}{la['workers_1_samples_per_s']:12.2f}   (steady state "
          f"{steady or float('nan'):.2f} samples/s, fixed cost {la['fixed_s']:.1f} s per run)")
    print(f"{f'lava {workers} workers':24s}{la[f'workers_{workers}_samples_per_s']:12.2f}"
          f"   (x{la['worker_speedup']:.2f}; mismatches {la['mismatched_samples_1']} / "
          f"{la[f'mismatched_samples_{workers}']} of {la['samples']})")
    for w in (1, workers):
        cpu, wall = la[f"workers_{w}_cpu_s"], la[f"workers_{w}_wall_s"]
        print(f"{'':24s}{w} worker(s): {cpu:.1f} CPU s in {wall:.1f} s wall = "
              f"{cpu / wall:.2f} cores busy")
    split = r["emulator_time_split"]
    print(f"emulator/lava: {r['speedup_1_thread']:.0f}x at 1 thread / 1 worker, "
          f"{r['speedup_all']:.0f}x at all cores; emulator time: synapses "
          f"{split['synapses']:.0%}, neuron updates {split['neuron_updates']:.0%}")
    print(f"{'growth':12s}{'neurons':>9s}{'MMAC/smp':>10s}{'emu smp/s':>11s}{'lava smp/s':>11s}"
          f"{'steady':>8s}{'fixed s':>8s}{'speedup':>9s}{'mismatch':>9s}")
    for g in r["growth"]:
        print(f"{g['config']:12s}{g['neurons']:9d}{g['macs_per_sample'] / 1e6:10.2f}"
              f"{g['emulator_samples_per_s']:11.1f}{g['lava_samples_per_s']:11.2f}"
              f"{g['lava_steady_samples_per_s'] or float('nan'):8.2f}{g['lava_fixed_s']:8.1f}"
              f"{g['speedup']:9.0f}{g['mismatched_samples']:6d}/{g['lava_samples']}")


if __name__ == "__main__":
    main()
