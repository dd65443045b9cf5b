"""Compile a NIR graph to a Loihi network (`hwmodels.loihi.Net`, docs/loihi_net.md).

    python -m deploy.compile runs/default/student.nir runs/default/student.net [--dt DT]
        [--weight-bits B]

Steps, each a function below or, for the float rules of paths and groups shared with the
trainable student of a graph (export.nir_student), in export/paths.py (`group_plan`):
1. read: inline subgraphs, find recurrent edges, resolve dt (`export.interpreter.resolve_dt`).
2. groups: every neuron node (CubaLIF, LIF, IF, I, LI, CubaLI) becomes a group of Loihi CUBA neurons
       CubaLIF  iDecay = round(4096 dt/tau_syn), vDecay = round(4096 dt/tau_mem)
       LIF, LI  iDecay = 4096 (u = a_in every step), vDecay = round(4096 dt/tau)
       IF       iDecay = 4096, vDecay = 0;     I: iDecay 0, vDecay 4096 (integrator)
   Non-spiking nodes (I, LI, CubaLI) never spike (vThMant = 1 << 17) and may only be the readout.
   Parameters are read per neuron: per-neuron thresholds and input gains fold into each neuron's
   incoming weights (`fold_thresholds`, `scale_rows`), per-neuron decays split the group into
   one group per value (`split_group`).
3. connections: each path of stateless nodes from a source (Input or a neuron) into a neuron is one
   connection (`path_weights`): at most one Conv2d / Affine / Linear, pooling anywhere it is linear
   (folded into one convolution, `fold_conv`, else a dense matrix, `probe_dense`), Flatten, uniform
   Scale, and no synapse at all for an identity or pooling path.
   A node with several incoming paths sums them (fan-in); a path through a recurrent edge is a
   recurrent connection, allowed only from a group onto itself.
4. integers: the NIR input gain g (Euler step of docs/nir.md: CubaLIF (dt w_in/tau_syn)(dt r/tau_mem),
   LIF / LI dt r/tau, IF / I dt r) folds into the weights; one step s per group turns every incoming
   weight, the bias and the threshold into integers: k = W g / s (8 bit), bias_mant = b g / s
   (13 bit, b = synaptic bias + v_leak term), vThMant = theta / s (17 bit). s is the graph's
   `weight_step` metadata times g when present (exact), else the step that minimises the squared
   weight error of all incoming weights (quantisation is reported per group). A threshold of 0
   steps or a path whose weights all round to 0 is a CompileError. With --weight-bits B > 8, a
   group whose weights are not int8 multiples of s gets B-bit weights on a finer step, each
   connection split into two int8 connections with weight_exp B - 8 and 0 (`split_weights`).
5. alignment: NIR has no synaptic delay, Lava delays every connection by one step. Relay groups
   (iDecay 4096, vDecay 4096, vThMant 0, identity weights) lengthen every shorter path into a group
   to its longest one, so all inputs of a group arrive in step (cost reported in the fit report).
6. readout: a spiking output group is read as spike counts ('spikes'), a non-spiking one as its
   final state ('state').
A synaptic bias into a neuron whose current decays (Loihi adds its bias to v, NIR to the current)
comes from a constant source: one group that spikes at every step (`bias_source`) with the bias
as its weights. docs/nir.md "Graphs of other tools" derives each rule.
What Loihi cannot do is refused with a CompileError naming the node: reset by subtraction, non-zero
v_reset, per-neuron decays in a recurrent group or a state readout, Delay and other nodes without
a mapping.
"""
import argparse
import sys

import nir
import numpy as np

from common.loihi import DECAY_UNITY, STATE_MAX, WEIGHT_BITS, WEIGHT_MAX, WEIGHT_MIN
from export.from_nir import NIRError, read_graph
from export.interpreter import NEURONS, SPIKING, DtError, flatten_graph, resolve_dt, role
from export.paths import (BIAS_LATE, BIAS_SOURCE, CompileError, _array, _identity,
                          _named, choose_step, conv_dense, group_plan, integer_bias,
                          integer_threshold, plan_context, rel_error, to_int)
from export.readout import integrator_readout
from hwmodels import netfile
from hwmodels.loihi import (NEVER_SPIKES, WEIGHT_EXP_MAX, Net, NetxError, Neurons, Synapses,
                            lava_dense_weights)

RELAY = {"iDecay": DECAY_UNITY, "vDecay": DECAY_UNITY, "vThMant": 0}



# ---- 1. read -----------------------------------------------------------------------------------

