"""The `student.net` file (docs/loihi_net.md "File"): every read and write of its HDF5 layout.

One file holds `net/` (our layout: any `hwmodels.loihi.Net`) and, when netx runs the net exactly
(`deploy.netx.problem` is None), lava-dl netx's `layer/` chain (lava-dl 0.6.0
`netx.hdf5.Network` reads it):

    attrs              format, version, then Net.attrs (producer, timesteps, dt, ...)
    net/               attrs readout, output;  input_shape
    net/neurons/<i>/   attrs name, role, nodes ("a,b");  shape, iDecay, vDecay, vThMant, [bias]
    net/synapses/<j>/  attrs name, src, dst, kind, recurrent, nodes;  weight, [weight_exp]
                       (Synapses.exp, only when non-zero), conv: stride, padding, dilation
                       (H, W order), groups
    layer/0            type input, shape (C, H, W) or (N,)
    layer/i            type conv | dense | dense_rec (attrs name, nodes), shape, weight, conv
                       fields as above; dense_rec: weight_rec (N, N); bias: dense (N,), conv (C,)
                       when constant over H, W, else (W, H, C); neuron/ type CUBA, iDecay,
                       vDecay, vThMant, refDelay 1, gradedSpike False (left out for netx's
                       default integrator iDecay 0, vDecay 4096, vThMant 1 << 17)
    layer/i            type flatten, before a dense fed by a (C, H, W) source (netx flattens
                       (W, H, C) ports as transpose(2, 1, 0).flatten(): (C, H, W) order)

The file's names for the neuron and convolution fields are translated to `Neurons` / `Synapses`
attributes in one place (NEURON_FIELDS, CONV_FIELDS). One writer and one reader per layout and
layer type: `save_net` / `load_net` (net/), `write_layers` (`_create_input`, `_create_flatten`,
`_create_layer`) / `read_layers` (`_read_layer`) for layer/, and for the file `write`, `read_net`,
`has_layers`. netx's bias becomes bias_mant with bias_exp 6; its iDecay becomes Lava's
du = iDecay - 1 (Lava adds 1); vDecay is Lava's dv; conv weights are stored as torch does
(out, in / groups, kh, kw) and netx flips / transposes them for Lava itself.
"""
from pathlib import Path

import numpy as np

from common.files import atomic_write

from .loihi import INTEGRATOR, Net, NetxError, Neurons, Synapses

FORMAT, VERSION = "snn-kd-loihi/loihi-net", 1
NEURON_FIELDS = {"iDecay": "i_decay", "vDecay": "v_decay", "vThMant": "vth"}  # file: Neurons
CONV_FIELDS = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1)}       # and their defaults
NETX_KINDS = ("input", "conv", "flatten", "dense", "dense_rec")


def neuron_fields(group) -> dict:
    """{file field: int} of a group's neuron parameters (iDecay, vDecay, vThMant)."""
    return {key: int(getattr(group, attr)) for key, attr in NEURON_FIELDS.items()}


def _ints64(h, key, value):
    h.create_dataset(key, data=np.asarray(value, dtype=np.int64))


def _write_conv(h, s):
    for key in CONV_FIELDS:
        _ints64(h, key, getattr(s, key))
    _ints64(h, "groups", s.groups)


# ---- net/ ---------------------------------------------------------------------------------------

def save_net(f, net):
    """Write `net` into an open h5py.File (group `net/`, file attrs format/version/attrs)."""
    f.attrs["format"], f.attrs["version"] = FORMAT, VERSION
    for key, value in net.attrs.items():
        f.attrs[key] = value
    root = f.create_group("net")
    root.attrs["readout"], root.attrs["output"] = net.readout, net.output
    _ints64(root, "input_shape", net.in_shape)
    for i, g in enumerate(net.neurons):
        h = root.create_group(f"neurons/{i}")
        h.attrs.update(name=g.name, role=g.role, nodes=",".join(g.nodes))
        _ints64(h, "shape", g.shape)
        for key, value in neuron_fields(g).items():
            _ints64(h, key, value)
        if g.bias is not None:
            _ints64(h, "bias", g.bias)
    for i, s in enumerate(net.synapses):
        h = root.create_group(f"synapses/{i}")
        h.attrs.update(name=s.name, src=s.src, dst=s.dst, kind=s.kind, recurrent=bool(s.recurrent),
                       nodes=",".join(s.nodes))
        _ints64(h, "weight", s.weight)
        if s.exp:  # written only when set: a net without exponents is byte-identical to before
            _ints64(h, "weight_exp", s.exp)
        if s.kind == "conv":
            _write_conv(h, s)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nodes(attrs) -> list:
    text = _text(attrs.get("nodes", ""))
    return text.split(",") if text else []


