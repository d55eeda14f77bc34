"""The learning rate that callbacks set on the driver, published to every worker.

RatePublisher: after each callback event, publishes the driver optimizer's rate (times the
workers' scale) through the parameter server once it differs from the rate training began
with. The worker's half is executor.learning_rate's RateFollower. scaled_optimizer: the
workers' copy of the model's adaptive optimizer at an algorithm's scale of its rate
(Algorithm.adaptive_rate_scale).
"""

from __future__ import annotations

import logging

from distkeras.executor.learning_rate import FIELD, settable_rate

logger = logging.getLogger(__name__)

# Optimizers whose steps are normalised per coordinate by a running second moment, so that a
# step's size is about the rate itself: the ones DOWNPOUR's measured scale is for (SGD's steps
# grow with the gradient; Lion and Adafactor take sign or relative steps; Adadelta has no
# rate to speak of).
ADAPTIVE = ("Adam", "AdamW", "Adamax", "Nadam", "RMSprop", "Adagrad")


def scaled_optimizer(optimizer, scale: float):
    """A fresh copy of `optimizer` at `scale` x its rate, for the workers; None (the model's
    optimizer as it is) when `scale` is 1, the optimizer is not one of ADAPTIVE (or a
    subclass) or a schedule drives its rate."""
    import keras

    rate = settable_rate(optimizer)
    adaptive = tuple(getattr(keras.optimizers, name) for name in ADAPTIVE)
    if scale == 1.0 or rate is None or not isinstance(optimizer, adaptive):
        return None
    config = {**optimizer.get_config(), "learning_rate": rate * scale}
    logger.info("the workers' %s at %.3g x the model's rate", type(optimizer).__name__, scale)
    return type(optimizer).from_config(config)


class RatePublisher:
    """Publishes the driver optimizer's learning rate whenever a callback changed it.

    Until the rate first differs from the one training began with, nothing is published and
    the workers keep their own optimizer's rate (an algorithm's or `worker_optimizer`'s).

    Args:
        optimizer: the driver model's optimizer, the one callbacks set; its rate now is the
            rate training begins with.
        scale: what the workers' rate is of the driver's (scaled_optimizer's scale, or 1).
    """

    def __init__(self, optimizer, scale: float = 1.0):
        self.optimizer = optimizer
        self.scale = scale
        self.published = settable_rate(optimizer)

    def update(self, publish) -> None:
        """Calls `publish(learning_rate=...)` (the server's `publish`) with scale x the
        driver's rate if that changed since the last call."""
        rate = settable_rate(self.optimizer)
        if rate is not None and rate != self.published:
            logger.info("learning rate %s sent to the workers (x %.3g)", rate, self.scale)
            self.published = rate
            publish(**{FIELD: rate * self.scale})