def load_graph(graph):
    """A nir.NIRGraph, or a path read with export.from_nir.read_graph (CompileError otherwise)."""
    if isinstance(graph, nir.NIRGraph):
        return graph
    try:
        return read_graph(graph)
    except NIRError as e:
        raise CompileError(str(e)) from None



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



def check_supported(graph):
    """Refuse, by name, what Loihi cannot do (module docstring)."""
    if (graph.metadata or {}).get("reset", "zero") != "zero":
        raise CompileError(f"graph: reset {graph.metadata['reset']!r} (Loihi resets to zero)")
    for name, node in graph.nodes.items():
        kind = type(node).__name__
        if role(node) not in ("spiking", "state", "synapse", "linear", "port"):
            raise CompileError(f"node {name!r}: type {kind} has no Loihi mapping")
        meta = getattr(node, "metadata", None) or {}
        if meta.get("reset", "zero") != "zero":
            raise CompileError(f"node {name!r}: reset {meta['reset']!r} (Loihi resets to zero)")
        if isinstance(node, SPIKING) and np.any(_array(node.v_reset) != 0):
            raise CompileError(f"node {name!r}: non-zero v_reset (Loihi resets to zero)")



# ---- 4. integers -------------------------------------------------------------------------------


def bias_source(in_shape, late=False):
    """[(group, its input connection)] of the constant sources. BIAS_SOURCE is one neuron that
    spikes at every step (iDecay = vDecay = 4096, vThMant 0, bias 1: v = u + 64 > 0 for any
    non-negative input; its input connection, weight 1 from the first input, exists because
    every group needs a feed-forward input). A synaptic bias b into a decaying current is its
    weight b / step: u gets b at every step, as NIR's tau_syn dI/dt = -I + w_in (W x + b) does.
    BIAS_LATE (with `late`) spikes from step 1 on: it integrates the source (iDecay 0, vDecay
    4096: v = u = 64 (t + 1)) against vThMant 1, for the bias of a recurrent synapse, which the
    recurrent edge delivers from step 1. Both are aligned like any group (relays)."""
    group = Neurons(name=BIAS_SOURCE, shape=(1,), i_decay=DECAY_UNITY, v_decay=DECAY_UNITY,
                    vth=0, bias=np.ones(1, dtype=np.int64), role="bias")
    w = np.zeros((1, int(np.prod(in_shape))), dtype=np.int64)
    w[0, 0] = 1
    made = [(group, Synapses(name=f"input->{BIAS_SOURCE}", src="input", dst=BIAS_SOURCE,
                             kind="dense", weight=w))]
    if late:
        group = Neurons(name=BIAS_LATE, shape=(1,), i_decay=0, v_decay=DECAY_UNITY, vth=1,
                        role="bias")
        made.append((group, Synapses(name=f"{BIAS_SOURCE}->{BIAS_LATE}", src=BIAS_SOURCE,
                                     dst=BIAS_LATE, kind="dense",
                                     weight=np.ones((1, 1), dtype=np.int64))))
    return made


# ---- 5. alignment ------------------------------------------------------------------------------

def relay(source, shape, j):
    """Relay group j behind `source`: spikes exactly when its input spiked, one Lava step later."""
    name = f"{source}.relay{j}"
    kind, w, conv = _identity(shape, shape, 1.0)
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

def build_net(graph, dt=None, timesteps=8, weight_bits=WEIGHT_BITS):
    """NIR graph -> (Net, fit report); the module docstring lists the steps. weight_bits > 8
    splits the connections of groups whose weights are not on an 8-bit grid (`split_weights`)."""
    if not (isinstance(weight_bits, (int, np.integer)) and
            WEIGHT_BITS <= weight_bits <= WEIGHT_BITS + WEIGHT_EXP_MAX):
        raise CompileError(f"weight_bits {weight_bits!r}: expected an integer {WEIGHT_BITS}.."
                           f"{WEIGHT_BITS + WEIGHT_EXP_MAX}")
    graph = integrator_readout(flatten_graph(graph))
    check_values(graph)
    check_supported(graph)
    try:
        dt, dt_source = resolve_dt(graph, dt)
    except DtError as e:
        raise CompileError(str(e)) from None
    preds, recurrent, sources, input_name, in_shape = plan_context(graph)
    neurons = [n for n, node in graph.nodes.items() if isinstance(node, NEURONS)]
    groups, synapses, report = [], [], []
    splits = {}
    for name in neurons:
        group, syns, row, split = compile_group(graph, name, dt, preds, recurrent, sources,
                                                input_name, in_shape, timesteps, weight_bits)
        groups.append(group)
        synapses += syns
        report.append(row)
        if split is not None:
            splits[name] = split
    for name, (i_decay, v_decay) in splits.items():
        groups, synapses, parts = split_group(graph, name, i_decay, v_decay, groups, synapses,
                                              in_shape)
        row = next(r for r in report if r["group"] == name)
        row.update(decay_groups=len(parts), parts=parts)
        row["notes"].append(f"per-neuron decays: split into {len(parts)} groups")
    if any(s.src in (BIAS_SOURCE, BIAS_LATE) for s in synapses):
        made = bias_source(in_shape, any(s.src == BIAS_LATE for s in synapses))
        groups[:0] = [group for group, _ in made]
        synapses[:0] = [syn for _, syn in made]
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
    if weight_bits != WEIGHT_BITS:
        fit["weight_bits"] = int(weight_bits)
    return net, fit


