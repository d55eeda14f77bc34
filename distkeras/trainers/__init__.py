"""Trainers: a Keras model in, a trained Keras model out, trained over Spark partitions."""

from distkeras.trainers.asynchronous import ADAG, AEASGD, DOWNPOUR, EAMSGD, DynSGD
from distkeras.trainers.base import Trainer
from distkeras.trainers.ensemble import EnsembleTrainer
from distkeras.trainers.single import SingleTrainer
from distkeras.trainers.synchronous import EASGD, AveragingTrainer

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
]
