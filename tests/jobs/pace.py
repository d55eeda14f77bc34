"""Test-only pacing: workers wait for the driver's epoch events, as model.fit's steps would.

driver_paced builds an `on_exchange` hook that holds each worker at the first exchange of an
epoch until the driver has begun that epoch (EpochMarkers, the last callback, leaves a file
when it has). Then a rate a callback sets at an epoch's start reaches the workers within that
epoch whatever the machine's load; without it, asynchronous workers may finish every epoch
before the driver gets to its events.
"""

import os
import time

import keras


class EpochMarkers(keras.callbacks.Callback):
    """Leaves `folder/begun-<epoch>` once the callbacks before it saw `on_epoch_begin`, and
    `folder/stopped` once a callback stopped training (waiting workers then go on to stop)."""

    def __init__(self, folder):
        super().__init__()
        self.folder = str(folder)

    def on_epoch_begin(self, epoch, logs=None):
        open(os.path.join(self.folder, f"begun-{epoch}"), "w").close()

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:
            open(os.path.join(self.folder, "stopped"), "w").close()


def driver_paced(folder, windows_per_epoch: int, timeout: float = 300.0):
    """A hook holding a worker at its first exchange of epoch e >= 1 until `begun-<e>` (or
    `stopped`) exists.

    A closure, so that Spark ships it by value.
    """
    folder = str(folder)

    def on_exchange(worker_id: int, commits: int) -> None:
        epoch, window = divmod(commits - 1, windows_per_epoch)
        if epoch < 1 or window:
            return
        markers = [os.path.join(folder, name) for name in (f"begun-{epoch}", "stopped")]
        deadline = time.monotonic() + timeout
        while not any(os.path.exists(marker) for marker in markers):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the driver did not begin epoch {epoch} in {timeout} s")
            time.sleep(0.01)

    return on_exchange
