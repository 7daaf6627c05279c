"""Data sets as in-memory float tensors ``(N, D)`` in [0, 1] (or the user's own scale).

Every loader returns a :class:`Dataset` with a train and a test split, the image shape
(for pictures and convolutional networks) and labels where the source has them (digits,
MNIST, Fashion-MNIST, an ``.npz`` with ``y_train``/``y_test`` or ``y``). Data sets without a
split get a fixed, seeded one. A validation split is the data set's own (Caltech 101
Silhouettes) or the last ``validation`` training rows. Everything is validated: NaN/inf, wrong
rank, empty arrays and non-numeric dtypes are refused with a :class:`UserError`.

``--labels N`` keeps the labels of N training points for the program (:func:`labelled_subset`:
a draw seeded by the split seed and balanced over classes, as in Kingma et al. 2014,
arXiv:1406.5298); the rest of the training set is unlabelled. The test labels are always kept
(accuracy, identity preservation).

With ``binarize`` the training rows are re-binarized at every draw (by the trainer) and the
test and validation rows here, once, with a fixed seed: every run and every evaluation scores
the same binary images (dynamically binarized MNIST, as in Burda et al. 2016, arXiv:1509.00519,
and Tomczak & Welling 2018, arXiv:1705.07120).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import UserError
from ..storage.atomic import check_regular, open_regular
from .rowfile import RowFile

__all__ = [
    "DataSpec",
    "Dataset",
    "load_data",
    "validate_array",
    "DATASETS",
    "shared_data_dir",
    "labelled_subset",
    "is_class_labels",
    "BINARIZE_SEED",
]

BINARIZE_SEED = 123
"""Seed of the one binarization of the test and validation rows (the one benchmarks/mnist_nll.py has used)."""


class DataSpec(Protocol):
    """What :func:`load_data` reads: the ``[data]`` section of a run's config (``DataConfig`` has it all;
    what each option means is written there) or any object with these attributes."""

    name: str  # a name of DATASETS or a path to a .npy/.npz file
    root: str  # folder or file holding the data set ("" = the usual places)
    download: bool
    test_fraction: float  # held-out share for data sets without a split
    split_seed: int
    limit: int  # keep the first N training rows (0 = all)
    labels: str  # a count N of labelled training rows, or "all"
    binarize: bool
    validation: int  # hold out the last N training rows (0 = none)


@dataclass
class Dataset:
    name: str
    train: torch.Tensor | RowFile  # (N, D) float32, or rows streamed from a .npy file
    test: torch.Tensor | RowFile  # (M, D)
    image_shape: tuple[int, ...]  # (H, W) or (C, H, W); prod == D
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    labelled: np.ndarray | None = None  # indices of the training points whose labels the program sees
    val: torch.Tensor | RowFile | None = None  # (V, D), a validation split when there is one

    @property
    def data_dim(self) -> int:
        return self.train.shape[1]

    @property
    def num_classes(self) -> int | None:
        """C, when the labels are class indices 0..C-1; ``None`` without (class) labels."""
        parts = [a for a in (self.train_labels, self.test_labels) if a is not None]
        if not parts or not all(is_class_labels(a) for a in parts):
            return None
        return int(max(int(a.max()) for a in parts)) + 1

    def label_tensor(self) -> torch.Tensor | None:
        """The training labels the program sees, ``(N,)`` int64, -1 where unlabelled; ``None`` if none are kept."""
        if self.labelled is None or not len(self.labelled):
            return None
        y = torch.full((len(self.train),), -1, dtype=torch.int64)
        y[torch.from_numpy(self.labelled)] = torch.from_numpy(self.train_labels[self.labelled].astype(np.int64))
        return y


def is_class_labels(y: np.ndarray) -> bool:
    """Whether ``y`` is a 1-D array of class indices (non-negative integers, in any numeric dtype)."""
    y = np.asarray(y)
    if y.ndim != 1 or not len(y) or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        return False
    if np.iscomplexobj(y) or not np.isfinite(y).all():
        return False
    return bool((y >= 0).all() and (np.floor(y) == y).all())


def labelled_subset(labels: np.ndarray, count: str, seed: int) -> np.ndarray:
    """Indices of ``count`` points (a number, or ``all``) whose labels are kept: seeded, balanced over classes.

    Every class gets ``count // C`` points (a class with fewer gives all it has and the others
    make up the difference); the remainder goes one each to classes in a seeded order.

    Example:
        >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
        >>> np.bincount(y[labelled_subset(y, "6", seed=0)]).tolist()
        [2, 2, 2]
    """
    n = len(labels)
    if count == "all":
        return np.arange(n)
    wanted = int(count)
    if wanted == 0:
        return np.zeros(0, dtype=np.int64)
    if wanted > n:
        raise UserError(f"--labels {wanted} asks for more labelled points than the {n} training points")
    rng = np.random.default_rng(seed)
    classes, capacity = np.unique(labels, return_counts=True)
    quota = np.zeros(len(classes), dtype=np.int64)
    while quota.sum() < wanted:
        open_ = np.flatnonzero(quota < capacity)
        remaining = wanted - quota.sum()
        share = remaining // len(open_)
        if share == 0:
            quota[rng.permutation(open_)[:remaining]] += 1
        else:
            quota[open_] = np.minimum(quota[open_] + share, capacity[open_])
    picks = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


DATA_ENV = "PPL_VAE_DATA"  # the documented way to point every command at a folder of data sets


def shared_data_dir() -> Path | None:
    """Where named data sets are looked for when ``--data-root`` is not given: the folder ``$PPL_VAE_DATA``
    names, else the read-only ``shared/data`` beside a checkout, if present. Never the working directory:
    the same command finds the same data wherever it is run from."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    beside = Path(__file__).resolve().parents[3] / "shared" / "data"  # ppl_vae/data/datasets.py in a checkout
    return beside if beside.is_dir() else None


