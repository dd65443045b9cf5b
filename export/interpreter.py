"""Reference simulator of a NIR graph in discrete time (docs/nir.md), independent of the students.

Every node is simulated from its NIR equation with forward Euler at step `dt` (graph metadata `dt`,
default 1e-4 as snnTorch uses). For a neuron with time constant tau the Euler step of
`tau dv/dt = (v_leak - v) + r x` is

    v[t] = (1 - dt/tau) v[t-1] + (dt/tau) v_leak + (dt/tau) r x[t]

The coefficients are derived from the NIR parameters in float64 and the state is kept in float32,
the precision of the student and of Loihi's float reference, so spikes can be compared exactly.
A node with several incoming edges receives the sum of their outputs (in edge order); nodes run in
topological order, so the graph must be acyclic. Shapes exclude the batch; inputs are (T, B, ...).
"""
import numpy as np
import torch
from torch.nn import functional as F

import nir

DEFAULT_DT = 1e-4


def topological_order(graph: nir.NIRGraph) -> list:
    """Node names so that every edge goes forward (Kahn's algorithm, stable in node order)."""
    indegree = {name: 0 for name in graph.nodes}
    for _, dst in graph.edges:
        indegree[dst] += 1
    ready = [name for name in graph.nodes if indegree[name] == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for src, dst in graph.edges:
            if src == name:
                indegree[dst] -= 1
                if indegree[dst] == 0:
                    ready.append(dst)
    if len(order) != len(graph.nodes):
        stuck = sorted(set(graph.nodes) - set(order))
        raise ValueError(f"NIR graph has a cycle through {', '.join(stuck)}; only feed-forward "
                         f"graphs can be simulated step by step")
    return order


def predecessors(graph: nir.NIRGraph, name: str) -> list:
    return [src for src, dst in graph.edges if dst == name]


def graph_dt(graph: nir.NIRGraph) -> float:
    return float(graph.metadata.get("dt", DEFAULT_DT))


def _f32(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64)).to(torch.float32)


def _leak(tau, dt):
    """(decay, gain) of the Euler step v <- decay v + gain u for tau dv/dt = -v + u."""
    ratio = dt / np.asarray(tau, dtype=np.float64)
    return 1.0 - ratio, ratio


class Stateless:
    """A node without state: y[t] = f(x[t])."""

    def __init__(self, fn):
        self.fn = fn

    def reset(self, batch):
        pass

    def step(self, x):
        return self.fn(x)


class _Membrane:
    """Shared output of the neuron steppers: with a threshold, z = v > v_threshold and
    v <- v_reset where z, output z; without (`spiking=False`), output v."""

    def _thresholds(self, node, spiking):
        self.spiking = spiking
        if spiking:
            self.v_th, self.v_reset = _f32(node.v_threshold), _f32(node.v_reset)

    def _output(self):
        if not self.spiking:
            return self.v
        z = self.v > self.v_th
        self.v = torch.where(z, self.v_reset.expand_as(self.v), self.v)
        return z.to(torch.float32)


class CubaLIFStep(_Membrane):
    """tau_syn dI/dt = -I + w_in x;  tau_mem dv/dt = (v_leak - v) + r I;  z = v > v_threshold;
    v <- v_reset where z. Euler: I = a_syn I + (dt/tau_syn) w_in x;
    v = a_mem v + (dt/tau_mem)(v_leak + r I), with a = 1 - dt/tau. `spiking=False` gives CubaLI
    (no threshold, output v)."""

    def __init__(self, node, dt, spiking=True):
        a_syn, g_syn = _leak(node.tau_syn, dt)
        a_mem, g_mem = _leak(node.tau_mem, dt)
        self.a_syn, self.g_syn = _f32(a_syn), _f32(g_syn * node.w_in)
        self.a_mem, self.g_mem = _f32(a_mem), _f32(g_mem * node.r)
        self.c_mem = _f32(g_mem * node.v_leak)
        self._thresholds(node, spiking)

    def reset(self, batch):
        self.i = torch.zeros(batch, *self.a_mem.shape)
        self.v = torch.zeros(batch, *self.a_mem.shape)

    def step(self, x):
        self.i = self.a_syn * self.i + self.g_syn * x
        self.v = self.a_mem * self.v + self.g_mem * self.i + self.c_mem
        return self._output()


class LIFStep(_Membrane):
    """tau dv/dt = (v_leak - v) + r x;  z = v > v_threshold;  v <- v_reset where z.
    Euler: v = (1 - dt/tau) v + (dt/tau)(v_leak + r x). `spiking=False` gives LI (output v)."""

    def __init__(self, node, dt, spiking=True):
        a, g = _leak(node.tau, dt)
        self.a, self.g, self.c = _f32(a), _f32(g * node.r), _f32(g * node.v_leak)
        self._thresholds(node, spiking)

    def reset(self, batch):
        self.v = torch.zeros(batch, *self.a.shape)

    def step(self, x):
        self.v = self.a * self.v + self.g * x + self.c
        return self._output()


