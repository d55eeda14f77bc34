"""Built models kept in an executor's Python worker across fits of the same architecture.

Spark reuses its Python workers, so a worker process can keep the compiled model it built
and the WindowRunner whose `tf.function` it traced. A later fit with the same architecture,
compile settings (names aside) and batch size gets both back with the new weights and the
optimizer's state as new (every optimizer variable, `iterations` included, back to its
value when built): it pays neither the rebuild nor the tracing again. No sockets, no Spark.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Callable

from distkeras.model_spec import ModelSpec

logger = logging.getLogger(__name__)

MAX_MODELS = 2  # per Python worker: the oldest is dropped beyond this


class _Entry:
    def __init__(self, model, runner, optimizer_start: list):
        self.model = model
        self.runner = runner
        self.optimizer_start = optimizer_start


_ENTRIES: collections.OrderedDict = collections.OrderedDict()


def canonical_architecture(architecture: str) -> str:
    """A model's (or compile settings') JSON with each name replaced by its first position.

    A fresh model of the same architecture gets new automatic names (`dense_7` for
    `dense_3`); names only identify layers, so the canonical form is the same for both.
    """
    config = json.loads(architecture)
    names: dict[str, str] = {}

    def collect(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "name" and isinstance(value, str):
                    names.setdefault(value, f"#{len(names)}")
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    def rename(node):
        if isinstance(node, dict):
            return {key: rename(value) for key, value in node.items()}
        if isinstance(node, list):
            return [rename(value) for value in node]
        return names.get(node, node) if isinstance(node, str) else node

    collect(config)
    return json.dumps(rename(config), sort_keys=True)


def model_and_runner(
    spec: ModelSpec, custom_objects: dict | None, batch_size: int, make_runner: Callable
):
    """A compiled model with `spec`'s weights and a fresh optimizer state, and its runner.

    Args:
        spec: the model to build (architecture, compile settings, weights).
        custom_objects: classes and functions the architecture refers to by name.
        batch_size: rows per step (part of what a traced runner depends on).
        make_runner: builds the runner for a new model: `make_runner(model)`.

    Returns:
        (model, runner); the same objects as an earlier call with an equal key.
    """
    key = (
        canonical_architecture(spec.architecture),
        canonical_architecture(spec.compile_config),  # optimizers are named too
        batch_size,
        tuple(sorted(custom_objects or {})),
    )
    entry = _ENTRIES.get(key)
    if entry is None:
        model = spec.build(custom_objects)
        model.optimizer.build(model.trainable_variables)
        entry = _Entry(model, make_runner(model), [v.numpy() for v in model.optimizer.variables])
        _ENTRIES[key] = entry
        while len(_ENTRIES) > MAX_MODELS:
            _ENTRIES.popitem(last=False)
        return entry.model, entry.runner
    _ENTRIES.move_to_end(key)
    logger.debug("reusing the built model and its traced steps")
    entry.model.set_weights(spec.weights)
    for variable, value in zip(entry.model.optimizer.variables, entry.optimizer_start):
        variable.assign(value)
    entry.model.reset_metrics()
    return entry.model, entry.runner