def validate_array(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as float32 ``(N, ...)`` with N >= 1 and finite values, or raise UserError."""
    if not isinstance(x, np.ndarray):
        raise UserError(f"{name}: expected an array, got {type(x).__name__}")
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise UserError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    if x.ndim < 2:
        raise UserError(f"{name}: expected an array of shape (N, D) or (N, H, W), got shape {x.shape}")
    if x.shape[0] == 0 or x[0].size == 0:
        raise UserError(f"{name}: the array is empty (shape {x.shape})")
    if np.iscomplexobj(x):
        raise UserError(f"{name}: complex values are not supported")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise UserError(f"{name}: {bad} values are NaN or infinite; clean the data first")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise UserError(f"{name}: values beyond the float32 range (|x| > 3.4e38); rescale the data first")
    return x


def _split_indices(n: int, cfg: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: a fixed permutation seeded by ``cfg.split_seed``."""
    perm = np.random.default_rng(cfg.split_seed).permutation(n)
    n_test = max(1, int(round(cfg.test_fraction * n)))
    if n - n_test < 1:
        raise UserError(f"{n} data points are too few to split into train and test")
    return perm[n_test:], perm[:n_test]


def _split(x: np.ndarray, labels: np.ndarray | None, cfg: DataSpec):
    train, test = _split_indices(len(x), cfg)
    pick = lambda a, i: None if a is None else a[i]
    return x[train], x[test], pick(labels, train), pick(labels, test)


def _labels(y, n: int, where: str) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise UserError(f"{where}: labels must have shape ({n},), one a row, got {y.shape}")
    return y.astype(np.int64) if is_class_labels(y) else y


def _make(name, x_train, x_test, y_train, y_test, image_shape=None) -> Dataset:
    x_train = validate_array(x_train, f"{name} (train)")
    x_test = validate_array(x_test, f"{name} (test)")
    y_train = _labels(y_train, len(x_train), f"{name} (train)")
    y_test = _labels(y_test, len(x_test), f"{name} (test)")
    shape = tuple(image_shape or x_train.shape[1:])
    if x_test.shape[1:] != x_train.shape[1:]:
        raise UserError(f"{name}: train and test images differ in shape ({x_train.shape[1:]} vs {x_test.shape[1:]})")
    flat = lambda a: torch.from_numpy(np.ascontiguousarray(a.reshape(len(a), -1)))
    return Dataset(name, flat(x_train), flat(x_test), shape, y_train, y_test)


def _digits_file() -> Path:
    """scikit-learn's copy of the UCI digits (``load_digits`` reads it), found without importing scikit-learn:
    that import costs about two seconds of every command's start, for a 1797-row table."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("digits: scikit-learn is not installed (the embedded data set ships in its wheel)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def _digits(cfg: DataSpec) -> Dataset:
    table = np.loadtxt(_digits_file(), delimiter=",")  # 64 pixels in 0..16, then the class
    x = (table[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    return _make("digits", *_split(x, table[:, -1].astype(int), cfg))


def _find(cfg: DataSpec, default_subdir: str, filename: str) -> Path | None:
    if cfg.root:
        root = Path(cfg.root)
        check_regular(root, "--data-root")
        path = root if root.is_file() else root / filename
        check_regular(path, "data file")
        return path
    shared = shared_data_dir()
    return shared / default_subdir / filename if shared else None


def _not_found(name: str, filename: str, path: Path | None) -> UserError:
    """Where a named data set was looked for, and the two ways to say where it is."""
    where = f"at {path}" if path is not None else f"(no --data-root given, ${DATA_ENV} unset, no shared/data)"
    return UserError(
        f"{name}: {filename} not found {where}; pass --data-root PATH/TO/{filename}, "
        f"or set {DATA_ENV} to the folder holding the data sets"
    )


def _npz_with_split(path: Path, name: str) -> Dataset:
    try:
        with (
            open_regular(path, "data file") as handle,
            np.load(handle, allow_pickle=False) as f,
        ):  # numpy leaks its own handle on a bad zip
            if "x_train" not in f or "x_test" not in f:
                raise UserError(f"{path}: an .npz data set needs arrays 'x_train' and 'x_test', found {list(f.keys())}")
            get = lambda k: f[k] if k in f else None
            return _make(name, f["x_train"], f["x_test"], get("y_train"), get("y_test"))
    except (OSError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"cannot read {path}: {err}") from None


def _mnist_like(name: str, subdir: str, torchvision_cls: str) -> Callable[[DataSpec], Dataset]:
    def load(cfg: DataSpec) -> Dataset:
        npz = _find(cfg, subdir, f"{subdir}.npz")
        if npz is not None and npz.is_file():
            return _npz_with_split(npz, name)
        if not cfg.root:
            raise _not_found(name, f"{subdir}.npz", npz)
        import torchvision.datasets as tvd

        cls = getattr(tvd, torchvision_cls)
        try:
            train = cls(cfg.root, train=True, download=cfg.download)
            test = cls(cfg.root, train=False, download=cfg.download)
        except RuntimeError as err:
            raise UserError(f"{name}: {err}") from None
        return _make(name, train.data.numpy(), test.data.numpy(), train.targets.numpy(), test.targets.numpy())

    return load


def _frey(cfg: DataSpec) -> Dataset:
    from scipy.io import loadmat

    path = _find(cfg, "frey", "frey_rawface.mat")
    if path is None or not path.is_file():
        raise _not_found("frey", "frey_rawface.mat", path)
    try:
        ff = loadmat(path)["ff"]  # (560, 1965) uint8, one 28x20 face a column
    except Exception as err:  # noqa: BLE001 - scipy raises several types for corrupt files
        raise UserError(f"frey: cannot read {path}: {err}") from None
    x = ff.T.reshape(-1, 28, 20)
    return _make("frey", *_split(x, None, cfg))


def _caltech101(cfg: DataSpec) -> Dataset:
    """Caltech 101 Silhouettes, 28x28 (Marlin et al. 2010): 4100 train, 2264 validation, 2307 test binary images.

    Read from Marlin's ``caltech101_silhouettes_28_split1.mat`` as the VampPrior paper's code reads
    it: each row reshaped to 28x28 in Fortran order (the file stores images column by column)
    and inverted, ``1 - x``, so the silhouette is 1 on a 0 background.
    """
    from scipy.io import loadmat

    path = _find(cfg, "caltech101_silhouettes", "caltech101_silhouettes_28_split1.mat")
    if path is None or not path.is_file():
        raise _not_found("caltech101", "caltech101_silhouettes_28_split1.mat", path)
    try:
        raw = loadmat(path)
        splits = {k: raw[f"{k}_data"] for k in ("train", "val", "test")}
        labels = {k: raw[f"{k}_labels"].reshape(-1).astype(np.int64) for k in ("train", "val", "test")}
    except Exception as err:  # noqa: BLE001 - scipy raises several types for corrupt files
        raise UserError(f"caltech101: cannot read {path}: {err}") from None
    images = {k: 1.0 - v.reshape(-1, 28, 28).transpose(0, 2, 1).astype(np.float32) for k, v in splits.items()}
    data = _make("caltech101", images["train"], images["test"], labels["train"], labels["test"])
    data.val = torch.from_numpy(
        np.ascontiguousarray(validate_array(images["val"], "caltech101 (val)").reshape(-1, 784))
    )
    return data


def _user_file(path: Path, cfg: DataSpec) -> Dataset:
    check_regular(path, "data file")
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    if path.suffix == ".npz":
        with open_regular(path, "data file") as handle, np.load(handle, allow_pickle=False) as f:
            if "x_train" in f:
                return _npz_with_split(path, path.stem)
            if "x" not in f:
                raise UserError(f"{path}: expected arrays 'x_train'/'x_test' or 'x', found {list(f.keys())}")
            x, y = f["x"], (f["y"] if "y" in f else None)
        x = validate_array(np.asarray(x), path.name)
        return _make(path.stem, *_split(x, y, cfg))
    # a .npy is streamed by rows: it may be larger than memory
    rows = RowFile(path).validate(path.name)
    train, test = _split_indices(len(rows), cfg)
    return Dataset(path.stem, rows.subset(train), rows.subset(test), rows.row_shape)


DATASETS: dict[str, Callable[[DataSpec], Dataset]] = {
    "digits": _digits,
    "mnist": _mnist_like("mnist", "mnist", "MNIST"),
    "fashion-mnist": _mnist_like("fashion-mnist", "fashion_mnist", "FashionMNIST"),
    "frey": _frey,
    "caltech101": _caltech101,
}
"""Data set name -> loader ``(DataSpec) -> Dataset``; any other name is read as a file path."""


def _binarized_once(test, val, name: str):
    """``x ~ Bernoulli(pixel)`` once for the test rows, then the validation rows, from :data:`BINARIZE_SEED`."""
    if isinstance(test, RowFile) or isinstance(val, RowFile):
        raise UserError(f"{name}: --binarize needs the test rows in memory; give an .npz, not a streamed .npy")
    for x in (test, val):
        if x is not None and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise UserError(
                f"{name}: --binarize needs pixels in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]"
            )
    generator = torch.Generator().manual_seed(BINARIZE_SEED)
    binary = lambda x: None if x is None else torch.bernoulli(x, generator=generator)
    return binary(test), binary(val)


def load_data(cfg: DataSpec) -> Dataset:
    """Load, validate and split the data set ``cfg`` describes (a :class:`DataSpec`: a run's ``config.data``).

    Every archive (``.npz``, ``.npy``, ``.mat``, a torchvision folder) is opened under one guard:
    a file that is not what it claims — not a zip, an object array, a truncated member, a
    MATLAB v7.3 file, an array too large for memory — is one :class:`UserError` line.
    """
    try:
        return _load(cfg)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy, zipfile, zlib, scipy.io and torchvision each raise their own
        lines = str(err).strip().splitlines()
        detail = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        raise UserError(f"cannot read the data set {cfg.name}: {detail}") from None


def _load(cfg: DataSpec) -> Dataset:
    if cfg.name in DATASETS:
        data = DATASETS[cfg.name](cfg)
    elif cfg.name.endswith((".npy", ".npz")):
        data = _user_file(Path(cfg.name), cfg)
    else:
        raise UserError(f"unknown data set {cfg.name!r}; choose one of {', '.join(DATASETS)} or give a .npy/.npz path")
    if cfg.validation and data.val is None:
        n = len(data.train)
        if cfg.validation >= n:
            raise UserError(f"--validation {cfg.validation} leaves no training rows ({data.name} has {n})")
        keep, held_out = slice(0, n - cfg.validation), slice(n - cfg.validation, n)
        if isinstance(data.train, RowFile):
            data.train, data.val = data.train.subset(keep), data.train.subset(held_out)
        else:
            data.train, data.val = data.train[keep], data.train[held_out]
        data.train_labels = None if data.train_labels is None else data.train_labels[keep]
    if cfg.binarize:
        data.test, data.val = _binarized_once(data.test, data.val, data.name)
    if cfg.limit:
        data.train = (
            data.train.subset(slice(0, cfg.limit)) if isinstance(data.train, RowFile) else data.train[: cfg.limit]
        )
        data.train_labels = None if data.train_labels is None else data.train_labels[: cfg.limit]
    if math.prod(data.image_shape) != data.data_dim:
        raise UserError(f"{data.name}: image shape {data.image_shape} does not match {data.data_dim} values a row")
    count = getattr(cfg, "labels", "0")
    if count != "0":
        if data.train_labels is None:
            raise UserError(f"--labels {count}: the data set {data.name} has no labels")
        if not is_class_labels(data.train_labels):
            raise UserError(f"--labels {count}: the labels of {data.name} are not class indices 0..C-1")
        data.labelled = labelled_subset(data.train_labels, count, cfg.split_seed)
    return data
