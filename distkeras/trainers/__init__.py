"""Trainers: a Keras model in, a trained Keras model out, trained over Spark partitions."""

from distkeras.trainers.base import Trainer
from distkeras.trainers.ensemble import EnsembleTrainer
from distkeras.trainers.named import (
    ADAG,
    AEASGD,
    DOWNPOUR,
    EAMSGD,
    EASGD,
    AveragingTrainer,
    DynSGD,
    SingleTrainer,
    make_trainer,
    trainer_class,
)

__all__ = [
    "ADAG",
    "AEASGD",
    "DOWNPOUR",
    "EAMSGD",
    "EASGD",
    "AveragingTrainer",
    "EnsembleTrainer",
    "DynSGD",
    "SingleTrainer",
    "Trainer",
    "make_trainer",
    "trainer_class",
]
