"""Reference simulator of a NIR graph in discrete time (docs/nir.md), independent of the students.

Every node is simulated from its NIR equation with forward Euler at step `dt` (`resolve_dt`: the
--dt flag, metadata `dt`, snnTorch's r = tau/dt convention, or 1 for a graph without time
constants). For a neuron with time constant tau the Euler step of
`tau dv/dt = (v_leak - v) + r x` is

    v[t] = (1 - dt/tau) v[t-1] + (dt/tau) v_leak + (dt/tau) r x[t]

The coefficients are derived from the NIR parameters in float64 (an input gain within 1e-6 of 1,
float32 round-off of snnTorch's r = tau/dt, is taken as exactly 1) and the state is kept in
float32, the precision of the student and of Loihi's float reference, so spikes can be compared
exactly. A node with several incoming edges receives the sum of their outputs (in edge order).
Nested graphs are inlined (`flatten_graph`). Edges that close a cycle (`recurrent_edges`) deliver
their source's output of the previous step (zeros at t = 0); every cycle must pass through exactly
one neuron (self-recurrence, e.g. CubaLIF -> recurrent Linear -> the same CubaLIF). The other nodes
run in topological order. Shapes exclude the batch; inputs are (T, B, ...).
"""
import math

import numpy as np
import torch
from torch.nn import functional as F

import nir
from common.loihi import ACT_SHIFT, DECAY_UNITY, VTH_SHIFT
from hwmodels.loihi import neuron_step

DEFAULT_DT = 1e-4   # snnTorch's hard-coded step: export.to_nir's default, never a reader's fallback
DT_RTOL = 1e-4      # the r = tau/dt convention: all neurons must give the same dt within this
GAIN_RTOL = 1e-6    # an Euler input gain this close to 1 is float32 round-off of r = tau/dt
GRID_RTOL = 1e-6    # a Loihi integer (decay, threshold in steps) read back from float parameters


class NIRError(ValueError):
    """A NIR file or graph that cannot be read or simulated; the message names the file or node."""


class DtError(NIRError):
    """The graph does not pin its time step; the one-line message names --dt and why."""


# ---- graph utilities ---------------------------------------------------------------------------

def _is_port(node):
    return isinstance(node, (nir.Input, nir.Output))


def _endpoint(graph, ref, kind):
    """(node name, port) of an edge end: a plain node (port None), a subgraph (its single Input or
    Output), or "subgraph.port"."""
    if ref in graph.nodes:
        node = graph.nodes[ref]
        if not isinstance(node, nir.NIRGraph):
            return ref, None
        ports = [n for n, m in node.nodes.items() if isinstance(m, kind)]
        if len(ports) != 1:
            raise NIRError(f"node {ref!r}: edge to a subgraph with {len(ports)} "
                           f"{kind.__name__} nodes must name one as '{ref}.<name>'")
        return ref, ports[0]
    outer, _, port = ref.rpartition(".")
    sub = graph.nodes.get(outer)
    if isinstance(sub, nir.NIRGraph) and isinstance(sub.nodes.get(port), kind):
        return outer, port
    raise NIRError(f"edge end {ref!r} is not a node of the graph")


def flatten_graph(graph: nir.NIRGraph) -> nir.NIRGraph:
    """Inline nested NIRGraph nodes: inner node n of subgraph s becomes "s.n", the subgraph's
    Input / Output nodes are removed and the edges through them reconnected (an edge into s feeds
    every node its Input fed; every node that fed its Output feeds the edge's destination).
    A flat graph comes back unchanged (the same object). Subgraph metadata is kept in the flat
    graph's metadata under "subgraph_metadata" {s: metadata}."""
    if not any(isinstance(n, nir.NIRGraph) for n in graph.nodes.values()):
        return graph
    nodes, inner_edges, fan_in, fan_out = {}, [], {}, {}
    meta = dict(graph.metadata or {})
    for name, node in graph.nodes.items():
        if not isinstance(node, nir.NIRGraph):
            nodes[name] = node
            continue
        sub = flatten_graph(node)
        sub_meta = {k: v for k, v in (sub.metadata or {}).items() if k != "subgraph_metadata"}
        if sub_meta:
            meta.setdefault("subgraph_metadata", {})[name] = sub_meta
        for key, value in (sub.metadata or {}).get("subgraph_metadata", {}).items():
            meta.setdefault("subgraph_metadata", {})[f"{name}.{key}"] = value
        for n, m in sub.nodes.items():
            if not _is_port(m):
                nodes[f"{name}.{n}"] = m
        for a, b in sub.edges:
            ia, ib = _is_port(sub.nodes[a]), _is_port(sub.nodes[b])
            if ia and ib:
                raise NIRError(f"node {name!r}: subgraph connects {a!r} straight to {b!r}")
            if ia:
                fan_in.setdefault((name, a), []).append(f"{name}.{b}")
            elif ib:
                fan_out.setdefault((name, b), []).append(f"{name}.{a}")
            else:
                inner_edges.append((f"{name}.{a}", f"{name}.{b}"))
    edges = []
    for a, b in graph.edges:
        src, dst = _endpoint(graph, a, nir.Output), _endpoint(graph, b, nir.Input)
        srcs = [src[0]] if src[1] is None else fan_out.get(src, [])
        dsts = [dst[0]] if dst[1] is None else fan_in.get(dst, [])
        edges += [(s, d) for s in srcs for d in dsts if (s, d) not in edges]
    edges += [e for e in inner_edges if e not in edges]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)


