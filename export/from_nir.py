"""Rebuild a runnable, trainable student from NIR (ours, docs/nir.md, or any other tool's graph),
and the float reference of any NIR graph (`float_model`).

`student_from_nir`: a chain input -> (Conv2d, neuron)* -> Flatten -> (Affine, neuron)* -> Affine
-> I -> output of ours becomes a `train.models.SpikingCNN`; every other graph that deploy.compile
accepts becomes an `export.nir_student.NIRStudent`: the compiled net in trainable form (paths
folded into one connection each, as the compiler folds them; biases, IF neurons and recurrence
included), starting from the integers the compiler gives the graph. Both return a
`StudentOutput`. Our own files round-trip exactly.
"""
import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import nir
from train.layers import QuantConv2d, QuantLinear
from train.models import SpikingCNN, StudentOutput
from train.neurons import LoihiCUBA

from .interpreter import (NEURONS, NON_SPIKING, SPIKING, NIRError, check_recurrence,
                          flatten_graph, graph_dt, loihi_neuron, node_simulator, predecessors,
                          resolve_dt, run_graph, topological_order)
from .nir_student import NIRStudent  # noqa: F401 - export.from_nir.NIRStudent, as before
from .readout import integrator_readout


def read_graph(path) -> nir.NIRGraph:
    """nir.read with one-line errors naming the file. A graph that fails nir's own type check
    is read again without it and repaired where the intent is plain (`tolerate`: scalar neuron
    parameters broadcast to the node's shape, a leading batch dim of 1 dropped from Input /
    Output types, each with a warning naming the node); it must then pass the type check.
    Our portable readout gets its integrator back (export.readout.integrator_readout)."""
    path = Path(path)
    if not path.is_file():
        raise NIRError(f"{path}: NIR file not found")
    try:
        graph = nir.read(str(path))
    except OSError:
        raise NIRError(f"{path}: not a readable NIR (HDF5) file (truncated or corrupted?)"
                       ) from None
    except Exception as e:  # noqa: BLE001 - KeyError, ValueError, AssertionError ... from nir
        cause = str(e).splitlines()[0] if str(e) else _unknown_type(path)
        error = NIRError(f"{path}: not a valid NIR graph ({type(e).__name__}: {cause})")
    else:
        return integrator_readout(graph)
    try:
        graph = nir.read(str(path), type_check=False)
    except Exception:  # noqa: BLE001 - nothing to repair: nir's first error stands
        raise error from None
    fixes = tolerate(graph)
    if not fixes:
        raise error from None
    try:
        checked(graph)
    except Exception as e:  # noqa: BLE001
        cause = str(e).splitlines()[0] if str(e) else ""
        raise NIRError(f"{path}: not a valid NIR graph after {'; '.join(fixes)} "
                       f"({type(e).__name__}: {cause})") from None
    for fix in fixes:
        warnings.warn(f"{path}: {fix}")
    return integrator_readout(graph)


def checked(graph):
    """nir's type check of a graph (and its subgraphs): a rebuilt NIRGraph with type_check."""
    nodes = {k: checked(n) if isinstance(n, nir.NIRGraph) else n for k, n in graph.nodes.items()}
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=graph.metadata,
                        type_check=True)


def _params(node) -> dict:
    return {f.name: getattr(node, f.name) for f in dataclasses.fields(node)
            if f.init and f.name != "metadata"}


def _type_shape(node, key="output"):
    """node.output_type["output"] (key "input": input_type["input"]) as a tuple; None when the
    node declares none."""
    shape = ((node.output_type if key == "output" else node.input_type) or {}).get(key)
    return None if shape is None or np.size(shape) == 0 else tuple(int(v) for v in
                                                                  np.asarray(shape).reshape(-1))


