"""ADAG: asynchronous distributed adaptive gradients.

Hermans, "On Scalable Deep Learning and Parallelizing Gradient Descent", 2017 (dist-keras):
DOWNPOUR with accumulated gradient normalization. Every λ local steps a worker commits
Δ = (W − W0) / λ, pulls C and continues from it; the server adds: C ← C + Δ. A partial
last window is divided by λ too, so its weight matches the work it holds.
"""

from distkeras.algorithms.base import Algorithm, difference


class ADAG(Algorithm):
    """ADAG worker and server rules (default λ = 12)."""

    name = "adag"
    default_window = 12

    def worker_rule(self, weights, reference, channel):
        center = channel.commit_and_pull(difference(weights, reference, 1.0 / self.window))
        return center, center
