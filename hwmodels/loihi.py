"""Batched torch emulator of Lava's fixed-point (Loihi) arithmetic for netx networks.

Pure torch + h5py (no Lava import), so it runs on any Python / torch and on CUDA. It reproduces
lava-nc 0.10.0 `PyLifModelBitAcc`, `PyDenseModelBitAcc`, `PyConvModelFixed` and lava-dl 0.6.0
netx (`hdf5.Network`, `utils.optimize_weight_bits`) bit for bit; tests/test_loihi_emulator.py
checks every spike and the readout state against Lava.

Per layer and step (all integers; x = the previous layer's spikes at the same step):

    conv:   a = wrap24(conv2d(x, W))                       wrap24(z) = (z + 2^23) mod 2^24 - 2^23
    dense:  a = (x . W_lava) >> -e  (<< e if e > 0)        W_lava, e: netx optimize_weight_bits,
                                                           then Lava's clip and LSB truncation
    neuron: u = trunc(u (4096 - iDecay) / 4096) + (a << 6), then one wrap: u - 2^24 if u > 2^23,
            u + 2^24 if u <= -2^23 (Lava subtracts once; it is not a modulo)
            v = clip(trunc(v (4096 - vDecay) / 4096) + u, -(2^23 - 1), 2^23 - 1)
            s = v > vThMant << 6;   v = 0 where s          (u is not reset)

A dense layer without a `neuron` group is netx's non-leaky integrator: iDecay 0, vDecay 4096,
vThMant 1 << 17, so u accumulates, v = u (clipped) and it never spikes.

Time: Lava's synapses send at step t what they received at t-1, so layer l (1-based) of a netx
network sees the input l steps late. The emulator removes that delay: its spikes and readout are
aligned with the input steps, as the float student computes them (states start at zero, and
nothing happens before the first input arrives, so the shift is exact).

Layer names: `conv<i>` / `dense<i>` with i the 1-based position among the synaptic layers of the
file (the default student: conv1, conv2, dense3, dense4 = readout); `Layer.nodes` lists the NIR nodes
each one came from when deploy.compile wrote the file.
"""
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

DECAY_UNITY = 4096           # decays are fractions of 2^12
STATE_MAX = 1 << 23          # u, v are 24-bit signed
VTH_MAX = (1 << 17) - 1      # vThMant is 17-bit unsigned
ACT_SHIFT = VTH_SHIFT = 6    # a_in and vth are MSB-aligned by 6 bits
# netx's default neuron for a dense layer without one; netx writes `1 << 18 - 1`, i.e. 1 << 17
INTEGRATOR = {"iDecay": 0, "vDecay": DECAY_UNITY, "vThMant": 1 << 17}
FLOAT32_EXACT = 1 << 24      # integer sums below this are exact in float32


class NetxError(ValueError):
    """A netx file the emulator cannot read; the message names the file and field."""


def lava_dense_weights(weight):
    """Integer weights -> (weights Lava's Dense really uses, weight_exp); int64 numpy.

    netx `optimize_weight_bits`: sign mode from the matrix (max < 0 inhibitory, min >= 0
    excitatory, else mixed), scale = 255/max | -256/min | min(127/max, -128/min),
    s = floor(log2 scale) (+1 when mixed), w <<= s, weight_exp = -s, num_weight_bits = 8 - s - n
    (n = common power-of-two factor, -1 when mixed). Lava's Dense then re-derives the sign mode
    (min >= 0 excitatory, max <= 0 inhibitory), clips to 8 bits (+sign) and truncates
    t = 8 - num_weight_bits (+1 when mixed) LSBs: w = (w >> t) << t (on -w when inhibitory).
    For int8 weights this is exact except all-non-positive matrices whose minimum is a power of
    two (-256 clips to -255); the emulator reproduces that too.
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
    num_bits = 8 - shift - (n - signed)
    w = w << shift
    # Lava Dense (proc/dense/models.py): sign mode again, clip_weights, truncate_weights
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
    if mode == "inh":
        w = -w
    return w, -shift


def conv_out_size(n, k, s, p, d) -> int:
    """Output length of a convolution along one axis (torch / netx convention)."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@dataclass