def tolerate(graph, prefix="") -> list:
    """Repair in place what nir's type check rejects though the intent is plain; returns one line
    per repair, naming the node:
    - a neuron whose parameters are scalars (or size 1) beside per-neuron ones, or all scalars
      after a node with a known output shape (sinabs): every parameter broadcast to that shape;
    - an Input / Output type with a leading dim of 1 that its neighbour does not have (the batch
      dim, as norse and Rockpool write it): dropped."""
    fixes = []
    preds = {}
    for a, b in graph.edges:
        preds.setdefault(b, []).append(a)
    succs = {}
    for a, b in graph.edges:
        succs.setdefault(a, []).append(b)
    for name, node in list(graph.nodes.items()):
        where = f"node {prefix + name!r}"
        if isinstance(node, nir.NIRGraph):
            fixes += tolerate(node, f"{prefix}{name}.")
        elif isinstance(node, NEURONS):
            params = {k: np.asarray(v, dtype=np.float64) for k, v in _params(node).items()}
            sizes = {k: v.size for k, v in params.items()}
            big = max(params.values(), key=np.size)
            shape = big.shape if big.size > 1 else next(
                (s for s in (_type_shape(graph.nodes[p]) for p in preds.get(name, [])
                             if not isinstance(graph.nodes[p], nir.NIRGraph)) if s), None)
            if shape is None or all(v.shape == tuple(shape) for v in params.values()):
                continue
            small = [k for k, n in sizes.items() if n == 1]
            if len(small) + sum(v.shape == tuple(shape) for v in params.values()) != len(params):
                continue  # shapes that disagree otherwise: no plain reading
            graph.nodes[name] = type(node)(**{k: np.broadcast_to(v, shape).copy()
                                              for k, v in params.items()},
                                           metadata=node.metadata)
            fixes.append(f"{where}: scalar {', '.join(small)} broadcast to shape {tuple(shape)}")
        elif isinstance(node, (nir.Input, nir.Output)):
            inp = isinstance(node, nir.Input)
            key = "input" if inp else "output"
            shape = _type_shape(node, key)
            if shape is None or len(shape) < 2 or shape[0] != 1:
                continue
            near = [graph.nodes[n] for n in (succs if inp else preds).get(name, [])]
            want = {_type_shape(n, key) for n in near
                    if not isinstance(n, nir.NIRGraph)} - {None}
            lead = 1  # Rockpool writes (1, 1, K): every leading 1 the neighbour lacks
            while want and lead < len(shape) - 1 and shape[lead] == 1 and \
                    want != {shape[lead:]}:
                lead += 1
            if want and want != {shape[lead:]}:
                continue
            if not want and len(shape) not in (2, 4):
                continue
            new = np.array(shape[lead:])
            graph.nodes[name] = nir.Input(input_type={"input": new}, metadata=node.metadata) \
                if inp else nir.Output(output_type={"output": new}, metadata=node.metadata)
            fixes.append(f"{where}: leading batch dim{'s' if lead > 1 else ''} of 1 dropped "
                         f"from its type {shape}")
    if fixes:
        graph._update_input_output_types()
    return fixes


def _unknown_type(path) -> str:
    """'node X: unknown type Foo' for the first node whose type nir does not know, else ''
    (nir.read fails on one with an empty AssertionError)."""
    import h5py
    known = {name for name in dir(nir) if isinstance(getattr(nir, name), type)}
    try:
        with h5py.File(path, "r") as f:
            found = []
            f.visititems(lambda name, obj: found.append((name, obj[()])) if
                         name.endswith("/type") and isinstance(obj, h5py.Dataset) else None)
    except OSError:
        return ""
    for name, value in found:
        kind = value.decode() if isinstance(value, bytes) else str(value)
        if kind not in known:
            return f"node {name.rsplit('/', 2)[-2]!r}: unknown node type {kind!r}"
    return ""


# ---- graph -> SpikingCNN -----------------------------------------------------------------------

def _chain(graph):
    """Node names of a simple chain from the Input to the Output, or None."""
    order = topological_order(graph)
    edges = set(graph.edges)
    if len(edges) != len(order) - 1 or any((a, b) not in edges for a, b in zip(order, order[1:])):
        return None
    return order


