"""The rules that turn a NIR graph's paths and neurons into Loihi's groups and connections, in
float and on the integer grids (docs/nir.md "Graphs of other tools"). deploy.compile builds its
net from them, export.from_nir its Loihi-exact student, so both follow one implementation.

- `neuron_params`: a neuron node's decays, input gain, threshold and v_leak bias per neuron.
- `incoming_paths` / `path_weights`: each path of stateless nodes from a source (Input or a
  neuron) into a neuron is one connection: a convolution (`fold_conv`) or a dense matrix
  (`probe_dense`), with the path's bias.
- `group_plan`: one neuron node's connections in float with its gain and folded thresholds, its
  bias into v, and the step that turns them into integers (`choose_step`, `to_int`,
  `integer_bias`, `integer_threshold`).
"""
import itertools

import nir
import numpy as np
import torch

from common.loihi import BIAS_MAX, DECAY_UNITY, VTH_MAX, WEIGHT_MAX
from hwmodels.loihi import conv_out_size

from .interpreter import (NEURONS, SPIKING, NIRError, _array, loihi_neuron, node_simulator,
                          recurrent_edges, role, types_of)

GRID_RTOL = 1e-4                     # how far W/s may sit from an integer and still be on the grid
SYNAPSES = types_of("synapse")      # export.interpreter.NODE_TYPES: one entry per node type

BIAS_SOURCE = "bias.source"          # the group that spikes at every step (`bias_source`)
BIAS_LATE = "bias.late"              # the one that spikes from step 1 on

class CompileError(NIRError):
    """A graph (or node) that Loihi cannot run; the message names the node."""


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


def _named(names):
    return f" ({', '.join(map(repr, names))})" if names else ""


# ---- 2. groups ---------------------------------------------------------------------------------

def neuron_params(name, node, dt, shape):
    """(iDecay, vDecay (int arrays of `shape`), input gain g (float array), threshold theta or
    None, v_leak bias per step) from export.interpreter.loihi_neuron, every parameter per neuron;
    a decay dt/tau outside [0, 1] or a gain <= 0 is a CompileError."""
    def p(field_name):
        try:
            return np.broadcast_to(_array(getattr(node, field_name)), shape)
        except ValueError:
            raise CompileError(f"node {name!r}: {field_name} of shape "
                               f"{np.shape(getattr(node, field_name))} does not fit the node's "
                               f"shape {shape}") from None

    for field_name in ("tau", "tau_syn", "tau_mem", "r", "w_in", "v_threshold", "v_leak"):
        if hasattr(node, field_name):
            p(field_name)
    m = loihi_neuron(node, dt, shape)
    decays = []
    for key in ("i", "v"):
        ratio, field_name = m[key], m[f"{key}_tau"]
        if field_name is not None:
            tau = p(field_name)
            bad = (tau <= 0) | (ratio < 0) | (ratio > 1)
            if np.any(bad):
                t, r = tau[bad].flat[0], ratio[bad].flat[0]
                raise CompileError(f"node {name!r}: {field_name}={t:g} with dt={dt:g} gives "
                                   f"decay {r:g} outside [0, 1]")
        decays.append(np.rint(DECAY_UNITY * ratio).astype(np.int64))
    g = m["gain"]
    if not np.all(g > 0):
        raise CompileError(f"node {name!r}: input gain {g.min():g} <= 0 (check r, w_in, dt; an "
                           f"infinite time constant needs r / w_in = inf)")
    theta = p("v_threshold") if isinstance(node, SPIKING) else None  # fold_thresholds
    v_leak = m["leak"] * p("v_leak") if hasattr(node, "v_leak") else 0.0
    return decays[0], decays[1], np.asarray(g, dtype=np.float64), theta, v_leak


# ---- 3. connections ----------------------------------------------------------------------------

def paths_into(graph, name, preds, recurrent, sources):
    """Every path (source, [stateless nodes in order], recurrent?, nodes after the recurrent
    edge) ending in node `name`."""
    found = []

    def walk(node_name, ops, rec, after):
        for src in preds.get(node_name, []):
            edge_rec = (src, node_name) in recurrent
            here = after if rec or not edge_rec else len(ops)
            if src in sources:
                found.append((src, ops, rec or edge_rec, here))
            elif src in ops:
                raise CompileError(f"node {src!r}: a cycle without a neuron in it")
            else:
                walk(src, [src, *ops], rec or edge_rec, here)

    walk(name, [], False, None)
    return found


