"""Distributed optimisation rules, one module each (see base.Algorithm)."""

from distkeras.algorithms.adag import ADAG
from distkeras.algorithms.aeasgd import AEASGD
from distkeras.algorithms.averaging import Averaging
from distkeras.algorithms.base import Algorithm
from distkeras.algorithms.downpour import Downpour
from distkeras.algorithms.dynsgd import DynSGD
from distkeras.algorithms.eamsgd import EAMSGD
from distkeras.algorithms.easgd import EASGD
from distkeras.algorithms.ensemble import Ensemble

__all__ = [
    "ADAG",
    "AEASGD",
    "Algorithm",
    "Averaging",
    "Downpour",
    "DynSGD",
    "EAMSGD",
    "EASGD",
    "Ensemble",
]
