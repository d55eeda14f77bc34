"""Checkpoints of a training run: the center weights, the server clock and the epoch.

Checkpointer writes them atomically (write to a temporary file, fsync, rename) as
`center.weights.h5` plus `state.json`; load_checkpoint puts them back for `resume_from`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "center.weights.h5"
STATE_FILE = "state.json"


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
        """Saves `weights` (through `model`), the server `clock` and the epochs completed."""
        model.set_weights(weights)
        temporary = self.folder / f"incoming-{os.getpid()}.weights.h5"
        model.save_weights(temporary)
        _replace(temporary, self.folder / WEIGHTS_FILE)
        state = {"clock": int(clock), "epoch": int(epoch), "time": time.time()}
        temporary = self.folder / f"{STATE_FILE}.incoming"
        temporary.write_text(json.dumps(state))
        _replace(temporary, self.folder / STATE_FILE)
        self._last = time.monotonic()
        self.written += 1
        logger.info("checkpoint written to %s (epoch %d, clock %d)", self.folder, epoch, clock)


def load_checkpoint(folder: str | os.PathLike, model) -> dict:
    """Loads the checkpointed center weights into `model` and returns the saved state.

    Raises:
        FileNotFoundError: if `folder` holds no complete checkpoint.
    """
    folder = Path(folder)
    state_path, weights_path = folder / STATE_FILE, folder / WEIGHTS_FILE
    if not state_path.exists() or not weights_path.exists():
        raise FileNotFoundError(
            f"No checkpoint in {str(folder)!r}: expected {STATE_FILE} and {WEIGHTS_FILE}. "
            f"Received: resume_from={str(folder)!r}"
        )
    model.load_weights(weights_path)
    return json.loads(state_path.read_text())
