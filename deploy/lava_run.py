"""Run a compiled `hwmodels.loihi.Net` in Lava's fixed-point CPU simulator
(Loihi2SimCfg(select_tag='fixed_pt')), in one process or sharded over worker processes.

Network: when the file holds a netx `layer/` chain, lava-dl's `netx.hdf5.Network` builds it;
otherwise it is built from Lava's own processes: one `LIFReset` per group (du = iDecay - 1, Lava
adds 1; dv = vDecay; bias_mant, bias_exp 6), one `Dense` (weights scaled as netx's
`optimize_weight_bits` does: hwmodels.loihi.netx_weight_bits; Lava clips and truncates them itself;
its weight_exp adds the connection's own exponent Synapses.exp) or `Conv` per connection (a
Dense of the convolution's matrix when it has an exponent: `conv_as_dense`), all connections into a group
summed at its `a_in`, a `RingBuffer` source. Lava works in (W, H, C) order: conv weights go in as
netx passes them (out, kw, kh, in, spatially flipped), a dense connection reads a (C, H, W) source
through `transpose(2, 1, 0).flatten()` and writes a (C, H, W) group through
`reshape((C, H, W)).transpose(2, 1, 0)`.

Streaming: all samples run back to back through one network, T steps each. Lava delays every
connection by one step, so the group at depth d (Net.depths()) first sees sample k at Lava step
kT + 1 + d (Lava counts from 1; the source sends input row j at step j + 1). `LIFReset(
reset_interval=T, reset_offset=1 + d)` zeroes its u and v exactly then (netx: reset_offset=1 gives
layer i the offset i + 2 = 1 + depth). Every feed-forward input of a group comes from depth d - 1
(relay-aligned nets; checked), so each synapse's one-step buffer already holds the same sample and
only max-depth extra steps drain the pipeline. A recurrent Dense would carry the previous
sample's last spikes into the reset step: the run pauses after step kT + d and sets that Dense's
`a_buff` to zero (Var.set), as the emulator starts every sample with no recurrent input.

Recorded by one recorder process into .npy memmaps: each spiking group's spikes (InPorts) and u,
v of the output group (RefPorts, read after each step). Group of depth d: Lava step index j
(0-based) holds its output for input step j - d; results are aligned back to the emulator's time.

    python -m deploy.lava_run --net NET --inputs X.npy --out R.npz
        (a worker of run_lava_parallel(start='exec'))
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hwmodels.loihi import netx_weight_bits as weight_bits
from hwmodels.loihi import NetxError, Result, lava_dense_weights
from hwmodels.netfile import has_layers, read_net

ROOT = Path(__file__).resolve().parents[1]
LAVA_CONV_GROUPS_MAX = 127   # Lava's Conv holds `groups` as int8 (lava_conv_groups)


def preload():
    """Import Lava's runtime now: it calls multiprocessing.set_start_method('fork') at import
    time, which fails once anything else (datasets, loaders, a get_start_method() call) has fixed
    the start method. Lava needs 'fork', so un-fix it just before Lava's first import. (lava-dl's
    netx, 6 s of imports, is only imported to run a netx file.)"""
    if "lava.magma.runtime.message_infrastructure.multiprocessing" not in sys.modules:
        import multiprocessing
        if multiprocessing.get_start_method(allow_none=True) is not None:
            multiprocessing.set_start_method(None, force=True)
    import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401


def _lava_shape(shape) -> tuple:
    return tuple(shape[::-1]) if len(shape) == 3 else tuple(shape)


def _from_lava(x, shape):
    """(steps, *Lava shape) -> (steps, *shape) in (C, H, W) order."""
    return np.transpose(x, (0, 3, 2, 1)) if len(shape) == 3 else x.reshape(len(x), *shape)


def _recorder(spike_ports, state_vars, paths):
    """One Lava process recording a whole run into .npy memmaps (row time_step - 1): the spikes
    arriving at its InPorts (one per spiking group) and, after each step, the Vars it reads
    through RefPorts (u, v of the output group). Returns (process, its model class).

    One process instead of one per recorded quantity: Lava costs about the same per process and
    step whatever the process does. Lava's own io.sink.RingBuffer / Read would also return their
    buffers through Var.get(), which moves arrays element by element (8 s for one 14x14x16 x
    64-step buffer); a shared file is instant. Built inside a function so that Lava is imported
    lazily; handed to Lava through Loihi2SimCfg(exception_proc_model_map={proc: model})."""
    from lava.magma.core.decorator import implements, requires, tag
    from lava.magma.core.model.py.model import PyLoihiProcessModel
    from lava.magma.core.model.py.ports import PyInPort, PyRefPort
    from lava.magma.core.model.py.type import LavaPyType
    from lava.magma.core.process.ports.ports import InPort, RefPort
    from lava.magma.core.process.process import AbstractProcess
    from lava.magma.core.resources import CPU
    from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

    n_in, n_ref = len(spike_ports), len(state_vars)

    class Recorder(AbstractProcess):
        def __init__(self):
            super().__init__(paths=list(paths))
            for i, port in enumerate(spike_ports):
                setattr(self, f"in{i}", InPort(shape=port.shape))
            for j, var in enumerate(state_vars):
                ref = RefPort(var.shape)
                ref.connect_var(var)
                setattr(self, f"ref{j}", ref)

    def __init__(self, proc_params):
        PyLoihiProcessModel.__init__(self, proc_params)
        self.out = [np.load(path, mmap_mode="r+") for path in proc_params["paths"]]

    def run_spk(self):
        for i in range(n_in):
            self.out[i][self.time_step - 1] = getattr(self, f"in{i}").recv()

    def run_post_mgmt(self):
        for j in range(n_ref):
            self.out[n_in + j][self.time_step - 1] = getattr(self, f"ref{j}").read()

    members = {f"in{i}": LavaPyType(PyInPort.VEC_DENSE, np.int32) for i in range(n_in)}
    members.update({f"ref{j}": LavaPyType(PyRefPort.VEC_DENSE, np.int32) for j in range(n_ref)})
    members.update(__init__=__init__, run_spk=run_spk, run_post_mgmt=run_post_mgmt,
                   post_guard=lambda self: n_ref > 0)
    model = type("PyRecorderModel", (PyLoihiProcessModel,), members)
    model = tag("fixed_pt")(requires(CPU)(implements(proc=Recorder, protocol=LoihiProtocol)(model)))
    proc = Recorder()
    for i, port in enumerate(spike_ports):
        port.connect(getattr(proc, f"in{i}"))
    return proc, model


def check_aligned(net):
    """Lava's per-synapse delay equals the emulator's time only when every feed-forward input of
    a group comes from one depth less (deploy.compile's relays make it so)."""
    depth = net.depths()
    for s in net.synapses:
        if not s.recurrent and depth[s.src] != depth[s.dst] - 1:
            raise NetxError(f"connection {s.name!r}: {s.src!r} (depth {depth[s.src]}) feeds "
                            f"{s.dst!r} (depth {depth[s.dst]}); Lava's delays need equal path "
                            f"lengths (insert relay groups)")


class _Built:
    """A Lava network of a Net: `lif` group -> LIF process, `out` group -> its spike OutPort,
    `inputs` [(InPort, flat)] to feed from the source (flat: (C, H, W)-flattened),
    `recurrent` [(depth, Dense)], `root` a process to run / stop."""

    def __init__(self):
        self.lif, self.out, self.inputs, self.recurrent, self.root = {}, {}, [], [], None


def _build_netx(net_path, net, steps):
    from lava.lib.dl.netx import hdf5
    if not net.chain():
        raise NetxError(f"{net_path}: has a netx layer/ chain but its net/ is not a chain")
    network = hdf5.Network(net_config=str(net_path), reset_interval=steps, reset_offset=1)
    if len(network.layers) != len(net.neurons):
        raise NetxError(f"{net_path}: netx built {len(network.layers)} layers, the net has "
                        f"{len(net.neurons)} groups")
    built = _Built()
    for i, (g, block) in enumerate(zip(net.neurons, network.layers)):
        built.lif[g.name], built.out[g.name] = block.neuron, block.out
        if hasattr(block, "synapse_rec"):
            built.recurrent.append((i + 1, block.synapse_rec))
    first = net.incoming(net.neurons[0].name)[0]
    built.inputs.append((network.inp, first.kind == "dense" and len(net.in_shape) == 3))
    built.root = network
    return built


def _build_procs(net, steps):
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import Dense
    from lava.proc.lif.process import LIFReset

    depth = net.depths()
    built = _Built()
    for g in net.neurons:
        shape = _lava_shape(g.shape)
        bias = 0 if g.bias is None else np.asarray(g.bias, dtype=np.int32)
        if np.ndim(bias) == 3:
            bias = np.transpose(bias, (2, 1, 0))
        built.lif[g.name] = LIFReset(shape=shape, du=g.i_decay - 1, dv=g.v_decay, vth=g.vth,
                                     bias_mant=bias, bias_exp=6, reset_interval=steps,
                                     reset_offset=1 + depth[g.name], name=g.name)
        built.out[g.name] = built.lif[g.name].s_out
    for s in net.synapses:
        src_shape, dst_shape = net.shape_of(s.src), net.shape_of(s.dst)
        # Conv ignores weight_exp (conv_as_dense), and a recurrent connection needs a_buff,
        # which only Dense has (cleared between samples; a self-connection of
        # export.subtract_reset is a recurrent 1x1 conv)
        dense = s.kind == "dense" or s.exp != 0 or s.recurrent
        if not dense:
            weight, groups = lava_conv_groups(s.weight, s.groups)
            w = weight[:, :, ::-1, ::-1].transpose(0, 3, 2, 1)
            proc = Conv(weight=w.copy(), input_shape=_lava_shape(src_shape),
                        stride=tuple(s.stride[::-1]), padding=tuple(s.padding[::-1]),
                        dilation=tuple(s.dilation[::-1]), groups=groups, name=s.name)
            out = proc.a_out
        else:
            matrix = s.weight if s.kind == "dense" else conv_as_dense(s, src_shape)
            w, bits, exp = weight_bits(matrix)
            proc = Dense(weights=w, weight_exp=int(exp) + s.exp, num_weight_bits=int(bits),
                         name=s.name)
            out = proc.a_out
            if len(dst_shape) == 3:
                out = out.reshape(tuple(dst_shape)).transpose([2, 1, 0])
        out.connect(built.lif[s.dst].a_in)
        flat = dense and len(src_shape) == 3
        if s.src == "input":
            built.inputs.append((proc.s_in, flat))
        else:
            _feed(built.out[s.src], flat).connect(proc.s_in)
        if s.recurrent:
            built.recurrent.append((depth[s.dst], proc))
    built.root = built.lif[net.neurons[0].name]
    return built


def conv_as_dense(s, src_shape):
    """The (out, in) integer matrix of conv connection s over its (C, H, W)-flattened source.

    lava-nc 0.10.0's Conv stores weight_exp but never applies it (PyConvModelFixed.run_spk:
    utils.conv, then the 24-bit clamp), so a conv with a weight exponent (Synapses.exp) runs as
    a Dense, which shifts its integer sum by weight_exp (PyDenseModelBitAcc). Its weights must
    survive netx's and Lava's scaling exactly (int8 weights do), else NetxError."""
    from export.paths import conv_dense
    matrix = np.rint(conv_dense(s.weight, vars(s), src_shape, s.dst)).astype(np.int64)
    lava_w, exp = lava_dense_weights(matrix)
    if not np.array_equal(lava_w * 2.0 ** exp, matrix):
        raise NetxError(f"connection {s.name!r}: its convolution as a Lava Dense changes weights")
    return matrix


def lava_conv_groups(weight, groups):
    """(weight, groups) that Lava's Conv computes exactly: the same convolution with at most
    LAVA_CONV_GROUPS_MAX groups. int64 torch-order weights (out, in / groups, kh, kw).

    Lava's PyConvModelFixed holds `groups` as an int8 Var (lava-nc 0.10.0, proc/conv/models.py:
    `groups: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)`), so groups = 128 becomes
    -128 and utils.conv_scipy's loops `range(out // groups)` run zero times: the connection
    silently sends no current (256 becomes 0: ZeroDivisionError). A convolution with g > 127
    groups is rewritten as one with G = the largest divisor of g <= 127 groups, each new group
    holding g / G old ones on its block diagonal (zeros elsewhere): the same sums, so Lava's
    output equals the emulator's; its cost grows g / G times (docs/loihi_net.md)."""
    weight = np.asarray(weight, dtype=np.int64)
    if groups <= LAVA_CONV_GROUPS_MAX:
        return weight, groups
    new = max(d for d in range(1, LAVA_CONV_GROUPS_MAX + 1) if groups % d == 0)
    out, cin_old = weight.shape[:2]
    out_old, out_new, cin_new = out // groups, out // new, cin_old * groups // new
    w = np.zeros((out, cin_new, *weight.shape[2:]), dtype=np.int64)
    for o in range(out):
        offset = (o // out_old) * cin_old - (o // out_new) * cin_new  # old group's first input
        w[o, offset: offset + cin_old] = weight[o]
    return w, new


def _feed(port, flat):
    """Connect an OutPort to an InPort, through (W, H, C) -> (C, H, W) -> flat when `flat`."""
    return port.transpose([2, 1, 0]).flatten() if flat else port


def _source_data(inputs, in_shape, total):
    """(N, T, *in_shape) -> Lava's (*Lava shape, total) int32, zero after the last sample."""
    n, steps = inputs.shape[:2]
    x = inputs.reshape(n * steps, *in_shape) != 0
    if len(in_shape) == 3:
        x = np.transpose(x, (0, 3, 2, 1))
    data = np.zeros((total, *x.shape[1:]), dtype=np.int32)
    data[: n * steps] = x
    return np.moveaxis(data, 0, -1)


def _stops(n, steps, total, chunk, rec_depths):
    """Lava steps after which to pause: every `chunk` steps, the end, and after kT + d for the
    depth d of each recurrent connection (to clear its buffer before the group's reset)."""
    stops = set(range(chunk, total, chunk)) | {total}
    stops |= {k * steps + d for d in rec_depths for k in range(n) if k * steps + d < total}
    return sorted(stops)


def run_lava(net_path, inputs, net=None, progress=True, samples_per_chunk=8,
             progress_file=None):
    """Run inputs (N, T, *in_shape) {0,1} through Lava; `net` = hwmodels.netfile.read_net(net_path).

    Returns a hwmodels.loihi.Result of numpy arrays in the emulator's time (delays removed).
    progress_file: a file to keep the number of finished samples in (for a parent process).
    """
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.source import RingBuffer as Source

    net = net if net is not None else read_net(net_path)
    check_aligned(net)
    inputs = np.asarray(inputs)
    n, steps = inputs.shape[:2]
    built = _build_netx(net_path, net, steps) if has_layers(net_path) else \
        _build_procs(net, steps)
    depth = net.depths()
    total = n * steps + max(depth.values())
    source = Source(data=_source_data(inputs, net.in_shape, total))
    for port, flat in built.inputs:
        _feed(source.s_out, flat).connect(port)
    spiking = [g for g in net.neurons if g.spiking]
    out_group = net.group(net.output)
    with tempfile.TemporaryDirectory(prefix=f"lava_run_{os.getpid()}_") as tmp:
        shapes = [(g.name, _lava_shape(g.shape), np.int8) for g in spiking] + \
            [(key, _lava_shape(out_group.shape), np.int32) for key in ("u", "v")]
        paths = {name: f"{tmp}/{i}.npy" for i, (name, _, _) in enumerate(shapes)}
        for name, shape, dtype in shapes:
            np.lib.format.open_memmap(paths[name], mode="w+", dtype=dtype,
                                      shape=(total, *shape)).flush()
        lif = built.lif[out_group.name]
        recorder, model = _recorder([built.out[g.name] for g in spiking], [lif.u, lif.v],
                                    list(paths.values()))
        exceptions = {recorder: model}
        cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=exceptions)
        rec_depths = sorted({d for d, _ in built.recurrent})
        stops = _stops(n, steps, total, steps * samples_per_chunk, rec_depths)
        # no tqdm object at all without progress: a forked worker must not wait on tqdm's lock
        bar = tqdm(total=n, desc="lava", unit="sample") if progress else None
        done, last = 0, 0
        try:
            for stop in stops:
                built.root.run(condition=RunSteps(num_steps=stop - last), run_cfg=cfg)
                last = stop
                for d, dense in built.recurrent:
                    if stop >= d and (stop - d) % steps == 0 and (stop - d) // steps < n:
                        dense.a_buff.set(np.zeros(dense.a_buff.shape, dtype=np.int32))
                now = min(n, max(0, (stop - max(depth.values())) // steps))
                if bar is not None:
                    bar.update(now - done)
                done = now
                if progress_file:
                    Path(progress_file).write_text(str(done))
            if bar is not None:
                bar.update(n - done)
        finally:
            if bar is not None:
                bar.close()
            built.root.stop()
        rows = {key: np.load(path) for key, path in paths.items()}

    def aligned(per_step, shape, d):
        """Lava step index j holds the output of a group at depth d for input step j - d."""
        x = _from_lava(per_step[d: d + n * steps], shape)
        return x.reshape(n, steps, *shape)

    spikes = {g.name: aligned(rows[g.name], g.shape, depth[g.name]).astype(bool)
              for g in spiking}
    u, v = (aligned(rows[k], out_group.shape, depth[out_group.name]).astype(np.int64)
            .reshape(n, steps, -1) for k in ("u", "v"))
    result = Result(spikes=spikes, readout=v, readout_u=u, readout_kind=net.readout)
    if net.readout == "spikes":
        result.output_spikes = spikes[net.output].reshape(n, steps, -1)
    return result


# ---- parallel: one Lava runtime per worker process -----------------------------------------------

def _save(path, result):
    arrays = {"readout": result.readout, "readout_u": result.readout_u}
    arrays.update({f"spikes/{k}": v for k, v in result.spikes.items()})
    np.savez(path, **arrays)


def _load(path, net):
    with np.load(path) as z:
        spikes = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("spikes/")}
        return Result(spikes=spikes, readout=z["readout"], readout_u=z["readout_u"],
                      readout_kind=net.readout)


def _fork_worker(net_path, inputs, out, progress_file):
    """One shard in a forked worker (Lava and lava-dl already imported by the parent).

    The worker leads its own process group (it and the Lava processes it forks), so a Ctrl-C at
    the terminal reaches only the main process, which stops the worker with SIGTERM: that ends
    run_lava through its `finally` (Lava's runtime stopped, its shared memory freed) and the
    worker exits 130 without a traceback. A thread watches the parent: when it dies (SIGKILL),
    the worker kills its whole group within a second."""
    import torch
    torch.set_num_threads(1)  # OpenMP pools do not survive fork; one thread per worker anyway
    os.setpgrp()
    watch_parent(os.getppid())

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        result = run_lava(net_path, inputs, read_net(net_path), progress=False,
                          progress_file=progress_file)
        _save(out, result)
    except KeyboardInterrupt:
        os._exit(130)
    except BaseException as e:  # reported by the parent, naming the worker
        Path(f"{out}.err").write_text(f"{type(e).__name__}: {e}")
        raise SystemExit(1)


def watch_parent(parent, period=0.5):
    """A daemon thread that SIGKILLs this process's group when `parent` is gone (re-parented)."""
    def loop():
        while os.getppid() == parent:
            time.sleep(period)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=loop, daemon=True, name="watch-parent").start()


def _end_workers(procs, grace=15.0):
    """Stop forked workers: SIGTERM (a clean Lava stop), then after `grace` seconds SIGKILL of
    each worker's process group (the worker and the Lava processes it forked)."""
    for p in procs:
        if p.is_alive():
            with _quiet():
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        with _quiet():
            os.killpg(p.pid, signal.SIGKILL)
        p.join(1.0)


def _quiet():
    """Ignore ProcessLookupError / PermissionError (a process that is already gone)."""
    return suppress(ProcessLookupError, PermissionError)


def clean_stale_worker_dirs(root=None) -> list:
    """Remove temp folders lava_workers_<pid>_* / lava_run_<pid>_* whose owner process is gone
    (a main process or worker that was killed). Returns the folders removed."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for d in list(root.glob("lava_workers_*_*")) + list(root.glob("lava_run_*_*")):
        try:
            pid = int(d.name.split("_")[2])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_lava_parallel(net_path, inputs, net=None, workers=1, progress=True, start="fork",
                      isolate=False):
    """run_lava with the samples split into `workers` contiguous shards, each run by its own
    worker process with its own Lava runtime; results merged in sample order. workers <= 1 runs
    in this process.

    Lava forks its own processes, so no multiprocessing Pool (daemonic workers cannot have
    children). start='fork': non-daemonic multiprocessing.Process forked from this process, which
    imports Lava (and netx for a netx file) once first, so a worker starts in well under a second;
    start='exec': fresh `python -m deploy.lava_run` interpreters on .npy shards (each pays ~3 s of
    imports, ~8 s with netx). isolate: run even one shard in a forked worker (its own process
    group, stopped cleanly on Ctrl-C; see _fork_worker)."""
    net = net if net is not None else read_net(net_path)
    inputs = np.asarray(inputs)
    n = len(inputs)
    workers = max(1, min(int(workers), n))
    preload()
    if workers == 1 and not (isolate and start == "fork"):
        return run_lava(net_path, inputs, net, progress=progress)
    if start not in ("fork", "exec"):
        raise ValueError(f"start {start!r} (expected 'fork' or 'exec')")
    check_aligned(net)
    net_path = str(Path(net_path).resolve())
    bounds = np.linspace(0, n, workers + 1).astype(int)
    with tempfile.TemporaryDirectory(prefix=f"lava_workers_{os.getpid()}_") as tmp:
        procs = []
        if start == "fork":
            import multiprocessing
            if has_layers(net_path):
                import lava.lib.dl.netx.hdf5  # noqa: F401  (imported once, before forking)
            from multiprocessing import resource_tracker
            resource_tracker.ensure_running()  # shared by the workers: frees what a kill leaks
            ctx = multiprocessing.get_context("fork")
            for i in range(workers):
                p = ctx.Process(target=_fork_worker, daemon=False, args=(
                    net_path, inputs[bounds[i]: bounds[i + 1]], f"{tmp}/r{i}.npz", f"{tmp}/p{i}"))
                p.start()
                procs.append(p)
        else:
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                       PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
            for i in range(workers):
                shard = f"{tmp}/x{i}.npy"
                np.save(shard, inputs[bounds[i]: bounds[i + 1]])
                cmd = [sys.executable, "-m", "deploy.lava_run", "--net", net_path, "--inputs",
                       shard, "--out", f"{tmp}/r{i}.npz", "--progress", f"{tmp}/p{i}"]
                with open(f"{tmp}/r{i}.npz.err", "w") as err:
                    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=err,
                                                  stdout=subprocess.DEVNULL))
        alive = (lambda p: p.is_alive()) if start == "fork" else (lambda p: p.poll() is None)
        bar = tqdm(total=n, desc=f"lava x{workers}", unit="sample", disable=not progress)
        try:
            while any(alive(p) for p in procs):
                time.sleep(0.2)
                bar.update(sum(_count(f"{tmp}/p{i}") for i in range(workers)) - bar.n)
        finally:
            if start == "fork":
                _end_workers(procs)
            else:  # each worker leads its own process group (main()): end it and its Lava
                for p in procs:
                    with _quiet():
                        os.killpg(p.pid, signal.SIGKILL)
            bar.close()
        for i, p in enumerate(procs):
            code = p.exitcode if start == "fork" else p.wait()
            if code != 0:
                err = Path(f"{tmp}/r{i}.npz.err")
                tail = err.read_text().strip().splitlines()[-3:] if err.is_file() else []
                raise RuntimeError(f"lava worker {i} (samples {bounds[i]}..{bounds[i + 1]}) "
                                   f"exited {code}: {' | '.join(tail)}")
        parts = [_load(f"{tmp}/r{i}.npz", net) for i in range(workers)]
    spikes = {k: np.concatenate([r.spikes[k] for r in parts]) for k in parts[0].spikes}
    result = Result(spikes=spikes,
                    readout=np.concatenate([r.readout for r in parts]),
                    readout_u=np.concatenate([r.readout_u for r in parts]),
                    readout_kind=net.readout)
    if net.readout == "spikes":
        result.output_spikes = result.spikes[net.output].reshape(n, inputs.shape[1], -1)
    return result


def _count(path) -> int:
    try:
        return int(Path(path).read_text() or 0)
    except (OSError, ValueError):
        return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m deploy.lava_run",
                                description="Run one shard of samples through Lava (a worker of "
                                            "run_lava_parallel).")
    p.add_argument("--net", required=True, help="compiled network (student.net)")
    p.add_argument("--inputs", required=True, help=".npy spikes (N, T, *input shape)")
    p.add_argument("--out", required=True, help=".npz to write the Result to")
    p.add_argument("--progress", help="file to write the number of finished samples to")
    args = p.parse_args(argv)
    os.setpgrp()  # this worker and its Lava processes: one group, ended together
    watch_parent(os.getppid())
    try:
        net = read_net(args.net)
        inputs = np.load(args.inputs)
    except (NetxError, OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    preload()
    try:
        result = run_lava(args.net, inputs, net, progress=False, progress_file=args.progress)
    except NetxError as e:
        sys.exit(f"error: {e}")
    _save(args.out, result)


if __name__ == "__main__":
    main()
