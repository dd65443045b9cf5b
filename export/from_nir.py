"""Rebuild a runnable, trainable student from NIR (ours, docs/nir.md, or snnTorch's export_to_nir),
and the float reference of any NIR graph (`float_model`).

A chain input -> (Conv2d, neuron)* -> Flatten -> (Affine, neuron)* -> Affine -> I -> output becomes
a `train.models.SpikingCNN`; any other feed-forward graph becomes a `NIRStudent` that runs the graph
with the same LoihiCUBA / QuantConv2d / QuantLinear modules. Both return a `StudentOutput`.

Parameters map back through the discrete reading of docs/nir.md (dt from
`export.interpreter.resolve_dt`): alpha = 1 - dt/tau_syn, beta = 1 - dt/tau_mem,
theta = v_threshold. Our own files round-trip exactly. Foreign values that are not on Loihi's
grids (weights step * int8, decays in 1/4096, thresholds on the weight grid) are rounded onto them
with a warning naming the node.
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
from train.models import SpikingCNN, StudentOutput, _time_batched
from train.neurons import LoihiCUBA
from train.quant import WEIGHT_MAX, WEIGHT_MIN

from .interpreter import (NEURONS, NON_SPIKING, SPIKING, NIRError, check_recurrence,
                          euler_gain, flatten_graph, graph_dt, node_simulator, predecessors,
                          resolve_dt, run_graph, topological_order)
from .readout import integrator_readout

DEFAULT_STEP = 1 / 64


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


def _out_shape(node):
    shape = (node.output_type or {}).get("output")
    return None if shape is None or np.size(shape) == 0 else tuple(int(v) for v in
                                                                  np.asarray(shape).reshape(-1))


def _in_shape(node):
    shape = (node.input_type or {}).get("input")
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
                (s for s in (_out_shape(graph.nodes[p]) for p in preds.get(name, [])
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
            shape = _in_shape(node) if inp else _out_shape(node)
            if shape is None or len(shape) < 2 or shape[0] != 1:
                continue
            near = [graph.nodes[n] for n in (succs if inp else preds).get(name, [])]
            want = {(_in_shape(n) if inp else _out_shape(n)) for n in near
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


# ---- one mapping per node type -----------------------------------------------------------------

def _array(v) -> np.ndarray:
    return np.asarray(v.detach() if torch.is_tensor(v) else v, dtype=np.float64)


def weight_step(name, node, graph) -> float:
    """The grid of a synapse's weights: its metadata, the graph's, 1/64 if the weights lie on it,
    else max|w| / 127."""
    for meta in (node.metadata, graph.metadata):
        if "weight_step" in meta:
            return float(meta["weight_step"])
    w = _array(node.weight)
    k = w / DEFAULT_STEP
    if np.array_equal(k, np.round(k)) and k.min() >= WEIGHT_MIN and k.max() <= WEIGHT_MAX:
        return DEFAULT_STEP
    return float(np.abs(w).max() / WEIGHT_MAX) or DEFAULT_STEP


def _set_weight(name, layer, node):
    """Copy the weights and check that the layer's quantised weights equal them."""
    w = torch.as_tensor(_array(node.weight), dtype=torch.float32)
    with torch.no_grad():
        layer.weight.copy_(w)
        diff = float((layer.quantized_weight() - w).abs().max())
    if diff > 0:
        warnings.warn(f"node {name!r}: weights are not step * int8 (step "
                      f"{layer.weight_step:g}); rounded by up to {diff:.3g}")


def _check_bias(name, node):
    if isinstance(node, (nir.Affine, nir.Conv2d)) and np.any(_array(node.bias) != 0):
        raise NIRError(f"node {name!r}: nonzero bias (Loihi synapses have none)")


def conv_layer(name, node, step) -> QuantConv2d:
    """Conv2d (zero bias, dilation 1, groups 1): y[t] = W * x[t] -> QuantConv2d."""
    _check_bias(name, node)
    if isinstance(node.padding, str) or np.any(np.asarray(node.dilation) != 1) or node.groups != 1:
        raise NIRError(f"node {name!r}: only Conv2d with integer padding, dilation 1 and groups 1 "
                       f"maps to QuantConv2d")
    cout, cin, kh, kw = np.shape(node.weight)
    layer = QuantConv2d(cin, cout, (kh, kw), stride=_pair(node.stride),
                        padding=_pair(node.padding), weight_step=step)
    _set_weight(name, layer, node)
    return layer


