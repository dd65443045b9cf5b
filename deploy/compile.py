"""Compile a NIR graph (docs/nir.md) to a lava-dl netx HDF5 network (`student.net`).

    python -m deploy.compile runs/default/student.nir runs/default/student.net [--dt DT]

The graph must be a feed-forward chain  Input -> (synapse [-> neuron] | Flatten)* -> Output.
Each synapse (Conv2d, Affine, Linear; a SumPool2d is fused into the synapse after it) becomes one
netx layer, with the neuron after it as its `neuron` group:

    CubaLIF  -> CUBA  iDecay = round(4096 dt/tau_syn), vDecay = round(4096 dt/tau_mem)
    LIF      -> CUBA  iDecay = 4096 (u = a_in every step), vDecay = round(4096 dt/tau)
    IF       -> CUBA  iDecay = 4096, vDecay = 0
    I        -> no neuron group: netx makes the layer a non-leaky integrator
                (iDecay 0, vDecay 4096, vThMant 1 << 17: u accumulates, v = u, never spikes)

Input gains fold into the weights (Euler step of docs/nir.md): CubaLIF g = (dt w_in/tau_syn)
(dt r/tau_mem), LIF g = dt r/tau, IF g = dt r; the student's graphs have g = 1. Weights become
integers k = W g / s with s the node's `weight_step` metadata (else s = max|W g| / 127, lossy),
thresholds vThMant = v_threshold / s, so Loihi's  v > vThMant << 6  equals  V > theta  exactly.
`I` readouts keep their integer weights (a positive gain does not change the argmax).

Layer entries in the file (netx conventions, lava/lib/dl/netx/hdf5.py): `layer/<i>` with `type`
input | conv | flatten | dense, `shape` stored (C, H, W) / (N,), conv `weight` (out, in, kh, kw),
`stride`/`padding`/`dilation` as (h, w), `groups`; dense `weight` (out, in). Attributes (ignored by
netx) keep the NIR node names, the weight step and dt. Dense weights pass netx's
`optimize_weight_bits` and Lava's clip/truncate; `hwmodels.loihi.lava_dense_weights` computes what
survives and the fit report flags any layer where that differs from the integer weights.
"""
import argparse
import sys
from dataclasses import dataclass, field

import nir
import numpy as np

from export.from_nir import NIRError, read_graph
from export.interpreter import DEFAULT_DT  # snnTorch's hard-coded step (SPEC.md section 4)
from hwmodels.loihi import (DECAY_UNITY, INTEGRATOR, STATE_MAX, VTH_MAX, NetxError,
                            conv_out_size, lava_dense_weights)
from train.checkpoint import atomic_write
WEIGHT_MAX = 127
WEIGHT_MIN = -128
GRID_RTOL = 1e-4  # how far W/s may sit from an integer and still count as on the grid
SYNAPSES = ("Conv2d", "Affine", "Linear")
NEURONS = ("CubaLIF", "LIF", "IF", "I")


class CompileError(ValueError):
    """A graph (or node) that netx / Loihi cannot run; the message names the node."""


@dataclass
class NetLayer:
    """One netx layer as written to the file (see module docstring)."""
    name: str                      # netx-side name: conv1, dense3, ... (1-based synapse count)
    kind: str                      # 'conv' | 'dense' | 'flatten'
    nodes: list                    # NIR node names folded into this layer
    in_shape: tuple = ()
    out_shape: tuple = ()
    weight: np.ndarray = None      # int64
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    neuron: dict = None            # {'iDecay', 'vDecay', 'vThMant'} or None (integrator)
    weight_step: float = None
    notes: list = field(default_factory=list)


# ---- graph walking -----------------------------------------------------------------------------

def load_graph(graph):
    """A nir.NIRGraph, or a path read with export.from_nir.read_graph (CompileError otherwise)."""
    if isinstance(graph, nir.NIRGraph):
        return graph
    try:
        return read_graph(graph)
    except NIRError as e:
        raise CompileError(str(e)) from None


