"""The Loihi-exact, trainable student of any NIR graph that deploy.compile accepts
(`NIRStudent`), and its NIR export (`nir_student_graph`).

The student is the compiled net in trainable form. export.paths folds every path of stateless
nodes between two neurons (or from the input) into one connection, as the compiler does: a
convolution (Conv2d, pooling and Scale folded, `fold_conv`) or a dense matrix, with the input
gain and folded thresholds in its weights, on the group's weight step (`group_plan`). The
student has one QuantConv2d / QuantLinear per connection, one LoihiCUBA per neuron node (IF is
alpha = 0, beta = 1; LIF alpha = 0) with Loihi's biases (train.neurons.BIAS_RANGES: the neuron
bias on v, the bias sources' weights into the current) and its recurrent connections run step by
step. Its initial integers are those the compiler gives the user's graph, so it starts as the
file deployed as it is.

Its graph G' (what `nir_student_graph` writes) has one synapse node per connection, named after
the path's synapse (else its last node, made unique with the neuron's name; a grouped convolution
(pooling alone) written as a full one with zeros between the groups), a Flatten before a
dense connection from a (C, H, W) source, G's neurons with unit input gain (LIF / CubaLIF / IF
of export.to_nir.neuron_node) and G's readout; a bias into v or into the current sits on the
neuron's first feed-forward synapse, a late bias (recurrent synapse) on its first recurrent one.
G' compiles to the same net as G, and `NIRStudent(G')` is the same student (same names).
A (C, H, W) neuron with a dense input (a path no convolution equals, per-position thresholds)
or a bias that differs inside a channel is 1-D in G' (flattened in (C, H, W) order), and its
other connections dense too. Refused (NIRError naming the node): a decaying non-spiking
readout (LI, CubaLI; an I integrator is fine), v_leak into a neuron whose current decays, a
threshold of 0 steps.
"""
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import nir
from common.loihi import DECAY_UNITY, WEIGHT_MAX, WEIGHT_MIN
from train.layers import QuantConv2d, QuantLinear
from train.models import StudentOutput
from train.neurons import LoihiCUBA

from .interpreter import NEURONS, NIRError, flatten_graph, resolve_dt, role, topological_order
from .paths import (BIAS_LATE, BIAS_SOURCE, conv_dense, group_plan, integer_bias,
                    integer_threshold, plan_context, to_int)


@dataclass
class Connection:
    """One connection of the student: synapse node `name` from `src` (through Flatten node
    `flatten` when not None), recurrent or not."""
    name: str
    src: str
    rec: bool
    kind: str                 # "conv" | "dense"
    src_shape: tuple
    flatten: str = None


def _key(name):
    return name.replace(".", "_")


def _ungrouped(w, groups, cin):
    """A grouped convolution's weight (cout, cin / groups, kh, kw) as the full (cout, cin, kh, kw)
    one with zeros between groups (nir 1.0.8's type check reads a Conv2d's input channels as
    weight.shape[1], so G' has no grouped Conv2d)."""
    cout, per = w.shape[:2]
    full = np.zeros((cout, cin, *w.shape[2:]))
    out = cout // groups
    for g in range(groups):
        full[g * out:(g + 1) * out, g * per:(g + 1) * per] = w[g * out:(g + 1) * out]
    return full


