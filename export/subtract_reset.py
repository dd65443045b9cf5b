"""Reset by subtraction on Loihi: the user's graph rewritten so that Loihi's neuron, which resets
to zero, computes its tool's reset by subtraction exactly (docs/nir.md "Reset by subtraction on
Loihi").

    python -m export.subtract_reset G.nir OUT.nir --reset subtract-next   # snnTorch's Leaky
    python -m export.subtract_reset G.nir OUT.nir --reset subtract        # sinabs' IAF / LIF

NIR has no reset mode: snnTorch and sinabs write v_reset = 0 for networks they trained with
reset by subtraction, and the file compiled as written loses accuracy on Loihi. For a neuron
without current dynamics (LIF, IF, or a CubaLIF whose current is its input each step) with
decay beta = 1 - dt/tau, input gain g, threshold theta:

    tool ("subtract-next", snnTorch): v[t] = beta v[t-1] + g x[t] - theta s[t-1]
    tool ("subtract", sinabs):        v[t] = beta v[t-1] + g x[t] - beta theta s[t-1]
                                      s[t] = v[t] > theta

Loihi's CUBA neuron keeps its current u through a spike and zeroes only v. So let u hold the
membrane: current decay beta, v without memory (v[t] = u[t], tau_mem = dt), and a recurrent
self-connection of weight -c theta (c = 1, or beta for "subtract") that reaches u one step
later, as every recurrent connection does. Then u[t] = beta u[t-1] + g x[t] - c theta s[t-1] and
s[t] = u[t] > theta: the tool's equations, with Loihi's reset to zero acting only on the
memoryless v. Each such neuron becomes CubaLIF(tau_syn = dt / (1 - beta), w_in = tau_syn / dt,
tau_mem = dt, r = 1, v_threshold = theta / g) (input gain 1; IF: tau_syn = w_in = inf) and gets
a self-synapse "<neuron>.self": an Affine with the diagonal -c theta / g, or for a (C, H, W)
neuron a 1x1 Conv2d with -c theta / g on its channel diagonal. Everything else is kept.

Loihi stores int8 weights on one step per neuron group (deploy.compile), and theta is a whole
number of steps. A self-weight of -theta would be the group's largest weight and set the step to
theta / 127, coarser than the incoming weights need. So the self-connection is split into k equal
parallel synapses ("<neuron>.self", "<neuron>.self.1", ...), k the fewest for which one part is
no larger than the largest incoming weight as the compiler folds it (pooling, input gain); the
compiler then chooses the step as for any group (`self_parts`).

Refused (NIRError naming the node): a CubaLIF whose current decays (its membrane and its
current are two states; Loihi's one compartment has no room for a third), v_leak != 0, and a
(C, H, W) neuron whose threshold / gain differs inside a channel. The rewritten graph has the
same dt (pinned in its metadata) and compiles like any other (deploy.compile); its float model
with reset to zero equals the original one with `reset` on every spike (tests/test_subtract_reset).
"""
import argparse
import dataclasses
import sys
from pathlib import Path

import nir
import numpy as np

from common.cli import positive_float
from common.files import atomic_write

from .checked import run_export
from .interpreter import SPIKING, NIRError, _array, flatten_graph, loihi_neuron, resolve_dt
from .paths import _shape as node_shape
from .paths import group_plan, plan_context

RESETS = ("subtract", "subtract-next")   # the same names as train.distill --teacher-reset
SELF = ".self"


def _self_synapse(w, shape, name):
    """The self-connection with per-neuron weights w (broadcast to `shape`)."""
    w = np.broadcast_to(w, shape)
    if len(shape) == 3:
        per = w[:, :1, :1]
        if not np.allclose(w, per, rtol=1e-12, atol=0):
            raise NIRError(f"node {name!r}: threshold / input gain differs inside a channel; its "
                           f"self-connection has no 1x1 convolution form")
        k = np.zeros((shape[0], shape[0], 1, 1))
        k[np.arange(shape[0]), np.arange(shape[0]), 0, 0] = per.reshape(-1)
        return nir.Conv2d(input_shape=np.array(shape[1:]), weight=k, stride=1, padding=0,
                          dilation=1, groups=1, bias=np.zeros(shape[0]))
    return nir.Affine(weight=np.diag(w.reshape(-1)), bias=np.zeros(w.size))


def self_parts(graph: nir.NIRGraph, dt) -> dict:
    """{neuron: k} for the rewritten graph with one self-synapse per neuron (module docstring):
    k = ceil(largest |self-weight| / largest |incoming weight|), both as export.paths folds them
    for the compiler."""
    context = plan_context(graph)
    parts = {}
    for name in graph.nodes:
        if not name.endswith(SELF) or name[:-len(SELF)] not in graph.nodes:
            continue
        owner = name[:-len(SELF)]
        plan = group_plan(graph, owner, dt, *context)
        peak = {own: max([float(np.abs(i["w"]).max()) for i in plan["infos"]
                          if (i["src"] == owner) == own] + [0.0]) for own in (True, False)}
        parts[owner] = 1 if peak[False] == 0.0 else max(1, int(np.ceil(peak[True] / peak[False]
                                                                       * (1 - 1e-12))))
    return parts


