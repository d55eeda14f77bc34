"""The named trainers: one line each, binding a public class name to a registry row.

A trainer's algorithm, default window and parameters live in
distkeras.algorithms.registry; `trainer_class(name)` finds the class for a registry name
(for KerasEstimator and the CLI), building one for a row that has no class here.
"""

from __future__ import annotations

from distkeras.algorithms import registry
from distkeras.trainers.base import Trainer
from distkeras.trainers.ensemble import EnsembleTrainer


class SingleTrainer(Trainer, algorithm="single"):
    """Trains the model in one Spark task: plain sequential training, run on the cluster.

    Takes the arguments of `Trainer` except `num_workers` (always 1) and
    `communication_window` (the weights reach the driver at every epoch end).
    """

    def __init__(self, keras_model, *args, **kwargs):
        for fixed in ("num_workers", "communication_window"):
            if fixed in kwargs:
                raise TypeError(f"SingleTrainer does not take `{fixed}`: it trains one worker")
        super().__init__(keras_model, *args, num_workers=1, **kwargs)


class ADAG(Trainer, algorithm="adag"):
    """Asynchronous distributed adaptive gradients: commits Δ/λ (default λ = 12)."""


class DOWNPOUR(Trainer, algorithm="downpour"):
    """DOWNPOUR asynchronous SGD: commits Δ (default λ = 5)."""


class DynSGD(Trainer, algorithm="dynsgd"):
    """Staleness-aware DOWNPOUR: the server scales a commit by 1/(staleness + 1)."""


class AEASGD(Trainer, algorithm="aeasgd"):
    """Asynchronous elastic averaging SGD; takes `rho` and `learning_rate` (α = ρ·lr)."""


class EAMSGD(Trainer, algorithm="eamsgd"):
    """AEASGD with Nesterov momentum SGD on the workers; takes `rho`, `learning_rate`,
    `momentum`."""


class EASGD(Trainer, algorithm="easgd"):
    """Synchronous elastic averaging SGD; takes `rho` and `learning_rate` (α = ρ·lr)."""


class AveragingTrainer(Trainer, algorithm="averaging"):
    """Model averaging: the center becomes the workers' mean every epoch end, or every
    `communication_window` local steps when given."""


_CLASSES = {
    cls.spec.trainer: cls
    for cls in (
        SingleTrainer,
        ADAG,
        DOWNPOUR,
        DynSGD,
        AEASGD,
        EAMSGD,
        EASGD,
        AveragingTrainer,
        EnsembleTrainer,
    )
}


def trainer_class(name: str) -> type[Trainer]:
    """The Trainer class of registry name `name` (any case), e.g. ADAG for "adag".

    Raises:
        TypeError, ValueError: if `name` is not a registered name (see registry.spec).
    """
    row = registry.spec(name)
    known = _CLASSES.get(row.trainer)
    if known is not None:
        return known
    return type(row.trainer, (Trainer,), {"__module__": __name__}, algorithm=name.lower())


def make_trainer(name: str, keras_model, **kwargs) -> Trainer:
    """`trainer_class(name)(keras_model, **kwargs)`, dropping `num_workers` and
    `communication_window` for trainers that take no such argument."""
    row = registry.spec(name)
    if row.workers == registry.ONE:
        kwargs.pop("num_workers", None)
        kwargs.pop("communication_window", None)
    elif row.workers == registry.MEMBERS:
        kwargs.setdefault("num_ensembles", kwargs.pop("num_workers", 2))
    return trainer_class(name)(keras_model, **kwargs)