def _successors(graph):
    succ = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        if src not in succ or dst not in succ:
            raise NIRError(f"edge ({src!r}, {dst!r}) names a node that is not in the graph")
        succ[src].append(dst)
    return succ


def recurrent_edges(graph: nir.NIRGraph) -> set:
    """The edges (src, dst) that close a cycle: back edges of a depth-first search from the Input
    nodes in node order (then from any node not reached), successors in edge order."""
    succ = _successors(graph)
    starts = [n for n, m in graph.nodes.items() if isinstance(m, nir.Input)] + list(graph.nodes)
    state, back = {}, set()   # state: 1 on the DFS stack, 2 finished
    for start in starts:
        if start in state:
            continue
        state[start] = 1
        stack = [(start, iter(succ[start]))]
        while stack:
            name, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[name] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                back.add((name, nxt))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(succ[nxt])))
    return back


def topological_order(graph: nir.NIRGraph, skip=()) -> list:
    """Node names so that every edge not in `skip` goes forward (Kahn's algorithm, stable in node
    order). Pass skip=recurrent_edges(graph) for a graph with recurrence."""
    skip = set(skip)
    edges = [e for e in graph.edges if tuple(e) not in skip]
    indegree = {name: 0 for name in graph.nodes}
    for _, dst in edges:
        indegree[dst] += 1
    ready = [name for name in graph.nodes if indegree[name] == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for src, dst in edges:
            if src == name:
                indegree[dst] -= 1
                if indegree[dst] == 0:
                    ready.append(dst)
    if len(order) != len(graph.nodes):
        stuck = sorted(set(graph.nodes) - set(order))
        raise NIRError(f"NIR graph has a cycle through {', '.join(stuck)}; only feed-forward "
                       f"graphs can be simulated step by step")
    return order


def predecessors(graph: nir.NIRGraph, name: str) -> list:
    return [src for src, dst in graph.edges if dst == name]


def _reach(edges, start, forward=True):
    seen, todo = {start}, [start]
    while todo:
        name = todo.pop()
        for a, b in edges:
            here, nxt = (a, b) if forward else (b, a)
            if here == name and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def check_recurrence(graph: nir.NIRGraph, rec=None) -> set:
    """Every cycle closed by a recurrent edge (src, dst) (the nodes on dst -> ... -> src paths
    without recurrent edges) must hold exactly one neuron; NIRError otherwise. Returns rec."""
    rec = recurrent_edges(graph) if rec is None else set(rec)
    forward = [e for e in graph.edges if tuple(e) not in rec]
    for src, dst in sorted(rec):
        cycle = _reach(forward, dst) & _reach(forward, src, forward=False)
        for name in sorted(cycle):
            if isinstance(graph.nodes[name], nir.Delay):
                raise NIRError(f"node {name!r}: Delay in a recurrent loop has no float meaning")
        neurons = [n for n in sorted(cycle) if isinstance(graph.nodes[n], NEURONS)]
        if len(neurons) != 1:
            raise NIRError(f"cycle through {', '.join(sorted(cycle))} passes {len(neurons)} "
                           f"neurons; only self-recurrence (one neuron per loop) is simulated")
    return rec


# ---- the time step -----------------------------------------------------------------------------

def _walk_metadata(graph, prefix=""):
    """(where, dt) for every "dt" in graph, subgraph and node metadata."""
    meta = graph.metadata or {}
    if "dt" in meta:
        yield ("graph metadata" if not prefix else f"subgraph {prefix[:-1]!r} metadata"), meta["dt"]
    for name, sub in meta.get("subgraph_metadata", {}).items():
        if "dt" in sub:
            yield f"subgraph {prefix + name!r} metadata", sub["dt"]
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            yield from _walk_metadata(node, f"{prefix}{name}.")
        elif "dt" in (getattr(node, "metadata", None) or {}):
            yield f"node {prefix + name!r} metadata", node.metadata["dt"]


def _array(v) -> np.ndarray:
    return np.asarray(v.detach() if torch.is_tensor(v) else v, dtype=np.float64)


def _convention(graph):
    """[(node, label, tau/gain)] for the r = tau_mem/dt, w_in = tau_syn/dt reading of every
    LIF / CubaLIF; (node, type name, None) for LI / CubaLI (a time constant, no convention)."""
    found = []
    for name, node in graph.nodes.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            if isinstance(node, nir.CubaLIF):
                found += [(name, "r*dt/tau_mem", _array(node.tau_mem) / _array(node.r)),
                          (name, "w_in*dt/tau_syn", _array(node.tau_syn) / _array(node.w_in))]
            elif isinstance(node, nir.LIF):
                found.append((name, "r*dt/tau", _array(node.tau) / _array(node.r)))
            elif isinstance(node, (nir.LI, nir.CubaLI)):
                found.append((name, type(node).__name__, None))
    return found


def resolve_dt(graph: nir.NIRGraph, override=None) -> tuple:
    """(dt, source): the --dt override; else metadata "dt" of the graph, subgraphs and nodes (all
    equal); else the dt that snnTorch's convention r = tau_mem/dt (w_in = tau_syn/dt) pins when
    every LIF / CubaLIF gives the same one (rtol 1e-4, rounded to 6 significant digits; not when
    r = w_in = 1 everywhere, which reads as no memory rather than as the convention); else, for a
    graph whose only neurons are IF / I, 1/r when they share one r != 1 (SpikingJelly's
    r = 1/dt) and 1 when r = 1 (discrete time); else DtError."""
    if override is not None:
        dt = float(override)
        if not math.isfinite(dt) or dt <= 0:
            raise DtError(f"--dt {override} is not a positive time step")
        return dt, "override"
    found = list(_walk_metadata(graph))
    if found:
        values = []
        for where, value in found:
            try:
                values.append(float(np.asarray(value).reshape(())))
            except (TypeError, ValueError):
                raise DtError(f"{where}: dt = {value!r} is not a number; pass --dt") from None
            if not math.isfinite(values[-1]) or values[-1] <= 0:
                raise DtError(f"{where}: dt = {value!r} is not a positive time step; pass --dt")
        for (where, _), value in zip(found, values):
            if not math.isclose(value, values[0], rel_tol=1e-9):
                raise DtError(f"{where}: dt = {value:g} disagrees with {found[0][0]} dt = "
                              f"{values[0]:g}; pass --dt")
        return values[0], found[0][0]
    graph_flat = flatten_graph(graph)
    found = _convention(graph_flat)
    if not found:
        return _integrator_dt(graph_flat)
    pinned = [(name, label, v) for name, label, v in found if v is not None]
    if not pinned:
        name, kind, _ = found[0]
        raise DtError(f"node {name!r}: {kind} has a time constant but the graph gives no dt; "
                      f"pass --dt")
    # tau = r = inf (snnTorch's beta = 1: no leak) runs the same at any dt
    pinned = [(name, label, v[~np.isnan(v)]) for name, label, v in pinned]
    every = np.concatenate([v.reshape(-1) for _, _, v in pinned])
    if every.size == 0:
        return 1.0, "no time constants: discrete time"
    for name, label, v in pinned:
        if not np.all(np.isfinite(v)) or np.any(v <= 0) \
                or not np.allclose(v, every[0], rtol=DT_RTOL, atol=0):
            raise DtError(f"node {name!r}: {label} != 1 for any single dt; pass --dt")
    if all(np.all(_array(getattr(graph_flat.nodes[n], k, 1.0)) == 1.0)
           for n in {name for name, _, _ in pinned} for k in ("r", "w_in")):
        name = pinned[0][0]
        raise DtError(f"node {name!r}: r = 1 everywhere would read as dt = tau (no memory), "
                      f"not as snnTorch's r = tau/dt; pass --dt")
    dt = float(f"{float(np.median(every)):.6g}")
    return dt, "snntorch convention r = tau/dt"


def _integrator_dt(graph):
    """dt of a graph whose only neurons are IF / I: r = 1 everywhere is discrete time (dt = 1);
    one r != 1 shared by every IF / I element pins dt = 1/r (SpikingJelly writes r = 1/dt and no
    dt); r that differs between neurons cannot be read either way: DtError."""
    rs = [(name, _array(node.r).reshape(-1)) for name, node in graph.nodes.items()
          if isinstance(node, (nir.IF, nir.I))]
    every = np.concatenate([r for _, r in rs]) if rs else np.ones(1)
    if np.all(every == 1.0):
        return 1.0, "no time constants: discrete time"
    for name, r in rs:
        if not np.all(np.isfinite(r)) or np.any(r <= 0) \
                or not np.allclose(r, every[0], rtol=DT_RTOL, atol=0):
            raise DtError(f"node {name!r}: r = {r.min():g}..{r.max():g} differs from r = "
                          f"{every[0]:g} of {rs[0][0]!r} (r = 1/dt pins no single dt); pass --dt")
    dt = float(f"{1.0 / float(np.median(every)):.6g}")
    return dt, "IF / I r = 1/dt"


def graph_dt(graph: nir.NIRGraph) -> float:
    return resolve_dt(graph)[0]


# ---- one simulator per node type ---------------------------------------------------------------

def _f32(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64)).to(torch.float32)


