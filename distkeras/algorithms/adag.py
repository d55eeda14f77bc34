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


def learning_rate(single_process_rate: float, window: int) -> float:
    """The local learning rate that makes ADAG progress per sample like one process.

    A commit is the mean of λ local steps, so each worker moves the center about one step
    per window where one process would move λ; the p workers' commits add up, as one
    process's steps would. ADAG thus needs about λ times the single-process learning rate,
    whatever p (docs/trainers.md has the measurement, at p = 2).
    """
    return single_process_rate * window
