"""Export a trained student to NIR (docs/nir.md) and prove the file faithful.

    python -m export.to_nir --run runs/default      # student.pt -> student.nir, checked
    python -m export.to_nir --run runs/default --readout portable   # no I node (export.readout)

Every student layer becomes one NIR node with the parameters the student computes with; the file is
read back and simulated by `export.interpreter`, whose per-step spikes of every neuron layer must
equal the student's exactly and whose readout must match within READOUT_RTOL.
"""
import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import nir
from common.cli import positive_float, positive_int
from train.checkpoint import load_model
from train.data import test_batches
from train.layers import QuantConv2d, QuantLinear
from train.models import SpikingCNN, SpikingResNet
from train.neurons import LoihiCUBA

from .checked import run_export, write_checked
from .from_nir import read_graph
from .interpreter import DEFAULT_DT, NIRError, nir_neuron, resolve_dt, run_graph
from .nir_student import nir_student_graph
from .readout import INTEGRATOR, MARKER, READOUTS, portable_readout

PRODUCER = "snn-kd-loihi export.to_nir"
READOUT_RTOL, READOUT_ATOL = 1e-5, 1e-6


class ExportError(ValueError):
    """A student (or layer) that NIR / Loihi cannot represent."""


# ---- one mapping per layer type ----------------------------------------------------------------

def _check_synapse(name, layer, cls, in_shape, expected):
    if getattr(layer, "bias", None) is not None:
        raise ExportError(f"layer {name!r}: {type(layer).__name__} has a bias "
                          f"(Loihi synapses have none; train without bias)")
    if not isinstance(layer, cls):
        raise ExportError(f"layer {name!r}: {type(layer).__name__} is not quantised "
                          f"(use train.layers.{cls.__name__})")
    if tuple(in_shape) != expected:
        raise ExportError(f"layer {name!r}: expects input {expected}, gets {tuple(in_shape)}")


def _synapse_metadata(layer):
    return {"weight_step": float(layer.weight_step), "weight_bits": 8}


def conv_node(name, layer, in_shape):
    """Conv2d: y[t] = W * x[t] (no bias), W = weight_step * int8, as the student's F.conv2d."""
    _check_synapse(name, layer, QuantConv2d, in_shape, (layer.in_channels, *in_shape[1:]))
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ExportError(f"layer {name!r}: only explicit zero padding maps to Conv2d")
    w = layer.quantized_weight().detach().numpy()
    return nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=w, stride=layer.stride,
                      padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                      bias=np.zeros(w.shape[0], dtype=w.dtype), metadata=_synapse_metadata(layer))


def dense_node(name, layer, in_shape):
    """Affine: y[t] = W x[t] + 0, W = weight_step * int8, as the student's F.linear."""
    _check_synapse(name, layer, QuantLinear, in_shape, (layer.in_features,))
    w = layer.quantized_weight().detach().numpy()
    return nir.Affine(weight=w, bias=np.zeros(w.shape[0], dtype=w.dtype),
                      metadata=_synapse_metadata(layer))


def neuron_node(name, layer, shape, dt):
    """LoihiCUBA -> CubaLIF (LIF when alpha = 0 everywhere, IF when
    also beta = 1), per neuron of `shape`: the inverse
    of export.interpreter.loihi_neuron (`nir_neuron`) at i = 1 - alpha, v = 1 - beta, with the
    layer's quantised alpha, beta, theta; v_reset = 0, metadata reset "zero" and dt."""
    if getattr(layer, "reset_mechanism", None) != "zero":
        raise ExportError(f"layer {name!r}: reset mechanism {layer.reset_mechanism!r} "
                          f"(NIR and Loihi reset to zero)")
    alpha, beta, theta = (np.broadcast_to(p.detach().double().numpy(), shape).copy()
                          for p in layer.quantized())
    try:  # alpha in [0, 1), beta in [0, 1]
        return nir_neuron(1.0 - alpha, 1.0 - beta, theta, dt, {"reset": "zero", "dt": float(dt)})
    except NIRError as e:
        raise ExportError(f"layer {name!r}: {e} (alpha = 1 - dt/tau_syn, beta = 1 - "
                          f"dt/tau_mem)") from None


def flatten_node(shape):
    """Flatten: (C, H, W) -> (C*H*W,), dims counted without the batch (start_dim 0)."""
    return nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)