def dense_layer(name, node, step) -> QuantLinear:
    """Affine (zero bias) or Linear: y[t] = W x[t] -> QuantLinear."""
    _check_bias(name, node)
    fout, fin = np.shape(node.weight)
    layer = QuantLinear(fin, fout, weight_step=step)
    _set_weight(name, layer, node)
    return layer


def _pair(v) -> tuple:
    return tuple(int(i) for i in np.broadcast_to(np.asarray(v), (2,)))


def _check_unit_gain(name, label, ratio, scale):
    """The student's neuron has input gain 1: euler_gain (the interpreter's and the compiler's
    rule) must give exactly 1."""
    gain = euler_gain(ratio, scale)
    if not np.all(gain == 1.0):
        raise NIRError(f"node {name!r}: {label} = {np.min(gain):g}..{np.max(gain):g}, but the "
                       f"student's neuron needs 1 (r = tau_mem/dt, w_in = tau_syn/dt)")


def _param_shape(shape, arrays) -> tuple:
    """(C, 1, 1) when every parameter is constant over H, W (per channel), else the full shape."""
    if len(shape) == 3 and all(np.all(a == a[:, :1, :1]) for a in arrays):
        return (shape[0], 1, 1)
    return tuple(shape)


def neuron_layer(name, node, dt, step) -> LoihiCUBA:
    """CubaLIF / LIF -> LoihiCUBA: the Euler step of tau_syn dI/dt = -I + w_in x, tau_mem dv/dt =
    (v_leak - v) + r I is I = alpha I + x, V = beta V + I with alpha = 1 - dt/tau_syn,
    beta = 1 - dt/tau_mem when w_in = tau_syn/dt, r = tau_mem/dt, v_leak = 0; spikes V > v_threshold
    and reset to v_reset = 0. LIF is the case alpha = 0."""
    if np.any(_array(node.v_leak) != 0) or np.any(_array(node.v_reset) != 0):
        raise NIRError(f"node {name!r}: v_leak and v_reset must be 0 (Loihi resets to zero)")
    if isinstance(node, nir.CubaLIF):
        tau_syn, tau_mem = _array(node.tau_syn), _array(node.tau_mem)
        _check_unit_gain(name, "w_in dt/tau_syn", dt / tau_syn, node.w_in)
        alpha = 1.0 - dt / tau_syn
    else:
        tau_mem = _array(node.tau)
        alpha = np.zeros_like(tau_mem)
    _check_unit_gain(name, "r dt/tau_mem", dt / tau_mem, node.r)
    shape = tuple(int(s) for s in node.output_type["output"])
    beta, theta = 1.0 - dt / tau_mem, _array(node.v_threshold)
    given = [np.broadcast_to(a, shape) for a in (alpha, beta, theta)]
    pshape = _param_shape(shape, given)
    index = tuple(slice(0, n) for n in pshape)
    layer = LoihiCUBA(pshape, weight_step=step)
    with torch.no_grad():
        for buf, value in zip((layer.alpha, layer.beta, layer.threshold), given):
            buf.copy_(torch.tensor(value[index], dtype=torch.float32))
    for label, used, value in zip(("alpha", "beta", "v_threshold"), layer.quantized(), given):
        diff = float(np.abs(np.broadcast_to(used.double().numpy(), shape) - value).max())
        if diff > 1e-6 * max(1.0, float(np.abs(value).max())):
            warnings.warn(f"node {name!r}: {label} is not on Loihi's grid; rounded by up to "
                          f"{diff:.3g}")
    return layer


def flatten_layer(name, node) -> nn.Flatten:
    """Flatten dims start_dim..end_dim counted without the batch -> nn.Flatten on (B, ...)."""
    start, end = int(node.start_dim), int(node.end_dim)
    return nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)


def check_integrator(name, node, dt, graph):
    """I: dv/dt = r x with r = 1/dt is the readout integrator v[t] = v[t-1] + x[t]."""
    if not all(isinstance(graph.nodes[b], nir.Output) for a, b in graph.edges if a == name):
        raise NIRError(f"node {name!r}: an integrator is supported only as the readout "
                       f"feeding the output")
    _check_unit_gain(name, "r dt", np.float64(dt), node.r)


# ---- graph -> modules --------------------------------------------------------------------------

SYNAPSES = (nir.Conv2d, nir.Affine, nir.Linear)
NEURONS = (nir.CubaLIF, nir.LIF)


def _neuron_step(name, graph, steps):
    """A neuron's threshold grid is the weight grid of its incoming synapses."""
    found = {steps[src] for src in predecessors(graph, name) if src in steps}
    if len(found) > 1:
        raise NIRError(f"node {name!r}: incoming synapses have different weight steps {found}")
    return found.pop() if found else float(graph.metadata.get("weight_step", DEFAULT_STEP))