class Layer:
    """One synaptic layer of a netx network (+ its neuron group). Shapes are (C, H, W) / (N,)."""
    name: str
    kind: str                 # 'conv' | 'dense'
    in_shape: tuple
    out_shape: tuple
    weight: torch.Tensor      # int64 as stored: conv (out, in / groups, kh, kw), dense (out, in)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    has_neuron: bool = True   # False: netx's non-leaky integrator (readout)
    i_decay: int = 0
    v_decay: int = 0
    vth: int = 0
    nodes: list = field(default_factory=list)

    @functools.cached_property
    def _lava(self):
        if self.kind == "conv":
            return self.weight, 0
        w, exp = lava_dense_weights(self.weight.numpy())
        return torch.from_numpy(w), exp

    @property
    def lava_weight(self) -> torch.Tensor:
        """What Lava's synapse multiplies with (dense: after netx's and Lava's weight scaling)."""
        return self._lava[0]

    @property
    def weight_exp(self) -> int:
        """Dense: Lava shifts the weighted sum by this (netx weight exponent); conv: 0."""
        return self._lava[1]


@dataclass
class Result:
    spikes: dict              # layer name -> (B, T, *out_shape) bool (spiking layers only)
    readout: torch.Tensor     # (B, T, K) int64: v of the last layer
    readout_u: torch.Tensor   # (B, T, K) int64: u of the last layer
    layers: list

    @property
    def predictions(self):
        return self.readout[:, -1].argmax(-1)


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


def read_netx(path):
    """Parse a netx HDF5 file -> (input shape, [Layer]); NetxError naming file and field."""
    import h5py
    path = Path(path)
    if not path.is_file():
        raise NetxError(f"{path}: netx file not found")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise NetxError(f"{path}: not a readable HDF5 file") from None
    with f:
        if "layer" not in f or len(f["layer"]) == 0:
            raise NetxError(f"{path}: no 'layer' group (not a netx network)")
        group = f["layer"]
        in_shape, shape, layers = None, None, []
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
            if layers and not layers[-1].has_neuron:
                raise NetxError(f"{path}: {where} follows {layers[-1].name}, which has no neuron "
                                f"group and sends no spikes")
            if kind == "flatten":
                shape = (int(np.prod(shape)),)
                continue
            if kind not in ("conv", "dense"):
                raise NetxError(f"{path}: {where} has type {kind!r}; supported: input, conv, "
                                f"flatten, dense")
            layer = _synaptic_layer(g, kind, shape, f"{kind}{len(layers) + 1}", path, where)
            layers.append(layer)
            shape = layer.out_shape
    if not layers:
        raise NetxError(f"{path}: no conv or dense layers")
    return in_shape, layers


def _synaptic_layer(g, kind, shape, name, path, where) -> Layer:
    if "weight" not in g:
        raise NetxError(f"{path}: {where} has no field 'weight'")
    if "bias" in g:
        raise NetxError(f"{path}: {where} has a bias (not emulated)")
    weight = np.asarray(g["weight"][()]).astype(np.int64)
    ndim = 2 if kind == "dense" else 4
    if weight.ndim > ndim and all(n == 1 for n in weight.shape[ndim:]):
        weight = weight.reshape(weight.shape[:ndim])  # drop trailing unit dimensions
    if "neuron" in g:
        n, nwhere = g["neuron"], f"{where}/neuron"
        if _value(n, "type", path, nwhere) not in ("CUBA", "LOIHI"):
            raise NetxError(f"{path}: {nwhere} type is not CUBA")
        neuron = {k: int(_ints(n, k, path, nwhere)[0]) for k in ("iDecay", "vDecay", "vThMant")}
    elif kind == "conv":
        raise NetxError(f"{path}: {where} conv layer without a neuron group")
    else:
        neuron = INTEGRATOR
    common = dict(name=name, kind=kind, weight=torch.from_numpy(weight),
                  nodes=str(g.attrs["nodes"]).split(",") if "nodes" in g.attrs else [],
                  has_neuron="neuron" in g, i_decay=neuron["iDecay"], v_decay=neuron["vDecay"],
                  vth=neuron["vThMant"])
    stored = _ints(g, "shape", path, where) if "shape" in g else None
    if kind == "dense":
        n_in = int(np.prod(shape))
        if weight.ndim != 2 or weight.shape[1] != n_in:
            raise NetxError(f"{path}: {where} dense weight {weight.shape} does not take "
                            f"{n_in} inputs")
        out = (weight.shape[0],)
        if stored is not None and int(np.prod(stored)) != out[0]:
            raise NetxError(f"{path}: {where} stores shape {stored} for {out[0]} outputs")
        return Layer(in_shape=(n_in,), out_shape=stored or out, **common)
    groups = int(_ints(g, "groups", path, where)[0]) if "groups" in g else 1
    if len(shape) != 3 or weight.ndim != 4:
        raise NetxError(f"{path}: {where} conv needs a (C, H, W) input and a 4-d weight, got "
                        f"{shape} and {weight.shape}")
    if shape[0] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise NetxError(f"{path}: {where} conv weight {weight.shape} with groups={groups} does "
                        f"not take {shape[0]} channels")
    stride, padding, dilation = (_pair(g, "stride", (1, 1)), _pair(g, "padding", (0, 0)),
                                 _pair(g, "dilation", (1, 1)))
    out = (weight.shape[0], *(conv_out_size(shape[1 + a], weight.shape[2 + a], stride[a],
                                            padding[a], dilation[a]) for a in (0, 1)))
    if stored is not None and stored != out:
        raise NetxError(f"{path}: {where} stores shape {stored} but its conv gives {out}")
    return Layer(in_shape=tuple(shape), out_shape=out, stride=stride, padding=padding,
                 dilation=dilation, groups=groups, **common)