def spiking_cnn(graph, modules):
    """A SpikingCNN equal to the graph when it has exactly that architecture, else None.

    The chain must read input, (conv, neuron)*, flatten, (dense, neuron)*, dense, I, output.
    """
    names = _chain(graph)
    if names is None or not isinstance(graph.nodes[names[-2]], nir.I):
        return None
    if any(n not in modules for n in names[1:-2]):
        return None
    layers = [modules[n] for n in names[1:-2]]
    cut = next((i for i, m in enumerate(layers) if isinstance(m, nn.Flatten)), None)
    if cut is None or cut % 2 or (len(layers) - cut) % 2:
        return None
    convs, denses = layers[:cut:2], layers[cut + 1::2]
    neurons = layers[1:cut:2] + layers[cut + 2::2]
    steps = {m.weight_step for m in convs + denses + neurons}
    if (len(steps) != 1 or not all(isinstance(c, QuantConv2d) for c in convs)
            or not all(isinstance(n, LoihiCUBA) for n in neurons)
            or any(len(n.param_shape) == 3 and n.param_shape[1:] != (1, 1) for n in neurons)
            or any(len(set(c.kernel_size)) != 1 or len(set(c.stride)) != 1
                   or c.padding != (c.kernel_size[0] // 2,) * 2 for c in convs)):
        return None
    config = dict(in_shape=tuple(int(s) for s in graph.nodes[names[0]].output_type["output"]),
                  num_classes=denses[-1].out_features,
                  channels=tuple(c.out_channels for c in convs),
                  kernels=tuple(c.kernel_size[0] for c in convs),
                  strides=tuple(c.stride[0] for c in convs),
                  hidden=tuple(d.out_features for d in denses[:-1]), weight_step=steps.pop())
    if neurons:
        alpha, beta, theta = (float(p.flatten()[0]) for p in neurons[0].quantized())
        config.update(alpha=alpha, beta=beta, threshold=theta)
    model = SpikingCNN(**config)
    if [type(m) for m in model.layers.values()] != [type(m) for m in layers]:
        return None
    try:
        for target, source in zip(model.layers.values(), layers):
            target.load_state_dict(source.state_dict())
    except RuntimeError:  # a size that SpikingCNN computes differently
        return None
    return model


def _own_modules(graph, dt) -> dict:
    """{node: module} for `spiking_cnn` of a graph export.to_nir wrote, node for node (its
    weights, decays and thresholds lie on Loihi's grids, its neurons have input gain 1); None
    when a node is not of that form, or a weight step is not a power of two (SpikingCNN
    computes in weight units, exact on such a grid; a NIRStudent is exact on any)."""
    modules = {}
    for name, node in graph.nodes.items():
        step = (node.metadata or {}).get("weight_step")
        if step and math.frexp(float(step))[0] != 0.5:
            return None
        if isinstance(node, nir.Flatten):
            start, end = int(node.start_dim), int(node.end_dim)
            modules[name] = nn.Flatten(start + 1 if start >= 0 else start,
                                       end + 1 if end >= 0 else end)
        elif isinstance(node, (nir.Conv2d, nir.Affine)) and step and not np.any(node.bias):
            w = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
            if isinstance(node, nir.Conv2d):
                layer = QuantConv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]),
                                    stride=tuple(int(v) for v in node.stride),
                                    padding=tuple(int(v) for v in node.padding), weight_step=step)
            else:
                layer = QuantLinear(w.shape[1], w.shape[0], weight_step=step)
            with torch.no_grad():
                layer.weight.copy_(w)
            modules[name] = layer
        elif isinstance(node, (nir.CubaLIF, nir.LIF)) and (step or graph.metadata.get(
                "weight_step")):
            step = step or graph.metadata["weight_step"]  # a neuron's grid: its synapses'
            m = loihi_neuron(node, dt, tuple(int(v) for v in node.output_type["output"]))
            if not np.all(m["gain"] == 1.0):
                return None
            given = [1.0 - m["i"], 1.0 - m["v"], np.broadcast_to(node.v_threshold, m["v"].shape)]
            shape = m["v"].shape
            pshape = (shape[0], 1, 1) if len(shape) == 3 and all(
                np.all(a == a[:, :1, :1]) for a in given) else shape
            layer = LoihiCUBA(pshape, weight_step=step)
            with torch.no_grad():
                for buf, value in zip((layer.alpha, layer.beta, layer.threshold), given):
                    buf.copy_(torch.as_tensor(np.array(value[tuple(slice(0, n) for n in pshape)])))
            modules[name] = layer
        elif not isinstance(node, (nir.Input, nir.Output, nir.I)):
            return None
    return modules


def _graph(graph_or_path) -> nir.NIRGraph:
    """A NIRGraph (its portable readout's integrator put back) or a NIR file (`read_graph`)."""
    return integrator_readout(graph_or_path) if isinstance(graph_or_path, nir.NIRGraph) \
        else read_graph(graph_or_path)


def student_from_nir(graph_or_path, dt=None) -> nn.Module:
    """NIRGraph or NIR file -> its Loihi-exact student (eval mode): a SpikingCNN when export.to_nir
    wrote the graph from one, else a NIRStudent (export.nir_student) of every graph
    deploy.compile accepts; NIRError
    (CompileError) naming the node for the others. The student starts with the integers the
    compiler gives the graph at time step dt (default: the graph's, resolve_dt; DtError names
    --dt when the graph does not pin it)."""
    from deploy.compile import build_net
    graph = _graph(graph_or_path)
    dt = resolve_dt(graph, dt)[0]
    build_net(graph, dt)  # refuse exactly what Loihi cannot run (CompileError names the node)
    from .to_nir import PRODUCER
    model = None
    if (graph.metadata or {}).get("producer") == PRODUCER:
        modules = _own_modules(graph, dt)
        model = None if modules is None else spiking_cnn(graph, modules)
    return (model if model is not None else NIRStudent(graph, dt)).eval()


