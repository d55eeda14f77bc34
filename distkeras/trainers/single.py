"""SingleTrainer: the single-worker baseline, in one Spark task."""

from distkeras.algorithms import Averaging
from distkeras.trainers.base import Trainer


class SingleTrainer(Trainer):
    """Trains the model in one Spark task: plain sequential training, run on the cluster.

    Takes the arguments of `Trainer` except `num_workers` (always 1) and
    `communication_window` (the weights reach the driver at every epoch end).
    """

    algorithm_class = Averaging

    def __init__(self, keras_model, *args, **kwargs):
        for fixed in ("num_workers", "communication_window"):
            if fixed in kwargs:
                raise TypeError(f"SingleTrainer does not take `{fixed}`: it trains one worker")
        super().__init__(keras_model, *args, num_workers=1, **kwargs)
