"""Spark ML stages: KerasEstimator trains with a distkeras trainer, KerasModel predicts.

params.py: the typed Params; registry.py: trainer names; estimator.py / model.py: the
stages; persistence.py: metadata JSON plus a `.keras` file. Batched inference itself lives
in distkeras.inference, shared with distkeras.predictors.
"""

from distkeras.ml.estimator import KerasEstimator
from distkeras.ml.model import KerasModel
from distkeras.ml.registry import trainer_names

__all__ = ["KerasEstimator", "KerasModel", "trainer_names"]