def euler_leak(tau, dt):
    """(decay, dt/tau) of the Euler step v <- decay v + (dt/tau) u for tau dv/dt = -v + u."""
    ratio = dt / _array(tau)
    return 1.0 - ratio, ratio


def euler_gain(ratio, scale):
    """Euler input gain (dt/tau) * scale; tau = scale = inf (snnTorch's beta = 1) gives 1, and a
    gain within GAIN_RTOL of 1 is taken as exactly 1. The one gain rule of the interpreter, the
    compiler (deploy.compile.neuron_params) and the student reader (export.from_nir)."""
    scale = _array(scale)
    with np.errstate(invalid="ignore"):
        g = ratio * scale
    g = np.where(np.isinf(scale) & (ratio == 0), 1.0, g)
    return np.where(np.abs(g - 1.0) <= GAIN_RTOL, 1.0, g)


def loihi_neuron(node, dt, shape=None) -> dict:
    """The one NIR -> Loihi neuron mapping (float64 per-neuron arrays, broadcast to `shape`):
    iDecay = 4096 "i", vDecay = 4096 "v", the Euler input gain "gain" (euler_gain) that
    multiplies the incoming weights, and "leak" = dt/tau of v (times v_leak: a bias per step);
    "i_tau", "v_tau" name the fields the decays come from (None: fixed).
        CubaLIF / CubaLI  dt/tau_syn, dt/tau_mem, gain (dt w_in/tau_syn)(dt r/tau_mem)
        LIF / LI          1 (u = input every step), dt/tau, gain dt r/tau
        IF                1, 0, gain dt r;     I: 0, 1 (the integrator v = u), gain dt r
    tau = inf gives 0 (no decay). Used by the compiler (deploy.compile.neuron_params) and by
    LoihiStep; `nir_neuron` below is its inverse (what export.to_nir writes)."""
    def field(name):
        return _array(getattr(node, name))

    def ratio(tau):
        with np.errstate(divide="ignore"):
            return np.where(np.isinf(tau), 0.0, dt / np.where(np.isinf(tau), 1.0, tau))

    one = np.ones(())
    if isinstance(node, (nir.CubaLIF, nir.CubaLI)):
        i, v = ratio(field("tau_syn")), ratio(field("tau_mem"))
        m = dict(i=i, v=v, i_tau="tau_syn", v_tau="tau_mem", leak=v,
                 gain=euler_gain(i, node.w_in) * euler_gain(v, node.r))
    elif isinstance(node, (nir.LIF, nir.LI)):
        v = ratio(field("tau"))
        m = dict(i=one, v=v, i_tau=None, v_tau="tau", leak=v, gain=euler_gain(v, node.r))
    elif isinstance(node, nir.IF):
        m = dict(i=one, v=0 * one, i_tau=None, v_tau=None, leak=0 * one,
                 gain=euler_gain(np.float64(dt), node.r))
    elif isinstance(node, nir.I):
        m = dict(i=0 * one, v=one, i_tau=None, v_tau=None, leak=0 * one,
                 gain=euler_gain(np.float64(dt), node.r))
    else:
        raise NIRError(f"{type(node).__name__} is not a neuron")
    if shape is None:
        shape = np.broadcast_shapes(*(np.shape(m[k]) for k in ("i", "v", "gain", "leak")))
    return {k: np.broadcast_to(x, shape) if k in ("i", "v", "gain", "leak") else x
            for k, x in m.items()}


