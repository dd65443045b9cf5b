"""Run a netx network in Lava's fixed-point CPU simulator (Loihi2SimCfg, select_tag='fixed_pt').

All samples stream through ONE network instance, back to back, T steps each. Between samples the
states are reset by netx itself: `hdf5.Network(reset_interval=T, reset_offset=1)` builds every
neuron group as `LIFReset`, which zeroes u and v of layer i (0-based) at the steps
t = k T + i + 2 (Lava counts steps from 1): exactly the step at which sample k's first input
reaches layer i through i + 1 synaptic delays. Each synapse only buffers one step, and that step
already belongs to the same sample, so every sample runs from zero state as if alone; no gap
steps are needed, only L extra steps at the end to drain the pipeline.

Recorded per step: every layer's output spikes (io.sink.RingBuffer on the block's `out`) and u, v
of the last layer (io.sink.Read through a RefPort, read after the step). Results are shifted back
by the synaptic delay (layer i lags the input by i + 1 steps), so they line up with
`hwmodels.loihi.Emulator.run` step for step.
"""
import numpy as np
from tqdm import tqdm

from hwmodels.loihi import Result


def preload():
    """Import Lava now: it calls multiprocessing.set_start_method('fork') at import time, which
    fails once anything else (datasets, loaders, a get_start_method() call) has fixed the start
    method. Lava needs 'fork', so un-fix it just before Lava's first import."""
    import sys
    if "lava.magma.runtime.message_infrastructure.multiprocessing" not in sys.modules:
        import multiprocessing
        if multiprocessing.get_start_method(allow_none=True) is not None:
            multiprocessing.set_start_method(None, force=True)
    import lava.lib.dl.netx.hdf5  # noqa: F401


def _to_lava(x):
    """(..., C, H, W) -> (..., W, H, C): netx works in XYZ order."""
    return np.moveaxis(x, (-3, -2, -1), (-1, -2, -3)) if x.ndim >= 3 else x


def _from_lava(x, shape):
    """Lava's (W, H, C, steps) or (N, steps) -> (steps, *shape) in (C, H, W) order."""
    x = np.moveaxis(x, -1, 0)
    return np.moveaxis(x, (1, 2, 3), (3, 2, 1)) if len(shape) == 3 else x.reshape(-1, *shape)


def _file_sink_classes():
    """A sink process whose model writes each step's input into a .npy memmap (row time_step-1).

    Lava's own io.sink.RingBuffer returns its buffer through Var.get(), which moves arrays element
    by element (8 s for one 14x14x16 x 64-step buffer here); writing to a shared file is instant.
    Defined inside a function so that Lava is imported lazily; handed to Lava through
    Loihi2SimCfg(exception_proc_model_map={sink: model}).
    """
    from lava.magma.core.decorator import implements, requires, tag
    from lava.magma.core.model.py.model import PyLoihiProcessModel
    from lava.magma.core.model.py.ports import PyInPort
    from lava.magma.core.model.py.type import LavaPyType
    from lava.magma.core.process.ports.ports import InPort
    from lava.magma.core.process.process import AbstractProcess
    from lava.magma.core.resources import CPU
    from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

    class FileSink(AbstractProcess):
        def __init__(self, *, shape, path):
            super().__init__(shape=shape, path=path)
            self.a_in = InPort(shape=shape)

    @implements(proc=FileSink, protocol=LoihiProtocol)
    @requires(CPU)
    @tag("fixed_pt")
    class PyFileSinkModel(PyLoihiProcessModel):
        a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)

        def __init__(self, proc_params):
            super().__init__(proc_params)
            self.out = np.load(proc_params["path"], mmap_mode="r+")

        def run_spk(self):
            self.out[self.time_step - 1] = self.a_in.recv()

    return FileSink, PyFileSinkModel


def run_lava(net_path, inputs, layers, samples_per_chunk=8, progress=True):
    """Run inputs (N, T, *in_shape) {0,1} through Lava; `layers` from hwmodels.loihi.read_netx.

    Returns a hwmodels.loihi.Result of numpy arrays aligned with the input steps (delay removed).
    """
    import tempfile

    from lava.lib.dl.netx import hdf5
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import Read
    from lava.proc.io.source import RingBuffer as Source

    inputs = np.asarray(inputs)
    n, steps = inputs.shape[:2]
    net = hdf5.Network(net_config=str(net_path), reset_interval=steps, reset_offset=1)
    if len(net.layers) != len(layers):
        raise RuntimeError(f"{net_path}: netx built {len(net.layers)} layers, expected "
                           f"{len(layers)}")
    depth = len(layers)
    chunk = steps * samples_per_chunk
    total = -(-(n * steps + depth) // chunk) * chunk
    flat = inputs.reshape(n * steps, *inputs.shape[2:])
    flat = flat.reshape(n * steps, -1) if layers[0].kind == "dense" else _to_lava(flat)
    data = np.zeros((total, *flat.shape[1:]), dtype=np.int32)
    data[: n * steps] = flat != 0
    source = Source(data=np.moveaxis(data, 0, -1))
    source.s_out.connect(net.inp)
    FileSink, FileSinkModel = _file_sink_classes()
    with tempfile.TemporaryDirectory(prefix="lava_run_") as tmp:
        paths, sinks = [], []
        for i, block in enumerate(net.layers):
            path = f"{tmp}/layer{i}.npy"
            np.lib.format.open_memmap(path, mode="w+", dtype=np.int8,
                                      shape=(total, *block.out.shape)).flush()
            sink = FileSink(shape=block.out.shape, path=path)
            block.out.connect(sink.a_in)
            paths.append(path)
            sinks.append(sink)
        reads = []
        for var in (net.layers[-1].neuron.v, net.layers[-1].neuron.u):
            read = Read(buffer=total)
            read.connect_var(var)
            reads.append(read)
        cfg = Loihi2SimCfg(select_tag="fixed_pt",
                           exception_proc_model_map={sink: FileSinkModel for sink in sinks})
        bar = tqdm(total=n, desc="lava", unit="sample", disable=not progress)
        try:
            for start in range(0, total, chunk):
                net.run(condition=RunSteps(num_steps=chunk), run_cfg=cfg)
                bar.update(min(samples_per_chunk, max(0, n - start // steps)))
            states = [_from_lava(read.data.get(), layers[-1].out_shape).reshape(total, -1)
                      for read in reads]
        finally:
            bar.close()
            net.stop()
        recorded = [_from_lava(np.moveaxis(np.load(p), 0, -1), layers[i].out_shape)
                    for i, p in enumerate(paths)]

    def aligned(per_step, i):
        """Lava step index j holds layer i's output for input step j - (i + 1)."""
        x = per_step[i + 1: i + 1 + n * steps]
        return x.reshape(n, steps, *x.shape[1:])

    spikes = {layer.name: aligned(recorded[i], i).astype(bool)
              for i, layer in enumerate(layers) if layer.has_neuron}
    readout, readout_u = (aligned(s, depth - 1).astype(np.int64) for s in states)
    return Result(spikes, readout, readout_u, layers)
