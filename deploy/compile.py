"""Compile a NIR graph to a Loihi network (`hwmodels.loihi.Net`, docs/loihi_net.md).

    python -m deploy.compile runs/default/student.nir runs/default/student.net [--dt DT]

Steps, each a function below:
1. read: inline subgraphs, find recurrent edges, resolve dt (`export.interpreter.resolve_dt`).
2. groups: every neuron node (CubaLIF, LIF, IF, I, LI, CubaLI) becomes a group of Loihi CUBA neurons
       CubaLIF  iDecay = round(4096 dt/tau_syn), vDecay = round(4096 dt/tau_mem)
       LIF, LI  iDecay = 4096 (u = a_in every step), vDecay = round(4096 dt/tau)
       IF       iDecay = 4096, vDecay = 0;     I: iDecay 0, vDecay 4096 (integrator)
   Non-spiking nodes (I, LI, CubaLI) never spike (vThMant = 1 << 17) and may only be the readout.
3. connections: each path of stateless nodes from a source (Input or a neuron) into a neuron is one
   connection: at most one Conv2d / Affine / Linear, with SumPool2d / AvgPool2d before it fused
   into its weights, Flatten anywhere, and no synapse at all for an identity or pooling path.
   A node with several incoming paths sums them (fan-in); a path through a recurrent edge is a
   recurrent connection, allowed only from a group onto itself.
4. integers: the NIR input gain g (Euler step of docs/nir.md: CubaLIF (dt w_in/tau_syn)(dt r/tau_mem),
   LIF / LI dt r/tau, IF / I dt r) folds into the weights; one step s per group turns every incoming
   weight, the bias and the threshold into integers: k = W g / s (8 bit), bias_mant = b g / s
   (13 bit, b = synaptic bias + v_leak term), vThMant = theta / s (17 bit). s is the graph's
   `weight_step` metadata times g when present (exact), else the step that minimises the squared
   weight error of all incoming weights (quantisation is reported per group).
5. alignment: NIR has no synaptic delay, Lava delays every connection by one step. Relay groups
   (iDecay 4096, vDecay 4096, vThMant 0, identity weights) lengthen every shorter path into a group
   to its longest one, so all inputs of a group arrive in step (cost reported in the fit report).
6. readout: a spiking output group is read as spike counts ('spikes'), a non-spiking one as its
   final state ('state').
What Loihi cannot do is refused with a CompileError naming the node: reset by subtraction, non-zero
v_reset, per-neuron time constants or thresholds that differ within a group, a synaptic bias into a
neuron whose current decays (Loihi adds its bias to v), Delay and other nodes without a mapping.
"""
import argparse
import sys

import nir
import numpy as np

from common.files import atomic_write
from common.loihi import BIAS_MAX, DECAY_UNITY, STATE_MAX, VTH_MAX, WEIGHT_MAX, WEIGHT_MIN
from export.from_nir import NIRError, read_graph
from export.interpreter import DtError, flatten_graph, recurrent_edges, resolve_dt
from hwmodels.loihi import (INTEGRATOR, NEVER_SPIKES, Net, NetxError, Neurons, Synapses,
                            conv_out_size, lava_dense_weights, save_net)

GRID_RTOL = 1e-4                     # how far W/s may sit from an integer and still be on the grid
SYNAPSES = (nir.Conv2d, nir.Affine, nir.Linear)
SHAPERS = (nir.Flatten, nir.SumPool2d, nir.AvgPool2d)
SPIKING = (nir.CubaLIF, nir.LIF, nir.IF)
NEURONS = SPIKING + (nir.I, nir.LI, nir.CubaLI)
RELAY = {"iDecay": DECAY_UNITY, "vDecay": DECAY_UNITY, "vThMant": 0}


class CompileError(ValueError):
    """A graph (or node) that Loihi cannot run; the message names the node."""


def _array(x):
    return np.asarray(x, dtype=np.float64)


def _uniform(value, name, field_name):
    """Per-neuron parameter -> one value (a Lava LIF process has one du, dv, vth)."""
    a = _array(value).reshape(-1)
    if a.size == 0:
        raise CompileError(f"node {name!r}: empty {field_name}")
    if not np.allclose(a, a[0], rtol=1e-6, atol=0):
        raise CompileError(f"node {name!r}: {field_name} differs across neurons "
                           f"({a.min():g}..{a.max():g}); Loihi has one value per group")
    return float(a[0])


