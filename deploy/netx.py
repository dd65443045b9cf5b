"""The lava-dl netx `layer/` chain of a `hwmodels.loihi.Net` (docs/loihi_net.md), for nets that
netx can express exactly (Net.chain()).

Layout written into an open h5py file (lava-dl 0.6.0 `netx.hdf5.Network` reads it):

    layer/0            type input, shape (C, H, W) or (N,)
    layer/i            type conv | dense | dense_rec, shape (the group's), weight,
                       conv: stride, padding, dilation (H, W order), groups
                       dense_rec: weight_rec (N, N)
                       bias: dense (N,); conv (C,) when constant over H, W, else (W, H, C)
                       neuron/ type CUBA, iDecay, vDecay, vThMant, refDelay 1, gradedSpike False
                       (left out for netx's default integrator iDecay 0, vDecay 4096,
                       vThMant 1 << 17, which netx builds without one)
    layer/i            type flatten, before a dense fed by a (C, H, W) source (netx flattens
                       (W, H, C) ports as transpose(2, 1, 0).flatten(): (C, H, W) order)

netx's bias becomes bias_mant with bias_exp 6, its iDecay becomes Lava's du = iDecay - 1 (Lava
adds 1), vDecay is Lava's dv. netx stores conv weights as torch does (out, in / groups, kh, kw)
and flips / transposes them for Lava itself.

One thing netx does differently from a plain Lava Dense per connection: `dense_rec` scales W
and W_rec together (optimize_weight_bits on [W | W_rec]), while the emulator and Lava's own
processes scale each connection alone. `write_layers` writes nothing when that changes any
realised weight (see `problem`); the file then runs through Lava's processes only.
"""
import numpy as np

from hwmodels.loihi import (INTEGRATOR, NetxError, lava_dense_realise, lava_dense_weights,
                            netx_weight_bits)

from .lava_run import LAVA_CONV_GROUPS_MAX



def _joint_realised(weights):
    """Effective weights (float, w * 2^exp) Lava's Dense processes apply when netx scales the
    matrices together (hdf5.create_dense with rec=True): weight_bits of the concatenation, then
    Lava's per-matrix sign mode, 8-bit clip and truncation of LSBs (proc/dense/models.py)."""
    cat, num_bits, exp = netx_weight_bits(
        np.hstack([np.asarray(w, dtype=np.int64) for w in weights]))
    out, start = [], 0
    for w in weights:
        part = cat[:, start: start + np.shape(w)[1]]
        start += np.shape(w)[1]
        out.append(lava_dense_realise(part, num_bits) * 2.0 ** exp)
    return out


def _separate_realised(w):
    lava_w, exp = lava_dense_weights(w)
    return lava_w * 2.0 ** exp


def problem(net):
    """None when netx's layer list runs `net` exactly as the emulator does, else why not."""
    if not net.chain():
        return "not a chain (fan-in, fan-out, skips or a non-spiking inner group)"
    for s in net.synapses:
        if s.kind == "conv" and s.groups > LAVA_CONV_GROUPS_MAX:
            return (f"connection {s.name!r}: {s.groups} groups (netx hands them to Lava's Conv, "
                    f"which holds groups as int8; deploy.lava_run regroups them)")
    for g in net.neurons:
        syns = net.incoming(g.name)
        rec = [s for s in syns if s.recurrent]
        if not rec:
            continue
        ff = [s for s in syns if not s.recurrent][0]
        if ff.kind != "dense":
            return f"group {g.name!r}: netx has recurrence only on dense layers"
        try:
            joint = _joint_realised([ff.weight, rec[0].weight])
            alone = [_separate_realised(ff.weight), _separate_realised(rec[0].weight)]
        except NetxError as e:
            return f"group {g.name!r}: {e}"
        if any(not np.array_equal(a, b) for a, b in zip(joint, alone)):
            return (f"group {g.name!r}: netx's dense_rec scales {ff.name!r} and {rec[0].name!r} "
                    f"together, which changes realised weights")
    return None


def _conv_bias(bias):
    """(C, H, W) bias -> netx's per-channel (C,) when constant over H, W, else (W, H, C)."""
    if np.all(bias == bias[:, :1, :1]):
        return bias[:, 0, 0]
    return np.transpose(bias, (2, 1, 0))


def write_layers(f, net) -> bool:
    """Write netx's `layer/` chain of `net` into the open h5py file `f` (module docstring).

    Returns False, writing nothing, when netx cannot run the net exactly (`problem`)."""
    if problem(net) is not None:
        return False
    root = f.create_group("layer")
    entry = iter(range(2 * len(net.neurons) + 1))

    def new(kind, **attrs):
        g = root.create_group(str(next(entry)))
        g.create_dataset("type", data=np.array([kind.encode("ascii")]))
        g.attrs.update(attrs)
        return g

    new("input").create_dataset("shape", data=np.array(net.in_shape, dtype=np.int64))
    for grp in net.neurons:
        syns = net.incoming(grp.name)
        ff = next(s for s in syns if not s.recurrent)
        rec = [s for s in syns if s.recurrent]
        attrs = {"name": grp.name, "nodes": ",".join(grp.nodes)}
        if ff.kind == "dense" and len(net.shape_of(ff.src)) == 3:
            new("flatten", **attrs)
        kind = "dense_rec" if rec else ff.kind
        g = new(kind, **attrs)
        g.create_dataset("shape", data=np.array(grp.shape, dtype=np.int64))
        g.create_dataset("weight", data=np.asarray(ff.weight, dtype=np.int64))
        if rec:
            g.create_dataset("weight_rec", data=np.asarray(rec[0].weight, dtype=np.int64))
        if ff.kind == "conv":
            for key in ("stride", "padding", "dilation"):
                g.create_dataset(key, data=np.array(getattr(ff, key), dtype=np.int64))
            g.create_dataset("groups", data=np.int64(ff.groups))
        if grp.bias is not None:
            bias = np.asarray(grp.bias, dtype=np.int64)
            g.create_dataset("bias", data=_conv_bias(bias) if bias.ndim == 3 else bias)
        params = {"iDecay": grp.i_decay, "vDecay": grp.v_decay, "vThMant": grp.vth}
        if ff.kind == "conv" or params != INTEGRATOR:
            n = g.create_group("neuron")
            n.create_dataset("type", data=np.array([b"CUBA"]))
            for key, value in params.items():
                n.create_dataset(key, data=np.int64(value))
            n.create_dataset("refDelay", data=np.int64(1))
            n.create_dataset("gradedSpike", data=np.bool_(False))
    return True
