"""DOWNPOUR: asynchronous SGD with accumulated updates.

Dean et al., "Large Scale Distributed Deep Networks", NIPS 2012. Every λ local steps a
worker commits Δ = W − W0 (W0: its weights at the last pull), pulls C and continues from
it; the server adds: C ← C + Δ.
"""

import math

from distkeras.algorithms.base import Algorithm, difference


class Downpour(Algorithm):
    """DOWNPOUR worker and server rules."""

    def worker_rule(self, weights, reference, channel):
        center = channel.commit_and_pull(difference(weights, reference))
        return center, center

    def adaptive_rate_scale(self, num_workers: int) -> float:
        """√num_workers: the server sums the steps of n workers on n batches, and the
        square-root rule has an adaptive optimizer's rate follow an n-times larger batch by
        √n (Malladi et al., NeurIPS 2022). Measured (docs/performance.md, model zoo): at the
        model's rate a GRU on 2 workers ends 8.6 points below `model.fit`, at √2 x within 1
        point, like the other families."""
        return math.sqrt(num_workers)
