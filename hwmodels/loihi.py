"""A compiled Loihi network (one description for compile, emulator, Lava and energy) and a
batched torch emulator of Lava's fixed-point arithmetic on it.

A `Net` is a graph of neuron groups (`Neurons`: one Lava LIF process each) joined by synaptic
connections (`Synapses`: one Lava Dense or Conv process each). A group sums the currents of all its
incoming connections; a connection may start at the network input, at any group (fan-out), and may
be recurrent (a group onto itself). docs/loihi_net.md describes the file layout (`net/` group of an
HDF5 file, next to a netx `layer/` chain when netx can express the network).

Pure torch + h5py (no Lava import), so it runs on any Python / torch and on CUDA. It reproduces
lava-nc 0.10.0 `PyLifModelBitAcc`, `PyDenseModelBitAcc`, `PyConvModelFixed` and lava-dl 0.6.0
netx (`utils.optimize_weight_bits`) bit for bit; tests check every spike against Lava.

Per group and step (all integers; a = summed input of all incoming connections):

    conv:   a_c = wrap24(conv2d(x, W))                     wrap24(z) = (z + 2^23) mod 2^24 - 2^23
    dense:  a_c = (x . W_lava) >> -e  (<< e if e > 0)      W_lava, e: netx optimize_weight_bits,
                                                           then Lava's clip and LSB truncation
    neuron: u = trunc(u (4096 - iDecay) / 4096) + (a << 6), then one wrap: u - 2^24 if u > 2^23,
            u + 2^24 if u <= -2^23 (Lava subtracts once; it is not a modulo)
            v = clip(trunc(v (4096 - vDecay) / 4096) + u + (bias << 6), -(2^23 - 1), 2^23 - 1)
            s = v > vThMant << 6;   v = 0 where s          (u is not reset)

A group with vThMant = 1 << 17 never spikes (v is clipped below 2^23): netx's non-leaky integrator
(iDecay 0, vDecay 4096: u accumulates, v = u) is such a group, used as the readout.

Time: the emulator runs in the float model's time, with no synaptic delay: a group sees its
feed-forward inputs of the same step, and a recurrent connection delivers the spikes of the
previous step. Lava delays every synapse by one step; deploy.compile inserts relay groups so
that every feed-forward path into a group has the same length, so Lava's output of a group at
depth d (synapses on its path from the input) is the emulator's output d steps later.

Readout (`Net.readout`): 'state' scores a sample by the output group's final v, 'spikes' by its
spike counts over the run; the prediction is the argmax of the score (first index on ties).
"""
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from common.loihi import (ACT_SHIFT, DECAY_UNITY, STATE_MAX, VTH_MAX, VTH_SHIFT,  # noqa: F401
                          clip24, trunc_decay, wrap24)

# netx's default neuron for a dense layer without one; netx writes `1 << 18 - 1`, i.e. 1 << 17
NEVER_SPIKES = 1 << 17       # vThMant of a group that never spikes (v < 2^23 = (1 << 17) << 6)
INTEGRATOR = {"iDecay": 0, "vDecay": DECAY_UNITY, "vThMant": NEVER_SPIKES}
FLOAT32_EXACT = 1 << 24      # integer sums below this are exact in float32
FLOAT64_STATE = 1 << 41      # |u| below this: u (4096 - d) < 2^53, exact in float64


class NetxError(ValueError):
    """A network (file) that cannot be read or run; the message names the file and field."""


def netx_weight_bits(weight):
    """lava-dl netx's `utils.optimize_weight_bits` in numpy: integer weights -> (scaled integer
    weights, num_weight_bits, weight_exp) as netx hands them to Lava's Dense; int64 numpy.

    Sign mode from the matrix (max < 0 inhibitory, min >= 0 excitatory, else mixed),
    scale = 255/max | -256/min | min(127/max, -128/min), s = floor(log2 scale) (+1 when mixed),
    w <<= s, weight_exp = -s, num_weight_bits = 8 - s - n (n = common power-of-two factor,
    -1 when mixed).
    """
    w = np.asarray(weight, dtype=np.int64)
    wmax, wmin = int(w.max()), int(w.min())
    if wmax > 254 and wmin < 0 or wmin < -256 and wmax > 0:
        w = np.clip(w, -256, 254)
        wmax, wmin = int(w.max()), int(w.min())
    if wmax == 0 and wmin == 0:
        raise NetxError("all weights are zero (netx's optimize_weight_bits cannot scale them)")
    signed = int(not (wmax < 0 or wmin >= 0))
    if signed:
        scale = min(127 / wmax if wmax > 0 else np.inf, -128 / wmin)
    elif wmax < 0:
        scale = -256 / wmin
    else:
        scale = 255 / wmax
    shift = int(np.floor(np.log2(scale))) + signed
    n = 8
    while n > 0 and np.any(w % (1 << n)):
        n -= 1
    return w << shift, 8 - shift - (n - signed), -shift