def compile_group(graph, name, dt, preds, recurrent, sources, input_name, in_shape, timesteps,
                  weight_bits=WEIGHT_BITS):
    """One neuron node -> (Neurons, incoming Synapses, fit row, per-neuron (iDecay, vDecay)
    arrays when they differ, else None: `split_group` then splits the group)."""
    p = group_plan(graph, name, dt, preds, recurrent, sources, input_name, in_shape)
    shape, i_decay, v_decay, theta, scale, infos, bias, step, exact = (
        p[k] for k in ("shape", "i_decay", "v_decay", "theta", "scale", "infos", "bias", "step",
                       "exact"))
    exp = 0
    if weight_bits > WEIGHT_BITS and not exact and not on_grid(infos, step):
        exp = weight_bits - WEIGHT_BITS
        step = choose_step([i["w"] for i in infos], p["extras"], name, weight_max=split_max(exp))
    syns, errors = integer_synapses(infos, step, name, exact, exp)
    try:
        bias_int = integer_bias(bias, step, name, exact)
        vth, note = (NEVER_SPIKES, []) if theta is None else integer_threshold(theta, step, name)
    except CompileError as e:
        raise CompileError(f"{e} with --weight-bits {weight_bits}" if exp else str(e)) from None
    split = None if np.all(i_decay == i_decay.flat[0]) and np.all(v_decay == v_decay.flat[0]) \
        else (i_decay, v_decay)
    group = Neurons(name=name, shape=shape, i_decay=int(i_decay.min()),
                    v_decay=int(v_decay.min()), vth=vth, bias=bias_int,
                    role="neuron" if theta is not None else "readout", nodes=[name])
    parts = split_weights(syns, exp) if exp else syns  # what Lava gets (fit_row checks it)
    row = fit_row(group, parts, step, errors, exact, note, timesteps)
    if exp:
        row.update(weight_bits=int(weight_bits), weight_min=int(min(s.weight.min() for s in syns)),
                   weight_max=int(max(s.weight.max() for s in syns)))
        row["notes"].append(f"{weight_bits}-bit weights: each connection split into an int8 part "
                            f"with weight_exp {exp} and an int8 part with weight_exp 0")
    if scale is not None:
        row["threshold_fold"] = fold_report(theta, scale, infos, syns, step, shape)
        row["notes"].append(f"per-neuron thresholds folded into the incoming weights (x"
                            f"{scale.min():.4g}..x{scale.max():.4g}); worst neuron's weight "
                            f"error {row['threshold_fold']['neuron_weight_rel_error_max']:.2%}")
    return group, parts, row, split


def split_max(exp):
    """The largest integer weight A 2^exp + F with int8 A and F that every smaller one reaches:
    2^(7 + exp) - 1, but 127 (2^exp + 1) for exp = 8."""
    return min((1 << (WEIGHT_BITS - 1 + exp)) - 1, WEIGHT_MAX * ((1 << exp) + 1))


def on_grid(infos, step):
    """Whether every incoming weight is already an int8 multiple of `step` (no split needed):
    `to_int`'s exact check."""
    try:
        for info in infos:
            to_int(info["w"], step, "", "weights", WEIGHT_MIN, WEIGHT_MAX, exact=True)
    except CompileError:
        return False
    return True