# ---- the float reference of any graph ----------------------------------------------------------

def _readout_source(graph):
    """(output name, the neuron it reads): the Output's single source, through Flatten nodes."""
    if len(graph.outputs) != 1:
        raise NIRError(f"graph has {len(graph.outputs)} Output nodes; a float model reads one")
    out = next(iter(graph.outputs))
    name = out
    while True:
        srcs = predecessors(graph, name)
        if len(srcs) != 1:
            raise NIRError(f"node {name!r}: has {len(srcs)} incoming edges; the readout must be "
                           f"one neuron")
        name = srcs[0]
        if not isinstance(graph.nodes[name], nir.Flatten):
            return out, name


def readout_kind(graph) -> str:
    """"spikes" when the Output reads a spiking neuron (LIF, CubaLIF, IF): the score is the spike
    count over the run; "state" for a non-spiking one (I, LI, CubaLI): the score is its final
    state (our portable readout: its integrator). NIRError naming the node for anything else."""
    graph = integrator_readout(flatten_graph(graph))
    _, src = _readout_source(graph)
    node = graph.nodes[src]
    if isinstance(node, SPIKING):
        return "spikes"
    if isinstance(node, NON_SPIKING):
        return "state"
    raise NIRError(f"node {src!r}: the Output reads a {type(node).__name__}; the readout must be "
                   f"a neuron (spiking LIF/CubaLIF/IF or state I/LI/CubaLI)")


class NIRFloatModel(nn.Module):
    """The NIR equations in float (export.interpreter, unquantised weights) as a student.

    forward(x: (T, B, ...)) -> StudentOutput with spikes {spiking neuron: (T, B, ...)} and
    logits_t[t] the per-step increment of the readout score (score = logits_t.sum(0)):
    readout "spikes": logits_t = the output neuron's spikes; "state": logits_t[t] = v[t] - v[t-1]
    with v[-1] = 0, so the score is the final state v[T-1] (up to float32 rounding of the sum).
    """

    def __init__(self, graph: nir.NIRGraph, dt: float):
        super().__init__()
        self.graph, self.dt = integrator_readout(flatten_graph(graph)), float(dt)
        if len(self.graph.inputs) != 1:
            raise NIRError(f"graph has {len(self.graph.inputs)} Input nodes; a float model "
                           f"takes one")
        self.readout = readout_kind(self.graph)
        self.output_name, _ = _readout_source(self.graph)
        self.recurrent = check_recurrence(self.graph)
        self.neurons = [n for n in topological_order(self.graph, skip=self.recurrent)
                        if isinstance(self.graph.nodes[n], SPIKING)]
        for name, node in self.graph.nodes.items():  # NIRError now for what it cannot simulate
            node_simulator(name, node, self.dt)

    def forward(self, x) -> StudentOutput:
        values = run_graph(self.graph, x, self.dt)
        y = values[self.output_name]
        if self.readout == "state":
            y = y - torch.cat([torch.zeros_like(y[:1]), y[:-1]])
        return StudentOutput(logits_t=y, spikes={n: values[n] for n in self.neurons})


def float_model(graph_or_path, dt=None) -> nn.Module:
    """The float reference of a NIR graph (eval mode): the trained student (`student_from_nir`)
    for a graph written by export.to_nir, else a NIRFloatModel running the NIR equations at
    resolve_dt(graph, dt). NIRError (DtError for dt) naming the node for what it cannot run; the
    graph must compile (deploy.compile.build_net: decays outside [0, 1], thresholds or weight
    layers that round to nothing are refused here as there), so that the float model accepts
    exactly what the compiler accepts."""
    from deploy.compile import build_net
    from .to_nir import PRODUCER
    graph = _graph(graph_or_path)
    step, source = resolve_dt(graph, dt)
    if (graph.metadata or {}).get("producer") == PRODUCER:
        own = graph_dt(graph)
        if not math.isclose(step, own, rel_tol=1e-9):
            raise NIRError(f"--dt {step:g} differs from dt = {own:g} that export.to_nir wrote "
                           f"(the student's decays are fixed by it)")
        return student_from_nir(graph)  # compiles the graph itself (build_net)
    model = NIRFloatModel(graph, step).eval()
    build_net(graph, dt)  # accept exactly what Loihi runs: CompileError (a NIRError) otherwise
    return model