def nir_neuron(i, v, theta, dt, metadata=None):
    """The inverse of `loihi_neuron` for the neurons our students have (input gain 1, v_leak =
    v_reset = 0): per-neuron arrays i = iDecay / 4096 = dt/tau_syn, v = vDecay / 4096 =
    dt/tau_mem and the threshold theta -> a NIR node whose loihi_neuron gives back i, v, gain 1:
        theta None, i = 0, v = 1 (the integrator readout)  I(r = 1/dt)
        i = 1 and v = 0 everywhere (no leak)                IF(r = 1/dt)
        i = 1 everywhere (u = input each step)             LIF(tau = dt/v, r = tau/dt)
        else                                               CubaLIF(tau_syn = dt/i, w_in =
                                                             tau_syn/dt, tau_mem = dt/v, r =
                                                             tau_mem/dt)
    i and v of a spiking neuron lie in [0, 1]; 0 (no decay: snnTorch's beta = 1, or the current
    of an IF reset by subtraction, export.subtract_reset) is tau = inf with its gain factor
    (r, w_in) inf, which euler_gain takes as 1. The Euler step of either is
    I = (1 - i) I + x, V = (1 - v) V + I (docs/nir.md)."""
    i, v = (np.asarray(a, dtype=np.float64) for a in np.broadcast_arrays(i, v))
    meta = dict(metadata or {})
    if theta is None:
        if np.any(i != 0.0) or np.any(v != 1.0):
            raise NIRError("a neuron without threshold maps back only as the integrator "
                           "(iDecay 0, vDecay 4096)")
        return nir.I(r=np.full(v.shape, 1.0 / dt), metadata=meta)
    i, v, theta = (np.asarray(a, dtype=np.float64) for a in np.broadcast_arrays(i, v, theta))
    for label, ratio in (("dt/tau_syn", i), ("dt/tau_mem", v)):
        if np.any(ratio < 0.0) or np.any(ratio > 1.0):
            raise NIRError(f"{label} must lie in [0, 1] for a NIR time constant "
                           f"(got {ratio.min():g}..{ratio.max():g})")
    zero = np.zeros(v.shape)
    if np.all(i == 1.0) and np.all(v == 0.0):
        return nir.IF(r=np.full(v.shape, 1.0 / dt), v_threshold=theta, v_reset=zero,
                      metadata=meta)
    with np.errstate(divide="ignore"):
        tau_mem = np.where(v == 0.0, np.inf, dt / np.where(v == 0.0, 1.0, v))
    if np.all(i == 1.0):
        return nir.LIF(tau=tau_mem, r=tau_mem / dt, v_leak=zero, v_threshold=theta,
                       v_reset=zero.copy(), metadata=meta)
    with np.errstate(divide="ignore"):
        tau_syn = np.where(i == 0.0, np.inf, dt / np.where(i == 0.0, 1.0, i))
    return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / dt, v_leak=zero,
                       v_threshold=theta, v_reset=zero.copy(), w_in=tau_syn / dt, metadata=meta)