class NIRStudent(nn.Module):
    """The student of a NIR graph at time step dt (default: the graph's, resolve_dt) (module
    docstring). forward(x (T, B, ...)) -> StudentOutput:
    spikes {neuron node: (T, B, ...)}; logits_t the output neuron's spikes (spiking readout) or
    the integrator's per-step input in weight units (I readout: its score is their sum);
    features["last"] the spikes of the last (C, H, W) neuron."""

    def __init__(self, graph: nir.NIRGraph, dt=None):
        super().__init__()
        g = flatten_graph(graph)
        self.dt = resolve_dt(g, dt)[0]
        preds, rec, sources, self.input_name, self.in_shape = plan_context(g)
        outputs = [n for n, node in g.nodes.items() if isinstance(node, nir.Output)]
        self.order = [n for n in topological_order(g, skip=rec) if isinstance(g.nodes[n], NEURONS)]
        if len(outputs) != 1 or len(preds.get(outputs[0], [])) != 1 \
                or preds[outputs[0]][0] not in self.order:
            raise NIRError("graph: the student needs one Output fed by one neuron node")
        self.output_name, self.readout = outputs[0], preds[outputs[0]][0]
        self.layers = nn.ModuleDict()
        self.shapes, self.paths, self.recurrent, self.flat = {}, {}, {}, set()
        self.integrator = None
        taken = set(self.order) | {self.input_name, self.output_name}
        for name in self.order:
            plan = group_plan(g, name, self.dt, preds, rec, sources, self.input_name,
                              self.in_shape)
            self._neuron(g, name, plan, taken)
        if len({_key(n) for n in taken}) != len(taken):
            raise NIRError("node names collide once '.' is replaced by '_'")
        spatial = [n for n in self.order if len(self.shapes[n]) == 3 and n != self.integrator]
        self.last_conv_neuron = spatial[-1] if spatial else None

    # ---- build ---------------------------------------------------------------------------------

    def _neuron(self, g, name, plan, taken):
        shape, step, exact = plan["shape"], plan["step"], plan["exact"]
        infos = [i for i in plan["infos"] if i["src"] not in (BIAS_SOURCE, BIAS_LATE)]
        biases = {("u" if i["src"] == BIAS_SOURCE else "late"): i["w"].reshape(shape)
                  for i in plan["infos"] if i["src"] in (BIAS_SOURCE, BIAS_LATE)}
        if np.any(plan["bias"]):
            if np.any(plan["i_decay"] != DECAY_UNITY):
                raise NIRError(f"node {name!r}: v_leak into a neuron whose current decays has no "
                               f"student form (its bias would go to the current)")
            biases["v"] = np.broadcast_to(plan["bias"], shape)
        if len(shape) == 3 and (any(i["kind"] == "dense" or i["src"] in self.flat for i in infos)
                                or any(np.any(b != b[:, :1, :1]) for b in biases.values())):
            # a dense input, or a bias a conv's per-channel bias cannot hold: the neuron is 1-D
            # in G' (in Flatten's (C, H, W) order)
            self.flat.add(name)
            shape = (int(np.prod(shape)),)
        self.shapes[name] = shape
        infos = [self._flatten(i, name) for i in infos]
        biases = {k: b.reshape(shape) for k, b in biases.items()}
        plan = {**plan, **{k: np.reshape(plan[k], shape) for k in ("i_decay", "v_decay")}}
        spiking = plan["theta"] is not None
        if not spiking and not (np.all(plan["i_decay"] == 0)
                                and np.all(plan["v_decay"] == DECAY_UNITY)):
            raise NIRError(f"node {name!r}: a {type(g.nodes[name]).__name__} readout whose state "
                           f"decays has no student form (an I integrator or a spiking readout "
                           f"has)")
        params = [plan["i_decay"], plan["v_decay"], *biases.values()]
        pshape = shape
        if len(shape) == 3 and all(np.all(np.broadcast_to(a, shape) == np.broadcast_to(
                a, shape)[:, :1, :1]) for a in params):
            pshape = (shape[0], 1, 1)
        layer = LoihiCUBA(pshape, weight_step=step)
        index = tuple(slice(0, n) for n in pshape)
        with torch.no_grad():
            for buf, decay in ((layer.alpha, plan["i_decay"]), (layer.beta, plan["v_decay"])):
                keep = 1.0 - np.broadcast_to(decay, shape)[index] / DECAY_UNITY
                buf.copy_(torch.as_tensor(keep, dtype=torch.float32))
            if spiking:
                vth, _ = integer_threshold(plan["theta"], step, name)
                if vth < 1:
                    raise NIRError(f"node {name!r}: threshold {plan['theta']:g} is 0 weight steps; "
                                   f"the student's neuron needs at least 1")
                layer.threshold.copy_(torch.full(pshape, step * vth))
        for kind, values in biases.items():
            values = values[:, :1, :1] if len(shape) == 3 else values  # per channel (above)
            if kind == "v":
                k = integer_bias(values, step, name, exact)
            else:
                k, _ = to_int(values, step, name, "bias weights", WEIGHT_MIN, WEIGHT_MAX, exact)
            if k is not None and np.any(k):
                layer.set_bias(kind, step * np.broadcast_to(k.reshape(values.shape), pshape))
        if not spiking:
            self.integrator = name
        self.layers[_key(name)] = layer
        self.paths[name], self.recurrent[name] = [], []
        for info in infos:
            conn = self._connection(g, name, info, step, exact, taken)
            (self.recurrent if conn.rec else self.paths)[name].append(conn)

    def _flatten(self, info, name):
        """A connection into or from a 1-D neuron of G' (`flat`): a convolution becomes its dense
        matrix, a flat source has shape (N,)."""
        src_flat = info["src"] in self.flat
        if info["kind"] == "conv" and (src_flat or name in self.flat):
            info = {**info, "kind": "dense", "conv": {},
                    "w": conv_dense(info["w"], info["conv"], info["src_shape"], name)}
        if src_flat:
            info = {**info, "src_shape": (int(np.prod(info["src_shape"])),)}
        return info

    def _connection(self, g, name, info, step, exact, taken) -> Connection:
        ops, src_shape = info["ops"], tuple(info["src_shape"])
        src = self.input_name if info["src"] == "input" else info["src"]
        synapses = [op for op in ops if role(g.nodes[op]) == "synapse"]
        label = synapses[0] if synapses else ops[-1] if ops else f"{name}.from.{src}"
        label = self._unique(label, name, taken)
        flatten = None
        if info["kind"] == "dense" and len(src_shape) > 1:
            flats = [op for op in ops if isinstance(g.nodes[op], nir.Flatten)]
            flatten = self._unique(flats[0] if flats else f"{label}.flatten", label, taken)
        if info["kind"] == "conv" and info["conv"].get("groups", 1) > 1:
            info = {**info, "w": _ungrouped(info["w"], info["conv"]["groups"], src_shape[0]),
                    "conv": {**info["conv"], "groups": 1}}
        k, _ = to_int(info["w"], step, name, "weights", WEIGHT_MIN, WEIGHT_MAX, exact)
        if info["kind"] == "conv":
            conv = info["conv"]
            layer = QuantConv2d(src_shape[0], k.shape[0], k.shape[2:],
                                stride=conv.get("stride", 1), padding=conv.get("padding", 0),
                                dilation=conv.get("dilation", 1), weight_step=step)
        else:
            layer = QuantLinear(k.shape[1], k.shape[0], weight_step=step)
        w = torch.as_tensor(info["w"], dtype=torch.float32).reshape(layer.weight.shape)
        k = torch.as_tensor(k, dtype=torch.float32).reshape(layer.weight.shape)
        with torch.no_grad():  # the float weights where they round to the compiler's integers
            layer.weight.copy_(w)
            off = layer.step_weight() != k
            layer.weight[off] = k[off] * step
        self.layers[_key(label)] = layer
        return Connection(label, src, bool(info["rec"]), info["kind"], src_shape, flatten)

    @staticmethod
    def _unique(label, owner, taken):
        if label in taken:
            label = f"{label}.{owner}"
        while label in taken:
            label += "_"
        taken.add(label)
        return label

    # ---- run -----------------------------------------------------------------------------------

    def _connect(self, conn, x, lead, shape):
        """Connection `conn` on source values x with `lead` leading dims -> current in weight
        steps of `shape` after them."""
        layer = self.layers[_key(conn.name)]
        flat = x.reshape(-1, *conn.src_shape) if conn.kind == "conv" else \
            x.reshape(-1, int(np.prod(conn.src_shape)))
        return layer.forward_steps(flat).reshape(*lead, *shape)

    def forward(self, x) -> StudentOutput:
        out = StudentOutput(logits_t=None)
        values = {self.input_name: x}
        lead = tuple(x.shape[:2])
        for name in self.order:
            shape, layer = self.shapes[name], self.layers[_key(name)]
            a = sum(self._connect(c, values[c.src], lead, shape) for c in self.paths[name])
            if name == self.integrator:
                bias = layer.bias_steps("u")
                out.logits_t = (a if bias is None else a + bias).flatten(2) * layer.weight_step
                continue
            rec = self.recurrent[name]
            step_fn = None if not rec else (
                lambda s, rec=rec, shape=shape: sum(self._connect(c, s, s.shape[:1], shape)
                                                    for c in rec))
            values[name] = out.spikes[name] = layer.run_steps(a, step_fn)
            if name == self.last_conv_neuron:
                out.features["last"] = values[name]
        if out.logits_t is None:
            out.logits_t = values[self.readout].flatten(2)
        return out