def chain(graph):
    """Node names from the single Input to the Output, following the (unordered) edges."""
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    succ, pred = {}, {}
    for src, dst in graph.edges:
        for table, a, b in ((succ, src, dst), (pred, dst, src)):
            table.setdefault(a, []).append(b)
    for name, kind in kinds.items():
        if kind == "NIRGraph":
            raise CompileError(f"node {name!r}: type NIRGraph (recurrent subgraph) is not supported")
        for table, what in ((succ, "outgoing"), (pred, "incoming")):
            if len(table.get(name, [])) > 1:
                raise CompileError(f"node {name!r}: {len(table[name])} {what} edges (netx runs "
                                   f"only feed-forward chains, no branches or residuals)")
    inputs = [n for n, k in kinds.items() if k == "Input"]
    if len(inputs) != 1:
        raise CompileError(f"graph: expected exactly one Input node, found {len(inputs)}")
    order, name = [], inputs[0]
    while True:
        order.append(name)
        nxt = succ.get(name, [])
        if not nxt:
            break
        name = nxt[0]
        if name in order:
            raise CompileError(f"node {name!r}: cycle in the graph")
    if kinds[order[-1]] != "Output":
        raise CompileError(f"node {order[-1]!r}: chain ends in {kinds[order[-1]]}, not Output")
    stray = set(kinds) - set(order)
    if stray:
        raise CompileError(f"node {sorted(stray)[0]!r}: not on the Input -> Output chain")
    return order


def _array(x):
    return np.asarray(x, dtype=np.float64)


def _pair(x, name, field_name):
    if isinstance(x, str):
        raise CompileError(f"node {name!r}: string {field_name} {x!r} is not supported")
    a = np.broadcast_to(np.asarray(x, dtype=np.int64).reshape(-1), (2,))
    return int(a[0]), int(a[1])


def _uniform(value, name, field_name):
    """Per-neuron parameter -> one value (netx has one du, dv, vth per layer)."""
    a = _array(value).reshape(-1)
    if a.size == 0:
        raise CompileError(f"node {name!r}: empty {field_name}")
    if not np.allclose(a, a[0], rtol=1e-9, atol=0):
        raise CompileError(f"node {name!r}: {field_name} differs across neurons "
                           f"({a.min():g}..{a.max():g}); netx allows one value per layer")
    return float(a[0])


def _dt_of(graph, node, override):
    if override is not None:
        return float(override)
    for meta in (getattr(node, "metadata", None) or {}, graph.metadata or {}):
        if "dt" in meta:
            return float(meta["dt"])
    return DEFAULT_DT


def _decay(dt, tau, name, field_name):
    """Loihi decay = round(4096 dt / tau) (fraction lost per step), tau = inf -> 0."""
    frac = 0.0 if np.isinf(tau) else dt / tau
    if not 0.0 <= frac <= 1.0 or tau <= 0:
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


def _input_shape(node):
    shape = node.input_type["input"] if isinstance(node.input_type, dict) else node.input_type
    shape = tuple(int(s) for s in np.asarray(shape).reshape(-1))
    if len(shape) == 2 and shape[0] == 1:  # snnTorch-style (1, N)
        shape = shape[1:]
    if len(shape) not in (1, 3):
        raise CompileError(f"node 'Input': shape {shape} (expected (N,) or (C, H, W))")
    return shape


# ---- per-node mappings -------------------------------------------------------------------------