def _pair(x, name, field_name):
    if isinstance(x, str):
        raise CompileError(f"node {name!r}: string {field_name} {x!r} is not supported")
    a = np.broadcast_to(np.asarray(x, dtype=np.int64).reshape(-1), (2,))
    return int(a[0]), int(a[1])


def _shape(node, key="output"):
    types = node.output_type if key == "output" else node.input_type
    return tuple(int(s) for s in np.asarray(types[key]).reshape(-1))


# ---- 1. read -----------------------------------------------------------------------------------

def load_graph(graph):
    """A nir.NIRGraph, or a path read with export.from_nir.read_graph (CompileError otherwise)."""
    if isinstance(graph, nir.NIRGraph):
        return graph
    try:
        return read_graph(graph)
    except NIRError as e:
        raise CompileError(str(e)) from None


def input_shape(graph):
    inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(inputs) != 1:
        raise CompileError(f"graph: expected exactly one Input node, found {len(inputs)}"
                           f"{_named(inputs)}")
    shape = _shape(graph.nodes[inputs[0]], "input")
    if len(shape) == 2 and shape[0] == 1:  # snnTorch-style (1, N)
        shape = shape[1:]
    if len(shape) not in (1, 3):
        raise CompileError(f"node {inputs[0]!r}: input shape {shape} (expected (N,) or (C, H, W))")
    return inputs[0], shape


TIME_CONSTANTS = ("tau", "tau_syn", "tau_mem")
MAY_BE_INF = TIME_CONSTANTS + ("r", "w_in")  # snnTorch's no-leak neuron: tau = r = inf


def check_values(graph):
    """Every number of every node is finite (time constants, r and w_in may be +inf: snnTorch's
    no-leak neuron) and every time constant is > 0; CompileError naming node and field."""
    for name, node in graph.nodes.items():
        for field_name, value in vars(node).items():
            if field_name in ("input_type", "output_type", "metadata") or value is None:
                continue
            try:
                a = np.asarray(value)
            except (TypeError, ValueError):
                continue
            if a.dtype.kind not in "biuf":  # strings ('same' padding), objects: not numbers
                continue
            a = a.astype(np.float64)
            if np.isnan(a).any():
                raise CompileError(f"node {name!r}: {field_name} contains NaN")
            if np.isinf(a).any() and not (field_name in MAY_BE_INF and (a > 0).all()):
                raise CompileError(f"node {name!r}: {field_name} contains an infinite value")
            if field_name in TIME_CONSTANTS and (a <= 0).any():
                raise CompileError(f"node {name!r}: {field_name} = {a.min():g} is not a positive "
                                   f"time constant")


def _named(names):
    return f" ({', '.join(map(repr, names))})" if names else ""


def check_supported(graph):
    """Refuse, by name, what Loihi cannot do (module docstring)."""
    if (graph.metadata or {}).get("reset", "zero") != "zero":
        raise CompileError(f"graph: reset {graph.metadata['reset']!r} (Loihi resets to zero)")
    for name, node in graph.nodes.items():
        kind = type(node).__name__
        if not isinstance(node, NEURONS + SYNAPSES + SHAPERS + (nir.Scale, nir.Input, nir.Output)):
            raise CompileError(f"node {name!r}: type {kind} has no Loihi mapping")
        meta = getattr(node, "metadata", None) or {}
        if meta.get("reset", "zero") != "zero":
            raise CompileError(f"node {name!r}: reset {meta['reset']!r} (Loihi resets to zero)")
        if isinstance(node, SPIKING) and np.any(_array(node.v_reset) != 0):
            raise CompileError(f"node {name!r}: non-zero v_reset (Loihi resets to zero)")


# ---- 2. groups ---------------------------------------------------------------------------------

def _decay(dt, tau, name, field_name):
    """Loihi decay = round(4096 dt / tau) (fraction lost per step), tau = inf -> 0."""
    frac = 0.0 if np.isinf(tau) else dt / tau
    if tau <= 0 or not 0.0 <= frac <= 1.0:
        raise CompileError(f"node {name!r}: {field_name}={tau:g} with dt={dt:g} gives decay "
                           f"{frac:g} outside [0, 1]")
    return int(round(DECAY_UNITY * frac))


def _gain(dt, scale, tau, name):
    """Euler input gain dt * scale / tau; snnTorch's tau = inf goes with scale = tau/dt: gain 1."""
    if np.isinf(tau):
        if np.isinf(scale):
            return 1.0
        raise CompileError(f"node {name!r}: infinite time constant with finite r / w_in")
    return dt * scale / tau


