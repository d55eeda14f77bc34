"""EAMSGD: asynchronous elastic averaging with Nesterov momentum.

Zhang, Choromanska, LeCun, NIPS 2015 (Algorithm 3): AEASGD's exchange, with local steps
made by SGD with Nesterov momentum at `learning_rate` unless a worker optimizer is given.
"""

from distkeras.algorithms.aeasgd import AEASGD


class EAMSGD(AEASGD):
    """EAMSGD: its local steps are Nesterov SGD unless the trainer has a worker_optimizer."""

    def __init__(self, window, rho: float, learning_rate: float, momentum: float):
        super().__init__(window, rho, learning_rate)
        self.momentum = momentum

    def worker_optimizer(self):
        # A Keras optimizer identifier (what `keras.optimizers.get` takes): no Keras here.
        return {
            "class_name": "SGD",
            "config": {
                "learning_rate": self.learning_rate,
                "momentum": self.momentum,
                "nesterov": True,
            },
        }
