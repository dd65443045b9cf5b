"""Emulator vs Lava throughput on the same network and the same samples (target: >= 100x).

    python bench/verify_speed.py [--run runs/default | --net FILE.net] [--inputs X.npy]
                                 [--samples 64] [--timesteps 8] [--rate 0.2] [--device cpu] [--threads N]

The network is RUN/student.net (compiled from RUN/student.nir when missing). Inputs are the first
--samples rows of --inputs (N, T, ...) or seeded Bernoulli(--rate) spikes. Both runs must agree bit
for bit (checked). Writes the numbers to --out (default RUN/verify_speed.json, or beside --net).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.compile import CompileError, compile_graph  # noqa: E402
from deploy.verify import compare  # noqa: E402
from hwmodels.loihi import Emulator, NetxError  # noqa: E402
from train.checkpoint import atomic_write  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/default")
    p.add_argument("--net", help="netx file (instead of RUN/student.net)")
    p.add_argument("--inputs", help=".npy spikes (N, T, ...)")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default torch's; use 1 when other jobs share the CPU)")
    p.add_argument("--out", help="JSON file to write")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from deploy.lava_run import preload, run_lava
    preload()
    try:
        net = Path(args.net) if args.net else Path(args.run) / "student.net"
        if not args.net and not net.is_file():
            compile_graph(Path(args.run) / "student.nir", net)
        emu = Emulator.from_netx(net, device=args.device)
    except (CompileError, NetxError) as e:
        sys.exit(f"error: {e}")
    if args.inputs:
        x = torch.from_numpy(np.load(args.inputs)[: args.samples].astype(np.float32))
    else:
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(args.samples, args.timesteps, *emu.in_shape, generator=g)
             < args.rate).float()
    n = len(x)
    emu.run(x[:2])  # warm-up
    start = time.perf_counter()
    result = emu.run(x)
    emu_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    lava = run_lava(net, x.numpy(), emu.layers)
    lava_rate = n / (time.perf_counter() - start)
    mismatched = len(compare(result, lava, n))
    report = {"net": str(net), "samples": n, "timesteps": int(x.shape[1]),
              "device": args.device, "torch_threads": torch.get_num_threads(),
              "emulator_samples_per_s": emu_rate,
              "lava_samples_per_s": lava_rate, "speedup": emu_rate / lava_rate,
              "mismatched_samples": mismatched}
    out = Path(args.out) if args.out else net.parent / "verify_speed.json"
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    print(f"emulator {emu_rate:.1f} samples/s, lava {lava_rate:.2f} samples/s "
          f"(incl. start-up), speedup {emu_rate / lava_rate:.0f}x, bit-exact mismatches "
          f"{mismatched}/{n}; wrote {out}")


if __name__ == "__main__":
    main()