def path_weights(graph, source_shape, ops):
    """Fold one path into (kind, float weight, conv params, float bias of the output shape or
    None, output shape).

    Every node of a path is linear, so the path is y = W x + b. When its nodes are pooling and at
    most one Conv2d (no Flatten), W is one convolution (`fold_conv`); a path of neither is an
    identity (dense eye or depthwise 1x1 conv); anything else (Affine / Linear, Flatten, pooling
    a convolution cannot express) is one dense matrix, probed column by column (`probe_dense`).
    b is the path run on a zero input, biases included.
    """
    shape, synapse, stages = tuple(source_shape), None, []
    for op in ops:
        node = graph.nodes[op]
        if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
            if len(shape) != 3:
                raise CompileError(f"node {op!r}: pooling needs a (C, H, W) input, got {shape}")
            k, s, p = (_pair(getattr(node, f), op, f) for f in ("kernel_size", "stride", "padding"))
            value = 1.0 / (k[0] * k[1]) if isinstance(node, nir.AvgPool2d) else 1.0
            stages.append(("pool", op, dict(kernel=k, stride=s, padding=p, value=value,
                                            shape=shape)))
            shape = (shape[0], *(conv_out_size(shape[1 + a], k[a], s[a], p[a], 1) for a in (0, 1)))
            if min(shape) <= 0:
                raise CompileError(f"node {op!r}: pooling {k} of {stages[-1][2]['shape']} leaves "
                                   f"no output")
        elif isinstance(node, nir.Flatten):
            stages.append(("flatten", op, None))
            shape = (int(np.prod(shape)),)
        elif isinstance(node, nir.Scale) and np.ptp(_array(node.scale)) == 0:
            stages.append(("scale", op, _uniform(node.scale, op, "scale")))
        elif isinstance(node, SYNAPSES):
            if synapse is not None:
                raise CompileError(f"node {op!r}: two synapses ({synapse} and {op}) with no neuron "
                                   f"between them")
            _synapse_check(graph, op, shape)
            synapse, shape = op, _synapse_shape(graph, op, shape)
            stages.append(("synapse", op, None))
        elif role(node) == "linear":  # any other linear node: run it to learn its output shape
            stages.append(("linear", op, None))
            shape = tuple(_run_path(graph, [op], torch.zeros(1, *shape, dtype=torch.float64)
                                    ).shape[1:])
        else:
            raise CompileError(f"node {op!r}: type {type(node).__name__} inside a synaptic path")
    bias = _path_bias(graph, ops, source_shape, shape) if synapse is not None else None
    kinds = [kind for kind, _, _ in stages]
    scale = float(np.prod([v for kind, _, v in stages if kind == "scale"]))
    if "pool" not in kinds and "linear" not in kinds and synapse is None:
        return _identity(source_shape, shape, scale) + (None, shape)
    if not {"flatten", "linear"} & set(kinds) and (
            synapse is None or isinstance(graph.nodes[synapse], nir.Conv2d)):
        folded = fold_conv(graph, [st for st in stages if st[0] != "scale"], source_shape, shape)
        if folded is not None:
            w, conv = folded
            return "conv", w * scale, conv, bias, shape
    if synapse is not None and set(kinds) <= {"flatten", "scale", "synapse"}:
        # Flatten (row-major, the (C, H, W) order of a dense source) and an Affine / Linear:
        # the synapse's own matrix, with no probing
        return "dense", _array(graph.nodes[synapse].weight) * scale, {}, bias, shape
    return "dense", probe_dense(graph, ops, source_shape, shape), {}, bias, shape


def _synapse_check(graph, name, shape):
    node = graph.nodes[name]
    if isinstance(node, nir.Conv2d):
        if len(shape) != 3 or node.weight.shape[1] * int(node.groups) != shape[0]:
            raise CompileError(f"node {name!r}: weight {tuple(node.weight.shape)} with groups="
                               f"{int(node.groups)} does not take input {shape}")
        return
    w = _array(node.weight)
    if w.ndim != 2:
        raise CompileError(f"node {name!r}: weight of shape {w.shape} is not 2-D")
    if len(shape) != 1 or w.shape[1] != shape[0]:
        raise CompileError(f"node {name!r}: weight expects {w.shape[1]} inputs, gets shape "
                           f"{shape} (a Flatten before it?)")