def integrator_node(n, dt):
    """I: dv/dt = r x with r = 1/dt, i.e. v[t] = v[t-1] + x[t]; logits = v[T] / T (nir_neuron of
    Loihi's integrator iDecay 0, vDecay 4096)."""
    return nir_neuron(np.zeros(n), np.ones(n), None, dt)


# ---- graph builders ----------------------------------------------------------------------------

class GraphBuilder:
    """The `ops` of a student's dataflow (train.models) that build its NIR graph: values are node
    names; collects nodes, edges and the shape flowing out of each node."""

    def __init__(self, in_shape, dt):
        self.dt = float(dt)
        self.nodes, self.edges, self.shapes = {}, [], {}
        self.add("input", nir.Input(input_type=np.array(in_shape)), [], tuple(in_shape))

    def add(self, name, node, sources, shape):
        self.nodes[name] = node
        self.edges += [(src, name) for src in sources]
        self.shapes[name] = tuple(int(s) for s in shape)
        return name

    def synapse(self, name, layer, source):
        shape = self.shapes[source]
        if isinstance(layer, nn.Conv2d):
            node = conv_node(name, layer, shape)
        elif isinstance(layer, nn.Linear):
            node = dense_node(name, layer, shape)
        else:
            raise ExportError(f"layer {name!r}: {type(layer).__name__} has no NIR/Loihi mapping")
        return self.add(name, node, [source], node.output_type["output"])

    def neuron(self, name, layer, sources):
        """A neuron node; several sources are summed by NIR's fan-in (edges into one node)."""
        if not isinstance(layer, LoihiCUBA):
            raise ExportError(f"layer {name!r}: {type(layer).__name__} is not a LoihiCUBA neuron")
        shape = self.shapes[sources[0]]
        for src in sources[1:]:
            if self.shapes[src] != shape:
                raise ExportError(f"layer {name!r}: input {src} of shape {self.shapes[src]} does "
                                  f"not match {sources[0]} {shape}")
        return self.add(name, neuron_node(name, layer, shape, self.dt), sources, shape)

    def flatten(self, name, source):
        shape = self.shapes[source]
        return self.add(name, flatten_node(shape), [source], (int(np.prod(shape)),))

    def readout(self, name, layer, source):
        if not isinstance(layer, QuantLinear):
            raise ExportError(f"layer {name!r}: the readout must be a QuantLinear, "
                              f"not {type(layer).__name__}")
        out = self.synapse(name, layer, source)
        n = self.shapes[out][0]
        self.add("integrator", integrator_node(n, self.dt), [out], (n,))
        self.add("output", nir.Output(output_type=np.array([n])), ["integrator"], (n,))


def _meta(ckpt):
    meta = {}
    if ckpt is not None and "encoding" in ckpt:
        meta["timesteps"] = int(ckpt["encoding"]["timesteps"])
        meta["encoding"] = {k: v for k, v in ckpt["encoding"].items() if v is not None}
    return meta


def student_to_nir(model, ckpt=None, dt=None, readout="integrator") -> nir.NIRGraph:
    """Map a SpikingCNN / SpikingResNet student to a type-checked NIR graph (docs/nir.md) at time
    step dt (default DEFAULT_DT); a student rebuilt from the user's NIR file (checkpoint arch
    'nir', train.from_nir) maps back onto that graph (export.nir_student), by default at that
    graph's own dt. readout "portable": the integrator I left out, its Affine
    marked (export.readout.portable_readout), for other tools' importers."""
    if readout not in READOUTS:
        raise ExportError(f"readout {readout!r}: expected one of {', '.join(READOUTS)}")
    graph = _student_graph(model, ckpt, dt)
    return portable_readout(graph) if readout == "portable" else graph


def _student_graph(model, ckpt, dt):
    if ckpt is not None and ckpt.get("arch", {}).get("name") == "nir":
        from train.from_nir import read_graph_bytes
        original = read_graph_bytes(ckpt["arch"]["config"]["nir"])
        return nir_student_graph(model, original, resolve_dt(original, dt)[0],
                                 {"producer": PRODUCER, **_meta(ckpt)})
    dt = DEFAULT_DT if dt is None else dt
    if not isinstance(model, (SpikingCNN, SpikingResNet)):
        raise ExportError(f"model {type(model).__name__}: no NIR mapping (students: "
                          f"SpikingCNN, SpikingResNet)")
    b = GraphBuilder(model.config["in_shape"], dt)
    model.dataflow("input", b)  # the student's own graph declaration (train.models)
    meta = {"dt": float(dt), "reset": "zero", "producer": PRODUCER,
            "weight_step": float(model.config["weight_step"]), **_meta(ckpt)}
    try:
        return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=meta, type_check=True)
    except ValueError as e:
        raise ExportError(f"NIR type check failed: {str(e).splitlines()[0]}") from None