def neuron_params(graph, name, node, dt_override):
    """(neuron dict or None, gain g folded into the incoming weights, threshold theta)."""
    kind = type(node).__name__
    dt = _dt_of(graph, node, dt_override)
    meta = getattr(node, "metadata", None) or {}
    if meta.get("reset", "zero") != "zero":
        raise CompileError(f"node {name!r}: reset {meta['reset']!r} (Loihi resets to zero)")
    if kind == "I":
        gain = dt * _uniform(node.r, name, "r")
        if gain <= 0:
            raise CompileError(f"node {name!r}: I with r <= 0 flips the readout")
        return None, 1.0, None
    for fld in ("v_leak", "v_reset"):
        if getattr(node, fld, None) is not None and np.any(_array(getattr(node, fld)) != 0):
            raise CompileError(f"node {name!r}: non-zero {fld} (Loihi: leak to 0, reset to 0)")
    theta = _uniform(node.v_threshold, name, "v_threshold")
    r = _uniform(node.r, name, "r")
    if kind == "CubaLIF":
        tau_syn = _uniform(node.tau_syn, name, "tau_syn")
        tau_mem = _uniform(node.tau_mem, name, "tau_mem")
        w_in = _uniform(node.w_in, name, "w_in")
        i_decay = _decay(dt, tau_syn, name, "tau_syn")
        v_decay = _decay(dt, tau_mem, name, "tau_mem")
        gain = _gain(dt, w_in, tau_syn, name) * _gain(dt, r, tau_mem, name)
    elif kind == "LIF":
        tau = _uniform(node.tau, name, "tau")
        i_decay, v_decay = DECAY_UNITY, _decay(dt, tau, name, "tau")
        gain = _gain(dt, r, tau, name)
    else:  # IF
        i_decay, v_decay, gain = DECAY_UNITY, 0, dt * r
    if gain <= 0:
        raise CompileError(f"node {name!r}: input gain {gain:g} <= 0 (check r, w_in)")
    return {"iDecay": i_decay, "vDecay": v_decay}, gain, theta


def _weight_step(node):
    step = (getattr(node, "metadata", None) or {}).get("weight_step")
    return None if step is None else float(step)


def integer_weights(name, w, step):
    """w (already multiplied by the gain) -> (int64 k, step) with w = step * k, k in int8."""
    if step is None:
        peak = np.abs(w).max()
        step = float(peak / WEIGHT_MAX) if peak > 0 else 1.0
        k = np.rint(w / step)
    else:
        q = w / step
        k = np.rint(q)
        off = np.abs(q - k).max() if q.size else 0.0
        if off > GRID_RTOL * max(1.0, np.abs(q).max()):
            raise CompileError(f"node {name!r}: weights are not on the weight_step={step:g} grid "
                               f"(off by {off:.3g} steps)")
    if k.size and (k.max() > WEIGHT_MAX or k.min() < WEIGHT_MIN):
        raise CompileError(f"node {name!r}: integer weights {int(k.min())}..{int(k.max())} do "
                           f"not fit 8 bits [-128, 127]")
    return k.astype(np.int64), step


def _no_bias(name, node):
    bias = getattr(node, "bias", None)
    if bias is not None and np.any(_array(bias) != 0):
        raise CompileError(f"node {name!r}: non-zero bias (Loihi synapses have none)")


