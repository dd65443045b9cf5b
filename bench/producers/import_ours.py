"""Our own student.nir read by other tools' NIR importers (issue 20, deliverable 7), by hand.

Three steps, two environments (docs/producers.md "Our files in other tools"):

    # 1. this repository's venv: the portable file, inputs and our outputs
    /work/main/.venv/bin/python bench/producers/import_ours.py make OUT --checkpoint RUN/student.pt
    # 2. the tools' venv (SpikingJelly 2.0.0, norse 1.1.0, snnTorch 1.0.0; nir 1.0.8)
    /work/toolsenv_sj/bin/python bench/producers/import_ours.py run OUT
    # 3. this repository's venv again: compare
    /work/main/.venv/bin/python bench/producers/import_ours.py compare OUT

make: `export.to_nir --readout portable` of the checkpoint (OUT/student.nir, checked by our
reader), N held-out test inputs (OUT/x.npy, (N, T, ...) uint8) and, in OUT/ours.npz, the
student's spikes of every neuron layer and per-step readout (Loihi arithmetic, = emulator) and
the reference interpreter's float reading of the file (NIR's Euler step in float32).
run: each tool's importer on OUT/student.nir (dt = the file's metadata dt), one sample at a time
(snnTorch's and norse's importers build torch.nn.Flatten(start_dim, end_dim) from NIR's dims,
which count without the batch, so a batch would be flattened too); records what each neuron node
emits per step and the readout node's output, or the importer's error, in OUT/<tool>.npz.
compare: every spike and readout value against ours; prints one line per tool and layer.
"""
import argparse
import json
import sys
import traceback
from pathlib import Path

import numpy as np

NEURONS = ("lif1", "lif2", "lif3")
# spikingjelly_strict: SpikingJelly with its heaviside patched to spike at v > threshold (NIR's
# strict comparison) instead of v >= threshold: shows that this is the whole difference
TOOLS = ("snntorch", "spikingjelly", "norse", "spikingjelly_strict")


def make(out, checkpoint, samples):
    import torch

    from export.interpreter import run_graph
    from export.from_nir import read_graph
    from export.to_nir import export, sample_batches
    from train.checkpoint import load_model
    out.mkdir(parents=True, exist_ok=True)
    export(checkpoint, out / "student.nir", readout="portable", samples=samples)
    model, ckpt = load_model(checkpoint, "student")
    x = torch.cat(list(sample_batches(ckpt, samples, "data")), 1)       # (T, N, ...)
    graph = read_graph(out / "student.nir")
    with torch.no_grad():
        student = model(x)
    ref = run_graph(graph, x, arithmetic="float")
    arrays = {"x": x.transpose(0, 1).numpy().astype(np.uint8),
              "student_readout": student.logits_t.numpy(), "float_readout": ref["readout"].numpy()}
    for n in NEURONS:
        arrays[f"student_{n}"] = student.spikes[n].numpy().astype(np.uint8)
        arrays[f"float_{n}"] = ref[n].numpy().astype(np.uint8)
    np.savez_compressed(out / "ours.npz", **arrays)
    print(f"wrote {out}/student.nir, ours.npz ({x.shape[1]} samples, T = {x.shape[0]})")


# ---- in the tools' environment -----------------------------------------------------------------

def _first(o):
    return o[0] if isinstance(o, tuple) else o


def _import(tool, graph, dt):
    """(module, step(module, x, state) -> (readout output, state), reset(module), batched:
    whether it is fed x[None] (a batch of one) rather than one unbatched sample)."""
    if tool == "snntorch":
        from snntorch.import_nir import import_from_nir
        from snntorch.utils import reset
        return import_from_nir(graph), lambda m, x, s: (_first(m(x)), None), reset, False
    if tool in ("spikingjelly", "spikingjelly_strict"):
        from spikingjelly.activation_based import surrogate
        from spikingjelly.activation_based.nir_exchange import import_from_nir
        if tool == "spikingjelly_strict":  # its heaviside spikes at v >= threshold; NIR's: v >
            surrogate.heaviside = lambda x: (x > 0).to(x)
        m = import_from_nir(graph, dt=dt)            # forward(x, state) -> (output, state)
        return m, lambda m, x, s: m(x[None], s), lambda m: None, True  # its Flatten keeps it
    if tool == "norse":
        from norse.torch import from_nir
        m = from_nir(graph, dt=dt)                   # nirtorch GraphExecutor: (output, state)
        return m, lambda m, x, s: m(x, s), lambda m: None, False
    raise ValueError(tool)


