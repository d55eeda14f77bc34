"""Trainer names for the Spark ML stage: `trainer="adag"` to a Trainer class and its arguments.

Registry: name -> (module, class), imported only when a stage is fitted. trainer_arguments:
the keyword arguments a trainer accepts beyond those the stage's own Params set.
"""

from __future__ import annotations

import importlib
import inspect

_TRAINERS = {
    "single": ("distkeras.trainers", "SingleTrainer"),
    "adag": ("distkeras.trainers", "ADAG"),
    "downpour": ("distkeras.trainers", "DOWNPOUR"),
    "dynsgd": ("distkeras.trainers", "DynSGD"),
    "aeasgd": ("distkeras.trainers", "AEASGD"),
    "eamsgd": ("distkeras.trainers", "EAMSGD"),
    "easgd": ("distkeras.trainers.synchronous", "EASGD"),
    "averaging": ("distkeras.trainers.synchronous", "AveragingTrainer"),
}

# Trainer arguments that the stage sets from its own Params: argument -> Param.
STAGE_ARGUMENTS = {
    "keras_model": "model",
    "worker_optimizer": "optimizer",
    "loss": "loss",
    "metrics": "model (compile it with its metrics)",
    "features_col": "featuresCol",
    "label_col": "labelCol",
    "batch_size": "batchSize",
    "num_epoch": "epochs",
    "num_workers": "numWorkers",
    "communication_window": "communicationWindow",
}

# Trainers that always run one worker: they take neither argument.
_ONE_WORKER = {"single": ("num_workers", "communication_window")}


def trainer_names() -> list[str]:
    """The valid values of `trainer`, in a stable order."""
    return list(_TRAINERS)


def normalize_trainer_name(name) -> str:
    """Returns `name` in lower case if it names a trainer.

    Raises:
        TypeError: if `name` is not a string.
        ValueError: if no trainer has that name; the message lists the valid names.
    """
    if not isinstance(name, str):
        raise TypeError(f"Expected `trainer` to be a trainer's name. Received: trainer={name!r}")
    key = name.strip().lower()
    if key not in _TRAINERS:
        raise ValueError(
            f"Unknown trainer {name!r}. Valid trainers: {', '.join(trainer_names())}. "
            f"Received: trainer={name!r}"
        )
    return key


def trainer_class(name: str) -> type:
    """Imports and returns the Trainer class called `name` (see `trainer_names()`)."""
    module, attribute = _TRAINERS[normalize_trainer_name(name)]
    return getattr(importlib.import_module(module), attribute)


def takes_workers(name: str) -> bool:
    """False for trainers that always train one worker (no num_workers, no window)."""
    return normalize_trainer_name(name) not in _ONE_WORKER


def trainer_arguments(name: str) -> set[str]:
    """The keyword arguments of trainer `name` that `trainerParams` may carry.

    Collects the named parameters of every `__init__` along the class hierarchy (a
    subclass passes `**kwargs` up), minus those set from the stage's Params.
    """
    names: set[str] = set()
    for cls in trainer_class(name).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for parameter in list(inspect.signature(init).parameters.values())[1:]:
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                names.add(parameter.name)
    names -= set(_ONE_WORKER.get(normalize_trainer_name(name), ()))
    return names - set(STAGE_ARGUMENTS)


def check_trainer_params(name: str, params: dict) -> None:
    """Checks that every key of `trainerParams` is an argument of trainer `name`.

    Raises:
        ValueError: for a key that a stage Param sets (naming the Param to use instead), or
            that the trainer does not take (listing those it takes).
    """
    accepted = trainer_arguments(name)
    for key in params:
        if key in STAGE_ARGUMENTS:
            raise ValueError(
                f"`trainerParams` may not set `{key}`: use the stage's "
                f"`{STAGE_ARGUMENTS[key]}` instead. Received: trainerParams={params!r}"
            )
        if key not in accepted:
            raise ValueError(
                f"Trainer {name!r} takes no argument `{key}`. Its arguments: "
                f"{', '.join(sorted(accepted))}. Received: trainerParams={params!r}"
            )
