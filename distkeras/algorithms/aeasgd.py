"""AEASGD: asynchronous elastic averaging SGD.

Zhang, Choromanska, LeCun, "Deep learning with Elastic Averaging SGD", NIPS 2015
(Algorithm 2). Every λ local steps a worker pulls C, computes the elastic difference
E = α(W − C) with α = ρ·learning_rate, moves W ← W − E and commits E; the server adds:
C ← C + E.
"""

from distkeras.algorithms.base import Algorithm, difference


class AEASGD(Algorithm):
    """Asynchronous EASGD (defaults: distkeras.algorithms.registry)."""

    def __init__(self, window: int | None, rho: float, learning_rate: float):
        super().__init__(window)
        self.rho = rho
        self.learning_rate = learning_rate

    @property
    def alpha(self) -> float:
        """The moving rate α = ρ·learning_rate."""
        return self.rho * self.learning_rate

    def worker_rule(self, weights, reference, channel):
        elastic = difference(weights, channel.pull(), self.alpha)
        channel.commit(elastic)
        moved = difference(weights, elastic)
        return moved, moved