def lava_dense_realise(w, num_bits):
    """The weights Lava's Dense really uses (proc/dense/models.py) for netx's scaled weights w:
    sign mode again (min >= 0 excitatory, max <= 0 inhibitory, else mixed), clip to 8 bits (+sign)
    and truncate t = 8 - num_bits (+1 when mixed) LSBs: w = (w >> t) << t (on -w when
    inhibitory)."""
    w = np.asarray(w, dtype=np.int64)
    lava_min, lava_max = int(w.min()), int(w.max())
    mode = "exc" if lava_min >= 0 else "inh" if lava_max <= 0 else "mixed"
    if mode == "inh":
        w = -w
    mixed = int(mode == "mixed")
    w = np.clip(w, -256 * mixed, 255)
    t = 8 - num_bits + mixed
    if t < 0:
        raise NetxError(f"negative truncation {t} (weights outside netx's range)")
    w = (w >> t) << t
    return -w if mode == "inh" else w


def lava_dense_weights(weight):
    """Integer weights -> (weights Lava's Dense really uses, weight_exp); int64 numpy:
    `netx_weight_bits`, then `lava_dense_realise`. For int8 weights this is exact except
    all-non-positive matrices whose minimum is a power of two (-256 clips to -255); the
    emulator reproduces that too.
    """
    w, num_bits, exp = netx_weight_bits(weight)
    return lava_dense_realise(w, num_bits), exp


def conv_out_size(n, k, s, p, d) -> int:
    """Output length of a convolution along one axis (torch / netx convention)."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


FORMAT, VERSION = "snn-kd-loihi/loihi-net", 1


@dataclass
class Neurons:
    """A group of Loihi CUBA neurons (one Lava LIF process); equations in the module docstring."""
    name: str
    shape: tuple              # (C, H, W) or (N,)
    i_decay: int              # iDecay: current lost per step, out of 4096
    v_decay: int              # vDecay: voltage lost per step, out of 4096
    vth: int                  # vThMant; NEVER_SPIKES for a readout that only integrates
    bias: np.ndarray = None   # bias_mant per neuron (int64, shape), bias_exp 6: v += bias << 6
    role: str = "neuron"      # 'neuron' | 'relay' | 'bias' | 'readout' (docs/loihi_net.md)
    nodes: list = field(default_factory=list)  # NIR nodes it came from

    @property
    def spiking(self) -> bool:
        return self.vth < NEVER_SPIKES

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Synapses:
    """A synaptic connection src -> dst (one Lava Dense or Conv process).

    src is 'input' or a group name. Dense weights are (dst size, src size) over the source
    flattened in (C, H, W) order; conv weights (out, in / groups, kh, kw) as in torch.
    A recurrent connection delivers the source's spikes of the previous step.
    """
    name: str
    src: str
    dst: str
    kind: str                 # 'conv' | 'dense'
    weight: np.ndarray        # int64
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    recurrent: bool = False
    nodes: list = field(default_factory=list)

    @functools.cached_property
    def _lava(self):
        if self.kind == "conv":
            return self.weight, 0
        return lava_dense_weights(self.weight)

    @property
    def lava_weight(self) -> np.ndarray:
        """What Lava's synapse multiplies with (dense: after netx's and Lava's weight scaling)."""
        return self._lava[0]

    @property
    def weight_exp(self) -> int:
        """Dense: Lava shifts the weighted sum by this (netx weight exponent); conv: 0."""
        return self._lava[1]

    def out_shape(self, in_shape) -> tuple:
        if self.kind == "dense":
            return (self.weight.shape[0],)
        return (self.weight.shape[0], *(conv_out_size(in_shape[1 + a], self.weight.shape[2 + a],
                                                      self.stride[a], self.padding[a],
                                                      self.dilation[a]) for a in (0, 1)))


