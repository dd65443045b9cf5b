"""A producer fixture compiled with `--weight-bits B` (deploy.compile: each connection of a group
off the 8-bit grid as two int8 connections, weight_exp B - 8 and 0; docs/loihi_net.md): float-
vs-Loihi agreement of predictions, SynOps and energy per sample (hwmodels.energy on the
emulator's spikes), and Lava == emulator on a few digits.

    python -m bench.weight_bits [--fixture snntorch_cnn] [--bits 8 10 11 12] [--lava 2]
        [--out results/weight_bits_snntorch_cnn.json]

Agreement: argmax of the output spike counts (first on ties), float model (export.from_nir.
float_model) vs emulator, on the fixture's held-out digits `x` and, when present, `x_distill`,
with 95 % Wilson intervals. Lava: every spike of every group and the output u, v on the first
`--lava` held-out digits (0: skipped).
"""
import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.producers_gap import ROOT, float_counts
from common.files import atomic_write
from deploy.compile import build_net, write
from export.from_nir import read_graph
from hwmodels.energy import Tally
from hwmodels.energy_report import build_report
from hwmodels.loihi import Emulator
from hwmodels.profiles import PROFILES


def wilson(k, n, z=1.96):
    p = k / n
    mid, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (mid - half) / (1 + z * z / n), (mid + half) / (1 + z * z / n)


def lava_equal(net, x):
    from deploy.lava_run import preload, run_lava
    preload()
    emu = Emulator(net).run(torch.from_numpy(x))
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp) / "net.net", net, x.shape[1])
        got = run_lava(Path(tmp) / "net.net", x, net, progress=False)
    return all(np.array_equal(emu.spikes[g].numpy(), got.spikes[g]) for g in emu.spikes) and \
        np.array_equal(emu.readout.numpy(), got.readout) and \
        np.array_equal(emu.readout_u.numpy(), got.readout_u)


def study(name, dt, bits, lava):
    graph = read_graph(ROOT / name / "graph.nir")
    data = np.load(ROOT / name / "data.npz")
    sets = {"x": data["x"]}
    if "x_distill" in data.files:
        sets["x_distill"] = data["x_distill"]
    floats = {k: float_counts(graph, dt, x).argmax(-1) for k, x in sets.items()}
    rows = []
    for b in bits:
        net, fit = build_net(graph, dt=dt, timesteps=data["x"].shape[1], weight_bits=b)
        row = {"weight_bits": b, "connections": [[s.name, s.exp] for s in net.synapses],
               "groups": [{k: g[k] for k in ("group", "weight_rel_error", "vThMant",
                                             "bias_max_abs", "may_overflow_24bit")}
                          for g in fit["groups"]]}
        for key, x in sets.items():
            result = Emulator(net).run(torch.from_numpy(x).float())
            k = int((result.predictions.numpy() == floats[key]).sum())
            row[key] = {"agree": k / len(x), "wilson95": wilson(k, len(x)), "n": len(x)}
            if key == "x":
                tally = Tally(net)
                tally.add(torch.from_numpy(x), result.spikes)
                report = build_report(tally, list(PROFILES.values()))
                row["synops_per_sample"] = report["total"]["synops_per_sample"]
                row["energy_j_per_sample"] = report["total"]["energy_j_per_sample"]
        if lava:
            row["lava_equals_emulator"] = lava_equal(net, data["x"][:lava].astype(np.int64))
            row["lava_samples"] = lava
        rows.append(row)
        print(json.dumps({k: row[k] for k in row if k not in ("groups", "connections")}),
              flush=True)
    base = rows[0]
    for row in rows:
        row["synops_over_first"] = row["synops_per_sample"] / base["synops_per_sample"]
        row["energy_over_first"] = {p: e / base["energy_j_per_sample"][p]
                                    for p, e in row["energy_j_per_sample"].items()}
    return {"fixture": name, "dt": dt, "rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.weight_bits", description=__doc__)
    p.add_argument("--fixture", default="snntorch_cnn")
    p.add_argument("--dt", type=float, default=None)
    p.add_argument("--bits", type=int, nargs="+", default=[8, 10, 11, 12])
    p.add_argument("--lava", type=int, default=2, help="held-out digits run in Lava (0: none)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    result = study(args.fixture, args.dt, args.bits, args.lava)
    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