def load_net(f, path) -> Net:
    """The `net/` group of an open h5py.File -> Net (checked); NetxError naming the file."""
    root = f["net"]
    try:
        neurons = []
        for i in range(len(root["neurons"])):
            h = root[f"neurons/{i}"]
            neurons.append(Neurons(
                name=_text(h.attrs["name"]), shape=tuple(int(v) for v in h["shape"][()]),
                **{attr: int(h[key][()]) for key, attr in NEURON_FIELDS.items()},
                bias=np.asarray(h["bias"][()], dtype=np.int64) if "bias" in h else None,
                role=_text(h.attrs.get("role", "neuron")), nodes=_nodes(h.attrs)))
        synapses = []
        count = len(root["synapses"]) if "synapses" in root else 0
        for i in range(count):
            h = root[f"synapses/{i}"]
            conv = {key: tuple(int(v) for v in h[key][()]) for key in CONV_FIELDS if key in h}
            synapses.append(Synapses(
                name=_text(h.attrs["name"]), src=_text(h.attrs["src"]), dst=_text(h.attrs["dst"]),
                kind=_text(h.attrs["kind"]), weight=np.asarray(h["weight"][()], dtype=np.int64),
                groups=int(h["groups"][()]) if "groups" in h else 1,
                recurrent=bool(h.attrs.get("recurrent", False)), nodes=_nodes(h.attrs),
                exp=int(h["weight_exp"][()]) if "weight_exp" in h else 0, **conv))
        attrs = {k: (_text(v) if isinstance(v, (bytes, str)) else v.item() if hasattr(v, "item")
                     else v) for k, v in f.attrs.items() if k not in ("format", "version")}
        net = Net(in_shape=tuple(int(v) for v in root["input_shape"][()]), neurons=neurons,
                  synapses=synapses, readout=_text(root.attrs["readout"]),
                  output=_text(root.attrs["output"]), attrs=attrs)
    except (KeyError, ValueError, TypeError) as e:
        raise NetxError(f"{path}: malformed net/ group ({type(e).__name__}: {e})") from None
    return net.check(str(path))


# ---- layer/: lava-dl netx's chain ---------------------------------------------------------------

def _conv_bias(bias):
    """(C, H, W) bias -> netx's per-channel (C,) when constant over H, W, else (W, H, C)."""
    if np.all(bias == bias[:, :1, :1]):
        return bias[:, 0, 0]
    return np.transpose(bias, (2, 1, 0))


def _netx_bias(g, out, path, where):
    """netx's bias -> (out shape) bias_mant: dense (N,); conv per channel (C,) or per neuron in
    netx's (W, H, C) order (netx.blocks.AbstractBlock._neuron); the inverse of _conv_bias."""
    bias = np.asarray(g["bias"][()]).astype(np.int64)
    if len(out) == 3 and bias.shape == tuple(out[::-1]):
        return np.transpose(bias, (2, 1, 0)).copy()
    if len(out) == 3 and bias.shape == (out[0],):
        return np.broadcast_to(bias[:, None, None], out).copy()
    if bias.size != int(np.prod(out)) or len(out) == 3:
        raise NetxError(f"{path}: {where} bias of shape {bias.shape} does not fit {out}")
    return bias.reshape(out)


class _Layers:
    """Numbered netx layers `layer/0..` in an open h5py.File."""

    def __init__(self, f):
        self.root, self.count = f.create_group("layer"), 0

    def new(self, kind, **attrs):
        g = self.root.create_group(str(self.count))
        self.count += 1
        g.create_dataset("type", data=np.array([kind.encode("ascii")]))
        g.attrs.update(attrs)
        return g


def _create_input(layers, net):
    _ints64(layers.new("input"), "shape", net.in_shape)


def _create_flatten(layers, attrs):
    layers.new("flatten", **attrs)