def _shape(*values):
    return np.broadcast_shapes(*(np.shape(_array(v)) for v in values))


class Stateless:
    """A node without state: y[t] = f(x[t])."""

    def __init__(self, fn):
        self.fn = fn

    def reset(self, batch):
        pass

    def step(self, x):
        return self.fn(x)


# After a spike (z = v > v_threshold, from the step's updated v):
#   "zero"           v <- v_reset in the same step (NIR)
#   "subtract"       v <- v - v_threshold in the same step (sinabs' MembraneSubtract)
#   "subtract-next"  v_threshold is subtracted at the next step, after its decay and input:
#                    v[t] = a v[t-1] + input[t] - v_threshold z[t-1] (snnTorch's Leaky and
#                    Synaptic with reset_mechanism="subtract", whose reset uses the previous
#                    step's spike)
RESETS = ("zero", "subtract", "subtract-next")


class _Membrane:
    """Shared output of the neuron steppers: with a threshold, z = v > v_threshold and
    v <- v_reset where z, output z; without (`spiking=False`), output v."""

    def _thresholds(self, node, spiking):
        self.spiking = spiking
        if spiking:
            self.v_th, self.v_reset = _f32(node.v_threshold), _f32(node.v_reset)

    reset_mode = "zero"   # run_graph(reset=...): RESETS
    pending = 0.0         # "subtract-next": v_threshold z of the previous step

    def _output(self):
        if not self.spiking:
            return self.v
        if self.reset_mode == "subtract-next":
            self.v = self.v - self.pending
            z = self.v > self.v_th
            self.pending = torch.where(z, self.v_th, torch.zeros_like(self.v))
            return z.to(torch.float32)
        z = self.v > self.v_th
        if self.reset_mode == "subtract":
            after = self.v - self.v_th
        else:
            after = self.v_reset.expand_as(self.v)
        self.v = torch.where(z, after, self.v)
        return z.to(torch.float32)