def split_weights(syns, exp):
    """Each connection of (8 + exp)-bit weights K -> a coarse int8 part A with weight_exp `exp`
    and a fine int8 part F (weight_exp 0) into the same group: K = A 2^exp + F exactly, with
    A = floor((K + 2^(exp - 1)) / 2^exp) clipped to int8, |F| <= 2^(exp - 1) (up to 127 where A
    clips). A part that is all zero is left out."""
    out = []
    for s in syns:
        a = np.clip((s.weight + (1 << (exp - 1))) >> exp, WEIGHT_MIN, WEIGHT_MAX)
        f = s.weight - (a << exp)
        assert f.min() >= WEIGHT_MIN and f.max() <= WEIGHT_MAX, s.name  # split_max's range
        for suffix, w, e in (("hi", a, exp), ("lo", f, 0)):
            if np.any(w):
                out.append(Synapses(name=f"{s.name}.{suffix}", src=s.src, dst=s.dst, kind=s.kind,
                                    weight=w, stride=s.stride, padding=s.padding,
                                    dilation=s.dilation, groups=s.groups, recurrent=s.recurrent,
                                    nodes=list(s.nodes), exp=e))
    return out


def split_group(graph, name, i_decay, v_decay, groups, synapses, in_shape):
    """Group `name` with per-neuron decays -> one 1-D group per (iDecay, vDecay) value (each its
    own Lava LIF process), "name.0", "name.1", ... in order of the values, fed by the rows of its
    incoming connections (dense, neurons in (C, H, W) order), and a relay group `name` of the
    node's shape that gathers their spikes in the same step (emulator time), so that what `name`
    fed is unchanged. Returns (groups, synapses, {part name: [neuron indices]})."""
    keys = np.stack([i_decay.reshape(-1), v_decay.reshape(-1)], 1)
    values, which = np.unique(keys, axis=0, return_inverse=True)
    index = {f"{name}.{k}": np.flatnonzero(which.reshape(-1) == k) for k in range(len(values))}
    g = next(g for g in groups if g.name == name)
    if any(s.recurrent and name in (s.src, s.dst) for s in synapses):
        raise CompileError(f"node {name!r}: per-neuron decays in a recurrent group (its parts "
                           f"would feed each other recurrently)")
    if not g.spiking:
        raise CompileError(f"node {name!r}: per-neuron decays in a non-spiking readout (Loihi "
                           f"reads one group's state); give the readout one time constant")
    parts = [Neurons(name=part, shape=(len(idx),), i_decay=int(values[k, 0]),
                     v_decay=int(values[k, 1]), vth=g.vth, role=g.role, nodes=[name],
                     bias=None if g.bias is None else g.bias.reshape(-1)[idx])
             for k, (part, idx) in enumerate(index.items())]
    merge = Neurons(name=name, shape=g.shape, i_decay=RELAY["iDecay"], v_decay=RELAY["vDecay"],
                    vth=RELAY["vThMant"], role="relay", nodes=[name])
    shapes = {"input": tuple(in_shape), **{x.name: x.shape for x in groups}}
    out = [s for s in synapses if s.dst != name]
    for s in synapses:
        if s.dst != name:
            continue
        w = s.weight if s.kind == "dense" else \
            np.rint(conv_dense(s.weight, vars(s), shapes[s.src], name)).astype(np.int64)
        for part, idx in index.items():
            if np.any(w[idx]):
                out.append(Synapses(name=f"{s.name}.{part.rsplit('.', 1)[1]}", src=s.src,
                                    dst=part, kind="dense", weight=w[idx], nodes=list(s.nodes),
                                    exp=s.exp))
    for part, idx in index.items():
        if not any(s.dst == part for s in out):
            raise CompileError(f"node {name!r}: neurons {idx.tolist()} have no input")
        pick = np.zeros((g.size, len(idx)), dtype=np.int64)
        pick[idx, np.arange(len(idx))] = 1
        out.append(Synapses(name=f"{part}->{name}", src=part, dst=name, kind="dense",
                            weight=pick, nodes=[]))
    at = groups.index(g)
    return groups[:at] + parts + [merge] + groups[at + 1:], out, \
        {part: idx.tolist() for part, idx in index.items()}



def fold_report(theta, scale, infos, syns, step, shape):
    """Quantisation cost per neuron of folded thresholds: the relative error of each neuron's
    incoming weights (dense rows; a conv's output channel for its neurons)."""
    num, den = np.zeros(shape), np.zeros(shape)
    for info, syn in zip(infos, syns):
        err, ref = (info["w"] - step * syn.weight) ** 2, info["w"] ** 2
        if info["kind"] == "dense":
            num += err.sum(1).reshape(shape)
            den += ref.sum(1).reshape(shape)
        else:
            num += err.reshape(len(err), -1).sum(1).reshape(-1, *([1] * (len(shape) - 1)))
            den += ref.reshape(len(ref), -1).sum(1).reshape(-1, *([1] * (len(shape) - 1)))
    rel = np.sqrt(num / np.where(den > 0, den, 1)).reshape(-1)
    return {"theta": float(theta), "scale_min": float(scale.min()),
            "scale_max": float(scale.max()), "neuron_weight_rel_error_max": float(rel.max()),
            "neuron_weight_rel_error_median": float(np.median(rel)),
            "worst_neuron": int(rel.argmax())}