@dataclass
class Net:
    """Neuron groups in topological order (feed-forward connections go forward) and connections."""
    in_shape: tuple
    neurons: list
    synapses: list
    readout: str = "state"    # 'state' | 'spikes'
    output: str = None        # name of the output group (default: the last)
    attrs: dict = field(default_factory=dict)   # producer, timesteps, dt, ...

    def __post_init__(self):
        self.in_shape = tuple(int(s) for s in self.in_shape)
        self.output = self.output or self.neurons[-1].name

    def group(self, name) -> Neurons:
        return next(g for g in self.neurons if g.name == name)

    def shape_of(self, name) -> tuple:
        return self.in_shape if name == "input" else self.group(name).shape

    def incoming(self, name) -> list:
        return [s for s in self.synapses if s.dst == name]

    def depths(self) -> dict:
        """Synapses on the longest feed-forward path from the input to each group (input: 0)."""
        depth = {"input": 0}
        for g in self.neurons:
            depth[g.name] = 1 + max(depth[s.src] for s in self.incoming(g.name) if not s.recurrent)
        return depth

    def chain(self) -> bool:
        """True when netx's layer list can express the net: each group fed by the one before it
        (the first by the input), plus at most a dense recurrent connection onto itself."""
        prev = "input"
        for g in self.neurons:
            ff = [s for s in self.incoming(g.name) if not s.recurrent]
            rec = [s for s in self.incoming(g.name) if s.recurrent]
            if len(ff) != 1 or ff[0].src != prev or len(rec) > 1 or \
                    any(r.kind != "dense" for r in rec):
                return False
            prev = g.name
        return self.output == prev and all(g.spiking for g in self.neurons[:-1])

    def check(self, where="net"):
        """Raise NetxError naming the group or connection that does not fit together."""
        names = [g.name for g in self.neurons]
        if len(set(names)) != len(names) or "input" in names:
            raise NetxError(f"{where}: group names must be unique and not 'input'")
        if self.readout not in ("state", "spikes"):
            raise NetxError(f"{where}: readout {self.readout!r} (expected 'state' or 'spikes')")
        if self.output not in names:
            raise NetxError(f"{where}: output group {self.output!r} does not exist")
        seen = {"input"}
        for g in self.neurons:
            if g.bias is not None and tuple(np.shape(g.bias)) != tuple(g.shape):
                raise NetxError(f"{where}: group {g.name!r} bias shape {np.shape(g.bias)} is not "
                                f"{g.shape}")
            inputs = self.incoming(g.name)
            if not any(not s.recurrent for s in inputs):
                raise NetxError(f"{where}: group {g.name!r} has no feed-forward input")
            for s in inputs:
                if s.src not in seen and not (s.recurrent and s.src in names):
                    raise NetxError(f"{where}: connection {s.name!r} from {s.src!r} to "
                                    f"{g.name!r} goes backwards (mark it recurrent or reorder)")
                src_shape = self.shape_of(s.src)
                if s.kind == "dense":
                    want = (g.size, int(np.prod(src_shape)))
                    if tuple(s.weight.shape) != want:
                        raise NetxError(f"{where}: connection {s.name!r} dense weight "
                                        f"{tuple(s.weight.shape)}, expected {want}")
                elif s.kind == "conv":
                    if len(src_shape) != 3 or s.weight.ndim != 4 or \
                            src_shape[0] != s.weight.shape[1] * s.groups:
                        raise NetxError(f"{where}: connection {s.name!r} conv weight "
                                        f"{tuple(s.weight.shape)} does not take {src_shape}")
                    if s.out_shape(src_shape) != tuple(g.shape):
                        raise NetxError(f"{where}: connection {s.name!r} gives "
                                        f"{s.out_shape(src_shape)}, group {g.name!r} is {g.shape}")
                else:
                    raise NetxError(f"{where}: connection {s.name!r} kind {s.kind!r}")
            seen.add(g.name)
        for s in self.synapses:
            if s.dst not in names:
                raise NetxError(f"{where}: connection {s.name!r} ends at unknown group {s.dst!r}")
        return self


# ---- file: the `net/` group of an HDF5 file (docs/loihi_net.md) ---------------------------------