def _split(graph, parts):
    nodes, edges = dict(graph.nodes), list(graph.edges)
    for owner, k in parts.items():
        name = owner + SELF
        node = nodes[name]
        part = dataclasses.replace(node, weight=node.weight / k)
        nodes[name] = part
        for j in range(1, k):
            nodes[f"{name}.{j}"] = part
            edges += [(owner, f"{name}.{j}"), (f"{name}.{j}", owner)]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph.metadata, type_check=False)


def subtract_reset(graph: nir.NIRGraph, reset: str, dt=None) -> nir.NIRGraph:
    """`graph` (its neurons read with reset by subtraction, form `reset`) -> the graph whose
    neurons, reset to zero, compute the same (module docstring); dt: as resolve_dt."""
    if reset not in RESETS:
        raise ValueError(f"reset {reset!r}: expected one of {RESETS}")
    g = flatten_graph(graph)
    dt = resolve_dt(g, dt)[0]
    nodes, edges = dict(g.nodes), list(g.edges)
    for name, node in g.nodes.items():
        if not isinstance(node, SPIKING):
            continue
        if name + SELF in nodes:
            raise NIRError(f"node {name!r}: {name + SELF!r} exists already (rewritten twice?)")
        m = loihi_neuron(node, dt)
        if not np.all(m["i"] == 1.0):
            raise NIRError(f"node {name!r}: a {type(node).__name__} whose current decays has no "
                           f"reset-by-subtraction form on Loihi (membrane and current need both "
                           f"of Loihi's states)")
        if np.any(_array(getattr(node, "v_leak", 0.0)) != 0.0):
            raise NIRError(f"node {name!r}: v_leak != 0 is not supported with reset by "
                           f"subtraction")
        shape = node_shape(node)  # the compiler's: the node's output type
        if shape == ():
            raise NIRError(f"node {name!r}: scalar parameters and no type; its shape is unknown")
        lost = np.broadcast_to(m["v"], shape)                  # dt/tau: 1 - beta
        theta = np.broadcast_to(_array(node.v_threshold) / m["gain"], shape)
        c = 1.0 if reset == "subtract-next" else 1.0 - lost
        with np.errstate(divide="ignore"):
            tau_syn = np.where(lost == 0.0, np.inf, dt / np.where(lost == 0.0, 1.0, lost))
        nodes[name] = nir.CubaLIF(
            tau_syn=tau_syn, w_in=tau_syn / dt, tau_mem=np.full(shape, dt), r=np.ones(shape),
            v_leak=np.zeros(shape), v_threshold=theta.copy(), v_reset=np.zeros(shape),
            metadata={**(node.metadata or {}), "reset_rewritten": reset})
        nodes[name + SELF] = _self_synapse(-c * theta, shape, name)
        edges += [(name, name + SELF), (name + SELF, name)]
    metadata = {**(g.metadata or {}), "dt": float(dt), "reset": "zero",
                "reset_rewritten": reset}
    one = nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=False)
    return _split(one, self_parts(one, dt))


def rewrite_file(src, out, reset, dt=None) -> list:
    """Read `src` (export.from_nir.read_graph, whose errors name the file), write its rewritten
    graph to `out` atomically; returns the rewritten neurons. NIRError names `src` and the node."""
    from .from_nir import read_graph
    from .to_nir import write_nir
    graph = read_graph(src)
    try:
        graph = subtract_reset(graph, reset, dt)
    except NIRError as e:
        raise NIRError(f"{src}: {str(e).splitlines()[0]}") from None
    atomic_write(Path(out), lambda tmp: write_nir(tmp, graph))
    return [n[:-len(SELF)] for n in graph.nodes if n.endswith(SELF)]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m export.subtract_reset",
                                description=__doc__.splitlines()[0])
    p.add_argument("graph", help="the user's NIR graph (its neurons trained with reset by "
                                 "subtraction)")
    p.add_argument("out", help="the rewritten NIR graph to write")
    p.add_argument("--reset", choices=RESETS, required=True,
                   help="subtract-next: the threshold taken off at the next step, undecayed "
                        "(snnTorch's Leaky); subtract: in the step of the spike (sinabs)")
    p.add_argument("--dt", type=positive_float, default=None,
                   help="the graph's time step, as deploy.compile --dt")
    args = p.parse_args(argv)

    def work():
        done = rewrite_file(args.graph, args.out, args.reset, args.dt)
        print(f"wrote {args.out}: {len(done)} neuron(s) reset by subtraction ({args.reset}) on "
              f"Loihi: {', '.join(done)}")

    run_export(args.out, "OUT", work, errors=(NIRError,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
