"""Which of Loihi's approximations makes a producer fixture's compiled net disagree with its
float model (issue 20; docs/producers.md "The snnTorch CNN's float-vs-Loihi gap").

    python -m bench.producers_gap [--fixture snntorch_cnn] [--dt DT]
        [--out results/producers_gap_snntorch_cnn.json]

The fixture's graph (tests/fixtures/producers/NAME, read with no edit) is compiled as
tests/test_producers.py does. Its compiled net is then run by a float64 simulation (`run`) of the
same groups and folded connections, where each approximation the compiler makes can be switched
on alone:
    weights    the group's 8-bit integers times its step (off: the float folded weights)
    decay      1 - vDecay/4096 (off: 1 - dt/tau)
    trunc      decay truncated toward zero in state units (step / 64), as Loihi does
    threshold  vThMant * step (off: v_threshold)
    bias       bias_mant * step (off: the float bias per step)
With all off it must give the float model's spike counts, with all on the emulator's (both
checked on every sample; the run stops otherwise). Then the weights alone at b bits (the
compiler's step rule, `choose_step(weight_max=2^(b-1) - 1)`), with one step per output channel,
on the 8-bit step of least squared error from a fine scan, and with random noise of the
rounding's size instead of rounding; and how far apart the two
models' spike counts are where their predictions differ. Inputs: the fixture's held-out digits
`x` and, when present, `x_distill`. Only graphs whose neurons take their input each step
(iDecay 4096: LIF, IF) and whose net has no relay or bias-source groups.
"""
import argparse
import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import deploy.compile as compile_mod
from common.files import atomic_write
from common.loihi import DECAY_UNITY, WEIGHT_MAX
from export.from_nir import float_model, read_graph
from export.interpreter import loihi_neuron
from hwmodels.loihi import Emulator

ROOT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "producers"
KNOBS = ("weights", "decay", "trunc", "threshold", "bias")
BITS = (8, 9, 10, 11, 12, 14, 16)


@contextlib.contextmanager
def recording():
    """{group: {"w": [float weights per connection], "step", "bias", "theta"}} as the compiler
    hands them to its integer_* functions (a bench-only wrapper of deploy.compile)."""
    floats = {}
    syn, bias, theta = (compile_mod.integer_synapses, compile_mod.integer_bias,
                        compile_mod.integer_threshold)

    def syn_(infos, step, name, exact, *rest):
        floats.setdefault(name, {}).update(w=[np.array(i["w"], float) for i in infos],
                                           step=float(step))
        return syn(infos, step, name, exact, *rest)

    def bias_(b, step, name, exact):
        floats.setdefault(name, {})["bias"] = np.array(b, float)
        return bias(b, step, name, exact)

    def theta_(t, step, name):
        floats.setdefault(name, {})["theta"] = float(t)
        return theta(t, step, name)

    compile_mod.integer_synapses, compile_mod.integer_bias = syn_, bias_
    compile_mod.integer_threshold = theta_
    try:
        yield floats
    finally:
        compile_mod.integer_synapses, compile_mod.integer_bias = syn, bias
        compile_mod.integer_threshold = theta


def compile_with_floats(graph, dt, timesteps):
    with recording() as floats:
        net, fit = compile_mod.build_net(graph, dt=dt, timesteps=timesteps)
    for g in net.neurons:
        if g.name not in floats or g.i_decay != DECAY_UNITY or net.readout != "spikes":
            raise SystemExit(f"group {g.name!r}: only spiking nets of LIF / IF groups without "
                             f"relays or bias sources are simulated here")
        node = graph.nodes[g.nodes[0]]
        floats[g.name]["decay"] = 1.0 - float(np.ravel(loihi_neuron(node, fit["dt"])["v"])[0])
    return net, fit, floats


