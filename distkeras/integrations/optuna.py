"""Optuna pruning for distributed fits: each epoch's validation metric goes to the trial.

PruningCallback: a Keras callback that reports a monitored metric to an Optuna trial at
every epoch end and, when the study's pruner says so, stops the fit the way EarlyStopping
does (the workers stop at their next exchange), then raises `optuna.TrialPruned` once the
run has shut down its server and Spark job.
"""

from __future__ import annotations

import logging

import keras
import optuna

logger = logging.getLogger(__name__)


class PruningCallback(keras.callbacks.Callback):
    """Reports `monitor` to `trial` at every epoch end; prunes the trial when told to.

    Unlike a callback that raises from `on_epoch_end`, this one lets the distributed run end
    cleanly (no cancelled Spark job, the parameter server stopped) and raises
    `optuna.TrialPruned` from `on_train_end`, so that `study.optimize` records the trial as
    pruned. Epochs without `monitor` in their logs (see `validation_freq`) report nothing.

    Args:
        trial: the `optuna.Trial` this fit belongs to.
        monitor: the epoch log to report, e.g. "val_loss" or "val_accuracy" (the study's
            direction says which way is better).

    Attributes:
        pruned_epoch: the epoch after which the trial was pruned, or None.
    """

    def __init__(self, trial: optuna.Trial, monitor: str = "val_loss"):
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"Expected `monitor` to be the name of an epoch log. Received: monitor={monitor!r}"
            )
        self.trial = trial
        self.monitor = monitor
        self.pruned_epoch: int | None = None

    def on_train_begin(self, logs=None):
        self.pruned_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or self.pruned_epoch is not None:
            return
        self.trial.report(float(value), step=int(epoch))
        if self.trial.should_prune():
            logger.info("trial %d pruned after epoch %d", self.trial.number, epoch)
            self.pruned_epoch = int(epoch)
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.pruned_epoch is not None:
            raise optuna.TrialPruned(
                f"trial {self.trial.number} pruned after epoch {self.pruned_epoch} ({self.monitor})"
            )
