"""Trainer names for the Spark ML stage: `trainer="adag"` to a Trainer class and its arguments.

The names, classes and defaults are distkeras.algorithms.registry's (every trainer but the
ensemble, whose fit returns several models). trainer_arguments: the keyword arguments a
trainer accepts beyond those the stage's own Params set.
"""

from __future__ import annotations

import inspect

from distkeras.algorithms import registry

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

_ONE_WORKER_ARGUMENTS = ("num_workers", "communication_window")


def trainer_names() -> list[str]:
    """The valid values of `trainer`, in a stable order."""
    return [name for name, row in registry.REGISTRY.items() if row.workers != registry.MEMBERS]


def normalize_trainer_name(name) -> str:
    """Returns `name` in lower case if it names a trainer of the stage.

    Raises:
        TypeError: if `name` is not a string.
        ValueError: if no trainer has that name; the message lists the valid names.
    """
    key = registry.normalize(name)
    if key not in trainer_names():
        raise ValueError(
            f"Unknown trainer {name!r}. Valid trainers: {', '.join(trainer_names())}. "
            f"Received: trainer={name!r}"
        )
    return key


def trainer_class(name: str) -> type:
    """The Trainer class called `name` (see `trainer_names()`)."""
    from distkeras.trainers import trainer_class as named_class

    return named_class(normalize_trainer_name(name))


def takes_workers(name: str) -> bool:
    """False for trainers that always train one worker (no num_workers, no window)."""
    return registry.spec(normalize_trainer_name(name)).workers == registry.MANY


def trainer_arguments(name: str) -> set[str]:
    """The keyword arguments of trainer `name` that `trainerParams` may carry.

    The named parameters of `Trainer.__init__` plus the algorithm's own (from the
    registry), minus those set from the stage's Params.
    """
    from distkeras.trainers import Trainer

    row = registry.spec(normalize_trainer_name(name))
    names = {
        parameter.name
        for parameter in list(inspect.signature(Trainer.__init__).parameters.values())[1:]
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    names |= set(row.parameters)
    if row.workers == registry.ONE:
        names -= set(_ONE_WORKER_ARGUMENTS)
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