# ---- faithfulness ------------------------------------------------------------------------------

def neuron_names(graph) -> list:
    return [name for name, node in graph.nodes.items()
            if isinstance(node, (nir.CubaLIF, nir.LIF, nir.IF))]


def compare(graph, out, x) -> dict:
    """Run the interpreter on x and compare with a StudentOutput `out` of the same input.

    `graph` is one of ours: neuron nodes named as the student's spike layers, readout -> integrator.

    Returns {'spikes': {layer: mismatching spike count}, 'spike_total', 'readout_max_abs',
    'logits_max_abs', 'ok'}; ok needs every spike equal and the readout within tolerance.
    """
    ref = run_graph(graph, x, arithmetic="loihi")
    mismatches = {n: int((ref[n] != out.spikes[n]).sum()) for n in neuron_names(graph)}
    readout, integrator = graph_readout(graph)
    readout_t = ref[readout]
    logits = (ref[integrator][-1] if integrator else ref[readout].sum(0)) / x.shape[0]
    readout_ok = torch.allclose(readout_t, out.logits_t, rtol=READOUT_RTOL, atol=READOUT_ATOL)
    logits_ok = torch.allclose(logits, out.logits, rtol=READOUT_RTOL, atol=READOUT_ATOL)
    return {"spikes": mismatches, "spike_total": int(sum(int(ref[n].sum()) for n in mismatches)),
            "readout_max_abs": float((readout_t - out.logits_t).abs().max()),
            "logits_max_abs": float((logits - out.logits).abs().max()),
            "ok": readout_ok and logits_ok and not any(mismatches.values())}


def graph_readout(graph) -> tuple:
    """(node whose per-step output is the student's logits_t, the integrator I or None): the
    Output's source, or the source of the I that feeds the Output."""
    out = next(iter(graph.outputs))
    src = next(a for a, b in graph.edges if b == out)
    if isinstance(graph.nodes[src], nir.I):
        return next(a for a, b in graph.edges if b == src), src
    return src, None


def check_file(path, model, batches) -> dict:
    """Read `path` back with our reader (export.from_nir.read_graph: nir.read, and the portable
    readout's integrator put back) and compare it with the student on every (T, B, ...) batch."""
    graph = read_graph(path)
    total = {"spikes": {}, "spike_total": 0, "readout_max_abs": 0.0, "logits_max_abs": 0.0,
             "ok": True, "samples": 0}
    with torch.no_grad():
        for x in batches:
            r = compare(graph, model(x), x)
            for k, v in r["spikes"].items():
                total["spikes"][k] = total["spikes"].get(k, 0) + v
            total["spike_total"] += r["spike_total"]
            total["readout_max_abs"] = max(total["readout_max_abs"], r["readout_max_abs"])
            total["logits_max_abs"] = max(total["logits_max_abs"], r["logits_max_abs"])
            total["ok"] = total["ok"] and r["ok"]
            total["samples"] += x.shape[1]
    return total


# ---- command line ------------------------------------------------------------------------------

def node_table(graph) -> str:
    rows = [("name", "type", "shape", "params")]
    for name, node in graph.nodes.items():
        shape = "x".join(str(int(s)) for s in node.output_type["output"])
        rows.append((name, type(node).__name__, shape, _params(node)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}"
                     for r in rows)