class CubaLIFStep(_Membrane):
    """tau_syn dI/dt = -I + w_in x;  tau_mem dv/dt = (v_leak - v) + r I;  z = v > v_threshold;
    v <- v_reset where z. Euler: I = a_syn I + (dt/tau_syn) w_in x;
    v = a_mem v + (dt/tau_mem)(v_leak + r I), with a = 1 - dt/tau. `spiking=False` gives CubaLI
    (no threshold, output v)."""

    def __init__(self, node, dt, spiking=True):
        a_syn, ratio_syn = euler_leak(node.tau_syn, dt)
        a_mem, ratio_mem = euler_leak(node.tau_mem, dt)
        self.a_syn, self.g_syn = _f32(a_syn), _f32(euler_gain(ratio_syn, node.w_in))
        self.a_mem, self.g_mem = _f32(a_mem), _f32(euler_gain(ratio_mem, node.r))
        self.c_mem = _f32(ratio_mem * _array(node.v_leak))
        self.shape = _shape(node.tau_syn, node.tau_mem, node.r, node.w_in, node.v_leak)
        self._thresholds(node, spiking)

    def reset(self, batch):
        self.i = torch.zeros(batch, *self.shape)
        self.v = torch.zeros(batch, *self.shape)

    def step(self, x):
        self.i = self.a_syn * self.i + self.g_syn * x
        self.v = self.a_mem * self.v + self.g_mem * self.i + self.c_mem
        return self._output()


class LIFStep(_Membrane):
    """tau dv/dt = (v_leak - v) + r x;  z = v > v_threshold;  v <- v_reset where z.
    Euler: v = (1 - dt/tau) v + (dt/tau)(v_leak + r x). `spiking=False` gives LI (output v)."""

    def __init__(self, node, dt, spiking=True):
        a, ratio = euler_leak(node.tau, dt)
        self.a, self.g = _f32(a), _f32(euler_gain(ratio, node.r))
        self.c = _f32(ratio * _array(node.v_leak))
        self.shape = _shape(node.tau, node.r, node.v_leak)
        self._thresholds(node, spiking)

    def reset(self, batch):
        self.v = torch.zeros(batch, *self.shape)

    def step(self, x):
        self.v = self.a * self.v + self.g * x + self.c
        return self._output()


class IntegratorStep(_Membrane):
    """dv/dt = r x (nir.I); Euler: v = v + dt r x; output v. With `spiking` (nir.IF):
    z = v > v_threshold, v <- v_reset where z, output z."""

    def __init__(self, node, dt, spiking=False):
        self.g = _f32(euler_gain(np.float64(dt), node.r))
        self.shape = _shape(node.r)
        self._thresholds(node, spiking)

    def reset(self, batch):
        self.v = torch.zeros(batch, *self.shape)

    def step(self, x):
        self.v = self.v + self.g * x
        return self._output()


def _affine(node, dtype=torch.float32):
    """y = W x + b."""
    w, b = _f32(node.weight).to(dtype), _f32(node.bias).to(dtype)
    return Stateless(lambda x: F.linear(x, w, b))


def _linear(node, dtype=torch.float32):
    """y = W x."""
    w = _f32(node.weight).to(dtype)
    return Stateless(lambda x: F.linear(x, w))


def _pair(v):
    return v if isinstance(v, str) else tuple(int(i) for i in np.broadcast_to(np.asarray(v), (2,)))


def _conv2d(node, dtype=torch.float32):
    """y = W * x + b (2-D cross-correlation, torch convention)."""
    w, b = _f32(node.weight).to(dtype), _f32(node.bias).to(dtype)
    stride, padding, dilation = _pair(node.stride), _pair(node.padding), _pair(node.dilation)
    groups = int(node.groups)
    return Stateless(lambda x: F.conv2d(x, w, b, stride, padding, dilation, groups))


def _flatten(node):
    """Merge dims start_dim..end_dim (counted without the batch)."""
    start, end = int(node.start_dim), int(node.end_dim)
    start, end = start + 1 if start >= 0 else start, end + 1 if end >= 0 else end
    return Stateless(lambda x: torch.flatten(x, start, end))


def _scale(node, dtype=torch.float32):
    """y = s * x (elementwise)."""
    s = _f32(node.scale).to(dtype)
    return Stateless(lambda x: s * x)


def _threshold(node, dtype=torch.float32):
    """z = x > threshold."""
    th = _f32(node.threshold).to(dtype)
    return Stateless(lambda x: (x > th).to(dtype))


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


