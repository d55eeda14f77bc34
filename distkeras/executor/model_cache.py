"""The one cache of built models in an executor's Python worker: training and inference.

ModelCache: a small LRU under a lock. Spark reuses its Python workers, so a worker process
can keep the compiled model it built and the WindowRunner whose `tf.function` it traced. A
later fit with the same architecture, compile settings (names aside) and batch size gets
both back (`model_and_runner`) with the new weights and the optimizer's state as new (every
optimizer variable, `iterations` included, back to its value when built): it pays neither
the rebuild nor the tracing again. The user's classes are part of the key (a redefined
class is a new model), and so are the weights of a model whose traced steps hold constants
derived from them (an adapted Normalization's mean). Inference keeps its models here too,
keyed by their fingerprint (executor.inference). No sockets, no Spark.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Hashable

from distkeras.model_spec import ModelSpec, set_weights

logger = logging.getLogger(__name__)

MAX_MODELS = 4  # per Python worker: the least recently used is dropped beyond this


class ModelCache:
    """A least-recently-used map of built models, safe to share between threads.

    Args:
        max_entries: entries kept; the least recently used goes beyond this.
    """

    def __init__(self, max_entries: int = MAX_MODELS) -> None:
        self.max_entries = max_entries
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get_or_build(self, key: Hashable, build: Callable):
        """The entry under `key`, built by `build()` (under the lock) when missing."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            entry = build()
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return entry

    def clear(self) -> None:
        """Forgets every entry (they are rebuilt on next use)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


MODELS = ModelCache()


class _Entry:
    def __init__(self, model, runner, optimizer_start: list):
        self.model = model
        self.runner = runner
        self.optimizer_start = optimizer_start


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
        spec.objects_key,
        _traced_constants(spec),
    )
    built = []

    def build():
        model = spec.build(custom_objects)
        model.optimizer.build(model.trainable_variables)
        built.append(model)
        return _Entry(model, make_runner(model), [v.numpy() for v in model.optimizer.variables])

    entry = MODELS.get_or_build(("train", *key), build)
    if built:
        return entry.model, entry.runner
    logger.debug("reusing the built model and its traced steps")
    set_weights(entry.model, spec.weights)
    for variable, value in zip(entry.model.optimizer.variables, entry.optimizer_start):
        variable.assign(value)
    entry.model.reset_metrics()
    return entry.model, entry.runner


def _traced_constants(spec: ModelSpec) -> str:
    """A digest of the weights when a layer computes tensors from them that tracing
    captures as constants (Normalization's mean and variance), else ""."""
    if '"class_name": "Normalization"' not in spec.architecture:
        return ""
    digest = hashlib.sha256()
    for weight in spec.weights:
        digest.update(weight.tobytes())
    return digest.hexdigest()
