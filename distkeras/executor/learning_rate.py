"""The learning rate that callbacks set on the driver, in force on a worker.

RateFollower assigns the rate the server published (the `learning_rate` field of every
reply; docs/protocol.md) to the worker's optimizer. The driver's half is
trainers.learning_rate's RatePublisher.
"""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)

FIELD = "learning_rate"  # the published field's name


def settable_rate(optimizer) -> float | None:
    """The optimizer's learning rate when it is a plain number; None when a schedule or a
    callable drives it (Keras refuses to set those)."""
    rate = optimizer.get_config().get("learning_rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        return None
    return float(rate)


class RateFollower:
    """Keeps a worker's optimizer at the rate the driver published (see RatePublisher).

    Args:
        optimizer: the worker model's optimizer.
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.applied: float | None = None

    def follow(self, published: dict) -> None:
        """Assigns `published["learning_rate"]` if present and new.

        Raises:
            ValueError: the published rate is not a finite number >= 0.
        """
        rate = published.get(FIELD)
        if rate is None or rate == self.applied:
            return
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate >= 0:
            raise ValueError(f"Expected a published `learning_rate` >= 0. Received: {rate!r}")
        if not math.isfinite(rate):
            raise ValueError(f"Expected a finite published `learning_rate`. Received: {rate!r}")
        self.applied = rate
        if settable_rate(self.optimizer) is None:
            logger.warning(
                "the driver set the learning rate to %s, but a schedule drives this worker's "
                "optimizer; it keeps its schedule",
                rate,
            )
            return
        self.optimizer.learning_rate = rate

    @property
    def rate(self) -> float | None:
        """The worker optimizer's current rate (None when a schedule drives it)."""
        return settable_rate(self.optimizer)
