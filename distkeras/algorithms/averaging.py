"""Model averaging: workers train independently and meet at the mean.

At the end of every epoch (or every λ local steps) each worker commits its weights; once
the round is complete the center becomes their mean and every worker restarts from it.
With one worker this is plain single-machine training (the SingleTrainer).
"""

import numpy as np

from distkeras.algorithms.base import Algorithm


class Averaging(Algorithm):
    """Synchronous model averaging (one round per window)."""

    synchronous = True

    def worker_rule(self, weights, reference, channel):
        center = channel.commit_and_pull(weights)
        return center, center

    def round_rule(self, center, commits):
        for i, target in enumerate(center):
            np.mean([commit[i] for commit in commits], axis=0, out=target, dtype=target.dtype)