class IntegratorStep(_Membrane):
    """dv/dt = r x (nir.I); Euler: v = v + dt r x; output v. With `spiking` (nir.IF):
    z = v > v_threshold, v <- v_reset where z, output z."""

    def __init__(self, node, dt, spiking=False):
        self.g = _f32(dt * np.asarray(node.r, dtype=np.float64))
        self._thresholds(node, spiking)

    def reset(self, batch):
        self.v = torch.zeros(batch, *self.g.shape)

    def step(self, x):
        self.v = self.v + self.g * x
        return self._output()


def _affine(node):
    """y = W x + b."""
    w, b = _f32(node.weight), _f32(node.bias)
    return Stateless(lambda x: F.linear(x, w, b))


def _linear(node):
    """y = W x."""
    w = _f32(node.weight)
    return Stateless(lambda x: F.linear(x, w))


def _pair(v):
    return v if isinstance(v, str) else tuple(int(i) for i in np.broadcast_to(np.asarray(v), (2,)))


def _conv2d(node):
    """y = W * x + b (2-D cross-correlation, torch convention)."""
    w, b = _f32(node.weight), _f32(node.bias)
    stride, padding, dilation = _pair(node.stride), _pair(node.padding), _pair(node.dilation)
    groups = int(node.groups)
    return Stateless(lambda x: F.conv2d(x, w, b, stride, padding, dilation, groups))


def _flatten(node):
    """Merge dims start_dim..end_dim (counted without the batch)."""
    start, end = int(node.start_dim), int(node.end_dim)
    start, end = start + 1 if start >= 0 else start, end + 1 if end >= 0 else end
    return Stateless(lambda x: torch.flatten(x, start, end))


def _scale(node):
    """y = s * x (elementwise)."""
    s = _f32(node.scale)
    return Stateless(lambda x: s * x)


def _threshold(node):
    """z = x > threshold."""
    th = _f32(node.threshold)
    return Stateless(lambda x: (x > th).to(torch.float32))


def _sum_pool2d(node):
    """y = sum of x over each kernel window."""
    k, s, p = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)
    return Stateless(lambda x: F.avg_pool2d(x, k, s, p, divisor_override=1))


def _avg_pool2d(node):
    """y = mean of x over each kernel window (zero padding counted)."""
    k, s, p = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)
    return Stateless(lambda x: F.avg_pool2d(x, k, s, p))


def _identity(node):
    return Stateless(lambda x: x)


def node_simulator(name, node, dt):
    """The per-step simulator of one NIR node."""
    neurons = {nir.CubaLIF: lambda: CubaLIFStep(node, dt),
               nir.CubaLI: lambda: CubaLIFStep(node, dt, spiking=False),
               nir.LIF: lambda: LIFStep(node, dt),
               nir.LI: lambda: LIFStep(node, dt, spiking=False),
               nir.I: lambda: IntegratorStep(node, dt),
               nir.IF: lambda: IntegratorStep(node, dt, spiking=True)}
    synapses = {nir.Affine: _affine, nir.Linear: _linear, nir.Conv2d: _conv2d,
                nir.Flatten: _flatten, nir.Scale: _scale, nir.Threshold: _threshold,
                nir.SumPool2d: _sum_pool2d, nir.AvgPool2d: _avg_pool2d,
                nir.Input: _identity, nir.Output: _identity}
    if type(node) in neurons:
        return neurons[type(node)]()
    if type(node) in synapses:
        return synapses[type(node)](node)
    raise ValueError(f"node {name!r}: the reference interpreter cannot simulate "
                     f"{type(node).__name__} nodes")


def sum_inputs(values, name):
    if not values:
        raise ValueError(f"node {name!r} has no incoming edge and is not an Input node")
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def run_graph(graph: nir.NIRGraph, x, dt=None) -> dict:
    """Simulate `graph` on input x of shape (T, B, ...) from zero state.

    x is a tensor for a graph with one Input node, or a dict {input name: tensor}. Returns
    {node name: (T, B, ...) float32 outputs of that node at every step}.
    """
    dt = graph_dt(graph) if dt is None else float(dt)
    inputs = x if isinstance(x, dict) else {name: x for name in graph.inputs}
    if set(inputs) != set(graph.inputs):
        raise ValueError(f"graph inputs are {sorted(graph.inputs)}, got {sorted(inputs)}")
    order = topological_order(graph)
    sources = {name: predecessors(graph, name) for name in order}
    sims = {name: node_simulator(name, graph.nodes[name], dt) for name in order}
    steps, batch = next(iter(inputs.values())).shape[:2]
    for sim in sims.values():
        sim.reset(batch)
    record = {name: [] for name in order}
    with torch.no_grad():
        for t in range(steps):
            now = {}
            for name in order:
                if name in inputs:
                    u = inputs[name][t].to(torch.float32)
                else:
                    u = sum_inputs([now[src] for src in sources[name]], name)
                now[name] = sims[name].step(u)
                record[name].append(now[name])
    return {name: torch.stack(outs) for name, outs in record.items()}

