"""The algorithm registry: one table of every trainer's name, rule, window and parameters.

REGISTRY maps a trainer's name ("adag") to an AlgorithmSpec. The trainers
(distkeras.trainers), KerasEstimator's `trainer` Param, the CLI's `--trainer` and the docs'
table of trainers all read it: adding an algorithm is one module in distkeras/algorithms
plus one line here. DEFAULT names the trainer that the README, `make demo`, the CLI and
KerasEstimator use when none is chosen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType

from distkeras.algorithms.adag import ADAG
from distkeras.algorithms.aeasgd import AEASGD
from distkeras.algorithms.averaging import Averaging
from distkeras.algorithms.base import Algorithm
from distkeras.algorithms.downpour import Downpour
from distkeras.algorithms.dynsgd import DynSGD
from distkeras.algorithms.eamsgd import EAMSGD
from distkeras.algorithms.easgd import EASGD
from distkeras.algorithms.ensemble import Ensemble

MANY, ONE, MEMBERS = "many", "one", "members"  # how a trainer's workers are counted


def positive(name: str, value) -> float:
    """A finite number > 0; raises TypeError/ValueError naming `name`."""
    from distkeras.validation import positive_number

    return positive_number(name, value)


def below_one(name: str, value) -> float:
    """A number in [0, 1); raises TypeError/ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected `{name}` to be a number. Received: {name}={value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"Expected `{name}` in [0, 1). Received: {name}={value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Parameter:
    """An algorithm's own argument: its default, its check and a few words on it.

    A default may depend on the run: `default(num_workers, parameters)` is then called with
    the trainer's other parameters, and `shown` is how the docs' table writes it.
    """

    default: float | Callable[[int, dict], float]
    check: Callable[[str, object], float]
    doc: str
    shown: str = ""

    def value(self, num_workers: int, parameters: dict) -> float:
        """The default for a run of `num_workers` workers with these other parameters."""
        if callable(self.default):
            return self.check("default", self.default(num_workers, parameters))
        return self.default


RHO = Parameter(5.0, positive, "elastic force ρ; the moving rate is α = ρ·learning_rate")
# A synchronous round moves the center by N·α times the workers' mean distance to it: the
# paper's stable β = N·α = 0.9 (with α = 0.5, 4 and 8 workers diverged: measured).
ROUND_BETA = 0.9
ROUND_RHO = Parameter(
    lambda num_workers, parameters: ROUND_BETA / (num_workers * parameters["learning_rate"]),
    positive,
    f"elastic force ρ; by default N·α = N·ρ·learning_rate = {ROUND_BETA} for N workers",
    shown=f"{ROUND_BETA} / (num_workers · learning_rate)",
)
ALPHA_RATE = Parameter(0.1, positive, "the learning rate in α (and of EAMSGD's local SGD)")
MOMENTUM = Parameter(0.9, below_one, "Nesterov momentum of the workers' SGD")


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """One row of the registry.

    Attributes:
        trainer: the public class name in distkeras.trainers.
        algorithm: the Algorithm class (worker and server rules).
        window: the default communication window λ; None: once per epoch.
        choose: when to choose it (one line, for the docs' table).
        parameters: the algorithm's own arguments, in its constructor's order.
        workers: MANY (`num_workers`), ONE (always one; no window) or MEMBERS
            (`num_ensembles`, one member per worker).
    """

    trainer: str
    algorithm: type[Algorithm]
    window: int | None
    choose: str
    parameters: Mapping[str, Parameter] = dataclasses.field(default_factory=dict)
    workers: str = MANY

    @property
    def kind(self) -> str:
        """ "asynchronous", "synchronous", "1 worker" or "independent"."""
        if self.workers != MANY:
            return "1 worker" if self.workers == ONE else "independent"
        return "synchronous" if self.algorithm.synchronous else "asynchronous"

    def defaults(self, num_workers: int = 2) -> dict[str, float]:
        """The parameters' default values for a run of `num_workers` workers."""
        fixed = {name: p.default for name, p in self.parameters.items() if not callable(p.default)}
        return {name: p.value(num_workers, fixed) for name, p in self.parameters.items()}


ELASTIC = {"rho": RHO, "learning_rate": ALPHA_RATE}

REGISTRY: Mapping[str, AlgorithmSpec] = MappingProxyType(
    {
        "single": AlgorithmSpec(
            "SingleTrainer",
            Averaging,
            None,
            "a baseline, or data that fits one executor",
            workers=ONE,
        ),
        "adag": AlgorithmSpec(
            "ADAG",
            ADAG,
            12,
            "the published ADAG; needs about λ times the learning rate",
        ),
        "downpour": AlgorithmSpec(
            "DOWNPOUR", Downpour, 5, "the default: matches model.fit at the model's own optimizer"
        ),
        "dynsgd": AlgorithmSpec(
            "DynSGD",
            DynSGD,
            5,
            "workers of uneven speed (stale commits count less)",
        ),
        "aeasgd": AlgorithmSpec(
            "AEASGD", AEASGD, 32, "large windows, cheap communication", ELASTIC
        ),
        "eamsgd": AlgorithmSpec(
            "EAMSGD",
            EAMSGD,
            32,
            "AEASGD with momentum SGD on the workers",
            {**ELASTIC, "momentum": MOMENTUM},
        ),
        "easgd": AlgorithmSpec(
            "EASGD",
            EASGD,
            32,
            "reproducible rounds, workers of equal speed",
            {"rho": ROUND_RHO, "learning_rate": ALPHA_RATE},
        ),
        "averaging": AlgorithmSpec(
            "AveragingTrainer",
            Averaging,
            None,
            "models that average well; one exchange per epoch",
        ),
        "ensemble": AlgorithmSpec(
            "EnsembleTrainer",
            Ensemble,
            None,
            "several models whose outputs are averaged",
            workers=MEMBERS,
        ),
    }
)

DEFAULT = "downpour"


def names() -> list[str]:
    """Every registered name, in the registry's order."""
    return list(REGISTRY)


def spec(name) -> AlgorithmSpec:
    """The registry row of trainer `name` (any case).

    Raises:
        TypeError: if `name` is not a string.
        ValueError: if no trainer has that name; the message lists the valid names.
    """
    return REGISTRY[normalize(name)]


def normalize(name, argument: str = "trainer") -> str:
    """Returns `name` in lower case if it names a trainer, else raises naming `argument`."""
    if not isinstance(name, str):
        raise TypeError(
            f"Expected `{argument}` to be a trainer's name. Received: {argument}={name!r}"
        )
    key = name.strip().lower()
    if key not in REGISTRY:
        raise ValueError(
            f"Unknown trainer {name!r}. Valid trainers: {', '.join(REGISTRY)}. "
            f"Received: {argument}={name!r}"
        )
    return key


def markdown_table() -> str:
    """The docs' table of trainers (docs/trainers.md shows exactly this)."""
    lines = [
        "| trainer | name | kind | default λ | other defaults | choose it when |",
        "|---|---|---|---:|---|---|",
    ]
    for name, row in REGISTRY.items():
        window = "epoch" if row.window is None else str(row.window)
        defaults = ", ".join(f"{key} = {p.shown or p.default}" for key, p in row.parameters.items())
        if row.workers == MEMBERS:
            defaults = "num_ensembles = 2"
        default = " (the default)" if name == DEFAULT else ""
        lines.append(
            f"| `{row.trainer}` | `{name}`{default} | {row.kind} | {window} | {defaults} | "
            f"{row.choose} |"
        )
    return "\n".join(lines)
