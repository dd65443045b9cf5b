"""Where does float-vs-Loihi disagreement on a foreign NIR graph come from?

    python -m bench.quantisation_gap GRAPH.nir [--inputs X.npy | --samples N --timesteps T
        --rate P --seed S] [--out results/quantisation_gap.json]

Inputs: a .npy of spikes (N, T, ...), or seeded random spikes of the graph's input shape.

Runs the float model and the emulator (as deploy.verify does, no Lava) twice: on the graph as it
is, and on a copy whose synapse weights and thresholds were first put on a power-of-two grid no
finer than the compiler's step for that group. On the copy every float-model sum is exact, so
float == emulator on every spike means the compiler, emulator and float model compute the same
thing, and the disagreement on the original graph is the rounding of its weights to 8 bits.
"""
import argparse
import copy
import json

import numpy as np
import nir
import torch

from common.files import atomic_write
from deploy.compile import build_net, load_graph
from deploy.verify import run_batches
from export.from_nir import float_model
from hwmodels.loihi import Emulator

SYNAPSES = (nir.Conv2d, nir.Affine, nir.Linear)


def node_at(graph, path):
    """The node of a flattened name 'a.b.c' in a nested graph (or a flat node named so)."""
    if path in graph.nodes:
        return graph.nodes[path]
    head, _, rest = path.partition(".")
    return node_at(graph.nodes[head], rest)


def on_binary_grid(graph, timesteps):
    """A copy of graph with every group's weights and threshold on step 2^ceil(log2(s)), s being
    the compiler's step for that group (so the integers still fit 8 bits)."""
    graph = copy.deepcopy(graph)
    net, fit = build_net(graph, None, timesteps)
    grid = {r["group"]: 2.0 ** np.ceil(np.log2(r["step"])) for r in fit["groups"]}
    for s in net.synapses:
        for op in s.nodes:
            node = node_at(graph, op)
            if isinstance(node, SYNAPSES):
                step = grid[s.dst]
                node.weight = step * np.clip(np.rint(np.asarray(node.weight) / step), -128, 127)
    for g in net.neurons:
        for name in g.nodes:
            node = node_at(graph, name)
            if g.role == "neuron" and hasattr(node, "v_threshold"):
                th = np.asarray(node.v_threshold, dtype=np.float64)
                node.v_threshold = np.maximum(grid[g.name], grid[g.name] * np.rint(th / grid[g.name]))
    return graph


def compare(graph, x):
    """float-vs-emulator prediction agreement and spike differences of a graph on inputs x."""
    net, fit = build_net(graph, None, int(x.shape[1]))
    scores_f, _, emu_pred, _, _, rows = run_batches(float_model(graph), Emulator(net), x, 256,
                                                    "cpu")
    spikes = sum(sum(layers.values()) for _, layers in rows)
    return {"agreement": float((scores_f.argmax(-1) == emu_pred).float().mean()),
            "mismatched_spikes": int(spikes),
            "weight_rel_error": {r["group"]: r["weight_rel_error"] for r in fit["groups"]}}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.quantisation_gap", description=__doc__)
    p.add_argument("graph")
    p.add_argument("--inputs", help=".npy spikes (N, T, ...); default: seeded random spikes")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--timesteps", type=int, default=30)
    p.add_argument("--rate", type=float, default=0.1, help="spike probability per input and step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    graph = load_graph(args.graph)
    if args.inputs:
        x = torch.from_numpy(np.load(args.inputs).astype(np.float32))
        source = args.inputs
    else:
        inputs = [n for n in graph.nodes.values() if isinstance(n, nir.Input)]
        in_shape = tuple(int(d) for d in inputs[0].input_type["input"])
        rng = np.random.default_rng(args.seed)
        x = torch.from_numpy((rng.random((args.samples, args.timesteps, *in_shape)) < args.rate)
                             .astype(np.float32))
        source = f"random spikes, rate {args.rate}, seed {args.seed}"
    result = {"graph": args.graph, "inputs": source, "samples": len(x),
              "timesteps": int(x.shape[1]), "original": compare(graph, x),
              "binary_grid": compare(on_binary_grid(graph, int(x.shape[1])), x)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write(args.out, lambda tmp: open(tmp, "w").write(text + "\n"))


if __name__ == "__main__":
    main()
