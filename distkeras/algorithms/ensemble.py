"""Ensembles: independent members trained side by side, one per worker.

The center holds every member's weights one after the other; worker i trains member i
from its own initialisation and, at every epoch end (or every λ steps), commits its
progress into its own slice only (zeros elsewhere), so the server's sum leaves the other
members untouched. Members never exchange anything.
"""

import numpy as np

from distkeras.algorithms.base import Algorithm, difference


class Ensemble(Algorithm):
    """Independent members.

    Args:
        window: local steps between commits; None: once per epoch.
        member_size: number of weight arrays of one member.
        num_members: number of members (and workers).
    """

    def __init__(self, window, member_size: int, num_members: int):
        super().__init__(window)
        self.member_size = member_size
        self.num_members = num_members

    def local_weights(self, center, worker_id):
        start = worker_id * self.member_size
        return center[start : start + self.member_size]

    def worker_rule(self, weights, reference, channel):
        slot = channel.worker_id
        delta = difference(weights, reference)
        zeros = [np.zeros_like(w) for w in weights]
        channel.commit(zeros * slot + delta + zeros * (self.num_members - slot - 1))
        return weights, weights
