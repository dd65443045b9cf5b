"""Whether lava-dl netx's `layer/` chain runs a `hwmodels.loihi.Net` exactly (`problem`); the
chain's layout is written and read by `hwmodels.netfile` (docs/loihi_net.md).

One thing netx does differently from a plain Lava Dense per connection: `dense_rec` scales W
and W_rec together (optimize_weight_bits on [W | W_rec]), while the emulator and Lava's own
processes scale each connection alone. A net where that changes any realised weight gets no
`layer/` chain; the file then runs through Lava's processes only.
"""
import numpy as np

from hwmodels.loihi import (NetxError, lava_dense_realise, lava_dense_weights,
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
    for s in net.synapses:
        if s.exp:
            return (f"connection {s.name!r}: weight exponent {s.exp} (netx derives each layer's "
                    f"exponent from its weights)")
    if not net.chain():
        return "not a chain (fan-in, fan-out, skips or a non-spiking inner group)"
    for s in net.synapses:
        if s.kind == "dense" and len(net.group(s.dst).shape) != 1:
            return f"connection {s.name!r}: a dense layer into a (C, H, W) group (netx's are 1-D)"
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