def neuron_params(name, node, dt):
    """(iDecay, vDecay, input gain g, threshold theta or None, v_leak bias per step or 0)."""
    u = lambda field_name: _uniform(getattr(node, field_name), name, field_name)  # noqa: E731
    leak = 0.0
    if isinstance(node, (nir.CubaLIF, nir.CubaLI)):
        tau_syn, tau_mem = u("tau_syn"), u("tau_mem")
        i_decay, v_decay = _decay(dt, tau_syn, name, "tau_syn"), _decay(dt, tau_mem, name, "tau_mem")
        gain = _gain(dt, u("w_in"), tau_syn, name) * _gain(dt, u("r"), tau_mem, name)
        leak = 0.0 if np.isinf(tau_mem) else dt / tau_mem
    elif isinstance(node, (nir.LIF, nir.LI)):
        tau = u("tau")
        i_decay, v_decay, gain = DECAY_UNITY, _decay(dt, tau, name, "tau"), _gain(dt, u("r"), tau, name)
        leak = 0.0 if np.isinf(tau) else dt / tau
    elif isinstance(node, nir.IF):
        i_decay, v_decay, gain = DECAY_UNITY, 0, dt * u("r")
    else:  # I
        i_decay, v_decay, gain = INTEGRATOR["iDecay"], INTEGRATOR["vDecay"], dt * u("r")
    if gain <= 0:
        raise CompileError(f"node {name!r}: input gain {gain:g} <= 0 (check r, w_in, dt)")
    theta = u("v_threshold") if isinstance(node, SPIKING) else None
    v_leak = leak * _array(node.v_leak) if hasattr(node, "v_leak") else 0.0
    return i_decay, v_decay, gain, theta, v_leak


# ---- 3. connections ----------------------------------------------------------------------------

def paths_into(graph, name, preds, recurrent, sources):
    """Every path (source, [stateless nodes in order], recurrent?) ending in node `name`."""
    found = []

    def walk(node_name, ops, rec):
        for src in preds.get(node_name, []):
            edge_rec = rec or (src, node_name) in recurrent
            if src in sources:
                found.append((src, ops, edge_rec))
            elif src in ops:
                raise CompileError(f"node {src!r}: a cycle without a neuron in it")
            else:
                walk(src, [src, *ops], edge_rec)

    walk(name, [], False)
    return found