def run_tool(tool, out):
    import nir
    import torch
    graph = nir.read(str(out / "student.nir"))
    dt = float(graph.metadata["dt"])
    x = torch.from_numpy(np.load(out / "ours.npz")["x"]).float()      # (N, T, ...)
    try:
        module, step, reset, batched = _import(tool, graph, dt)
    except Exception as e:  # noqa: BLE001 - the importer's own refusal is the result
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    named = dict(module.named_modules())
    kinds = {n: type(named[n]).__name__ for n in NEURONS + ("readout",) if n in named}
    spikes, readout, seen = {}, None, {}
    hooks = [named[n].register_forward_hook(
        lambda m, i, o, n=n: seen.__setitem__(n, _first(o).detach().numpy()[0 if batched else ...]))
        for n in NEURONS if n in named]
    try:
        with torch.no_grad():
            for b in range(x.shape[0]):
                reset(module)
                state = None
                for t in range(x.shape[1]):
                    y, state = step(module, x[b, t], state)
                    y = _first(y).numpy()[0 if batched else ...]
                    if readout is None:
                        readout = np.zeros(x.shape[:2] + y.shape, np.float32)
                    readout[b, t] = y
                    for n, v in seen.items():
                        if n not in spikes:
                            spikes[n] = np.zeros(x.shape[:2] + v.shape, np.uint8)
                        spikes[n][b, t] = v
    except Exception as e:  # noqa: BLE001
        return {"error": f"runs: {type(e).__name__}: {str(e).splitlines()[0]}",
                "kinds": kinds, "trace": traceback.format_exc(limit=3)}
    finally:
        for h in hooks:
            h.remove()
    return {"kinds": kinds, "readout": readout, **{f"spikes_{n}": s for n, s in spikes.items()}}


def run(out):
    import nir
    import torch
    versions = {"nir": nir.__version__ if hasattr(nir, "__version__") else "?",
                "torch": torch.__version__}
    for tool in TOOLS:
        try:
            versions[tool] = __import__(tool.split("_")[0]).__version__
        except Exception:  # noqa: BLE001
            versions[tool] = "?"
        r = run_tool(tool, out)
        meta = {k: r.pop(k) for k in ("error", "kinds", "trace") if k in r}
        meta["versions"] = versions
        (out / f"{tool}.json").write_text(json.dumps(meta, indent=1))
        if r:
            np.savez_compressed(out / f"{tool}.npz", **r)
        print(tool, meta.get("error", "ran"), meta.get("kinds", ""))


def compare(out):
    ours = np.load(out / "ours.npz")
    for tool in TOOLS:
        meta = json.loads((out / f"{tool}.json").read_text())
        if not (out / f"{tool}.npz").exists():
            print(f"{tool}: {meta['error']}")
            continue
        r = np.load(out / f"{tool}.npz")
        for n in NEURONS:
            s = r[f"spikes_{n}"]
            for ref in ("float", "student"):
                o = ours[f"{ref}_{n}"].transpose(1, 0, *range(2, s.ndim))       # (N, T, ...)
                bad = (s != o).reshape(len(s), -1).any(1)
                print(f"{tool} {meta['kinds'].get(n)} {n} vs {ref}: {int((s != o).sum())} of "
                      f"{o.size} spike values differ ({int(o.sum())} spikes), in "
                      f"{int(bad.sum())}/{len(s)} samples")
        ro = r["readout"]
        for ref in ("float", "student"):
            o = ours[f"{ref}_readout"].transpose(1, 0, 2)
            agree = float(np.mean(ro.sum(1).argmax(-1) == o.sum(1).argmax(-1)))
            print(f"{tool} readout vs {ref}: max |diff| per step {float(np.abs(ro - o).max()):.3g}"
                  f", predictions agree on {agree:.1%}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("make", "run", "compare"))
    p.add_argument("out", type=Path)
    p.add_argument("--checkpoint", type=Path, default=Path("runs/default/student.pt"))
    p.add_argument("--samples", type=int, default=32)
    args = p.parse_args(argv)
    if args.step == "make":
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        make(args.out, args.checkpoint, args.samples)
    elif args.step == "run":
        run(args.out)
    else:
        compare(args.out)


if __name__ == "__main__":
    main()
