"""Integrations with the tools around training: experiment tracking and tuning.

Each integration is one module that imports its library only when it is used (mlflow.py:
MLflow runs and models; optuna.py: pruning Optuna trials). `tracked_fit` is the one hook a
trainer's fit calls; it imports nothing unless the library is already loaded.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def tracked_fit(trainer, callbacks) -> Iterator[list | None]:
    """Wraps one fit in the experiment tracking the user engaged, if any.

    Without `mlflow` imported no run can be active, autologging cannot be on and no
    distkeras.integrations.mlflow callback can be in `callbacks`: nothing is imported and
    the callbacks pass through unchanged.

    Args:
        trainer: the Trainer running the fit.
        callbacks: the callbacks given to `fit`.

    Yields:
        The callbacks to run the fit with.
    """
    if "mlflow" not in sys.modules:
        yield callbacks
        return
    from distkeras.integrations import mlflow as tracking

    with tracking.fit_run(trainer, callbacks) as engaged:
        yield engaged
