"""ADAG: asynchronous distributed adaptive gradients.

Hermans, "On Scalable Deep Learning and Parallelizing Gradient Descent", 2017 (dist-keras):
DOWNPOUR with accumulated gradient normalization. Every λ local steps a worker commits
Δ = (W − W0) / λ, pulls C and continues from it; the server adds: C ← C + Δ. A partial
last window is divided by λ too, so its weight matches the work it holds.
"""

from distkeras.algorithms.base import Algorithm, difference


class ADAG(Algorithm):
    """ADAG worker and server rules."""

    def worker_rule(self, weights, reference, channel):
        center = channel.commit_and_pull(difference(weights, reference, 1.0 / self.window))
        return center, center


def learning_rate(single_process_rate: float, window: int, num_workers: int) -> float:
    """The local learning rate that makes ADAG progress per sample like one process.

    A commit is the mean of λ local steps, so the center moves about one step per window
    per worker where one process moves λ: ADAG needs about λ/p times the single-process
    learning rate (docs/trainers.md has the measurement).
    """
    return single_process_rate * window / num_workers