def graph_modules(graph, dt) -> dict:
    """{node name: module} for every node except Input / Output / I, in topological order."""
    modules, steps = {}, {}
    for name in topological_order(graph):
        node = graph.nodes[name]
        if isinstance(node, (nir.Input, nir.Output)):
            continue
        if isinstance(node, SYNAPSES):
            steps[name] = weight_step(name, node, graph)
            make = conv_layer if isinstance(node, nir.Conv2d) else dense_layer
            modules[name] = make(name, node, steps[name])
        elif isinstance(node, NEURONS):
            modules[name] = neuron_layer(name, node, dt, _neuron_step(name, graph, steps))
        elif isinstance(node, nir.Flatten):
            modules[name] = flatten_layer(name, node)
        elif isinstance(node, nir.I):
            check_integrator(name, node, dt, graph)
        else:
            raise NIRError(f"node {name!r}: {type(node).__name__} has no Loihi student equivalent")
    return modules


class NIRStudent(nn.Module):
    """Runs a feed-forward NIR graph with student modules; a node sums its incoming edges.

    Synaptic layers are applied to all T steps at once, neurons loop over T (as the students do).
    An integrator `I` before the output marks the readout: logits_t is its per-step input.
    Without one, logits_t is whatever reaches the Output node. features["last"] holds the spikes
    of the last neuron layer with a (C, H, W) shape (for a SpikingResNet graph: head_lif, one stage
    later than SpikingResNet's own "last").
    """

    def __init__(self, graph: nir.NIRGraph, modules: dict):
        super().__init__()
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise NIRError(f"graph has {len(graph.inputs)} inputs and {len(graph.outputs)} "
                           f"outputs; a student has one of each")
        self.input_name, self.output_name = next(iter(graph.inputs)), next(iter(graph.outputs))
        self.order = [n for n in topological_order(graph) if n != self.input_name]
        self.sources = {n: predecessors(graph, n) for n in self.order}
        self.integrators = {n for n in self.order if isinstance(graph.nodes[n], nir.I)}
        self.keys = {n: n.replace(".", "_") for n in modules}
        if len(set(self.keys.values())) != len(self.keys):
            raise NIRError("node names collide once '.' is replaced by '_'")
        self.layers = nn.ModuleDict({self.keys[n]: m for n, m in modules.items()})
        spatial = [n for n, m in modules.items() if isinstance(m, LoihiCUBA)
                   and len(graph.nodes[n].output_type["output"]) == 3]
        self.last_conv_neuron = spatial[-1] if spatial else None

    def forward(self, x) -> StudentOutput:
        out = StudentOutput(logits_t=None)
        values = {self.input_name: x}
        for name in self.order:
            u = values[self.sources[name][0]]
            for src in self.sources[name][1:]:
                u = u + values[src]
            if name in self.integrators or name == self.output_name:
                values[name] = u
                if out.logits_t is None:
                    out.logits_t = u
                continue
            layer = self.layers[self.keys[name]]
            if isinstance(layer, LoihiCUBA):
                values[name] = out.spikes[name] = layer.run(u)
                if name == self.last_conv_neuron:
                    out.features["last"] = values[name]
            else:
                values[name] = _time_batched(layer, u)
        return out


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


def student_from_nir(graph_or_path) -> nn.Module:
    """NIRGraph or NIR file -> SpikingCNN when the graph is one, else NIRStudent (eval mode)."""
    graph = integrator_readout(graph_or_path) if isinstance(graph_or_path, nir.NIRGraph) \
        else read_graph(graph_or_path)
    dt = graph_dt(graph)
    if not math.isfinite(dt) or dt <= 0:
        raise NIRError(f"graph metadata dt = {dt} is not a positive time step")
    modules = graph_modules(graph, dt)
    model = spiking_cnn(graph, modules)
    return (model if model is not None else NIRStudent(graph, modules)).eval()


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
    graph = integrator_readout(graph_or_path) if isinstance(graph_or_path, nir.NIRGraph) \
        else read_graph(graph_or_path)
    step, source = resolve_dt(graph, dt)
    if (graph.metadata or {}).get("producer") == PRODUCER:
        own = graph_dt(graph)
        if not math.isclose(step, own, rel_tol=1e-9):
            raise NIRError(f"--dt {step:g} differs from dt = {own:g} that export.to_nir wrote "
                           f"(the student's decays are fixed by it)")
        model = student_from_nir(graph)
    else:
        model = NIRFloatModel(graph, step).eval()
    build_net(graph, dt)  # accept exactly what Loihi runs: CompileError (a NIRError) otherwise
    return model