# ---- export ------------------------------------------------------------------------------------

def _synapse_node(layer, conn, bias):
    """The synapse node of a connection with the trained `step * k` weights and `bias`."""
    step = float(layer.weight_step)
    w = layer.step_weight().detach().double().numpy() * step
    meta = {"weight_step": step, "weight_bits": 8}
    b = np.zeros(w.shape[0]) if bias is None else bias.detach().double().numpy().reshape(-1)
    if conn.kind == "conv":
        return nir.Conv2d(input_shape=tuple(conn.src_shape[1:]), weight=w, stride=layer.stride,
                          padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                          bias=b, metadata=meta)
    return nir.Affine(weight=w, bias=b, metadata=meta)


def _bias(layer, kinds, shape):
    """The first bias of `kinds` that the neuron has, per channel ((C, H, W) neuron) or per
    neuron, in weight units; None when it has none."""
    for kind in kinds:
        b = layer.bias_steps(kind)
        if b is not None:
            b = torch.broadcast_to(b, layer.param_shape)
            return (b[:, 0, 0] if len(shape) == 3 else b) * layer.weight_step
    return None


def nir_student_graph(model, original, dt: float, meta: dict) -> nir.NIRGraph:
    """`model` (a NIRStudent) -> its graph G' (module docstring) at time step dt; `meta`
    (producer, timesteps, encoding, ...) is merged into the graph metadata. `original`, the
    user's graph the student was built from, is not needed: the student holds G's structure."""
    from .to_nir import ExportError, flatten_node, integrator_node, neuron_node
    del original
    nodes = {model.input_name: nir.Input(input_type=np.array(model.in_shape))}
    edges, steps = [], []
    for name in model.order:
        layer, shape = model.layers[_key(name)], model.shapes[name]
        step = float(layer.weight_step)
        steps.append(step)
        first = set()
        for conn in model.paths[name] + model.recurrent[name]:
            bias = None
            if conn.rec not in first:  # the biases sit on the first synapse of each kind
                first.add(conn.rec)
                bias = _bias(layer, ("late",) if conn.rec else ("v", "u"), shape)
            src = conn.src
            if conn.flatten is not None:
                nodes[conn.flatten] = flatten_node(conn.src_shape)
                edges.append((src, conn.flatten))
                src = conn.flatten
            nodes[conn.name] = _synapse_node(model.layers[_key(conn.name)], conn, bias)
            edges += [(src, conn.name), (conn.name, name)]
        if name == model.integrator:
            nodes[name] = integrator_node(int(np.prod(shape)), dt)
        else:
            nodes[name] = neuron_node(name, layer, shape, dt)
            nodes[name].metadata["weight_step"] = step
    nodes[model.output_name] = nir.Output(output_type=np.array(model.shapes[model.readout]))
    edges.append((model.readout, model.output_name))
    metadata = {"dt": float(dt), "reset": "zero", "weight_step": steps[-1], **meta}
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=True)
    except ValueError as e:
        raise ExportError(f"NIR type check failed: {str(e).splitlines()[0]}") from None
