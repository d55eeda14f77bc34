"""Small real data sets for examples, tests and benchmarks, read from local files only.

load_mnist reads the MNIST test split in IDX format (first 8,000 images train, last 2,000
test, by this project's convention); load_digits reads scikit-learn's bundled 8x8 digits.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

MNIST_TRAIN_ROWS = 8000
DEFAULT_MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def mnist_dir() -> Path:
    """The MNIST folder: $DISTKERAS_MNIST, else `../shared/data/mnist` beside the project."""
    return Path(os.environ.get("DISTKERAS_MNIST", DEFAULT_MNIST_DIR))


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)


def load_mnist(path: str | os.PathLike | None = None):
    """Loads MNIST as ((x_train, y_train), (x_test, y_test)).

    Images are float32 in [0, 1], flattened to 784 values; labels are int32.

    Raises:
        FileNotFoundError: if the IDX files are not in `path`.
    """
    folder = Path(path) if path is not None else mnist_dir()
    images = _read_idx(folder / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784)
    labels = _read_idx(folder / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int32)
    x = images.astype(np.float32) / 255.0
    n = MNIST_TRAIN_ROWS
    return (x[:n], labels[:n]), (x[n:], labels[n:])


def load_digits(test_fraction: float = 0.25, seed: int = 0):
    """Loads scikit-learn's 8x8 digits as ((x_train, y_train), (x_test, y_test)), in [0, 1]."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise ModuleNotFoundError(
            "The digits data set ships with scikit-learn: pip install 'distkeras[examples]'"
        ) from error

    digits = sklearn_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    split = int(len(x) * (1 - test_fraction))
    train, test = order[:split], order[split:]
    return (x[train], y[train]), (x[test], y[test])


def load_mnist_or_digits(path: str | os.PathLike | None = None):
    """MNIST from `path` when its files exist, else scikit-learn's digits; returns
    (name, ((x_train, y_train), (x_test, y_test)))."""
    folder = Path(path) if path is not None else mnist_dir()
    if (folder / "t10k-images-idx3-ubyte.gz").exists():
        return "mnist", load_mnist(folder)
    return "digits", load_digits()
