"""DynSGD: staleness-aware asynchronous SGD.

Jiang et al., "Heterogeneity-aware Distributed Parameter Servers", SIGMOD 2017. Workers
act as in DOWNPOUR (their commit carries the clock of their last pull); the server scales
each commit by its staleness τ = server clock − that clock: C ← C + Δ / (τ + 1).
"""

from distkeras.algorithms.base import add_into
from distkeras.algorithms.downpour import Downpour


class DynSGD(Downpour):
    """DynSGD worker (DOWNPOUR's) and staleness-scaled server rule."""

    def server_rule(self, center, arrays, staleness):
        add_into(center, arrays, 1.0 / (staleness + 1))

    def adaptive_rate_scale(self, num_workers: int) -> float:
        """1: the staleness scaling already shrinks each commit (the model's rate, unscaled)."""
        return 1.0