class LoihiStep:
    """CubaLIF / LIF / IF read as Loihi's fixed-point neuron (`run_graph(..., arithmetic="loihi")`,
    for graphs that declare a `weight_step`, as export.to_nir writes them; docs/nir.md):

        iDecay = 4096 dt / tau_syn (4096 for LIF), vDecay = 4096 dt / tau_mem,
        vThMant = v_threshold / weight_step, input a = x / (weight_step / 64) in state units

    and one step is hwmodels.loihi.neuron_step, Lava's bit-accurate CUBA step (truncated decays,
    24-bit u wrap, v clip, strict threshold, reset to zero). The NIR input gains must be 1
    (w_in = tau_syn / dt, r = tau_mem / dt) and v_leak = v_reset = 0; NIRError names the node
    otherwise."""

    def __init__(self, name, node, dt, step):
        m = loihi_neuron(node, dt)
        checks = {"input gain (w_in dt / tau_syn, r dt / tau_mem)": np.all(m["gain"] == 1.0),
                  "v_leak = 0": not np.any(_array(getattr(node, "v_leak", 0.0))),
                  "v_reset = 0": not np.any(_array(node.v_reset))}
        self.i_decay = _integer(name, "iDecay = 4096 dt / tau_syn", DECAY_UNITY * m["i"])
        self.v_decay = _integer(name, "vDecay = 4096 dt / tau_mem", DECAY_UNITY * m["v"])
        self.vth = _integer(name, "v_threshold / weight_step", _array(node.v_threshold) / step)
        for what, ok in checks.items():
            if not ok:
                raise NIRError(f"node {name!r}: Loihi arithmetic needs {what}")
        self.step_size = step
        self.shape = _shape(m["v"], node.r, node.v_threshold)

    def reset(self, batch):
        self.u = torch.zeros(batch, *self.shape, dtype=torch.int64)
        self.v = torch.zeros(batch, *self.shape, dtype=torch.int64)

    def step(self, x):
        # input in state units (weight_step / 64): exact for spikes, rounded for analog input
        a = torch.round(x.double() * (2 ** ACT_SHIFT / self.step_size)).to(torch.int64)
        self.u, self.v, s = neuron_step(self.u, self.v, a, (self.i_decay, self.v_decay,
                                                           self.vth << VTH_SHIFT, None), 0)
        return s.to(torch.float32)


def _integer(name, what, values) -> torch.Tensor:
    """values as int64 when they are integers (within GRID_RTOL), else NIRError naming the node."""
    values = np.asarray(values, dtype=np.float64)
    k = np.rint(values)
    if np.any(np.abs(values - k) > GRID_RTOL * np.maximum(1.0, np.abs(k))):
        raise NIRError(f"node {name!r}: {what} is not an integer ({values.min():g}.."
                       f"{values.max():g}); not Loihi arithmetic")
    return torch.as_tensor(k.astype(np.int64))


# ---- one table: every NIR node type the readers here know --------------------------------------
# type -> (role, simulator(node, dt, dtype)). Roles: "spiking" / "state" (neurons; the compiler
# maps them in deploy.compile.neuron_params), "synapse" (weights and a bias: at most one per path
# between neurons), "linear" (stateless and linear: the compiler folds a path through it by
# running it, deploy.compile.probe_dense; pooling also into a convolution), "port" (Input /
# Output), "other" (simulated here, refused by the compiler). export.from_nir.float_model reads
# what the interpreter simulates and the compiler accepts, so a new node type is one entry here.
NODE_TYPES = {
    nir.LIF: ("spiking", lambda node, dt, dtype: LIFStep(node, dt)),
    nir.CubaLIF: ("spiking", lambda node, dt, dtype: CubaLIFStep(node, dt)),
    nir.IF: ("spiking", lambda node, dt, dtype: IntegratorStep(node, dt, spiking=True)),
    nir.I: ("state", lambda node, dt, dtype: IntegratorStep(node, dt)),
    nir.LI: ("state", lambda node, dt, dtype: LIFStep(node, dt, spiking=False)),
    nir.CubaLI: ("state", lambda node, dt, dtype: CubaLIFStep(node, dt, spiking=False)),
    nir.Affine: ("synapse", lambda node, dt, dtype: _affine(node, dtype)),
    nir.Linear: ("synapse", lambda node, dt, dtype: _linear(node, dtype)),
    nir.Conv2d: ("synapse", lambda node, dt, dtype: _conv2d(node, dtype)),
    nir.SumPool2d: ("linear", lambda node, dt, dtype: _sum_pool2d(node)),
    nir.AvgPool2d: ("linear", lambda node, dt, dtype: _avg_pool2d(node)),
    nir.Flatten: ("linear", lambda node, dt, dtype: _flatten(node)),
    nir.Scale: ("linear", lambda node, dt, dtype: _scale(node, dtype)),
    nir.Threshold: ("other", lambda node, dt, dtype: _threshold(node, dtype)),
    nir.Input: ("port", lambda node, dt, dtype: _identity(node)),
    nir.Output: ("port", lambda node, dt, dtype: _identity(node)),
}


def role(node) -> str:
    """The node's role in NODE_TYPES (its exact type), or None for a type no reader knows."""
    entry = NODE_TYPES.get(type(node))
    return entry[0] if entry else None


def types_of(*roles) -> tuple:
    return tuple(t for t, (r, _) in NODE_TYPES.items() if r in roles)


SPIKING = types_of("spiking")
NON_SPIKING = types_of("state")
NEURONS = SPIKING + NON_SPIKING