def run(net, floats, x, replace=None, **on):
    """Spike counts (B, K) of the output group; on[knob] = True takes Loihi's value (module
    docstring); `replace` {group: [arrays]} replaces the weights (float, in units of v). State in
    units of step / 64 (exact integers with every knob on)."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64).transpose(0, 1)
    steps, b = x.shape[:2]
    out = {"input": x.reshape(steps * b, *x.shape[2:])}
    for g in net.neurons:
        f = floats[g.name]
        q = f["step"] / 64
        a = 0
        for j, s in enumerate(net.incoming(g.name)):
            w = replace[g.name][j] / q if replace is not None else \
                64.0 * s.weight if on.get("weights") else f["w"][j] / q
            w = torch.as_tensor(np.asarray(w, dtype=np.float64))
            if s.kind == "conv":
                c = F.conv2d(out[s.src], w, None, s.stride, s.padding, s.dilation, s.groups)
            else:
                c = out[s.src].flatten(1) @ w.t()
            a = a + c.reshape(steps, b, *g.shape)
        bias = 64.0 * (0 if g.bias is None else g.bias) if on.get("bias") else f["bias"] / q
        bias = torch.as_tensor(np.broadcast_to(bias, g.shape).astype(np.float64))
        vth = 64.0 * g.vth if on.get("threshold") else f["theta"] / q
        keep = (DECAY_UNITY - g.v_decay) / DECAY_UNITY if on.get("decay") else f["decay"]
        v = torch.zeros(b, *g.shape, dtype=torch.float64)
        spikes = torch.zeros(steps, b, *g.shape, dtype=torch.float64)
        for t in range(steps):
            if on.get("trunc") and on.get("decay"):  # Loihi: x (4096 - d) / 4096, toward zero
                v = torch.div(v * (DECAY_UNITY - g.v_decay), DECAY_UNITY, rounding_mode="trunc")
            elif on.get("trunc"):
                v = torch.trunc(v * keep)
            else:
                v = v * keep
            v = v + a[t] + bias
            spikes[t] = (v > vth).double()
            v = torch.where(v > vth, torch.zeros_like(v), v)
        out[g.name] = spikes.reshape(steps * b, *g.shape)
    return out[net.output].reshape(steps, b, -1).sum(0).numpy()


def float_counts(graph, dt, x):
    with torch.no_grad():
        out = float_model(graph, dt=dt)(torch.from_numpy(x).float().transpose(0, 1))
    return out.logits_t.sum(0).numpy()


def wilson(k, n, z=1.96):
    """95 % Wilson interval of k successes in n."""
    p = k / n
    mid, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [round((mid - half) / (1 + z * z / n), 4), round((mid + half) / (1 + z * z / n), 4)]


def agreement(counts, ref_pred):
    same = int((counts.argmax(-1) == ref_pred).sum())
    return {"agreement": round(same / len(ref_pred), 4), "ci95": wilson(same, len(ref_pred))}


def quantised(floats, bits, per_channel=False):
    """{group: [weights rounded to b bits]}: the compiler's step rule (one step per group, bias
    and threshold in its error), or max |W| / (2^(b-1) - 1) per output channel."""
    top = 2 ** (bits - 1) - 1
    out = {}
    for name, f in floats.items():
        if per_channel:
            steps = [np.abs(w).reshape(len(w), -1).max(1).reshape(-1, *[1] * (w.ndim - 1)) / top
                     for w in f["w"]]
        else:
            extras = [f["bias"], np.asarray(f["theta"])]
            steps = [compile_mod.choose_step(f["w"], extras, name, weight_max=top)] * len(f["w"])
        out[name] = [s * np.clip(np.rint(w / np.where(s > 0, s, 1)), -top - 1, top)
                     for w, s in zip(f["w"], steps)]
    return out


def best_mse(floats, candidates=2000):
    """{group: [weights]} on the 8-bit step of least squared weight error over a fine scan of
    [0.5, 1.05] max |W| / 127 (the compiler tries 5 candidates; weights only, no extras)."""
    out = {}
    for name, f in floats.items():
        peak = max(float(np.abs(w).max()) for w in f["w"])
        scan = peak / WEIGHT_MAX * np.linspace(0.5, 1.05, candidates)
        err = [sum(float(((w - s * np.clip(np.rint(w / s), -WEIGHT_MAX - 1, WEIGHT_MAX)) ** 2)
                         .sum()) for w in f["w"]) for s in scan]
        s = scan[int(np.argmin(err))]
        out[name] = [s * np.clip(np.rint(w / s), -WEIGHT_MAX - 1, WEIGHT_MAX) for w in f["w"]]
    return out


def margins(ref, other):
    """Where argmaxes differ: how many spikes `ref` counts more for its own pick than for
    other's pick (0: a tie that argmax broke by class order)."""
    pr, po = ref.argmax(-1), other.argmax(-1)
    diff = np.flatnonzero(pr != po)
    gap = ref[diff, pr[diff]] - ref[diff, po[diff]]
    return {"0 (tie)": int((gap == 0).sum()), "1": int((gap == 1).sum()),
            "2": int((gap == 2).sum()), ">2": int((gap > 2).sum())}