def save_net(f, net):
    """Write `net` into an open h5py.File (group `net/`, file attrs format/version/attrs)."""
    f.attrs["format"], f.attrs["version"] = FORMAT, VERSION
    for key, value in net.attrs.items():
        f.attrs[key] = value
    root = f.create_group("net")
    root.attrs["readout"], root.attrs["output"] = net.readout, net.output
    root.create_dataset("input_shape", data=np.array(net.in_shape, dtype=np.int64))
    for i, g in enumerate(net.neurons):
        h = root.create_group(f"neurons/{i}")
        h.attrs.update(name=g.name, role=g.role, nodes=",".join(g.nodes))
        h.create_dataset("shape", data=np.array(g.shape, dtype=np.int64))
        for key, value in (("iDecay", g.i_decay), ("vDecay", g.v_decay), ("vThMant", g.vth)):
            h.create_dataset(key, data=np.int64(value))
        if g.bias is not None:
            h.create_dataset("bias", data=np.asarray(g.bias, dtype=np.int64))
    for i, s in enumerate(net.synapses):
        h = root.create_group(f"synapses/{i}")
        h.attrs.update(name=s.name, src=s.src, dst=s.dst, kind=s.kind, recurrent=bool(s.recurrent),
                       nodes=",".join(s.nodes))
        h.create_dataset("weight", data=np.asarray(s.weight, dtype=np.int64))
        if s.kind == "conv":
            for key in ("stride", "padding", "dilation"):
                h.create_dataset(key, data=np.array(getattr(s, key), dtype=np.int64))
            h.create_dataset("groups", data=np.int64(s.groups))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nodes(attrs) -> list:
    text = _text(attrs.get("nodes", ""))
    return text.split(",") if text else []


def _load_net(f, path) -> Net:
    root = f["net"]
    try:
        neurons = []
        for i in range(len(root["neurons"])):
            h = root[f"neurons/{i}"]
            neurons.append(Neurons(
                name=_text(h.attrs["name"]), shape=tuple(int(v) for v in h["shape"][()]),
                i_decay=int(h["iDecay"][()]), v_decay=int(h["vDecay"][()]),
                vth=int(h["vThMant"][()]),
                bias=np.asarray(h["bias"][()], dtype=np.int64) if "bias" in h else None,
                role=_text(h.attrs.get("role", "neuron")), nodes=_nodes(h.attrs)))
        synapses = []
        count = len(root["synapses"]) if "synapses" in root else 0
        for i in range(count):
            h = root[f"synapses/{i}"]
            conv = {key: tuple(int(v) for v in h[key][()]) for key in
                    ("stride", "padding", "dilation") if key in h}
            synapses.append(Synapses(
                name=_text(h.attrs["name"]), src=_text(h.attrs["src"]), dst=_text(h.attrs["dst"]),
                kind=_text(h.attrs["kind"]), weight=np.asarray(h["weight"][()], dtype=np.int64),
                groups=int(h["groups"][()]) if "groups" in h else 1,
                recurrent=bool(h.attrs.get("recurrent", False)), nodes=_nodes(h.attrs), **conv))
        attrs = {k: (_text(v) if isinstance(v, (bytes, str)) else v.item() if hasattr(v, "item")
                     else v) for k, v in f.attrs.items() if k not in ("format", "version")}
        net = Net(in_shape=tuple(int(v) for v in root["input_shape"][()]), neurons=neurons,
                  synapses=synapses, readout=_text(root.attrs["readout"]),
                  output=_text(root.attrs["output"]), attrs=attrs)
    except (KeyError, ValueError, TypeError) as e:
        raise NetxError(f"{path}: malformed net/ group ({type(e).__name__}: {e})") from None
    return net.check(str(path))


def read_net(path) -> Net:
    """A compiled network: our `net/` layout, or a plain lava-dl netx chain (`layer/`)."""
    import h5py
    path = Path(path)
    if not path.is_file():
        raise NetxError(f"{path}: network file not found")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise NetxError(f"{path}: not a readable HDF5 file") from None
    with f:
        if "net" in f:
            return _load_net(f, path)
        if "layer" in f and len(f["layer"]):
            return _netx_chain(f["layer"], path)
    raise NetxError(f"{path}: neither a 'net' nor a netx 'layer' group")


# ---- plain netx chains (files written by lava-dl) ----------------------------------------------

def _value(group, key, path, where):
    """A dataset's value; a string for byte-string datasets (netx stores `type` that way)."""
    if key not in group:
        raise NetxError(f"{path}: {where} has no field {key!r}")
    value = group[key][()]
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        value = value.reshape(-1)[0]
    return value.decode("ascii") if isinstance(value, bytes) else value


def _ints(group, key, path, where) -> tuple:
    return tuple(int(v) for v in np.asarray(_value(group, key, path, where)).reshape(-1))