def _synapse_shape(graph, name, shape):
    node = graph.nodes[name]
    if isinstance(node, nir.Conv2d):
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


# A path x -> A -> B of two convolutions along one axis, A: kernel ka, stride sa, padding pa,
# dilation da; B: kb, sb, pb, db. B reads y[i], i = sb j + db b - pb, and y[i] reads
# x[sa i + da a - pa], so z[j] reads x[sa sb j + sa db b + da a - (sa pb + pa)]: one convolution
# of stride sa sb, padding sa pb + pa, dilation 1 and kernel sa db (kb - 1) + da (ka - 1) + 1,
# whose tap c collects every (a, b) with sa db b + da a = c. It equals the path where B's zero
# padding (y[i] for i < 0 or i >= len(y)) reads only the composite's zero padding: A = pooling
# (ka <= sa + pa on the left; on the right pb = 0 or sa len(y) - pa >= len(x)), or B = pooling
# with pb = 0 (B then reads only y[0 .. len(y) - 1]). docs/nir.md "Pooling".

def _pool_conv(stage):
    """A pooling stage as a depthwise convolution (weight (C, 1, kh, kw), params)."""
    p = stage[2]
    c = p["shape"][0]
    w = np.full((c, 1, *p["kernel"]), p["value"])
    return w, dict(stride=p["stride"], padding=p["padding"], dilation=(1, 1), groups=c)


def _compose(wa, a, wb, b, depthwise_a):
    """Weight and params of conv A then conv B, one of them depthwise pooling (the same taps
    for every channel; the result has the other's channels and groups): tap
    (sa db kb_tap + da ka_tap) of the result sums wa[ka_tap] * wb[kb_tap]."""
    sa, da, sb, db = a["stride"], a["dilation"], b["stride"], b["dilation"]
    (ka0, ka1), (kb0, kb1) = wa.shape[2:], wb.shape[2:]
    size = [sa[x] * db[x] * (wb.shape[2 + x] - 1) + da[x] * (wa.shape[2 + x] - 1) + 1
            for x in (0, 1)]
    full = wb if depthwise_a else wa
    out = np.zeros((*full.shape[:2], *size))
    for a0, a1, b0, b1 in itertools.product(range(ka0), range(ka1), range(kb0), range(kb1)):
        c0, c1 = sa[0] * db[0] * b0 + da[0] * a0, sa[1] * db[1] * b1 + da[1] * a1
        if depthwise_a:
            out[:, :, c0, c1] += wa[0, 0, a0, a1] * wb[:, :, b0, b1]
        else:
            out[:, :, c0, c1] += wa[:, :, a0, a1] * wb[0, 0, b0, b1]
    stride = (sa[0] * sb[0], sa[1] * sb[1])
    padding = (sa[0] * b["padding"][0] + a["padding"][0], sa[1] * b["padding"][1] + a["padding"][1])
    return out, dict(stride=stride, padding=padding, dilation=(1, 1),
                     groups=b["groups"] if depthwise_a else a["groups"])


def fold_conv(graph, stages, in_shape, out_shape):
    """(weight, params) of one convolution equal to the path's pooling / Conv2d stages, or None
    when none is exact (the rule above; then the caller probes a dense matrix)."""
    convs = []  # (weight, params, is_pool, input shape)
    for kind, op, _ in stages:
        if kind == "pool":
            w, conv = _pool_conv((kind, op, _))
            convs.append((w, conv, True, _["shape"]))
        else:
            node = graph.nodes[op]
            w = _array(node.weight)
            stride, padding, dilation = _conv_params(op, node, w.shape[2:])
            convs.append((w, dict(stride=stride, padding=padding, dilation=dilation,
                                  groups=int(node.groups)), False, None))
    w, conv, pool, _ = convs[0]
    shape = tuple(in_shape)
    for wb, b, pool_b, b_in in convs[1:]:
        if pool and pool_b:
            return None                                   # two poolings: not one depthwise tap
        y_len = [conv_out_size(shape[1 + x], w.shape[2 + x], conv["stride"][x],
                               conv["padding"][x], conv["dilation"][x]) for x in (0, 1)]
        for x in (0, 1):
            if pool and not (w.shape[2 + x] <= conv["stride"][x] + conv["padding"][x] and (
                    b["padding"][x] == 0 or
                    conv["stride"][x] * y_len[x] - conv["padding"][x] >= shape[1 + x])):
                return None
            if pool_b and b["padding"][x] != 0:
                return None
        w, conv = _compose(w, conv, wb, b, depthwise_a=pool)
        pool = False
    got = (w.shape[0], *(conv_out_size(in_shape[1 + x], w.shape[2 + x], conv["stride"][x],
                                       conv["padding"][x], 1) for x in (0, 1)))
    return (w, conv) if got == tuple(out_shape) else None