def fuse_pool(name, pool, shape):
    """SumPool2d with stride == kernel and no padding: (matrix-free) description for fusion."""
    k = _pair(pool.kernel_size, name, "kernel_size")
    s = _pair(pool.stride, name, "stride")
    p = _pair(pool.padding, name, "padding")
    if k != s or p != (0, 0):
        raise CompileError(f"node {name!r}: SumPool2d needs stride == kernel_size and no padding "
                           f"to fuse into the next synapse (got kernel {k}, stride {s}, pad {p})")
    if len(shape) != 3 or shape[1] % k[0] or shape[2] % k[1]:
        raise CompileError(f"node {name!r}: SumPool2d input {shape} not divisible by {k}")
    return k, (shape[0], shape[1] // k[0], shape[2] // k[1])


# ---- compile -----------------------------------------------------------------------------------

def build_layers(graph, dt=None):
    """Walk the chain and return the list of NetLayer (input layer excluded) and the input shape."""
    order = chain(graph)
    nodes = graph.nodes
    shape = _input_shape(nodes[order[0]])
    in_shape = shape
    layers, count, pool, flat_pending = [], 0, None, False
    i = 1
    while i < len(order) - 1:
        name, node = order[i], nodes[order[i]]
        kind = type(node).__name__
        if kind == "Flatten":
            if pool is not None:
                pool = (pool[0], pool[1], True)
            if len(shape) == 3:
                layers.append(NetLayer(name="flatten", kind="flatten", nodes=[name],
                                       in_shape=shape, out_shape=(int(np.prod(shape)),)))
                shape = (int(np.prod(shape)),)
            i += 1
            continue
        if kind == "SumPool2d":
            k, pooled = fuse_pool(name, node, shape)
            pool, shape = (k, shape, False), pooled
            pool_name = name
            i += 1
            continue
        if kind not in SYNAPSES:
            what = "a neuron without a synapse before it" if kind in NEURONS else "unsupported"
            raise CompileError(f"node {name!r}: type {kind} ({what})")
        _no_bias(name, node)
        nxt = order[i + 1]
        nkind = type(nodes[nxt]).__name__
        if nkind in NEURONS:
            neuron, gain, theta = neuron_params(graph, nxt, nodes[nxt], dt)
            used = [name, nxt]
        elif nkind in ("Output", "Flatten") or nkind in SYNAPSES:
            raise CompileError(f"node {name!r}: {kind} must be followed by a neuron "
                               f"(CubaLIF, LIF, IF or I), found {nkind} {nxt!r}")
        else:
            raise CompileError(f"node {nxt!r}: type {nkind} is not supported")
        w = _array(node.weight) * gain
        step = _weight_step(node)
        if step is not None:
            step = step * gain
        k, step = integer_weights(name, w, step)
        count += 1
        if kind == "Conv2d":
            layer = _conv_layer(name, node, k, shape, count, pool)
        else:
            layer = _dense_layer(name, k, shape, count, pool)
        if pool is not None:
            layer.nodes.insert(0, pool_name)
            pool = None
        layer.nodes, layer.weight_step = [*layer.nodes, *used[1:]], step
        if neuron is not None:
            vth = theta / step
            if abs(vth - round(vth)) > GRID_RTOL * max(1.0, abs(vth)):
                layer.notes.append(f"threshold {theta:g} rounded to {round(vth)} steps")
            vth = int(round(vth))
            if not 0 <= vth <= VTH_MAX:
                raise CompileError(f"node {nxt!r}: threshold {theta:g} = {vth} weight steps does "
                                   f"not fit 17 bits [0, {VTH_MAX}]")
            neuron["vThMant"] = vth
        layer.neuron = neuron
        layers.append(layer)
        shape = layer.out_shape
        i += 2
    if pool is not None:
        raise CompileError(f"node {pool_name!r}: SumPool2d must be followed by a synapse")
    if not layers or layers[-1].kind == "flatten":
        raise CompileError("graph: no synaptic layer before Output")
    return layers, in_shape


def _conv_layer(name, node, k, shape, count, pool):
    if len(shape) != 3:
        raise CompileError(f"node {name!r}: Conv2d needs a (C, H, W) input, got {shape}")
    stride = _pair(node.stride, name, "stride")
    padding = _pair(node.padding, name, "padding") if not isinstance(node.padding, str) else (
        (0, 0) if node.padding == "valid" else None)
    if padding is None:
        kh, kw = k.shape[2:]
        if stride != (1, 1) or kh % 2 == 0 or kw % 2 == 0:
            raise CompileError(f"node {name!r}: padding 'same' needs stride 1 and odd kernels")
        padding = (kh // 2, kw // 2)
    dilation = _pair(node.dilation, name, "dilation")
    groups = int(node.groups)
    if pool is not None:  # pool(k) then conv == conv with each tap repeated over the pool window
        (ph, pw), shape, _ = pool
        if dilation != (1, 1):
            raise CompileError(f"node {name!r}: SumPool2d before a dilated Conv2d")
        k = np.repeat(np.repeat(k, ph, axis=2), pw, axis=3)
        stride, padding = (stride[0] * ph, stride[1] * pw), (padding[0] * ph, padding[1] * pw)
    if k.shape[1] * groups != shape[0]:
        raise CompileError(f"node {name!r}: weight expects {k.shape[1] * groups} input channels, "
                           f"gets {shape[0]}")
    out = (k.shape[0], *(conv_out_size(shape[1 + a], k.shape[2 + a], stride[a], padding[a],
                                       dilation[a]) for a in (0, 1)))
    if out[1] < 1 or out[2] < 1:
        raise CompileError(f"node {name!r}: output shape {out} is empty")
    return NetLayer(name=f"conv{count}", kind="conv", nodes=[name], in_shape=tuple(shape),
                    out_shape=out, weight=k, stride=stride, padding=padding, dilation=dilation,
                    groups=groups)


def _dense_layer(name, k, shape, count, pool):
    if k.ndim != 2:
        raise CompileError(f"node {name!r}: weight of shape {k.shape} is not 2-D")
    if pool is not None:  # pool then flatten then dense == dense over the unpooled input
        (ph, pw), full, flattened = pool
        if not flattened:
            raise CompileError(f"node {name!r}: SumPool2d before a dense layer needs a Flatten")
        c, h, w = full
        kk = k.reshape(k.shape[0], c, h // ph, w // pw)
        k = np.repeat(np.repeat(kk, ph, axis=2), pw, axis=3).reshape(k.shape[0], -1)
        shape = (c * h * w,)
    if len(shape) != 1:
        raise CompileError(f"node {name!r}: dense input has shape {shape}; add a Flatten")
    if k.shape[1] != shape[0]:
        raise CompileError(f"node {name!r}: weight expects {k.shape[1]} inputs, gets {shape[0]}")
    return NetLayer(name=f"dense{count}", kind="dense", nodes=[name], in_shape=tuple(shape),
                    out_shape=(k.shape[0],), weight=k)


def fit_report(layers, timesteps):
    """Per synaptic layer: integer ranges, Lava-realised weights, and 24-bit state headroom.

    Worst case per step |a_in| <= A = max over neurons of sum |w| (binary inputs). u then stays
    within 64 A / (iDecay/4096) (geometric series; 64 A T when iDecay = 0) and v within
    U / (vDecay/4096) (U T when vDecay = 0). A bound >= 2^23 means the state *may* wrap/clip.
    """
    rows = []
    for layer in layers:
        if layer.kind == "flatten":
            continue
        k = layer.weight
        fan = np.abs(k).reshape(k.shape[0], -1).sum(1)
        a_max = int(fan.max()) if fan.size else 0
        neuron = layer.neuron or INTEGRATOR
        u_bound = 64 * a_max * (timesteps if neuron["iDecay"] == 0
                                else DECAY_UNITY / neuron["iDecay"])
        v_bound = u_bound * (timesteps if neuron["vDecay"] == 0
                             else DECAY_UNITY / neuron["vDecay"])
        row = {"layer": layer.name, "nodes": list(layer.nodes), "kind": layer.kind,
               "in_shape": list(layer.in_shape), "out_shape": list(layer.out_shape),
               "weight_min": int(k.min()), "weight_max": int(k.max()),
               "weight_fits_8bit": bool(k.min() >= WEIGHT_MIN and k.max() <= WEIGHT_MAX),
               "integrator": layer.neuron is None, **{key: int(v) for key, v in neuron.items()},
               "vth_fits_17bit": bool(layer.neuron is None or 0 <= neuron["vThMant"] <= VTH_MAX),
               "decays_fit_12bit": bool(0 <= neuron["iDecay"] <= DECAY_UNITY
                                        and 0 <= neuron["vDecay"] <= DECAY_UNITY),
               "max_abs_input": a_max, "u_bound": float(u_bound), "v_bound": float(v_bound),
               "may_overflow_24bit": bool(u_bound >= STATE_MAX or v_bound >= STATE_MAX),
               "notes": list(layer.notes)}
        if layer.kind == "dense":
            try:
                w_lava, exp = lava_dense_weights(k)
            except NetxError as e:
                raise CompileError(f"node {layer.nodes[0]!r}: {e}") from None
            realised = _shift(w_lava, exp)
            row["lava_weights_exact"] = bool(np.array_equal(realised, k))
            if not row["lava_weights_exact"]:
                row["notes"].append("netx/Lava weight scaling changes some weights (emulated)")
        rows.append(row)
    return rows


def _shift(w, exp):
    """Per-synapse view of Lava's  sum(w) >> -exp  (exact only when w is a multiple of 2^-exp)."""
    return w << exp if exp >= 0 else w / float(1 << -exp)


def write_netx(path, layers, in_shape, attrs):
    """Write the netx HDF5 file atomically (train.checkpoint.atomic_write)."""
    import h5py

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            group = f.create_group("layer")
            entries = [("input", None)] + [(layer.kind, layer) for layer in layers]
            for i, (kind, layer) in enumerate(entries):
                g = group.create_group(str(i))
                g.create_dataset("type", data=np.array([kind.encode("ascii")]))
                if layer is None:
                    g.create_dataset("shape", data=np.array(in_shape, dtype=np.int64))
                    continue
                g.attrs["name"] = layer.name
                g.attrs["nodes"] = ",".join(layer.nodes)
                if kind == "flatten":
                    continue
                g.create_dataset("shape", data=np.array(layer.out_shape, dtype=np.int64))
                g.create_dataset("weight", data=layer.weight.astype(np.int64))
                if layer.weight_step is not None:
                    g.attrs["weight_step"] = float(layer.weight_step)
                if kind == "conv":
                    for key in ("stride", "padding", "dilation"):
                        g.create_dataset(key, data=np.array(getattr(layer, key), dtype=np.int64))
                    g.create_dataset("groups", data=np.int64(layer.groups))
                if layer.neuron is not None:
                    n = g.create_group("neuron")
                    n.create_dataset("type", data=np.array([b"CUBA"]))
                    for key in ("iDecay", "vDecay", "vThMant"):
                        n.create_dataset(key, data=np.int64(layer.neuron[key]))
                    n.create_dataset("refDelay", data=np.int64(1))
                    n.create_dataset("gradedSpike", data=np.bool_(False))

    atomic_write(path, write)


def compile_graph(graph, out_path, dt=None, timesteps=None):
    """Compile a NIR graph (or file) to `out_path`; returns the per-layer fit report (list)."""
    graph = load_graph(graph)
    layers, in_shape = build_layers(graph, dt)
    meta = graph.metadata or {}
    steps = int(timesteps or meta.get("timesteps") or 8)
    report = fit_report(layers, steps)
    attrs = {"producer": "snn-kd-loihi deploy.compile", "timesteps": steps,
             "dt": float(dt if dt is not None else meta.get("dt", DEFAULT_DT))}
    write_netx(out_path, layers, in_shape, attrs)
    return report


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m deploy.compile", description=__doc__.split("\n")[0])
    p.add_argument("nir", help="NIR file (nir.write)")
    p.add_argument("out", help="netx HDF5 file to write (e.g. student.net)")
    p.add_argument("--dt", type=float, default=None, help="time step (overrides graph dt)")
    args = p.parse_args(argv)
    try:
        report = compile_graph(args.nir, args.out, dt=args.dt)
    except CompileError as e:
        sys.exit(f"error: {e}")
    for row in report:
        warn = "  MAY OVERFLOW 24 bit" if row["may_overflow_24bit"] else ""
        print(f"{row['layer']:8s} {row['kind']:5s} w {row['weight_min']}..{row['weight_max']} "
              f"iDecay {row['iDecay']} vDecay {row['vDecay']} vTh {row['vThMant']}{warn}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
