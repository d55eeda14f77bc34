"""EAMSGD: asynchronous elastic averaging with Nesterov momentum.

Zhang, Choromanska, LeCun, NIPS 2015 (Algorithm 3): AEASGD's exchange, with local steps
made by SGD with Nesterov momentum at `learning_rate` unless a worker optimizer is given.
"""

from distkeras.algorithms.aeasgd import AEASGD


class EAMSGD(AEASGD):
    """EAMSGD (defaults λ = 32, ρ = 5.0, learning_rate = 0.1, momentum = 0.9)."""

    name = "eamsgd"

    def __init__(self, window, rho=5.0, learning_rate=0.1, momentum=0.9, use_own_optimizer=True):
        super().__init__(window, rho, learning_rate)
        self.momentum = momentum
        self.use_own_optimizer = use_own_optimizer

    def worker_optimizer(self):
        if not self.use_own_optimizer:
            return None
        import keras

        return keras.optimizers.SGD(self.learning_rate, momentum=self.momentum, nesterov=True)