def _trunc_decay(x, decay):
    """sign(x (4096 - d)) * (|x (4096 - d)| >> 12): multiply, then truncate toward zero."""
    return torch.div(x * (DECAY_UNITY - decay), DECAY_UNITY, rounding_mode="trunc")


class Emulator:
    """Vectorised fixed-point emulator of a netx network (see module docstring)."""

    def __init__(self, in_shape, layers, device="cpu"):
        self.in_shape = tuple(in_shape)
        self.layers = layers
        self.device = torch.device(device)
        self._weights = []
        for layer in layers:
            try:
                w = layer.lava_weight
            except NetxError as e:
                raise NetxError(f"{layer.name}: {e}") from None
            bound = int(w.abs().reshape(w.shape[0], -1).sum(1).max())
            # float32 sums of integers are exact below 2^24; CUDA may use TF32, so use float64
            exact32 = bound < FLOAT32_EXACT and self.device.type == "cpu"
            self._weights.append(w.to(self.device, torch.float32 if exact32 else torch.float64))

    @classmethod
    def from_netx(cls, path, device="cpu"):
        in_shape, layers = read_netx(path)
        try:
            return cls(in_shape, layers, device)
        except NetxError as e:
            raise NetxError(f"{path}: {e}") from None

    def _synapse(self, i, layer, x):
        w = self._weights[i]
        x = x.to(w.dtype)
        if layer.kind == "conv":
            a = F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
            a = a.to(torch.int64)
            return torch.remainder(a + STATE_MAX, 2 * STATE_MAX) - STATE_MAX  # conv clamps 24 bit
        a = (x.flatten(1) @ w.t()).to(torch.int64)
        return a << layer.weight_exp if layer.weight_exp > 0 else a >> -layer.weight_exp

    @torch.no_grad()
    def run(self, inputs):
        """inputs (B, T, *in_shape) in {0, 1} -> Result (delay removed, see module docstring)."""
        x_all = torch.as_tensor(inputs).to(self.device)
        if tuple(x_all.shape[2:]) != self.in_shape:
            if int(np.prod(x_all.shape[2:])) == int(np.prod(self.in_shape)) and \
                    len(self.in_shape) == 1:
                x_all = x_all.flatten(2)
            else:
                raise NetxError(f"inputs: shape {tuple(x_all.shape)} does not match (B, T, "
                                f"{', '.join(map(str, self.in_shape))})")
        b, steps = x_all.shape[:2]
        if self.layers[0].kind == "dense":
            x_all = x_all.flatten(2)
        zeros = lambda layer: torch.zeros((b, *layer.out_shape), dtype=torch.int64,  # noqa: E731
                                          device=self.device)
        u = [zeros(layer) for layer in self.layers]
        v = [zeros(layer) for layer in self.layers]
        spikes = {layer.name: [] for layer in self.layers if layer.has_neuron}
        readout, readout_u = [], []
        for t in range(steps):
            x = x_all[:, t] != 0
            for i, layer in enumerate(self.layers):
                a = self._synapse(i, layer, x).reshape(b, *layer.out_shape)
                uu = _trunc_decay(u[i], layer.i_decay) + (a << ACT_SHIFT)
                uu = torch.where(uu > STATE_MAX, uu - 2 * STATE_MAX,
                                 torch.where(uu <= -STATE_MAX, uu + 2 * STATE_MAX, uu))
                vv = torch.clamp(_trunc_decay(v[i], layer.v_decay) + uu,
                                 -STATE_MAX + 1, STATE_MAX - 1)
                s = vv > (layer.vth << VTH_SHIFT)
                u[i], v[i] = uu, torch.where(s, torch.zeros_like(vv), vv)
                if layer.has_neuron:
                    spikes[layer.name].append(s)
                x = s
            readout.append(v[-1].reshape(b, -1))
            readout_u.append(u[-1].reshape(b, -1))
        return Result(spikes={k: torch.stack(s, 1) for k, s in spikes.items()},
                      readout=torch.stack(readout, 1), readout_u=torch.stack(readout_u, 1),
                      layers=self.layers)
