"""DOWNPOUR: asynchronous SGD with accumulated updates.

Dean et al., "Large Scale Distributed Deep Networks", NIPS 2012. Every λ local steps a
worker commits Δ = W − W0 (W0: its weights at the last pull), pulls C and continues from
it; the server adds: C ← C + Δ.
"""

from distkeras.algorithms.base import Algorithm, difference


class Downpour(Algorithm):
    """DOWNPOUR worker and server rules."""

    def worker_rule(self, weights, reference, channel):
        center = channel.commit_and_pull(difference(weights, reference))
        return center, center