def node_simulator(name, node, dt, weight_step=None, dtype=torch.float32):
    """The per-step simulator of one NIR node (NODE_TYPES); with `weight_step`, CubaLIF / LIF / IF run
    Loihi's integer arithmetic (LoihiStep). Stateless nodes compute in `dtype` (deploy.compile
    folds a synaptic path in float64 with them)."""
    if weight_step is not None and isinstance(node, (nir.CubaLIF, nir.LIF, nir.IF)):
        return LoihiStep(name, node, dt, weight_step)
    if type(node) in NODE_TYPES:
        return NODE_TYPES[type(node)][1](node, dt, dtype)
    if isinstance(node, nir.Delay):
        raise NIRError(f"node {name!r}: Delay has no float meaning here (the float model and "
                       f"Loihi have no per-synapse delays)")
    raise NIRError(f"node {name!r}: the reference interpreter cannot simulate "
                   f"{type(node).__name__} nodes")


def sum_inputs(values, name):
    if not values:
        raise NIRError(f"node {name!r} has no incoming edge and is not an Input node")
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def _zeros(graph, src, dst, batch):
    """Zeros standing for a recurrent edge's source output at t = 0."""
    for types, key in ((graph.nodes[src].output_type, "output"),
                       (graph.nodes[dst].input_type, "input")):
        shape = (types or {}).get(key)
        if shape is not None and np.size(shape):
            return torch.zeros(batch, *(int(n) for n in np.asarray(shape).reshape(-1)))
    raise NIRError(f"node {src!r}: recurrent edge to {dst!r} needs the node's output_type")


def run_graph(graph: nir.NIRGraph, x, dt=None, arithmetic="float", reset="zero") -> dict:
    """Simulate `graph` on input x of shape (T, B, ...) from zero state.

    Nested graphs are flattened first (node names "outer.inner"), and our portable readout gets
    its integrator back (export.readout.integrator_readout: node "integrator"). An edge in
    recurrent_edges(graph) delivers its source's output of step t-1 (zeros at t = 0); the others
    that of step t. dt: resolve_dt(graph) when None. x is a tensor for a graph with one Input
    node, or a dict {input name: tensor}. Returns {node name: (T, B, ...) float32 outputs of that
    node at every step}. arithmetic: "float" (NIR's equations, Euler steps in float32) or "loihi"
    (spiking neurons as Loihi's integer neuron on the neuron's metadata weight_step, else the
    graph's, LoihiStep). reset: one of RESETS; the subtractions (float only) are what Loihi
    lacks, train.from_nir's teachers.
    """
    if reset not in RESETS or (reset != "zero" and arithmetic != "float"):
        raise ValueError(f"reset must be 'zero', or {', '.join(RESETS[1:])} with float "
                         f"arithmetic, not {reset!r}")
    step = None
    if arithmetic == "loihi":
        step = (graph.metadata or {}).get("weight_step")
        if step is None:
            raise NIRError("arithmetic='loihi' needs the graph's metadata weight_step")
    elif arithmetic != "float":
        raise ValueError(f"arithmetic must be 'float' or 'loihi', not {arithmetic!r}")
    from .readout import integrator_readout  # (export.readout builds on this module)
    graph = integrator_readout(flatten_graph(graph))
    dt = graph_dt(graph) if dt is None else float(dt)
    inputs = x if isinstance(x, dict) else {name: x for name in graph.inputs}
    if set(inputs) != set(graph.inputs):
        raise NIRError(f"graph inputs are {sorted(graph.inputs)}, got {sorted(inputs)}")
    rec = check_recurrence(graph)
    order = topological_order(graph, skip=rec)
    sources = {name: [(src, (src, name) in rec) for src in predecessors(graph, name)]
               for name in order}
    sims = {name: node_simulator(name, graph.nodes[name], dt, step if step is None else
                                 (graph.nodes[name].metadata or {}).get("weight_step", step))
            for name in order}
    for sim in sims.values():
        if isinstance(sim, _Membrane):
            sim.reset_mode = reset
    steps, batch = next(iter(inputs.values())).shape[:2]
    for sim in sims.values():
        sim.reset(batch)
    record = {name: [] for name in order}
    before = {src: _zeros(graph, src, dst, batch) for src, dst in sorted(rec)}
    with torch.no_grad():
        for t in range(steps):
            now = {}
            for name in order:
                if name in inputs:
                    u = inputs[name][t].to(torch.float32)
                else:
                    u = sum_inputs([before[src] if late else now[src]
                                    for src, late in sources[name]], name)
                now[name] = sims[name].step(u)
                record[name].append(now[name])
            before = {src: now[src] for src in before}
    return {name: torch.stack(outs) for name, outs in record.items()}
