"""EASGD: synchronous elastic averaging SGD.

Zhang, Choromanska, LeCun, NIPS 2015 (Algorithm 1). In round k every worker i uses the same
center C_k: E_i = α(W_i − C_k), W_i ← W_i − E_i, commit E_i; when all p workers have
committed, C_{k+1} = C_k + Σ_i E_i and every worker continues with C_{k+1} as reference.
"""

from distkeras.algorithms.aeasgd import AEASGD
from distkeras.algorithms.base import add_into, difference


class EASGD(AEASGD):
    """Synchronous EASGD (with the registry's defaults ρ = 5.0, learning_rate = 0.1: α = 0.5)."""

    synchronous = True

    def worker_rule(self, weights, reference, channel):
        elastic = difference(weights, reference, self.alpha)
        center = channel.commit_and_pull(elastic)
        return difference(weights, elastic), center

    def round_rule(self, center, commits):
        for elastic in commits:
            add_into(center, elastic)