def _pair(group, key, default):
    if key not in group:
        return default
    a = np.asarray(group[key][()]).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def _netx_chain(group, path) -> Net:
    """netx `layer/0..n-1` (input, conv, flatten, dense, dense_rec) -> Net."""
    in_shape, shape, prev, neurons, synapses = None, None, "input", [], []
    for i in range(len(group)):
        where = f"layer/{i}"
        if str(i) not in group:
            raise NetxError(f"{path}: {where} missing (layers must be 0..n-1)")
        g = group[str(i)]
        kind = _value(g, "type", path, where)
        if kind == "input":
            if shape is not None:
                raise NetxError(f"{path}: {where} input layer is not the first layer")
            if "neuron" in g:
                raise NetxError(f"{path}: {where} input layer with a neuron is not supported")
            in_shape = shape = _ints(g, "shape", path, where)
            continue
        if shape is None:
            raise NetxError(f"{path}: {where} ({kind}) comes before any input layer")
        if neurons and not neurons[-1].spiking:
            raise NetxError(f"{path}: {where} follows {neurons[-1].name}, which has no neuron "
                            f"group and sends no spikes")
        if kind == "flatten":
            shape = (int(np.prod(shape)),)
            continue
        if kind not in ("conv", "dense", "dense_rec"):
            raise NetxError(f"{path}: {where} has type {kind!r}; supported: input, conv, "
                            f"flatten, dense, dense_rec")
        name = f"{kind.split('_')[0]}{len(neurons) + 1}"
        group_, syn = _netx_layer(g, kind, shape, name, prev, path, where)
        neurons.append(group_)
        synapses += syn
        shape, prev = group_.shape, name
    if not neurons:
        raise NetxError(f"{path}: no conv or dense layers")
    return Net(in_shape=in_shape, neurons=neurons, synapses=synapses).check(str(path))


def _netx_bias(g, out, path, where):
    """netx's bias -> (out shape) bias_mant: dense (N,); conv per channel (C,) or per neuron in
    netx's (W, H, C) order (netx.blocks.AbstractBlock._neuron)."""
    bias = np.asarray(g["bias"][()]).astype(np.int64)
    if len(out) == 3 and bias.shape == tuple(out[::-1]):
        return np.transpose(bias, (2, 1, 0)).copy()
    if len(out) == 3 and bias.shape == (out[0],):
        return np.broadcast_to(bias[:, None, None], out).copy()
    if bias.size != int(np.prod(out)) or len(out) == 3:
        raise NetxError(f"{path}: {where} bias of shape {bias.shape} does not fit {out}")
    return bias.reshape(out)


def _netx_layer(g, kind, shape, name, prev, path, where):
    if "weight" not in g:
        raise NetxError(f"{path}: {where} has no field 'weight'")
    weight = np.asarray(g["weight"][()]).astype(np.int64)
    ndim = 4 if kind == "conv" else 2
    if weight.ndim > ndim and all(n == 1 for n in weight.shape[ndim:]):
        weight = weight.reshape(weight.shape[:ndim])  # drop trailing unit dimensions
    if "neuron" in g:
        n, nwhere = g["neuron"], f"{where}/neuron"
        if _value(n, "type", path, nwhere) not in ("CUBA", "LOIHI"):
            raise NetxError(f"{path}: {nwhere} type is not CUBA")
        params = {k: int(_ints(n, k, path, nwhere)[0]) for k in ("iDecay", "vDecay", "vThMant")}
    elif kind == "conv":
        raise NetxError(f"{path}: {where} conv layer without a neuron group")
    else:
        params = INTEGRATOR
    nodes = _nodes(g.attrs)
    if kind == "conv":
        groups = int(_ints(g, "groups", path, where)[0]) if "groups" in g else 1
        syn = Synapses(name=f"{name}.w", src=prev, dst=name, kind="conv", weight=weight,
                       stride=_pair(g, "stride", (1, 1)), padding=_pair(g, "padding", (0, 0)),
                       dilation=_pair(g, "dilation", (1, 1)), groups=groups, nodes=nodes)
        if len(shape) != 3 or weight.ndim != 4 or shape[0] != weight.shape[1] * groups:
            raise NetxError(f"{path}: {where} conv weight {weight.shape} with groups={groups} "
                            f"does not take {shape}")
        out = syn.out_shape(shape)
    else:
        syn = Synapses(name=f"{name}.w", src=prev, dst=name, kind="dense", weight=weight,
                       nodes=nodes)
        if weight.ndim != 2 or weight.shape[1] != int(np.prod(shape)):
            raise NetxError(f"{path}: {where} dense weight {weight.shape} does not take "
                            f"{int(np.prod(shape))} inputs")
        out = (weight.shape[0],)
    stored = _ints(g, "shape", path, where) if "shape" in g else None
    if stored is not None and int(np.prod(stored)) != int(np.prod(out)):
        raise NetxError(f"{path}: {where} stores shape {stored} but its weights give {out}")
    syns = [syn]
    if kind == "dense_rec":
        rec = np.asarray(g["weight_rec"][()]).astype(np.int64) if "weight_rec" in g else None
        if rec is None or rec.shape != (out[0], out[0]):
            raise NetxError(f"{path}: {where} dense_rec needs weight_rec of shape {(out[0],) * 2}")
        syns.append(Synapses(name=f"{name}.rec", src=name, dst=name, kind="dense", weight=rec,
                             recurrent=True, nodes=nodes))
    bias = _netx_bias(g, out, path, where) if "bias" in g else None
    group_ = Neurons(name=name, shape=out, i_decay=params["iDecay"], v_decay=params["vDecay"],
                     vth=params["vThMant"], bias=bias, role="neuron" if "neuron" in g else "readout",
                     nodes=nodes)
    return group_, syns


