"""Synchronous trainers: workers exchange in rounds, each round waiting for every worker.

Rounds are a parameter-server feature (round_rule); these classes only name the algorithm.
"""

from distkeras.algorithms import EASGD as EASGDRule
from distkeras.algorithms import Averaging
from distkeras.trainers.asynchronous import AEASGD
from distkeras.trainers.base import Trainer


class EASGD(AEASGD):
    """Synchronous elastic averaging SGD (defaults λ = 32, ρ = 5.0, learning_rate = 0.1)."""

    algorithm_class = EASGDRule


class AveragingTrainer(Trainer):
    """Model averaging: the center becomes the workers' mean at every epoch end, or every
    `communication_window` local steps when given."""

    algorithm_class = Averaging