DENSE_MAX = 1 << 24  # weights of one probed dense connection


def probe_dense(graph, ops, in_shape, out_shape):
    """The (out, in) matrix W of a linear path, one column per unit input (float64, without
    biases: the path at e_i minus the path at 0)."""
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    if n_in * n_out > DENSE_MAX:
        raise CompileError(f"node {ops[-1]!r}: the path from a {tuple(in_shape)} source needs a "
                           f"dense connection of {n_out} x {n_in} weights (more than "
                           f"{DENSE_MAX}); no convolution equals it")
    run = _path(graph, ops)
    zero = run(torch.zeros(1, *in_shape, dtype=torch.float64))
    cols = []
    for start in range(0, n_in, 1024):
        rows = torch.arange(start, min(start + 1024, n_in))
        eye = torch.zeros(len(rows), n_in, dtype=torch.float64)
        eye[torch.arange(len(rows)), rows] = 1.0  # rows start.. of the identity, not all of it
        cols.append((run(eye.reshape(-1, *in_shape)) - zero).reshape(
            len(rows), -1))
    return torch.cat(cols).t().numpy()


def _path_bias(graph, ops, in_shape, out_shape):
    """The path's output for a zero input (its biases carried through), or None when 0."""
    b = _run_path(graph, ops, torch.zeros(1, *in_shape, dtype=torch.float64))[0].numpy()
    return b.reshape(out_shape) if np.any(b) else None


def _path(graph, ops):
    """The path's stateless nodes as one function of x (float64), with the interpreter's node
    functions (built once, for every probe)."""
    sims = [node_simulator(op, graph.nodes[op], 1.0, dtype=torch.float64) for op in ops]

    def run(x):
        for sim in sims:
            x = sim.step(x)
        return x
    return run


def _run_path(graph, ops, x):
    return _path(graph, ops)(x)


def _identity(in_shape, out_shape, scale):
    """A path without a synapse or pooling: a depthwise 1x1 conv or a dense identity."""
    if len(out_shape) == 3 and tuple(in_shape) == tuple(out_shape):
        return "conv", np.ones((out_shape[0], 1, 1, 1)) * scale, dict(groups=out_shape[0])
    return "dense", np.eye(int(np.prod(in_shape))) * scale, {}