def integer_synapses(infos, step, name, exact, exp=0):
    """int8 Synapses of the paths on the group's step (weights of 8 + exp bits, for
    `split_weights`, when exp > 0), and each one's relative weight error."""
    syns, errors = [], []
    hi = split_max(exp) if exp else WEIGHT_MAX
    for j, info in enumerate(infos):
        k, _ = to_int(info["w"], step, name, "weights", -hi - 1, hi, exact)
        if np.any(info["w"]) and not np.any(k):
            what = info["ops"][-1] if info["ops"] else info["src"]
            raise CompileError(f"node {what!r}: weights into {name!r} all round to 0 on the "
                               f"step {step:g} (max |w| {np.abs(info['w']).max():g})")
        errors.append(rel_error(info["w"], k, step))
        label = info["ops"][-1] if info["ops"] else f"{info['src']}->{name}"
        syns.append(Synapses(name=label if label not in [s.name for s in syns] else f"{label}.{j}",
                             src=info["src"], dst=name, kind=info["kind"], weight=k,
                             recurrent=info["rec"], nodes=list(info["ops"]), **info["conv"]))
    return syns, errors



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
    fan = sum(int(np.abs(s.weight).reshape(s.weight.shape[0], -1).sum(1).max()) << s.exp
              for s in syns)
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
    """student.net (hwmodels.netfile): the `net/` group, plus netx's `layer/` chain when netx
    runs the net exactly (deploy.netx.problem)."""
    from .netx import problem
    net.attrs.update(producer="snn-kd-loihi deploy.compile", timesteps=int(timesteps))
    netfile.write(path, net, layers=problem(net) is None)


def compile_graph(graph, out_path, dt=None, timesteps=None, weight_bits=WEIGHT_BITS):
    """Compile a NIR graph (or file) to `out_path`; returns (Net, fit report)."""
    graph = load_graph(graph)
    steps = int(timesteps or (graph.metadata or {}).get("timesteps") or 8)
    net, fit = build_net(graph, dt, steps, weight_bits)
    write(out_path, net, steps)
    return net, fit


def weight_bits_arg(text):
    """argparse type of --weight-bits: an integer 8..16."""
    try:
        value = int(text)
    except ValueError:
        value = None
    top = WEIGHT_BITS + WEIGHT_EXP_MAX
    if value is None or not WEIGHT_BITS <= value <= top:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer {WEIGHT_BITS}..{top}")
    return value


def main(argv=None):
    from pathlib import Path

    from common.cli import UsageError, check_writable_dir, positive_float, run_guarded
    p = argparse.ArgumentParser(prog="python -m deploy.compile", description=__doc__.split("\n")[0])
    p.add_argument("nir", help="NIR file (nir.write)")
    p.add_argument("out", help="network file to write (e.g. student.net)")
    p.add_argument("--dt", type=positive_float, default=None,
                   help="time step (default: the graph's metadata or convention)")
    p.add_argument("--weight-bits", type=weight_bits_arg, default=WEIGHT_BITS,
                   help="weight precision, 8..16 (default 8); above 8 a group whose weights are "
                        "not on an 8-bit grid gets each connection as two int8 connections "
                        "(weight_exp B - 8 and 0): twice its synaptic operations")
    args = p.parse_args(argv)

    def work():
        out = Path(args.out)
        if out.is_dir():
            raise UsageError(f"out {out}: is a folder, not a file")
        if out.exists() and out.resolve() == Path(args.nir).resolve():
            raise UsageError(f"out {out}: is the input NIR file; it would be overwritten")
        check_writable_dir(out.parent, "out", shown=out)
        net, fit = compile_graph(args.nir, out, dt=args.dt, weight_bits=args.weight_bits)
        for row in fit["groups"]:
            warn = "  MAY OVERFLOW 24 bit" if row["may_overflow_24bit"] else ""
            bits = f" ({row['weight_bits']} bit, error {row['weight_rel_error']:.2%})" \
                if "weight_bits" in row else ""
            print(f"{row['group']:12s} w {row['weight_min']}..{row['weight_max']}{bits} iDecay "
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
