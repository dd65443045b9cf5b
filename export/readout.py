"""The two forms of our students' readout in NIR, and the one rule that turns one into the other
(docs/nir.md "The portable readout").

    integrator (default):  ... -> readout (Affine) -> integrator (I, r = 1/dt) -> output
    portable:              ... -> readout (Affine, metadata readout = "integrator") -> output

Both mean the same scores: score = sum over steps of the Affine's output W s[t], which is the
integrator's final state (v[t] = v[t-1] + dt r x[t] with dt r = 1). The portable form has no `I`
node, which snnTorch's, SpikingJelly's and norse's importers do not map; they run the Affine
exactly and return W s[t] per step (the user sums it). The metadata marker is what makes our
readers put the integrator back (`integrator_readout`): an Affine straight into the Output
without it stays an error (no reader guesses that a per-step output is to be summed).
"""
import dataclasses

import nir
import numpy as np

from .interpreter import DtError, NIRError, euler_gain, nir_neuron, predecessors, resolve_dt

MARKER = "readout"          # node metadata key on the Affine / Linear that feeds the Output
INTEGRATOR = "integrator"   # its value: "the Output's per-step value is an integrator's input"
READOUTS = ("integrator", "portable")


def _output(graph):
    outs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
    return outs[0] if len(outs) == 1 else None


def _successors(graph, name):
    return [b for a, b in graph.edges if a == name]


def portable_readout(graph: nir.NIRGraph) -> nir.NIRGraph:
    """`source -> I -> Output` -> `source (metadata readout = "integrator") -> Output`, where
    source is an Affine / Linear and the I has dt r = 1 at the graph's dt; a graph whose Output
    reads no such integrator (a spiking readout) comes back unchanged (its neurons are already
    LIF / CubaLIF)."""
    out = _output(graph)
    srcs = predecessors(graph, out) if out else []
    if len(srcs) != 1 or not isinstance(graph.nodes[srcs[0]], nir.I):
        return graph
    integ = srcs[0]
    feeds = predecessors(graph, integ)
    source = feeds[0] if len(feeds) == 1 else integ
    node = graph.nodes[source]
    dt = resolve_dt(graph)[0]
    if not isinstance(node, (nir.Affine, nir.Linear)) or _successors(graph, source) != [integ] \
            or _successors(graph, integ) != [out] \
            or not np.all(euler_gain(np.float64(dt), graph.nodes[integ].r) == 1.0):
        raise NIRError(f"node {integ!r}: not the readout integrator (Affine -> I with r = 1/dt "
                       f"-> Output) that the portable form replaces")
    nodes = {k: v for k, v in graph.nodes.items() if k != integ}
    nodes[source] = dataclasses.replace(node, metadata={**(node.metadata or {}),
                                                        MARKER: INTEGRATOR})
    edges = [(a, b) for a, b in graph.edges if integ not in (a, b)] + [(source, out)]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph.metadata, type_check=True)


def integrator_readout(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The inverse of `portable_readout`, applied by every reader here (export.interpreter.
    run_graph, export.from_nir.read_graph, float_model, student_from_nir, readout_kind,
    deploy.compile.build_net, train.from_nir.read_graph_bytes): an Affine / Linear with metadata
    readout = "integrator" that feeds the Output gets back its integrator I
    (r = 1/dt at the graph's dt) between it and the Output, named "integrator" (or
    "<source>.integrator" when that name is taken), and the marker is dropped: the result is the
    integrator form node for node. Any other graph comes back unchanged (the same object).
    NIRError naming the node when the marked node is not the Output's only source, or the graph
    gives no dt."""
    marked = [n for n, node in graph.nodes.items()
              if (getattr(node, "metadata", None) or {}).get(MARKER) == INTEGRATOR]
    if not marked:
        return graph
    out = _output(graph)
    source = marked[0]
    if len(marked) > 1 or not isinstance(graph.nodes[source], (nir.Affine, nir.Linear)) \
            or out is None or _successors(graph, source) != [out] \
            or predecessors(graph, out) != [source]:
        raise NIRError(f"node {source!r}: metadata readout = 'integrator' marks the Affine / "
                       f"Linear that alone feeds the single Output node; this graph has "
                       f"{len(marked)} marked nodes and edges {source!r} -> "
                       f"{_successors(graph, source)}")
    try:
        dt = resolve_dt(graph)[0]
    except DtError as e:
        raise NIRError(f"node {source!r}: the integrator readout needs the graph's dt ({e})"
                       ) from None
    name = INTEGRATOR if INTEGRATOR not in graph.nodes else f"{source}.{INTEGRATOR}"
    n = int(np.shape(graph.nodes[source].weight)[0])
    nodes = {}
    for key, node in graph.nodes.items():
        if key == out:
            nodes[name] = nir_neuron(np.zeros(n), np.ones(n), None, dt)  # the integrator
        nodes[key] = node
    meta = {k: v for k, v in graph.nodes[source].metadata.items() if k != MARKER}
    nodes[source] = dataclasses.replace(graph.nodes[source], metadata=meta)
    edges = [(a, b) for a, b in graph.edges if (a, b) != (source, out)] + \
        [(source, name), (name, out)]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph.metadata,
                        type_check=False)
