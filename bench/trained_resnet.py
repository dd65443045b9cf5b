"""A *trained* residual student at 32 px through the whole chain (issue 19): a few hundred BPTT
steps of `sresnet` on random-label 3x32x32 spike data, export.to_nir, then deploy.verify with Lava.

    python -m bench.trained_resnet [--widths 64,128,256] [--blocks 1,1,1] [--steps 300]
                                   [--batch 8] [--samples 64] [--lava-samples 2] [--out DIR]

Training moves the weights, thresholds and decays away from their initial values (integer
weights on the 8-bit grid, QAT as train.distill does), so this checks float == emulator == Lava
on a network that is not as initialised. Data: seeded Bernoulli(0.2) spikes with random labels
(no dataset is needed; what is checked is the arithmetic, not the accuracy). Writes
DIR/student.nir, DIR/x.npy and deploy.verify's reports into DIR (default runs/trained_resnet);
prints the verdict and exits with deploy.verify's status.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

import nir
import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from export.to_nir import student_to_nir
from train.models import build_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default="64,128,256")
    p.add_argument("--blocks", default="1,1,1")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--samples", type=int, default=64, help="held-out samples for deploy.verify")
    p.add_argument("--lava-samples", type=int, default=2)
    p.add_argument("--out", default="runs/trained_resnet")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model({"name": "sresnet", "config": dict(
        in_shape=(3, 32, 32), num_classes=10,
        widths=tuple(int(w) for w in args.widths.split(",")),
        blocks=tuple(int(b) for b in args.blocks.split(",")))})
    quant = [m for m in model.modules() if hasattr(m, "int_weight")]
    before = [m.int_weight().clone() for m in quant]
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for _ in tqdm(range(args.steps), desc="train", unit="step"):
        x = (torch.rand(4, args.batch, 3, 32, 32, generator=gen) < 0.2).float()
        y = torch.randint(0, 10, (args.batch,), generator=gen)
        loss = F.cross_entropy(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    moved = sum(int((a != m.int_weight()).sum()) for a, m in zip(before, quant))
    total = sum(a.numel() for a in before)
    model.eval()
    nir.write(str(out / "student.nir"), student_to_nir(model))
    x = (np.random.default_rng(2).random((args.samples, 4, 3, 32, 32)) < 0.2).astype(np.uint8)
    np.save(out / "x.npy", x)
    print(f"trained {args.steps} steps x {args.batch} in {seconds:.0f} s; {moved:,} of {total:,} "
          f"integer weights changed; last loss {float(loss):.3f}")
    done = subprocess.run([sys.executable, "-m", "deploy.verify", "--nir", str(out / "student.nir"),
                           "--inputs", str(out / "x.npy"), "--lava-samples",
                           str(args.lava_samples), "--min-agreement", "0", "--batch-size", "16"])
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
