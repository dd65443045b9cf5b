"""Verification at the seed papers' size (issue 19): a ResNet-19 student at 32 px, T = 4.

    python -m bench.verify_scale [--widths 128,256,512] [--blocks 3,3,2] [--samples 64]
                                 [--batch 16] [--lava-samples 2] [--repeats 2] [--out FILE]

Network: a seeded random `sresnet` student with CKDSNN's ResNet-19 widths and blocks (15.0 M
weights) exported by export.to_nir and compiled by deploy.compile. Inputs: seeded Bernoulli(0.2)
spikes, 3x32x32. Measured side by side in one run (bench/verify_speed.py's helpers):

- emulator samples/s at 1 and 2 torch threads, each repeat followed by the dense torch float32
  conv2d / matmul of the same shapes on the same spikes (the ceiling);
- the float student (LoihiCUBA, what deploy.verify runs next to the emulator) at 1 and 2 threads;
- the projected time of deploy.verify's float + emulator pass over 10,000 samples (CIFAR-10's
  test set) at 2 threads;
- Lava with 1 and 2 workers on --lava-samples samples: samples/s, peak memory (the summed
  proportional set size of this process and all its descendants, sampled every 0.5 s), and
  Lava == emulator on every spike.

Writes --out (default results/verify_scale.json) atomically and prints a table.
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.verify_speed import (CORES, ceiling_ops, emulator_rate, lava_rate, macs, mismatched,
                                spikes_in, with_threads, write_net)
from common.files import atomic_write
from hwmodels.loihi import Emulator

TEST_SET = 10_000   # CIFAR-10 test images


def resnet_student(widths, blocks, seed=0):
    """(float student, Net) of a random sresnet at 32 px, as a user of the seed papers gets it."""
    from deploy.compile import build_net
    from export.to_nir import student_to_nir
    from train.models import build_model
    torch.manual_seed(seed)
    model = build_model({"name": "sresnet", "config": dict(
        in_shape=(3, 32, 32), num_classes=10, widths=tuple(widths), blocks=tuple(blocks))})
    net, _ = build_net(student_to_nir(model), timesteps=4)
    return model.eval(), net


def float_rate(model, x, threads, batch, repeats):
    """The float student over x (N, T, ...) in batches, as deploy.verify.run_batches runs it."""
    def run(x):
        with torch.no_grad():
            for i in range(0, len(x), batch):
                model(x[i:i + batch].float().transpose(0, 1))
    with_threads(threads, lambda: run(x[:batch]))  # warm-up: one batch
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with_threads(threads, lambda: run(x))
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def _tree_pss_mib() -> float:
    """Summed proportional set size (MiB) of this process and its descendants (Linux /proc)."""
    pids, total = [os.getpid()], 0
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    while pids:
        pid = pids.pop()
        pids += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class PeakMemory:
    """Peak of _tree_pss_mib() while the `with` block runs."""

    def __enter__(self):
        self.peak, self._stop = _tree_pss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, _tree_pss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default="128,256,512")
    p.add_argument("--blocks", default="3,3,2")
    p.add_argument("--samples", type=int, default=64, help="emulator / float samples")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lava-samples", type=int, default=2, help="0 skips Lava")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="results/verify_scale.json")
    args = p.parse_args(argv)
    widths = tuple(int(w) for w in args.widths.split(","))
    blocks = tuple(int(b) for b in args.blocks.split(","))
    if args.lava_samples:
        from deploy.lava_run import preload
        preload()
    model, net = resnet_student(widths, blocks)
    x = spikes_in(net, args.samples, 4, 0.2)
    report = {"command": " ".join(["python -m bench.verify_scale", *(argv or sys.argv[1:])]),
              "widths": widths, "blocks": blocks, "timesteps": 4, "rate": 0.2, "cores": CORES,
              "torch": torch.__version__, "load_average_at_start": os.getloadavg()[0],
              "weights": int(sum(p.numel() for p in model.parameters())),
              "neurons": int(sum(g.size for g in net.neurons)),
              "relay_neurons": int(sum(g.size for g in net.neurons if g.role == "relay")),
              "macs_per_sample": macs(net, 1, 4)}
    plain = ceiling_ops(net, x, args.batch)
    rows = {}
    for threads in sorted({1, CORES}):
        rate, seconds, _, ceil = emulator_rate(net, x, threads, args.repeats, args.batch,
                                               ceiling=plain)
        rows[threads] = {"emulator_samples_per_s": rate, "ceiling_samples_per_s": len(x) / ceil,
                         "emulator_over_ceiling_time": seconds / ceil,
                         "float_samples_per_s": float_rate(model, x, threads, args.batch,
                                                           args.repeats)}
    report["threads"] = {f"threads_{k}": v for k, v in rows.items()}
    best = rows[max(rows)]
    per_sample = 1 / best["emulator_samples_per_s"] + 1 / best["float_samples_per_s"]
    report["projected_10k_float_plus_emulator_min"] = TEST_SET * per_sample / 60
    report["projected_10k_ceiling_twice_min"] = TEST_SET * 2 / best["ceiling_samples_per_s"] / 60
    if args.lava_samples:
        xl = x[: args.lava_samples]
        exact = Emulator(net).run(xl)
        with tempfile.TemporaryDirectory(prefix="verify_scale_") as tmp:
            path = write_net(net, Path(tmp) / "student.net", 4)
            lava = {}
            for workers in sorted({1, min(CORES, len(xl))}):
                with PeakMemory() as mem:
                    rate, result, seconds = lava_rate(path, net, xl, workers)
                lava[f"workers_{workers}"] = {
                    "samples_per_s": rate, "seconds": seconds, "peak_pss_mib": mem.peak,
                    "mismatched_samples": mismatched(exact, result, len(xl))}
        report["lava"] = {"samples": len(xl), **lava}
        report["emulator_over_lava_1_thread_1_worker"] = \
            rows[1]["emulator_samples_per_s"] / lava["workers_1"]["samples_per_s"]
    report["load_average_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    atomic_write(out, lambda t: Path(t).write_text(json.dumps(report, indent=2) + "\n"))
    print_table(report)
    print(f"wrote {out}")


def print_table(r):
    print(f"sresnet {r['widths']} x {r['blocks']} at 32 px, T = 4: {r['weights'] / 1e6:.1f} M "
          f"weights, {r['neurons']:,} neurons ({r['relay_neurons']:,} relays), "
          f"{r['macs_per_sample'] / 1e9:.2f} G multiply-adds per sample; load "
          f"{r['load_average_at_start']:.1f} -> {r['load_average_at_end']:.1f}")
    print(f"{'threads':>8s}{'emulator/s':>12s}{'ceiling/s':>11s}{'x ceiling':>10s}{'float/s':>9s}")
    for key, row in r["threads"].items():
        print(f"{key.split('_')[1]:>8s}{row['emulator_samples_per_s']:12.2f}"
              f"{row['ceiling_samples_per_s']:11.2f}{row['emulator_over_ceiling_time']:10.2f}"
              f"{row['float_samples_per_s']:9.2f}")
    print(f"10,000 samples, float + emulator at {r['cores']} threads: "
          f"{r['projected_10k_float_plus_emulator_min']:.1f} min (the dense conv ceiling run "
          f"twice: {r['projected_10k_ceiling_twice_min']:.1f} min)")
    if "lava" in r:
        for key, row in r["lava"].items():
            if key.startswith("workers_"):
                print(f"lava {key.replace('_', ' ')}: {row['samples_per_s']:.4f} samples/s, peak "
                      f"{row['peak_pss_mib']:.0f} MiB, mismatched {row['mismatched_samples']}/"
                      f"{r['lava']['samples']}")
        print(f"emulator / Lava (1 thread / 1 worker): "
              f"{r['emulator_over_lava_1_thread_1_worker']:.0f}x")


if __name__ == "__main__":
    main()
