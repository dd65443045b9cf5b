"""Export a student rebuilt from a user's NIR graph (train.from_nir, `NIRStudent`) back to NIR.

The written graph is the user's graph, node for node and edge for edge, with what the student
computes: synapses carry the trained weights on their step grid (`weight_step * int8`, zero bias,
metadata weight_step), neurons become export.to_nir's LIF / CubaLIF of the LoihiCUBA layer (reset
to zero, decays and threshold on Loihi's grids, metadata weight_step of the incoming synapses), an
integrator readout gets r = 1/dt. Graph metadata as export.to_nir writes it (producer, dt, reset,
weight_step), so deploy.verify holds float and emulator to every spike.
"""
import numpy as np

import nir
from train.layers import QuantConv2d, QuantLinear
from train.neurons import LoihiCUBA


def nir_student_graph(model, original: nir.NIRGraph, dt: float, meta: dict) -> nir.NIRGraph:
    """`model` (a NIRStudent built from `original`) -> NIR graph at time step dt; `meta` (producer,
    timesteps, encoding, ...) is merged into the graph metadata."""
    from .to_nir import ExportError, flatten_node, integrator_node, neuron_node
    nodes, steps = {}, []
    for name, node in original.nodes.items():
        key = model.keys.get(name)
        layer = model.layers[key] if key is not None else None
        shape = tuple(int(s) for s in np.asarray(node.output_type["output"]).reshape(-1))
        if isinstance(layer, (QuantConv2d, QuantLinear)):
            w = layer.quantized_weight().detach().double().numpy()
            step = float(layer.weight_step)
            steps.append(step)
            m = {"weight_step": step, "weight_bits": 8}
            if isinstance(node, nir.Conv2d):
                nodes[name] = nir.Conv2d(input_shape=tuple(int(s) for s in node.input_shape),
                                         weight=w, stride=node.stride, padding=node.padding,
                                         dilation=node.dilation, groups=node.groups,
                                         bias=np.zeros(w.shape[0]), metadata=m)
            elif isinstance(node, nir.Affine):
                nodes[name] = nir.Affine(weight=w, bias=np.zeros(w.shape[0]), metadata=m)
            else:
                nodes[name] = nir.Linear(weight=w, metadata=m)
        elif isinstance(layer, LoihiCUBA):
            nodes[name] = neuron_node(name, layer, shape, dt)
            nodes[name].metadata["weight_step"] = float(layer.weight_step)
        elif isinstance(node, nir.Flatten):
            nodes[name] = flatten_node(tuple(int(s) for s in np.asarray(
                node.input_type["input"]).reshape(-1)))
        elif isinstance(node, nir.I):
            nodes[name] = integrator_node(shape[0], dt)
        elif isinstance(node, (nir.Input, nir.Output)):
            nodes[name] = node
        else:
            raise ExportError(f"node {name!r}: {type(node).__name__} has no student layer")
    metadata = {"dt": float(dt), "reset": "zero", "weight_step": steps[-1] if steps else 1 / 64,
                **meta}
    try:
        return nir.NIRGraph(nodes=nodes, edges=list(original.edges), metadata=metadata,
                            type_check=True)
    except ValueError as e:
        raise ExportError(f"NIR type check failed: {str(e).splitlines()[0]}") from None