def _params(node) -> str:
    if isinstance(node, (nir.Conv2d, nir.Affine)):
        k = sorted(np.unique(np.round(node.weight / node.metadata["weight_step"])))
        text = f"weight {tuple(node.weight.shape)} step {node.metadata['weight_step']:g} " \
               f"int {int(k[0])}..{int(k[-1])}"
        if isinstance(node, nir.Conv2d):
            text += f" stride {tuple(int(s) for s in node.stride)} " \
                    f"pad {tuple(int(p) for p in node.padding)}"
        if node.metadata.get(MARKER) == INTEGRATOR:
            text += " (portable readout: summed over steps)"
        return text
    if isinstance(node, (nir.CubaLIF, nir.LIF)):
        dt = node.metadata["dt"]
        tau_mem = node.tau_mem if isinstance(node, nir.CubaLIF) else node.tau
        alpha = 1 - dt / node.tau_syn if isinstance(node, nir.CubaLIF) else np.zeros(1)
        return (f"alpha {_span(alpha)} beta {_span(1 - dt / tau_mem)} "
                f"theta {_span(node.v_threshold)}")
    if isinstance(node, nir.I):
        return f"r {_span(node.r)}"
    return ""


def _span(a) -> str:
    lo, hi = float(np.min(a)), float(np.max(a))
    return f"{lo:.6g}" if lo == hi else f"{lo:.6g}..{hi:.6g}"


def sample_batches(ckpt, samples, data_dir, batch_size=32):
    """(T, B, ...) batches of the first `samples` test inputs, encoded as in training."""
    _, _, batches = test_batches(ckpt.get("dataset", "mnist5k"), ckpt["encoding"], data_dir,
                                 samples, batch_size)
    return (x for x, _ in batches)


def write_nir(path, graph):
    """nir.write into memory, then one plain file write. HDF5 writing straight to a full disk
    floods stderr and can crash the interpreter at exit; a Python write raises OSError(ENOSPC)."""
    buf = io.BytesIO()
    nir.write(buf, graph)
    Path(path).write_bytes(buf.getvalue())


def export(checkpoint, out, dt=None, samples=64, data_dir="data", log=print,
           readout="integrator"):
    """student.pt -> student.nir; the file is put in place only when the check passes."""
    model, ckpt = load_model(checkpoint, "student")
    graph = student_to_nir(model, ckpt, dt, readout)
    log(node_table(graph))

    def check(tmp):
        batches = tqdm(sample_batches(ckpt, samples, data_dir), total=-(-samples // 32),
                       desc="faithfulness", unit="batch", file=sys.stderr)
        return check_file(tmp, model, batches)

    return write_checked(out, lambda tmp: write_nir(tmp, graph), check, _summary, log)


def _summary(r) -> str:
    bad = {k: v for k, v in r["spikes"].items() if v}
    spikes = (f"spikes identical ({r['spike_total']} spikes in {len(r['spikes'])} layers)"
              if not bad else "spike mismatches: " + ", ".join(f"{k} {v}" for k, v in bad.items()))
    return (f"faithfulness on {r['samples']} test samples: {spikes}; readout max |diff| "
            f"{r['readout_max_abs']:.3g}, logits max |diff| {r['logits_max_abs']:.3g} "
            f"(tolerance rtol {READOUT_RTOL:g}, atol {READOUT_ATOL:g}): "
            f"{'PASS' if r['ok'] else 'FAIL'}")


def main(argv=None):
    """Exit codes: 0 written, 1 the check failed (nothing written), 2 bad input (export.checked)."""
    p = argparse.ArgumentParser(prog="python -m export.to_nir", description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/default", help="run directory (default: runs/default)")
    p.add_argument("--checkpoint", help="student checkpoint (default: RUN/student.pt)")
    p.add_argument("--out", help="NIR file to write (default: RUN/student.nir)")
    p.add_argument("--dt", type=positive_float, default=None,
                   help="NIR time step (default: 1e-4; a --from-nir student: its graph's dt)")
    p.add_argument("--samples", type=positive_int, default=64,
                   help="test samples for the faithfulness check (default: 64)")
    p.add_argument("--data-dir", default="data", help="dataset folder (default: data)")
    p.add_argument("--readout", choices=READOUTS, default="integrator",
                   help="integrator: Affine -> I -> Output (default); portable: Affine -> Output "
                        "with metadata readout = 'integrator', which snnTorch's, SpikingJelly's "
                        "and norse's importers accept (docs/nir.md)")
    args = p.parse_args(argv)
    run = Path(args.run)
    checkpoint = Path(args.checkpoint or run / "student.pt")
    out = Path(args.out or run / "student.nir")
    run_export(out, "--out" if args.out else "--run",
               lambda: export(checkpoint, out, args.dt, args.samples, args.data_dir,
                              readout=args.readout),
               (ExportError,))


if __name__ == "__main__":
    main()
