"""Asynchronous trainers: every worker exchanges with the server at its own pace.

Each class only names its algorithm (see distkeras.algorithms) and its parameters; the
run itself is Trainer's.
"""

from distkeras import validation
from distkeras.algorithms import ADAG as ADAGRule
from distkeras.algorithms import AEASGD as AEASGDRule
from distkeras.algorithms import EAMSGD as EAMSGDRule
from distkeras.algorithms import Downpour
from distkeras.algorithms import DynSGD as DynSGDRule
from distkeras.trainers.base import Trainer


class ADAG(Trainer):
    """Asynchronous distributed adaptive gradients (default communication_window = 12)."""

    algorithm_class = ADAGRule


class DOWNPOUR(Trainer):
    """DOWNPOUR asynchronous SGD (default communication_window = 5)."""

    algorithm_class = Downpour


class DynSGD(Trainer):
    """Staleness-aware DOWNPOUR (default communication_window = 5)."""

    algorithm_class = DynSGDRule


class AEASGD(Trainer):
    """Asynchronous elastic averaging SGD.

    Args:
        rho: elastic force ρ; the moving rate is α = ρ·learning_rate.
        learning_rate: the learning rate in α.
        **kwargs: the arguments of `Trainer` (default communication_window = 32).
    """

    algorithm_class = AEASGDRule

    def __init__(self, keras_model, rho: float = 5.0, learning_rate: float = 0.1, **kwargs):
        super().__init__(keras_model, **kwargs)
        self.rho = validation.positive_number("rho", rho)
        self.learning_rate = validation.positive_number("learning_rate", learning_rate)

    def algorithm(self):
        return self.algorithm_class(
            self.window(),
            rho=self.rho,
            learning_rate=self.learning_rate,
        )


class EAMSGD(AEASGD):
    """Asynchronous elastic averaging with Nesterov momentum on the workers.

    Args:
        momentum: momentum of the workers' SGD (used unless `worker_optimizer` is given).
        **kwargs: the arguments of `AEASGD`.
    """

    algorithm_class = EAMSGDRule

    def __init__(self, keras_model, momentum: float = 0.9, **kwargs):
        super().__init__(keras_model, **kwargs)
        if not 0 <= momentum < 1:
            raise ValueError(f"Expected `momentum` in [0, 1). Received: momentum={momentum!r}")
        self.momentum = momentum

    def algorithm(self):
        return self.algorithm_class(
            self.window(),
            rho=self.rho,
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            use_own_optimizer=self.worker_optimizer is None,
        )