# ---- emulator ----------------------------------------------------------------------------------

@dataclass
class Result:
    spikes: dict              # group name -> (B, T, *shape) bool (spiking groups only)
    readout: torch.Tensor     # (B, T, K) int64: v of the output group
    readout_u: torch.Tensor   # (B, T, K) int64: u of the output group
    readout_kind: str = "state"

    @property
    def scores(self):
        """Per-sample score: final v ('state') or spike counts over the run ('spikes')."""
        if self.readout_kind == "spikes":
            return self.output_spikes.sum(1)
        return self.readout[:, -1]

    @property
    def predictions(self):
        return self.scores.argmax(-1)

    output_spikes = None      # (B, T, K) spikes of the output group when it spikes


def neuron_step(u, v, a, group_params, act_shift=ACT_SHIFT):
    """One Loihi CUBA step on int64 tensors; returns (u, v, spikes). group_params: (iDecay,
    vDecay, vth << 6, bias << 6 or None); the input a is added as a << act_shift (Lava's a_in
    in weight steps; act_shift 0 takes a already in state units, as for graded input)."""
    i_decay, v_decay, vth, bias = group_params
    u = wrap24(trunc_decay(u, i_decay) + (a << act_shift))
    v = trunc_decay(v, v_decay) + u
    if bias is not None:
        v = v + bias
    v = clip24(v)
    s = v > vth
    return u, torch.where(s, torch.zeros_like(v), v), s


def _decay_(x, decay):
    """In place: x = trunc(x (4096 - decay) / 4096) on exact float64 integers (the product is
    exact below 2^53, the division by 2^12 too; torch's float div in 'trunc' mode is vectorised,
    its trunc_() is not); no multiply for decay 0 (x) and 4096 (0)."""
    if decay == DECAY_UNITY:
        return x.zero_()
    if decay:
        x.mul_(DECAY_UNITY - decay).div_(DECAY_UNITY, rounding_mode="trunc")
    return x


@dataclass
class _Plan:
    """How a group runs for T steps (static bounds, `Emulator` docstring)."""
    dtype: torch.dtype        # of its summed input currents
    exact: bool               # u, v exact in float64 (else int64 `neuron_step`)
    wrap: bool                # u may leave (-2^23, 2^23]
    clip: bool                # v may leave [-(2^23 - 1), 2^23 - 1]