def choose_step(weights, extras, name, weight_max=WEIGHT_MAX):
    """The step s minimising the squared rounding error of all incoming weights (clipped to
    8 bits: [-128, 127]) plus that of the threshold and bias (`extras`). Candidates: max |W| /
    127, a few quantiles of |W| / 127 (rare outliers may then clip) and the finest power of two
    that keeps max |W| / s within 127 (exact for weights on a binary grid, as many exporters
    write). `weight_max` (2^(b-1) - 1) applies the same rule to b-bit weights, for studies of
    the quantisation (bench/producers_gap.py); Loihi's is 127."""
    lo = -weight_max - 1
    flat = np.concatenate([np.abs(w).reshape(-1) for w in weights])
    peak = float(flat.max(initial=0))
    candidates = [float(np.percentile(flat, q)) / weight_max for q in (100, 99.99, 99.9, 99.5)]
    candidates.append(2.0 ** np.ceil(np.log2(peak / weight_max)) if peak else 0.0)
    best = None
    for s in candidates:
        if s <= 0:
            continue
        err = sum(float(((w - s * np.clip(np.rint(w / s), lo, weight_max)) ** 2).sum())
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


def fold_thresholds(name, theta, infos, bias, shape):
    """Per-neuron thresholds -> one (theta, bias, per-neuron scale c or None).

    With reset to zero, v_i > theta_i spikes exactly when c_i v_i > c_i theta_i, and c_i v_i is
    the neuron's state when all its incoming weights and its bias are multiplied by c_i (v is
    linear in them, and reset to 0 stays 0). So c_i = max(theta) / theta_i gives every neuron
    the threshold max(theta). A conv path is scaled per output channel when c is constant per
    channel, else it becomes a dense matrix first."""
    theta = np.broadcast_to(_array(theta), shape)
    if np.allclose(theta, theta.flat[0], rtol=1e-6, atol=0):
        return float(theta.flat[0]), bias, None
    if np.any(theta <= 0):
        raise CompileError(f"node {name!r}: per-neuron thresholds {theta.min():g}.."
                           f"{theta.max():g} must be > 0 to fold into the weights")
    c = float(theta.max()) / theta
    scale_rows(infos, c, shape, name)
    return float(theta.max()), np.broadcast_to(bias, shape) * c, c


def scale_rows(infos, c, shape, name):
    """Multiply each neuron's incoming weights by its c (shape `shape`): a conv path per output
    channel when c is constant per channel, else as a dense matrix."""
    c = np.broadcast_to(c, shape)
    per_channel = len(shape) == 3 and np.all(c == c[:, :1, :1])
    for info in infos:
        if info["kind"] == "conv" and per_channel:
            info["w"] = info["w"] * c[:, 0, 0].reshape(-1, 1, 1, 1)
            continue
        if info["kind"] == "conv":
            info["w"], info["kind"] = conv_dense(info["w"], info["conv"], info["src_shape"],
                                                 name), "dense"
            info["conv"] = {}
        info["w"] = info["w"] * c.reshape(-1, 1)


def conv_dense(w, conv, src_shape, name):
    """The (out, in) dense matrix of a convolution on a src_shape input."""
    n_in = int(np.prod(src_shape))
    w = torch.from_numpy(np.asarray(w, dtype=np.float64))

    def run(x):
        return torch.nn.functional.conv2d(x, w, None, conv.get("stride", 1),
                                          conv.get("padding", 0), conv.get("dilation", 1),
                                          conv.get("groups", 1))
    n_out = run(torch.zeros(1, *src_shape, dtype=torch.float64))[0].numel()
    if n_out * n_in > DENSE_MAX:  # refused before the n_in x n_in identity is built
        raise CompileError(f"node {name!r}: per-position parameters need the convolution as a "
                           f"dense matrix of {n_out} x {n_in} weights (more than "
                           f"{DENSE_MAX})")
    y = run(torch.eye(n_in, dtype=torch.float64).reshape(n_in, *src_shape))
    return y.reshape(n_in, -1).t().numpy()


def incoming_paths(graph, name, shape, preds, recurrent, sources, input_name, in_shape):
    """The float weights of every path into neuron `name` as dicts
    (src, ops, rec, kind, w, conv), and the summed synaptic bias of those paths (shape `shape`):
    (from step 0, from step 1). A bias made before a recurrent edge comes one step late: the edge
    delivers zeros at step 0 (docs/nir.md)."""
    found = paths_into(graph, name, preds, recurrent, sources)
    if not found:
        raise CompileError(f"node {name!r}: a neuron with no input")
    infos, syn_bias, late_bias = [], np.zeros(shape), np.zeros(shape)
    for src, ops, rec, after in found:
        if rec and src != name:
            raise CompileError(f"node {name!r}: recurrence from {src!r}; only a group onto "
                               f"itself is supported")
        src_shape = in_shape if src == input_name else _shape(graph.nodes[src])
        kind, w, conv, b, out = path_weights(graph, src_shape, ops)
        if int(np.prod(out)) != int(np.prod(shape)):
            raise CompileError(f"node {name!r}: input of shape {out} from {src!r} does not fit "
                               f"its shape {shape}")
        if b is not None and rec and any(isinstance(graph.nodes[op], SYNAPSES)
                                         for op in ops[:len(ops) - after]):
            late_bias = late_bias + b.reshape(shape)
        elif b is not None:
            syn_bias = syn_bias + b.reshape(shape)
        infos.append(dict(src="input" if src == input_name else src, ops=ops, rec=rec, kind=kind,
                          w=w, conv=conv, src_shape=tuple(src_shape)))
    return infos, syn_bias, late_bias


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
    if theta > 0 and vth == 0:
        raise CompileError(f"node {name!r}: threshold {theta:g} rounds to 0 weight steps (step "
                           f"{step:g}): every input would spike (is dt right?)")
    if not 0 <= vth <= VTH_MAX:
        raise CompileError(f"node {name!r}: threshold {theta:g} = {q:.4g} weight steps does not "
                           f"fit 17 bits [0, {VTH_MAX}] (step {step:g}; is dt right?)")
    return vth, note


def plan_context(graph) -> tuple:
    """What `group_plan` takes besides the node, for a flat graph: (preds: each node's
    predecessors in edge order, the recurrent edges, sources: the neuron nodes and the Input,
    where a path starts, the Input's name, its shape)."""
    preds = {}
    for src, dst in graph.edges:
        preds.setdefault(dst, []).append(src)
    input_name, in_shape = input_shape(graph)
    sources = {n for n, node in graph.nodes.items() if isinstance(node, NEURONS)} | {input_name}
    return preds, recurrent_edges(graph), sources, input_name, in_shape


def group_plan(graph, name, dt, preds, recurrent, sources, input_name, in_shape) -> dict:
    """One neuron node in float, ready for the integer grid: {shape, i_decay, v_decay (int arrays
    of the shape), theta (one threshold, or None for a non-spiking node), scale (per-neuron c of
    folded thresholds, or None), infos (incoming connections as `incoming_paths` gives them, the
    input gain and c folded in; a synaptic bias into a decaying current is a connection from
    BIAS_SOURCE, a recurrent synapse's bias one from BIAS_LATE, both of shape (N, 1)), bias (into
    v per step, in units of v), step (the weight step of every incoming weight, the bias and the
    threshold), exact (the step comes from weight_step metadata: values must lie on it),
    extras (the bias and threshold that `choose_step` weighed with the weights)}."""
    node = graph.nodes[name]
    shape = _shape(node)
    i_decay, v_decay, gain, theta, v_leak = neuron_params(name, node, dt, shape)
    infos, syn_bias, late_bias = incoming_paths(graph, name, shape, preds, recurrent, sources,
                                                input_name, in_shape)
    if np.any(syn_bias) and np.any(i_decay != DECAY_UNITY):  # NIR adds it to the decaying current
        infos.append(dict(src=BIAS_SOURCE, ops=[], rec=False, kind="dense",
                          w=syn_bias.reshape(-1, 1), conv={}, src_shape=(1,)))
        syn_bias = np.zeros(shape)
    if np.any(late_bias):  # a recurrent synapse's bias: from step 1
        infos.append(dict(src=BIAS_LATE, ops=[], rec=False, kind="dense",
                          w=late_bias.reshape(-1, 1), conv={}, src_shape=(1,)))
    uniform_gain = np.allclose(gain, gain.flat[0], rtol=1e-9, atol=0)
    if uniform_gain:
        gain = float(gain.flat[0])
        for info in infos:
            info["w"] = info["w"] * gain
    else:  # per-neuron input gains (time constants): each neuron's incoming weights
        scale_rows(infos, gain, shape, name)
    bias = syn_bias * gain + np.broadcast_to(v_leak, shape)  # per step, in units of v
    if not any(np.any(i["w"]) for i in infos):
        raise CompileError(f"node {name!r}: all incoming weights are zero")
    scale = None
    if theta is not None:
        theta, bias, scale = fold_thresholds(name, theta, infos, bias, shape)
    meta_step = _metadata_step(graph, infos)
    exact = meta_step is not None and scale is None and uniform_gain
    extras = [np.asarray(bias)] + ([] if theta is None else [np.asarray(theta)])
    step = meta_step * gain if exact else choose_step([i["w"] for i in infos], extras, name)
    return dict(shape=shape, i_decay=i_decay, v_decay=v_decay, theta=theta, scale=scale,
                infos=infos, bias=np.broadcast_to(bias, shape), step=float(step), exact=exact,
                extras=extras)
