"""What every distributed optimisation rule provides.

Algorithm: a worker rule (what a worker does with its weights every `window` local steps)
and a server rule (what the parameter server does with a commit), in plain numpy. The
rules reach the server only through a Channel (pull / commit / commit_and_pull); they know
nothing of sockets or Spark.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from distkeras.ps.center import add_rule

Weights = list[np.ndarray]


class Channel(Protocol):
    """The worker's link to the center variable (a parameter_server.Client)."""

    def pull(self) -> Weights: ...

    def commit(self, arrays: Weights) -> None: ...

    def commit_and_pull(self, arrays: Weights) -> Weights: ...

    worker_id: int


def add_into(center: Weights, arrays: Weights, scale: float = 1.0) -> None:
    """center[i] += scale * arrays[i], in place."""
    for c, a in zip(center, arrays):
        if scale == 1.0:
            np.add(c, a, out=c, casting="unsafe")
        else:
            c += (scale * a).astype(c.dtype, copy=False)


def difference(a: Weights, b: Weights, scale: float = 1.0) -> Weights:
    """[scale * (a[i] - b[i])]."""
    if scale == 1.0:
        return [x - y for x, y in zip(a, b)]
    return [((x - y) * scale).astype(x.dtype, copy=False) for x, y in zip(a, b)]


class Algorithm:
    """A distributed optimisation rule.

    Attributes:
        window: local steps between two exchanges with the server (None: once per epoch).
        synchronous: True when commits are gathered in rounds (see `round_rule`).
    """

    synchronous = False

    def __init__(self, window: int | None):
        self.window = window

    def local_weights(self, center: Weights, worker_id: int) -> Weights:
        """The part of the center a worker trains (all of it, except for ensembles)."""
        return center

    def worker_rule(self, weights: Weights, reference: Weights, channel: Channel):
        """Exchanges with the server after a window of local steps.

        Args:
            weights: the worker's weights now (W).
            reference: what the previous exchange left as reference (W0, or the center).
            channel: the link to the server.

        Returns:
            (new worker weights, new reference).
        """
        raise NotImplementedError

    # server_rule(center, arrays, staleness): applies one commit to the center, in place
    # (asynchronous algorithms). By default the sum, as the server's own `add_rule`, which
    # the server recognises and computes out of place (one pass fewer over the weights).
    server_rule = staticmethod(add_rule)

    def round_rule(self, center: Weights, commits: list[Weights]) -> None:
        """Applies the commits of one round to the center, in place (synchronous algorithms)."""
        raise NotImplementedError

    def worker_optimizer(self):
        """An optimizer the workers must use instead of the model's (as an identifier that
        `keras.optimizers.get` takes), or None."""
        return None

    def adaptive_rate_scale(self, num_workers: int) -> float:
        """What the workers multiply the model's learning rate by when they train with the
        model's own adaptive optimizer (Adam, RMSprop, ...; trainers.learning_rate): 1."""
        return 1.0
