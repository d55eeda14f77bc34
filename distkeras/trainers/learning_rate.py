"""The learning rate that callbacks set on the driver, published to every worker.

RatePublisher: after each callback event, publishes the driver optimizer's rate through
the parameter server once it differs from the rate training began with. The worker's half
is executor.learning_rate's RateFollower.
"""

from __future__ import annotations

import logging

from distkeras.executor.learning_rate import FIELD, settable_rate

logger = logging.getLogger(__name__)


class RatePublisher:
    """Publishes the driver optimizer's learning rate whenever a callback changed it.

    Until the rate first differs from the one training began with, nothing is published and
    the workers keep their own optimizer's rate (an algorithm's or `worker_optimizer`'s).

    Args:
        optimizer: the driver model's optimizer, the one callbacks set; its rate now is the
            rate training begins with.
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.published = settable_rate(optimizer)

    def update(self, publish) -> None:
        """Calls `publish(learning_rate=...)` (the server's `publish`) if the rate changed
        since the last call."""
        rate = settable_rate(self.optimizer)
        if rate is not None and rate != self.published:
            logger.info("learning rate %s sent to the workers", rate)
            self.published = rate
            publish(**{FIELD: rate})
