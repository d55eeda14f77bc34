"""Checkpoints of a training run: the center weights, the server clock and the epoch.

Checkpointer writes the weights to a new file, then one manifest (`checkpoint.json`: epoch,
clock, the weights file's name, size, SHA-256 and layout) atomically, last: the manifest
names a complete pair or the previous one. load_checkpoint validates everything before it
touches the model's weights, and names the folder and the reason when it cannot resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_FILE = "checkpoint.json"
FORMAT = 1
_WEIGHTS_PREFIX = "center-"
_WEIGHTS_SUFFIX = ".weights.h5"  # Keras' weights format: `model.load_weights` reads it too


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(temporary: Path, final: Path) -> None:
    _fsync(temporary)
    os.replace(temporary, final)
    _fsync(final.parent)


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _layout(arrays) -> list[list]:
    return [[list(a.shape), str(a.dtype)] for a in arrays]


class Checkpointer:
    """Writes a run's state to `folder`, at most every `interval` seconds when asked `due`.

    Args:
        folder: the checkpoint folder (created if missing).
        interval: seconds between two periodic checkpoints.
    """

    def __init__(self, folder: str | os.PathLike, interval: float = 600.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.interval = interval
        self._last = time.monotonic()
        self.written = 0

    def due(self) -> bool:
        """True when `interval` seconds have passed since the last checkpoint."""
        return time.monotonic() - self._last >= self.interval

    def write(self, model, weights, clock: int, epoch: int) -> None:
        """Saves `weights` (through `model`), the server `clock` and the epochs completed.

        The weights go to a new file; the manifest naming it replaces the previous one last,
        so a crash at any point leaves the previous checkpoint or this one, whole.
        """
        model.set_weights(weights)
        name = f"{_WEIGHTS_PREFIX}{time.time_ns()}{_WEIGHTS_SUFFIX}"
        temporary = self.folder / f"incoming-{os.getpid()}{_WEIGHTS_SUFFIX}"
        model.save_weights(temporary)
        _replace(temporary, self.folder / name)
        manifest = {
            "format": FORMAT,
            "epoch": int(epoch),
            "clock": int(clock),
            "time": time.time(),
            "weights": name,
            "bytes": (self.folder / name).stat().st_size,
            "sha256": _digest(self.folder / name),
            "layout": _layout(weights),
        }
        temporary = self.folder / f"{MANIFEST_FILE}.incoming-{os.getpid()}"
        temporary.write_text(json.dumps(manifest))
        _replace(temporary, self.folder / MANIFEST_FILE)
        for old in self.folder.glob(f"{_WEIGHTS_PREFIX}*{_WEIGHTS_SUFFIX}"):
            if old.name != name:
                old.unlink(missing_ok=True)
        self._last = time.monotonic()
        self.written += 1
        logger.info("checkpoint written to %s (epoch %d, clock %d)", self.folder, epoch, clock)


def _fail(folder: Path, reason: str, error: type[Exception] = ValueError) -> Exception:
    return error(f"Cannot resume from {str(folder)!r}: {reason}. Received: resume_from={folder}")


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint in {str(folder)!r}: missing {MANIFEST_FILE}. "
            f"Received: resume_from={str(folder)!r}"
        )
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(folder, f"{MANIFEST_FILE} is truncated or not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(folder, f"{MANIFEST_FILE} is not a distkeras checkpoint of format {FORMAT}")
    for key in ("epoch", "clock", "bytes"):
        value = manifest.get(key)
        if type(value) is not int or value < 0:
            raise _fail(folder, f"bad {key} {value!r} in {MANIFEST_FILE} (a non-negative int)")
    name = manifest.get("weights")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(_WEIGHTS_SUFFIX):
        raise _fail(folder, f"bad weights file name {name!r} in {MANIFEST_FILE}")
    if not isinstance(manifest.get("sha256"), str) or not isinstance(manifest.get("layout"), list):
        raise _fail(folder, f"{MANIFEST_FILE} lacks the weights' sha256 or layout")
    return manifest


def _check_weights_file(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / manifest["weights"]
    if not path.is_file():
        raise _fail(folder, f"missing file {manifest['weights']}", FileNotFoundError)
    size = path.stat().st_size
    if size != manifest["bytes"]:
        raise _fail(
            folder, f"{path.name} is truncated or altered: {size} bytes, {manifest['bytes']} saved"
        )
    if _digest(path) != manifest["sha256"]:
        raise _fail(folder, f"{path.name} is corrupt: its SHA-256 differs from the manifest's")
    return path


def load_checkpoint(folder: str | os.PathLike, model) -> dict:
    """Loads the checkpointed center weights into `model` and returns the saved state.

    Everything is checked first (manifest, epoch, file size and SHA-256, the model's
    layout); the model's weights are untouched unless the whole checkpoint is valid.

    Returns:
        The manifest: {"epoch", "clock", "time", ...}.

    Raises:
        FileNotFoundError: `folder` holds no checkpoint, or its weights file is missing.
        ValueError: a truncated, corrupt or mismatched checkpoint, or a bad epoch; the
            message names the folder and the reason.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    path = _check_weights_file(folder, manifest)
    ours = _layout(model.get_weights())
    if manifest["layout"] != ours:
        raise _fail(
            folder,
            f"wrong architecture: the checkpoint holds {len(manifest['layout'])} arrays "
            f"{manifest['layout'][:4]}..., the model {len(ours)} arrays {ours[:4]}...",
        )
    before = model.get_weights()
    try:
        model.load_weights(path)
    except Exception as exc:  # h5py and Keras raise many kinds for a damaged file
        model.set_weights(before)
        raise _fail(folder, f"{path.name} could not be loaded ({exc})") from exc
    return manifest