def path_weights(graph, dst, source_shape, ops):
    """Fold one path into (kind, float weight, conv params, float bias per output or None).

    Pools before the synapse repeat its kernel taps over the pool window (conv) or its columns
    (dense); a path without a synapse is an identity (dense eye, or depthwise conv of ones for
    pooling). Returns the output shape as well.
    """
    shape, pool, synapse, scale, after = tuple(source_shape), None, None, 1.0, False
    for op in ops:
        node = graph.nodes[op]
        if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
            if synapse is not None:
                raise CompileError(f"node {op!r}: pooling after a synapse has no Loihi mapping")
            k, s, p = (_pair(getattr(node, f), op, f) for f in ("kernel_size", "stride", "padding"))
            if k != s or p != (0, 0) or len(shape) != 3 or shape[1] % k[0] or shape[2] % k[1]:
                raise CompileError(f"node {op!r}: pooling needs stride == kernel_size, no padding "
                                   f"and an input divisible by it (kernel {k}, stride {s}, pad {p}, "
                                   f"input {shape})")
            if pool is not None:
                raise CompileError(f"node {op!r}: two pooling nodes in a row")
            pool = (k, shape)
            if isinstance(node, nir.AvgPool2d):
                scale /= k[0] * k[1]
            shape = (shape[0], shape[1] // k[0], shape[2] // k[1])
        elif isinstance(node, nir.Flatten):
            shape = (int(np.prod(shape)),)
        elif isinstance(node, nir.Scale):
            scale *= _uniform(node.scale, op, "scale")
            after = after or synapse is not None
        elif isinstance(node, SYNAPSES):
            if synapse is not None:
                raise CompileError(f"node {op!r}: two synapses ({synapse} and {op}) with no neuron "
                                   f"between them")
            synapse, shape = op, _synapse_shape(graph, op, shape)
        else:
            raise CompileError(f"node {op!r}: type {type(node).__name__} inside a synaptic path")
    if synapse is None:
        return _identity(source_shape, shape, pool, scale) + (None, shape)
    kind, w, conv = _synapse_weight(graph, synapse, source_shape, pool)
    bias = getattr(graph.nodes[synapse], "bias", None)
    bias = None if bias is None or not np.any(_array(bias)) else \
        _array(bias) * (scale if after else 1.0)
    return kind, w * scale, conv, bias, shape


def _synapse_shape(graph, name, shape):
    node = graph.nodes[name]
    if isinstance(node, nir.Conv2d):
        if len(shape) != 3:
            raise CompileError(f"node {name!r}: Conv2d needs a (C, H, W) input, got {shape}")
        stride, padding, dilation = _conv_params(name, node, node.weight.shape[2:])
        return (int(node.weight.shape[0]), *(conv_out_size(shape[1 + a], node.weight.shape[2 + a],
                                                           stride[a], padding[a], dilation[a])
                                             for a in (0, 1)))
    return (int(np.shape(node.weight)[0]),)


def _conv_params(name, node, kernel):
    stride, dilation = _pair(node.stride, name, "stride"), _pair(node.dilation, name, "dilation")
    if isinstance(node.padding, str):
        if node.padding == "valid":
            return stride, (0, 0), dilation
        if node.padding != "same" or stride != (1, 1) or any(k % 2 == 0 for k in kernel):
            raise CompileError(f"node {name!r}: padding {node.padding!r} needs 'same' with stride "
                               f"1 and odd kernels")
        return stride, tuple(dilation[a] * (int(kernel[a]) // 2) for a in (0, 1)), dilation
    return stride, _pair(node.padding, name, "padding"), dilation


def _synapse_weight(graph, name, source_shape, pool):
    node = graph.nodes[name]
    w = _array(node.weight)
    if isinstance(node, nir.Conv2d):
        stride, padding, dilation = _conv_params(name, node, w.shape[2:])
        groups = int(node.groups)
        if pool is not None:  # pool(k) then conv == conv with each tap repeated over the window
            (ph, pw), _ = pool
            if dilation != (1, 1):
                raise CompileError(f"node {name!r}: pooling before a dilated Conv2d")
            w = np.repeat(np.repeat(w, ph, axis=2), pw, axis=3)
            stride, padding = (stride[0] * ph, stride[1] * pw), (padding[0] * ph, padding[1] * pw)
        if len(source_shape) != 3 or w.shape[1] * groups != source_shape[0]:
            raise CompileError(f"node {name!r}: weight {w.shape} with groups={groups} does not "
                               f"take input {tuple(source_shape)}")
        return "conv", w, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if w.ndim != 2:
        raise CompileError(f"node {name!r}: weight of shape {w.shape} is not 2-D")
    if pool is not None:  # pool then flatten then dense == dense over the unpooled input
        (ph, pw), (c, h, wd) = pool
        w = np.repeat(np.repeat(w.reshape(w.shape[0], c, h // ph, wd // pw), ph, axis=2), pw,
                      axis=3).reshape(w.shape[0], -1)
    if w.shape[1] != int(np.prod(source_shape)):
        raise CompileError(f"node {name!r}: weight expects {w.shape[1]} inputs, gets "
                           f"{int(np.prod(source_shape))} (shape {tuple(source_shape)})")
    return "dense", w, {}


def _identity(in_shape, out_shape, pool, scale):
    """A path without a synapse: a sum-pool conv, a depthwise 1x1 conv or a dense identity."""
    if pool is not None:
        if len(out_shape) != 3:
            raise CompileError("pooling followed by Flatten into a neuron: no Loihi connection")
        (ph, pw), (c, _, _) = pool
        w = np.ones((c, 1, ph, pw)) * scale
        return "conv", w, dict(stride=(ph, pw), padding=(0, 0), dilation=(1, 1), groups=c)
    if len(out_shape) == 3:
        return "conv", np.ones((out_shape[0], 1, 1, 1)) * scale, dict(groups=out_shape[0])
    return "dense", np.eye(int(np.prod(in_shape))) * scale, {}


# ---- 4. integers -------------------------------------------------------------------------------

def choose_step(weights, extras, name):
    """The step s minimising the squared rounding error of all incoming weights (clipped to
    8 bits) plus that of the threshold and bias (`extras`). Candidates: max |W| / 127, a few
    quantiles of |W| / 127 (rare outliers may then clip) and the finest power of two that keeps
    max |W| / s within 127 (exact for weights on a binary grid, as many exporters write)."""
    flat = np.concatenate([np.abs(w).reshape(-1) for w in weights])
    peak = float(flat.max(initial=0))
    candidates = [float(np.percentile(flat, q)) / WEIGHT_MAX for q in (100, 99.99, 99.9, 99.5)]
    candidates.append(2.0 ** np.ceil(np.log2(peak / WEIGHT_MAX)) if peak else 0.0)
    best = None
    for s in candidates:
        if s <= 0:
            continue
        err = sum(float(((w - s * np.clip(np.rint(w / s), WEIGHT_MIN, WEIGHT_MAX)) ** 2).sum())
                  for w in weights)
        err += sum(float(((e - s * np.rint(e / s)) ** 2).sum()) for e in extras)
        if best is None or err < best[0] * (1 - 1e-9):
            best = (err, s)
    return best[1]


def to_int(values, step, name, what, lo, hi, exact):
    """values / step as int64 within [lo, hi]; `exact` requires values on the step grid."""
    q = _array(values) / step
    k = np.rint(q)
    off = float(np.abs(q - k).max()) if q.size else 0.0
    if exact and off > GRID_RTOL * max(1.0, float(np.abs(q).max(initial=0))):
        raise CompileError(f"node {name!r}: {what} not on the weight_step grid {step:g} "
                           f"(off by {off:.3g} steps)")
    if exact and k.size and (k.max() > hi or k.min() < lo):
        raise CompileError(f"node {name!r}: integer {what} {int(k.min())}..{int(k.max())} do "
                           f"not fit [{lo}, {hi}]")
    return np.clip(k, lo, hi).astype(np.int64), off


def _metadata_step(graph, paths_info):
    """weight_step metadata shared by every synapse into a group (our exporter), else None."""
    steps = [(graph.nodes[op].metadata or {}).get("weight_step")
             for info in paths_info for op in info["ops"] if isinstance(graph.nodes[op], SYNAPSES)]
    if steps and None not in steps and len(set(steps)) == 1:
        return float(steps[0])
    return None


def rel_error(w, k, s):
    norm = float(np.sqrt((w ** 2).sum()))
    return 0.0 if norm == 0 else float(np.sqrt(((w - s * k) ** 2).sum())) / norm


# ---- 5. alignment ------------------------------------------------------------------------------

def relay(source, shape, j):
    """Relay group j behind `source`: spikes exactly when its input spiked, one Lava step later."""
    name = f"{source}.relay{j}"
    kind, w, conv = _identity(shape, shape, None, 1.0)
    group = Neurons(name=name, shape=tuple(shape), i_decay=RELAY["iDecay"],
                    v_decay=RELAY["vDecay"], vth=RELAY["vThMant"], role="relay")
    prev = source if j == 1 else f"{source}.relay{j - 1}"
    return group, Synapses(name=f"{name}.in", src=prev, dst=name, kind=kind,
                           weight=w.astype(np.int64), **conv)


def align(groups, synapses, in_shape):
    """Insert relay groups so every feed-forward connection spans exactly one depth level.

    Returns (groups in depth order, connections, relay groups). A source's relays are shared by
    every connection that needs them."""
    depth = {"input": 0}
    for g in groups:
        depth[g.name] = 1 + max(depth[s.src] for s in synapses if s.dst == g.name and not s.recurrent)
    shapes = {"input": in_shape, **{g.name: g.shape for g in groups}}
    made = {}
    for s in synapses:
        gap = 0 if s.recurrent else depth[s.dst] - depth[s.src] - 1
        for j in range(1, gap + 1):
            if f"{s.src}.relay{j}" not in made:
                made[f"{s.src}.relay{j}"] = relay(s.src, shapes[s.src], j) + (depth[s.src] + j,)
        if gap > 0:
            s.src = f"{s.src}.relay{gap}"
    relays = [group for group, _, _ in made.values()]
    depth.update({name: d for name, (_, _, d) in made.items()})
    ordered = sorted(groups + relays, key=lambda g: depth[g.name])
    return ordered, [syn for _, syn, _ in made.values()] + synapses, relays


# ---- compile -----------------------------------------------------------------------------------

def build_net(graph, dt=None, timesteps=8):
    """NIR graph -> (Net, fit report); the module docstring lists the steps."""
    graph = flatten_graph(graph)
    check_values(graph)
    check_supported(graph)
    try:
        dt, dt_source = resolve_dt(graph, dt)
    except DtError as e:
        raise CompileError(str(e)) from None
    input_name, in_shape = input_shape(graph)
    recurrent = recurrent_edges(graph)
    preds = {}
    for src, dst in graph.edges:
        preds.setdefault(dst, []).append(src)
    neurons = [n for n, node in graph.nodes.items() if isinstance(node, NEURONS)]
    sources = set(neurons) | {input_name}
    groups, synapses, report = [], [], []
    for name in neurons:
        group, syns, row = compile_group(graph, name, dt, preds, recurrent, sources,
                                         input_name, in_shape, timesteps)
        groups.append(group)
        synapses += syns
        report.append(row)
    groups = _topological(groups, synapses)
    output, readout = output_group(graph, groups)
    groups, synapses, relays = align(groups, _unique_names(synapses), in_shape)
    net = Net(in_shape=in_shape, neurons=groups, synapses=synapses, readout=readout,
              output=output, attrs={"dt": float(dt), "dt_source": dt_source})
    try:
        net.check()
    except NetxError as e:
        raise CompileError(str(e)) from None
    fit = {"groups": report, "dt": float(dt), "dt_source": dt_source, "readout": readout,
           "alignment": alignment_cost(net, relays)}
    return net, fit


def compile_group(graph, name, dt, preds, recurrent, sources, input_name, in_shape, timesteps):
    """One neuron node -> (Neurons, incoming Synapses, fit row)."""
    node = graph.nodes[name]
    shape = _shape(node)
    i_decay, v_decay, gain, theta, v_leak = neuron_params(name, node, dt)
    infos, syn_bias = incoming_paths(graph, name, shape, gain, preds, recurrent, sources,
                                     input_name, in_shape)
    if np.any(syn_bias) and i_decay != DECAY_UNITY:
        raise CompileError(f"node {name!r}: a synaptic bias into a neuron whose current decays "
                           f"(iDecay {i_decay}); Loihi adds its bias to v, not to the current")
    bias = syn_bias * gain + np.broadcast_to(v_leak, shape)  # per step, in units of v
    if not any(np.any(i["w"]) for i in infos):
        raise CompileError(f"node {name!r}: all incoming weights are zero")
    meta_step = _metadata_step(graph, infos)
    exact = meta_step is not None
    extras = [np.asarray(bias)] + ([] if theta is None else [np.asarray(theta)])
    step = meta_step * gain if exact else choose_step([i["w"] for i in infos], extras, name)
    syns, errors = integer_synapses(infos, step, name, exact)
    bias_int = integer_bias(bias, step, name, exact)
    vth, note = (NEVER_SPIKES, []) if theta is None else integer_threshold(theta, step, name)
    group = Neurons(name=name, shape=shape, i_decay=i_decay, v_decay=v_decay, vth=vth,
                    bias=bias_int, role="neuron" if theta is not None else "readout", nodes=[name])
    row = fit_row(group, syns, step, errors, exact, note, timesteps)
    return group, syns, row


def incoming_paths(graph, name, shape, gain, preds, recurrent, sources, input_name, in_shape):
    """The float weights of every path into neuron `name` (scaled by its input gain) as dicts
    (src, ops, rec, kind, w, conv), and the summed synaptic bias of those paths (shape `shape`)."""
    found = paths_into(graph, name, preds, recurrent, sources)
    if not found:
        raise CompileError(f"node {name!r}: a neuron with no input")
    infos, syn_bias = [], np.zeros(shape)
    for src, ops, rec in found:
        if rec and src != name:
            raise CompileError(f"node {name!r}: recurrence from {src!r}; only a group onto "
                               f"itself is supported")
        src_shape = in_shape if src == input_name else _shape(graph.nodes[src])
        kind, w, conv, b, out = path_weights(graph, name, src_shape, ops)
        if int(np.prod(out)) != int(np.prod(shape)):
            raise CompileError(f"node {name!r}: input of shape {out} from {src!r} does not fit "
                               f"its shape {shape}")
        if b is not None:
            syn_bias = syn_bias + np.broadcast_to(b.reshape(-1, *([1] * (len(shape) - 1))), shape)
        infos.append(dict(src="input" if src == input_name else src, ops=ops, rec=rec, kind=kind,
                          w=w * gain, conv=conv))
    return infos, syn_bias


def integer_synapses(infos, step, name, exact):
    """int8 Synapses of the paths on the group's step, and each one's relative weight error."""
    syns, errors = [], []
    for j, info in enumerate(infos):
        k, _ = to_int(info["w"], step, name, "weights", WEIGHT_MIN, WEIGHT_MAX, exact)
        errors.append(rel_error(info["w"], k, step))
        label = info["ops"][-1] if info["ops"] else f"{info['src']}->{name}"
        syns.append(Synapses(name=label if label not in [s.name for s in syns] else f"{label}.{j}",
                             src=info["src"], dst=name, kind=info["kind"], weight=k,
                             recurrent=info["rec"], nodes=list(info["ops"]), **info["conv"]))
    return syns, errors


def integer_bias(bias, step, name, exact):
    """The 13-bit Loihi bias (in weight steps) of a per-step bias in units of v; None for 0."""
    if not np.any(bias):
        return None
    bias_int, _ = to_int(bias, step, name, "bias", -BIAS_MAX - 1, BIAS_MAX, exact)
    if not exact and np.abs(np.rint(bias / step)).max() > BIAS_MAX:
        raise CompileError(f"node {name!r}: bias {np.abs(bias).max():g} = "
                           f"{np.abs(bias / step).max():.0f} steps does not fit 13 bits")
    return bias_int


def integer_threshold(theta, step, name):
    """(vThMant = theta / step rounded, notes); CompileError when it does not fit 17 bits."""
    q = theta / step
    vth = int(round(q)) if np.isfinite(q) else -1
    note = [f"threshold {theta:g} rounded to {vth} steps"] \
        if abs(q - vth) > GRID_RTOL * max(1.0, abs(q)) else []
    if not 0 <= vth <= VTH_MAX:
        raise CompileError(f"node {name!r}: threshold {theta:g} = {q:.4g} weight steps does not "
                           f"fit 17 bits [0, {VTH_MAX}] (step {step:g}; is dt right?)")
    return vth, note


def _unique_names(synapses):
    """Connection names: the last NIR node of the path, made unique with its destination."""
    taken = {}
    for s in synapses:
        taken[s.name] = taken.get(s.name, 0) + 1
    for s in synapses:
        if taken[s.name] > 1:
            s.name = f"{s.name}->{s.dst}"
    return synapses


def _topological(groups, synapses):
    """Groups ordered so that feed-forward connections go forward (Kahn, stable)."""
    names = [g.name for g in groups]
    deps = {n: {s.src for s in synapses if s.dst == n and not s.recurrent and s.src != "input"}
            for n in names}
    done, order = set(), []
    while len(order) < len(names):
        ready = [n for n in names if n not in done and deps[n] <= done]
        if not ready:
            stuck = sorted(set(names) - done)
            raise CompileError(f"node {stuck[0]!r}: recurrence through several groups is not "
                               f"supported (only a group onto itself)")
        done.add(ready[0])
        order.append(ready[0])
    by_name = {g.name: g for g in groups}
    return [by_name[n] for n in order]


def output_group(graph, groups):
    """(output group name, 'spikes' | 'state') from the graph's single Output node."""
    outputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
    if len(outputs) != 1:
        raise CompileError(f"graph: expected exactly one Output node, found {len(outputs)}"
                           f"{_named(outputs)}")
    srcs = [a for a, b in graph.edges if b == outputs[0]]
    names = {g.name for g in groups}
    if len(srcs) != 1 or srcs[0] not in names:
        what = srcs[0] if srcs else "nothing"
        raise CompileError(f"node {outputs[0]!r}: fed by {what!r}, not by one neuron node (add an "
                           f"I integrator or a spiking layer as the readout)")
    for g in groups:
        if not g.spiking and g.name != srcs[0]:
            raise CompileError(f"node {g.name!r}: a non-spiking neuron (I, LI, CubaLI) is only "
                               f"supported as the readout")
    return srcs[0], "spikes" if isinstance(graph.nodes[srcs[0]], SPIKING) else "state"


# ---- fit report --------------------------------------------------------------------------------

def fit_row(group, syns, step, errors, exact, notes, timesteps):
    """Integer ranges, quantisation error, Lava weight exactness and 24-bit headroom of a group.

    Worst case per step |a_in| <= A = sum over connections of max_neuron sum |w| (binary inputs)
    + |bias|. u then stays within 64 A min(T, 4096/iDecay) (geometric series) and v within
    U min(T, 4096/vDecay). A bound >= 2^23 means the state *may* wrap/clip (a bound, not a
    measurement).
    """
    fan = sum(np.abs(s.weight).reshape(s.weight.shape[0], -1).sum(1).max() for s in syns)
    bias = 0 if group.bias is None else int(np.abs(group.bias).max())
    a_max = int(fan) + bias
    span = lambda decay: timesteps if decay == 0 else min(timesteps, DECAY_UNITY / decay)  # noqa
    u_bound = 64 * a_max * span(group.i_decay)
    v_bound = u_bound * span(group.v_decay)
    row = {"group": group.name, "role": group.role, "shape": list(group.shape),
           "connections": [s.name for s in syns], "step": float(step), "exact": bool(exact),
           "weight_min": int(min(s.weight.min() for s in syns)),
           "weight_max": int(max(s.weight.max() for s in syns)),
           "weight_rel_error": float(max(errors)), "bias_max_abs": bias,
           "iDecay": group.i_decay, "vDecay": group.v_decay, "vThMant": group.vth,
           "max_abs_input": a_max, "u_bound": float(u_bound), "v_bound": float(v_bound),
           "may_overflow_24bit": bool(max(u_bound, v_bound) >= STATE_MAX),
           "notes": list(notes)}
    lava_exact = True
    for s in syns:
        if s.kind == "dense" and np.any(s.weight):
            try:
                w, e = lava_dense_weights(s.weight)
            except NetxError as err:
                raise CompileError(f"node {group.name!r}: connection {s.name!r}: {err}") from None
            lava_exact &= bool(np.array_equal(w * 2.0 ** e, s.weight))  # Lava: sum(w) * 2^e
    row["lava_weights_exact"] = lava_exact
    if not lava_exact:
        row["notes"].append("netx/Lava weight scaling changes some weights (emulated)")
    if not exact and row["weight_rel_error"] > 0:
        row["notes"].append(f"weights quantised to step {step:.4g}: relative error "
                            f"{row['weight_rel_error']:.2%}")
    return row


def alignment_cost(net, relays):
    depth = net.depths()
    return {"relay_groups": len(relays), "relay_neurons": int(sum(g.size for g in relays)),
            "relay_synapses": int(sum(s.weight.size for s in net.synapses
                                      if s.dst in {g.name for g in relays})),
            "latency_steps": int(max(depth.values())), "extra_steps": 0}


# ---- file --------------------------------------------------------------------------------------

def write(path, net, timesteps):
    """student.net: the `net/` group, plus netx's `layer/` chain when netx can express the net."""
    import h5py
    net.attrs.update(producer="snn-kd-loihi deploy.compile", timesteps=int(timesteps))

    def fill(tmp):
        with h5py.File(tmp, "w") as f:
            save_net(f, net)
            if net.chain():
                from .netx import write_layers
                write_layers(f, net)

    atomic_write(path, fill)


def compile_graph(graph, out_path, dt=None, timesteps=None):
    """Compile a NIR graph (or file) to `out_path`; returns (Net, fit report)."""
    graph = load_graph(graph)
    steps = int(timesteps or (graph.metadata or {}).get("timesteps") or 8)
    net, fit = build_net(graph, dt, steps)
    write(out_path, net, steps)
    return net, fit


def main(argv=None):
    from pathlib import Path

    from common.cli import UsageError, check_writable_dir, positive_float, run_guarded
    p = argparse.ArgumentParser(prog="python -m deploy.compile", description=__doc__.split("\n")[0])
    p.add_argument("nir", help="NIR file (nir.write)")
    p.add_argument("out", help="network file to write (e.g. student.net)")
    p.add_argument("--dt", type=positive_float, default=None,
                   help="time step (default: the graph's metadata or convention)")
    args = p.parse_args(argv)

    def work():
        out = Path(args.out)
        if out.is_dir():
            raise UsageError(f"out {out}: is a folder, not a file")
        if out.exists() and out.resolve() == Path(args.nir).resolve():
            raise UsageError(f"out {out}: is the input NIR file; it would be overwritten")
        check_writable_dir(out.parent, "out", shown=out)
        net, fit = compile_graph(args.nir, out, dt=args.dt)
        for row in fit["groups"]:
            warn = "  MAY OVERFLOW 24 bit" if row["may_overflow_24bit"] else ""
            print(f"{row['group']:12s} w {row['weight_min']}..{row['weight_max']} iDecay "
                  f"{row['iDecay']} vDecay {row['vDecay']} vTh {row['vThMant']}{warn}")
        a = fit["alignment"]
        print(f"dt {fit['dt']:g} ({fit['dt_source']}), readout {fit['readout']}, relays "
              f"{a['relay_groups']} groups / {a['relay_neurons']} neurons")
        print(f"wrote {out}")

    code = run_guarded(work, CompileError, NetxError)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