def study(graph, dt, net, floats, x, labels=None):
    fc = float_counts(graph, dt, x)
    fp = fc.argmax(-1)
    emu = Emulator(net).run(torch.from_numpy(x).float()).scores.numpy()
    none, every = run(net, floats, x), run(net, floats, x, **{k: True for k in KNOBS})
    checks = {"all off == float model (spike counts, every sample)": bool((none == fc).all()),
              "all on == emulator (spike counts, every sample)": bool((every == emu).all())}
    if not all(checks.values()):
        raise SystemExit(f"the simulation does not reproduce its ends: {checks}")
    top2 = np.sort(fc, -1)[:, -2:]
    res = {"samples": len(x), "checks": checks, "emulator": agreement(emu, fp),
           "single": {}, "all_but": {}, "weight_bits": {}, "weight_bits_per_channel": {}}
    for knob in KNOBS:
        on = {knob: True, "decay": True} if knob == "trunc" else {knob: True}
        res["single"]["decay+trunc" if knob == "trunc" else knob] = \
            agreement(run(net, floats, x, **on), fp)
    for knob in ("weights", "bias", "threshold"):
        on = {k: k != knob for k in KNOBS}
        res["all_but"][knob] = agreement(run(net, floats, x, **on), fp)
    for bits in BITS:
        res["weight_bits"][bits] = agreement(run(net, floats, x, quantised(floats, bits)), fp)
    for bits in (8, 10):
        res["weight_bits_per_channel"][bits] = agreement(
            run(net, floats, x, quantised(floats, bits, per_channel=True)), fp)
    res["weights_best_mse_step"] = agreement(run(net, floats, x, best_mse(floats)), fp)
    rng = np.random.default_rng(0)
    res["weights_noise_half_step"] = [
        agreement(run(net, floats, x, {n: [w + f["step"] * rng.uniform(-.5, .5, w.shape)
                                           for w in f["w"]] for n, f in floats.items()}),
                  fp)["agreement"] for _ in range(5)]
    res["float_ties"] = round(float(np.mean(top2[:, 0] == top2[:, 1])), 4)
    res["disagreements"] = {"count": int((emu.argmax(-1) != fp).sum()),
                            "float_margin": margins(fc, emu), "emulator_margin": margins(emu, fc)}
    if labels is not None:
        res["accuracy"] = {"float": round(float((fp == labels).mean()), 4),
                           "emulator": round(float((emu.argmax(-1) == labels).mean()), 4)}
    return res


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.producers_gap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixture", default="snntorch_cnn")
    p.add_argument("--dt", type=float, default=None)
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    folder = ROOT / args.fixture
    if not (folder / "data.npz").is_file() or not (folder / "graph.nir").is_file():
        p.error(f"{folder}: no data.npz and graph.nir (fixtures: "
                f"{', '.join(sorted(d.name for d in ROOT.iterdir() if d.is_dir()))})")
    data = np.load(folder / "data.npz")
    graph = read_graph(folder / "graph.nir")
    try:
        net, fit, floats = compile_with_floats(graph, args.dt, int(data["x"].shape[1]))
    except (ValueError, SystemExit) as e:  # CompileError, NIRError, an unsupported net
        p.error(f"{folder / 'graph.nir'}: {e}")
    result = {"fixture": args.fixture, "dt": fit["dt"], "timesteps": int(data["x"].shape[1]),
              "groups": {r["group"]: {k: r[k] for k in ("step", "weight_rel_error", "vThMant",
                                                         "vDecay")} for r in fit["groups"]},
              "weight_max": WEIGHT_MAX}
    sets = [("x", "labels"), ("x_distill", "labels_distill")]
    for xs, ys in sets:
        if xs in data.files:
            labels = data[ys] if ys in data.files else None
            result[xs] = study(graph, args.dt, net, floats, data[xs], labels)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text + "\n"))


if __name__ == "__main__":
    main()
