"""The arguments of `fit` checked on the driver, and the validation run at epoch ends.

FitOptions holds `fit`'s scalar arguments after checking each (errors name the argument
and echo the value, as Keras'); ValidationSet holds the validation rows and decides, as
Keras does, at which epochs to evaluate them.
"""

from __future__ import annotations

import dataclasses
import math

from distkeras import validation


def _optional_int(name: str, value, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected `{name}` to be an int or None. Received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"Expected `{name}` to be at least {minimum}. Received: {name}={value!r}")
    return value


def _validation_freq(value) -> int | list[int]:
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return list(value)
    raise ValueError(
        "Expected `validation_freq` to be a list or int (at least 1). Received: "
        f"validation_freq={value!r}"
    )


@dataclasses.dataclass
class FitOptions:
    """`fit`'s arguments other than the data, checked.

    Attributes:
        epochs: the epoch to stop at (Keras' meaning: the last epoch's index + 1).
        batch_size: rows per local step on each worker, or None (the trainer's, or the
            dataset's own batches).
        initial_epoch: the epoch to start at.
        steps_per_epoch: batches per epoch over all workers together, or None (all rows).
        shuffle: shuffle each worker's rows at every epoch.
        validation_split: share of the last rows held out for validation.
        validation_steps: batches of validation data per evaluation, or None (all).
        validation_batch_size: rows per validation batch, or None (`batch_size`).
        validation_freq: validate every n epochs, or at the listed (1-based) epochs.
    """

    epochs: int
    batch_size: int | None = None
    initial_epoch: int = 0
    steps_per_epoch: int | None = None
    shuffle: bool = True
    validation_split: float = 0.0
    validation_steps: int | None = None
    validation_batch_size: int | None = None
    validation_freq: int | list[int] = 1

    def __post_init__(self):
        validation.positive_int("epochs", self.epochs)
        _optional_int("batch_size", self.batch_size)
        _optional_int("initial_epoch", self.initial_epoch, minimum=0)
        _optional_int("steps_per_epoch", self.steps_per_epoch)
        _optional_int("validation_steps", self.validation_steps)
        _optional_int("validation_batch_size", self.validation_batch_size)
        if self.shuffle == "batch":
            raise ValueError(
                "`shuffle='batch'` (shuffling HDF5 chunks) has no meaning here: each worker "
                "shuffles its rows. Received: shuffle='batch'; use shuffle=True"
            )
        if not isinstance(self.shuffle, bool):
            raise TypeError(f"Expected `shuffle` to be a bool. Received: shuffle={self.shuffle!r}")
        split = self.validation_split
        if (
            isinstance(split, bool)
            or not isinstance(split, (int, float))
            or not math.isfinite(split)
            or not 0 <= split < 1
        ):
            raise ValueError(
                "Expected `validation_split` to be a float in [0, 1). Received: "
                f"validation_split={split!r}"
            )
        self.validation_freq = _validation_freq(self.validation_freq)

    def worker_steps(self, num_workers: int) -> int | None:
        """Each worker's batches per epoch: `steps_per_epoch` shared over the workers."""
        if self.steps_per_epoch is None:
            return None
        return max(1, math.ceil(self.steps_per_epoch / num_workers))


@dataclasses.dataclass
class ValidationSet:
    """Validation rows, evaluated on the center weights at the epochs `freq` selects.

    Attributes:
        x, y, sample_weight: the rows, structured as the model takes them.
        batch_size: rows per evaluation batch.
        steps: batches per evaluation, or None for all.
        freq: an int n (every n epochs) or a list of 1-based epochs, as `validation_freq`.
    """

    x: object
    y: object
    sample_weight: object = None
    batch_size: int = 32
    steps: int | None = None
    freq: int | list[int] = 1

    def due(self, epoch: int) -> bool:
        """True if validation runs at the end of `epoch` (0-based), as Keras decides."""
        if isinstance(self.freq, int):
            return (epoch + 1) % self.freq == 0
        return epoch + 1 in self.freq

    def evaluate(self, model, callbacks=None) -> dict[str, float]:
        """The model's loss and metrics on these rows, named `val_*`; `callbacks` (a fit's
        CallbackList) get the test events, as in `keras.Model.fit`."""
        results = model.evaluate(
            self.x,
            self.y,
            sample_weight=self.sample_weight,
            batch_size=self.batch_size,
            steps=self.steps,
            verbose=0,
            callbacks=callbacks,
            return_dict=True,
        )
        return {f"val_{name}": float(value) for name, value in results.items()}