class Emulator:
    """Fixed-point emulator of a `Net` (module docstring), batched over samples; exact integers
    held in floats.

    Feed-forward connections run for all T steps at once (one conv / matmul over T x B); only the
    neuron update and recurrent connections loop over the steps. The batch runs in blocks of
    block // (largest group's size) samples, so that one step's tensors stay in cache.

    Exactness (every value below is an integer, held exactly):
    - currents: conv / matmul of {0, 1} spikes with integer weights; |current| <= R = the largest
      row sum of |W|. float32 when R < 2^24 on CPU (CUDA may use TF32: float64 there), else
      float64. dense: floor(x.W * 2^e) (= >> -e, << e: a power-of-two scaling, exact);
      conv: wrap24 (in float64) only when R >= 2^23, so |conv current| <= min(R, 2^23).
    - static bounds of a group over T steps: |trunc(x c)| <= c |x| for c = 1 - d/4096, and the
      wrap, the clip and the reset never increase |u| or |v|, so with A = the sum of its
      incoming currents' bounds:
          |u| <= U = 64 A min(T, 4096 / iDecay)              u can wrap only if U >= 2^23
          |v| <= V = (U + 64 max|bias|) min(T, 4096 / vDecay)    v can clip only if V >= 2^23
      the wrap / clip is skipped when it cannot happen. The summed input a is float32 when
      A < 2^24, else float64 (a << 6 = a * 64 is exact either way).
    - u, v are float64: while U < FLOAT64_STATE, u (4096 - d) < 2^53 and |v| <= 2^23 + U + 64 B,
      so the decay's product is exact and trunc() truncates toward zero as Lava does. A group
      beyond that runs `neuron_step` in int64.
    - decay 0 skips the multiply, decay 4096 drops the old state; a non-spiking group (vThMant
      1 << 17: v <= 2^23 - 1 < vth) skips the threshold.
    """

    def __init__(self, net, device="cpu", block=1 << 18):
        self.net = net
        self.in_shape = net.in_shape
        self.device = torch.device(device)
        self.block = block
        self._w, self._bound = {}, {}
        for s in net.synapses:
            try:
                w = torch.from_numpy(np.asarray(s.lava_weight, dtype=np.int64))
            except NetxError as e:
                raise NetxError(f"connection {s.name!r}: {e}") from None
            rows = int(w.abs().reshape(w.shape[0], -1).sum(1).max())
            exact32 = rows < FLOAT32_EXACT and self.device.type == "cpu"
            self._w[s.name] = w.to(self.device, torch.float32 if exact32 else torch.float64)
            if s.kind == "conv":
                self._bound[s.name] = min(rows, STATE_MAX)
            else:  # ceil(rows * 2^e)
                e = s.weight_exp
                self._bound[s.name] = rows << e if e >= 0 else -(-rows >> -e)
        self._ff, self._rec, self._params, self._bias = {}, {}, {}, {}
        for g in net.neurons:
            self._ff[g.name] = [s for s in net.incoming(g.name) if not s.recurrent]
            self._rec[g.name] = [s for s in net.incoming(g.name) if s.recurrent]
            bias = None if g.bias is None or not np.any(g.bias) else \
                torch.as_tensor(np.asarray(g.bias, dtype=np.int64) << VTH_SHIFT, device=self.device)
            self._params[g.name] = (g.i_decay, g.v_decay, g.vth << VTH_SHIFT, bias)
            self._bias[g.name] = None if bias is None else bias.to(torch.float64)

    @classmethod
    def from_file(cls, path, device="cpu"):
        net = read_net(path)
        try:
            return cls(net, device)
        except NetxError as e:
            raise NetxError(f"{path}: {e}") from None

    def _current(self, s, x):
        """Input current of connection s for spikes x (N, *src shape): exact integers in the
        weights' float dtype (float64 where a conv wraps)."""
        w = self._w[s.name]
        x = x.to(w.dtype)
        if s.kind == "conv":
            a = F.conv2d(x, w, None, s.stride, s.padding, s.dilation, s.groups)
            if self._bound[s.name] >= STATE_MAX:  # wrap24, exact in float64
                a = torch.remainder(a.double() + STATE_MAX, 2 * STATE_MAX) - STATE_MAX
            return a
        a = (x.flatten(1) @ w.t()) * 2.0 ** s.weight_exp
        return a if s.weight_exp >= 0 else a.floor_()

    def synapse(self, s, x):
        """Integer input current (int64) of connection s for spikes x of shape (N, *src shape)."""
        return self._current(s, x).to(torch.int64)

    def _inputs(self, inputs):
        x = torch.as_tensor(inputs).to(self.device)
        if tuple(x.shape[2:]) != self.in_shape:
            if int(np.prod(x.shape[2:])) == int(np.prod(self.in_shape)) and \
                    len(self.in_shape) == 1:
                x = x.flatten(2)
            else:
                raise NetxError(f"inputs: shape {tuple(x.shape)} does not match (B, T, "
                                f"{', '.join(map(str, self.in_shape))})")
        return x != 0

    def _plan(self, g, steps) -> _Plan:
        """Static bounds of group g over `steps` steps (class docstring)."""
        a = sum(self._bound[s.name] for s in self.net.incoming(g.name))
        u = 64 * a * (steps if g.i_decay == 0 else min(steps, DECAY_UNITY / g.i_decay))
        bias = 0 if g.bias is None else int(np.abs(g.bias).max()) << VTH_SHIFT
        v = (u + bias) * (steps if g.v_decay == 0 else min(steps, DECAY_UNITY / g.v_decay))
        exact32 = a < FLOAT32_EXACT and self.device.type == "cpu"
        return _Plan(dtype=torch.float32 if exact32 else torch.float64,
                     exact=u < FLOAT64_STATE, wrap=u >= STATE_MAX, clip=v >= STATE_MAX)

    @torch.no_grad()
    def run(self, inputs):
        """inputs (B, T, *in_shape) in {0, 1} -> Result (float-model time, module docstring)."""
        x = self._inputs(inputs)
        b, steps = x.shape[:2]
        plans = {g.name: self._plan(g, steps) for g in self.net.neurons}
        per = max(1, self.block // max(g.size for g in self.net.neurons))
        parts = [self._run_block(x[i:i + per], plans) for i in range(0, max(b, 1), per)]
        spikes = {k: torch.cat([p[0][k] for p in parts]) for k in parts[0][0]}
        u, v = (torch.cat([p[k] for p in parts]) for k in (1, 2))
        result = Result(spikes=spikes, readout=v, readout_u=u, readout_kind=self.net.readout)
        if self.net.readout == "spikes":
            result.output_spikes = spikes[self.net.output].reshape(b, steps, u.shape[-1])
        return result

    def _run_block(self, x, plans):
        """One block of samples through every group: (spikes (B, T, ...) per spiking group,
        u and v (B, T, K) int64 of the output group)."""
        b, steps = x.shape[:2]
        out = {"input": x.transpose(0, 1).reshape(steps * b, *self.in_shape).float()}
        spikes, state = {}, None
        for g in self.net.neurons:
            plan, a = plans[g.name], None
            for s in self._ff[g.name]:
                c = self._current(s, out[s.src]).reshape(steps, b, *g.shape).to(plan.dtype)
                a = c if a is None else a.add_(c)
            keep = g.name == self.net.output
            steps_ = self._steps if plan.exact else self._steps_int64
            s_all, us, vs = steps_(g, plan, a, keep)
            out[g.name] = s_all.reshape(steps * b, *g.shape)
            if g.spiking:
                spikes[g.name] = s_all.transpose(0, 1).bool()
            if keep:
                state = [z.transpose(0, 1).reshape(b, steps, g.size).to(torch.int64)
                         for z in (us, vs)]
        return spikes, *state

    def _recurrent(self, g, s):
        """Summed current of g's recurrent connections for its spikes s (B, *shape)."""
        return sum(self._current(r, s).reshape(s.shape) for r in self._rec[g.name])

    def _steps(self, g, plan, a, keep):
        """The neuron update step by step in float64 (class docstring) for input currents
        a (T, B, *shape) -> (spikes (T, B, *shape) float32, u, v (T, B, *shape) when keep)."""
        u = torch.zeros(a.shape[1:], dtype=torch.float64, device=self.device)
        v = torch.zeros_like(u)
        s_all = (torch.empty if g.spiking else torch.zeros)(a.shape, dtype=torch.float32,
                                                            device=self.device)
        us, vs = (torch.empty(a.shape, dtype=torch.float64, device=self.device)
                  if keep else None for _ in range(2))
        a = a.mul_(1 << ACT_SHIFT)
        bias, vth = self._bias[g.name], float(g.vth << VTH_SHIFT)
        s = torch.empty_like(u)
        for t in range(len(a)):
            at = a[t]
            if self._rec[g.name] and t > 0:  # no spikes before step 0
                at = at + self._recurrent(g, s_all[t - 1]) * (1 << ACT_SHIFT)
            _decay_(u, g.i_decay).add_(at)
            if plan.wrap:  # one wrap, as Lava does (not a modulo)
                u = wrap24(u)
            _decay_(v, g.v_decay).add_(u)
            if bias is not None:
                v.add_(bias)
            if plan.clip:
                v = clip24(v)
            if g.spiking:  # s = [v > vth] = clamp(v - vth, 0, 1) on integers; v = 0 where s
                torch.sub(v, vth, out=s).clamp_(0, 1)
                v.addcmul_(v, s, value=-1)
                s_all[t] = s
            if keep:
                us[t], vs[t] = u, v
        return s_all, us, vs

    def _steps_int64(self, g, plan, a, keep):
        """`_steps` with `neuron_step` in int64, for a group whose u may reach FLOAT64_STATE."""
        u = torch.zeros(a.shape[1:], dtype=torch.int64, device=self.device)
        v = torch.zeros_like(u)
        s_all = torch.zeros(a.shape, dtype=torch.float32, device=self.device)
        us, vs = [], []
        for t in range(len(a)):
            at = a[t].to(torch.int64)
            if self._rec[g.name] and t > 0:
                at = at + self._recurrent(g, s_all[t - 1]).to(torch.int64)
            u, v, s = neuron_step(u, v, at, self._params[g.name])
            s_all[t] = s
            us.append(u)
            vs.append(v)
        return s_all, *((torch.stack(z) if keep else None) for z in (us, vs))
