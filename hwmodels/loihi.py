"""A compiled Loihi network (one description for compile, emulator, Lava and energy) and a
batched torch emulator of Lava's fixed-point arithmetic on it.

A `Net` is a graph of neuron groups (`Neurons`: one Lava LIF process each) joined by synaptic
connections (`Synapses`: one Lava Dense or Conv process each). A group sums the currents of all its
incoming connections; a connection may start at the network input, at any group (fan-out), and may
be recurrent (a group onto itself). docs/loihi_net.md describes the file layout (`net/` group of an
HDF5 file, next to a netx `layer/` chain when netx can express the network; hwmodels.netfile
reads and writes it).

Pure torch (no Lava import), so it runs on any Python / torch and on CUDA. It reproduces
lava-nc 0.10.0 `PyLifModelBitAcc`, `PyDenseModelBitAcc`, `PyConvModelFixed` and lava-dl 0.6.0
netx (`utils.optimize_weight_bits`) bit for bit; tests check every spike against Lava.

Per group and step (all integers; a = summed input of all incoming connections):

    conv:   a_c = wrap24(conv2d(x, W))                     wrap24(z) = (z + 2^23) mod 2^24 - 2^23
            a_c = conv2d(x, W) << exp  for exp > 0 (Synapses.exp; Lava runs it as a Dense)
    dense:  a_c = (x . W_lava) >> -e  (<< e if e > 0)      W_lava, e: netx optimize_weight_bits,
                                                           then Lava's clip and LSB truncation;
                                                           e includes Synapses.exp
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
WEIGHT_EXP_MAX = 8           # a connection's own weight exponent (Synapses.exp): 0..8


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
    A recurrent connection delivers the source's spikes of the previous step. `exp` > 0 scales
    the connection's summed input by 2^exp (Lava's weight_exp, applied to the integer sum): with
    a second connection of exp 0 into the same group it gives weights of 8 + exp bits
    (deploy.compile --weight-bits, docs/loihi_net.md).
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
    exp: int = 0              # the connection's own weight exponent: weight * 2^exp (0..8)

    @functools.cached_property
    def _lava(self):
        if self.kind == "conv":
            return self.weight, self.exp
        w, e = lava_dense_weights(self.weight)
        return w, e + self.exp

    @property
    def lava_weight(self) -> np.ndarray:
        """What Lava's synapse multiplies with (dense: after netx's and Lava's weight scaling)."""
        return self._lava[0]

    @property
    def weight_exp(self) -> int:
        """Lava shifts the weighted sum by this: dense, netx's weight exponent + exp; conv, exp
        (a conv with exp > 0 runs in Lava as a Dense: lava-nc 0.10.0's Conv ignores weight_exp)."""
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
                if not (isinstance(s.exp, (int, np.integer)) and 0 <= s.exp <= WEIGHT_EXP_MAX):
                    raise NetxError(f"{where}: connection {s.name!r} weight exponent {s.exp!r} "
                                    f"(expected an integer 0..{WEIGHT_EXP_MAX})")
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
            if s.kind == "conv":  # exp > 0: shifted, not wrapped (Lava runs it as a Dense)
                self._bound[s.name] = rows << s.exp if s.exp else min(rows, STATE_MAX)
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
        from .netfile import read_net
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
            if s.exp:  # a << exp (exact); Lava's Dense that runs it does not wrap
                return a * 2.0 ** s.exp
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
                clip24(v, out=v)  # in place: this loop runs once per step
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