def _create_layer(layers, net, grp, attrs):
    """conv | dense | dense_rec: the group's incoming connection(s), bias and neuron."""
    syns = net.incoming(grp.name)
    ff = next(s for s in syns if not s.recurrent)
    rec = [s for s in syns if s.recurrent]
    g = layers.new("dense_rec" if rec else ff.kind, **attrs)
    _ints64(g, "shape", grp.shape)
    _ints64(g, "weight", ff.weight)
    if rec:
        _ints64(g, "weight_rec", rec[0].weight)
    if ff.kind == "conv":
        _write_conv(g, ff)
    if grp.bias is not None:
        bias = np.asarray(grp.bias, dtype=np.int64)
        _ints64(g, "bias", _conv_bias(bias) if bias.ndim == 3 else bias)
    params = neuron_fields(grp)
    if ff.kind == "conv" or params != INTEGRATOR:
        n = g.create_group("neuron")
        n.create_dataset("type", data=np.array([b"CUBA"]))
        for key, value in params.items():
            _ints64(n, key, value)
        _ints64(n, "refDelay", 1)
        n.create_dataset("gradedSpike", data=np.bool_(False))


def write_layers(f, net):
    """Write netx's `layer/` chain of `net` (a chain, Net.chain(), whose dense layers are 1-D)
    into the open h5py.File `f`. Whether netx runs it exactly is the caller's question
    (deploy.netx.problem)."""
    layers = _Layers(f)
    _create_input(layers, net)
    for grp in net.neurons:
        ff = next(s for s in net.incoming(grp.name) if not s.recurrent)
        attrs = {"name": grp.name, "nodes": ",".join(grp.nodes)}
        if ff.kind == "dense" and len(net.shape_of(ff.src)) == 3:
            _create_flatten(layers, attrs)
        _create_layer(layers, net, grp, attrs)


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


def _pair(group, key):
    if key not in group:
        return CONV_FIELDS[key]
    a = np.asarray(group[key][()]).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def read_layers(group, path) -> Net:
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
        if kind not in NETX_KINDS:
            raise NetxError(f"{path}: {where} has type {kind!r}; supported: "
                            f"{', '.join(NETX_KINDS)}")
        name = f"{kind.split('_')[0]}{len(neurons) + 1}"
        group_, syn = _read_layer(g, kind, shape, name, prev, path, where)
        neurons.append(group_)
        synapses += syn
        shape, prev = group_.shape, name
    if not neurons:
        raise NetxError(f"{path}: no conv or dense layers")
    return Net(in_shape=in_shape, neurons=neurons, synapses=synapses).check(str(path))


def _read_layer(g, kind, shape, name, prev, path, where):
    """One conv | dense | dense_rec layer -> (Neurons, [Synapses])."""
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
        params = {k: int(_ints(n, k, path, nwhere)[0]) for k in NEURON_FIELDS}
    elif kind == "conv":
        raise NetxError(f"{path}: {where} conv layer without a neuron group")
    else:
        params = INTEGRATOR
    nodes = _nodes(g.attrs)
    if kind == "conv":
        groups = int(_ints(g, "groups", path, where)[0]) if "groups" in g else 1
        syn = Synapses(name=f"{name}.w", src=prev, dst=name, kind="conv", weight=weight,
                       groups=groups, nodes=nodes, **{k: _pair(g, k) for k in CONV_FIELDS})
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
    group_ = Neurons(name=name, shape=out, **{NEURON_FIELDS[k]: v for k, v in params.items()},
                     bias=bias, role="neuron" if "neuron" in g else "readout", nodes=nodes)
    return group_, syns


# ---- the file -----------------------------------------------------------------------------------

def write(path, net, layers):
    """student.net, written atomically: `net/`, plus netx's `layer/` chain when `layers`."""
    import h5py

    def fill(tmp):
        with h5py.File(tmp, "w") as f:
            save_net(f, net)
            if layers:
                write_layers(f, net)

    atomic_write(path, fill)


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
            return load_net(f, path)
        if "layer" in f and len(f["layer"]):
            return read_layers(f["layer"], path)
    raise NetxError(f"{path}: neither a 'net' nor a netx 'layer' group")


def has_layers(path) -> bool:
    """Whether the file holds a netx `layer/` chain (then lava-dl's netx builds the Lava run)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return "layer" in f and len(f["layer"]) > 0
    except OSError:
        return False
