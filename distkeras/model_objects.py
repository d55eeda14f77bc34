"""The user's objects a model refers to by name, checked to travel with it by value.

collect: on the driver, the classes and functions outside Keras that a model's
serialized configuration names, resolved as Keras resolves them there (the `custom_objects`
given, the active scope, the registry) or taken from the live model (its own classes, its
layers' functions, its compile arguments). check_shippable: that cloudpickle, Spark's own
serializer of a task's closure, can ship them (by value for `__main__` and local code), and
their fingerprint. They travel inside the Spark task closure as Spark ships a UDF's code:
nothing here unpickles, and nothing of this goes over the parameter server's wire.
"""

from __future__ import annotations

import hashlib
import logging
import types
from collections.abc import Iterator, Mapping
from typing import Any

logger = logging.getLogger(__name__)

_KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp", "tensorflow", "numpy")


def referenced_names(config: Any) -> set[str]:
    """The names under which a serialized Keras configuration looks objects up.

    Keras looks a function up by its `config` (e.g. "mine>smooth_ce") and anything else by
    its `registered_name` (e.g. "mine>Block", or the class name of an unregistered class).
    """
    names: set[str] = set()
    for node in _dicts(config):
        if "class_name" not in node or "config" not in node:
            continue
        if node["class_name"] == "function" and isinstance(node["config"], str):
            names.add(node["config"])
        elif node["class_name"] != "__lambda__":
            names.add(node.get("registered_name") or node["class_name"])
    return names


def collect(
    model, configs: list[Any], custom_objects: Mapping | None = None, also: Any = None
) -> dict[str, Any]:
    """The objects outside Keras that `configs` name, as the driver resolves them.

    Args:
        model: the live keras.Model the configurations describe.
        configs: serialized configurations (architecture, compile settings) as dicts.
        custom_objects: the user's `custom_objects` (the scope and the registry first, as
            Keras looks them up).
        also: live compile arguments not (yet) in the model, e.g. a trainer's `loss`.

    Returns:
        {name as Keras looks it up: class or function}, without Keras' own objects.
    """
    import keras

    objects = [*_live_objects(model), *_objects_in(also)]
    live = {keras.saving.get_registered_name(obj): obj for obj in objects}
    found: dict[str, Any] = {}
    for config in configs:
        for name in referenced_names(config):
            obj = keras.saving.get_registered_object(name, custom_objects) or live.get(name)
            if obj is not None and not _from_keras(obj):
                found[name] = obj
    return found


def check_shippable(objects: Mapping[str, Any]) -> str:
    """Checks that cloudpickle can ship `objects`; returns their fingerprint ("" for none),
    a part of the executors' cache keys (a redefined class is a new model).

    Raises:
        TypeError: naming the object that cannot be pickled, and why.
    """
    if not objects:
        return ""
    import cloudpickle

    try:
        return hashlib.sha256(cloudpickle.dumps(dict(objects))).hexdigest()[:16]
    except Exception as error:
        for name, obj in objects.items():
            try:
                cloudpickle.dumps(obj)
            except Exception as cause:
                raise TypeError(
                    f"The model's custom object {name!r} ({_describe(obj)}) cannot be shipped "
                    f"to the executors: cloudpickle failed with {type(cause).__name__}: "
                    f"{cause}. Make it picklable (e.g. open files or sockets inside "
                    "`call`, not in the object's state)."
                ) from cause
        raise TypeError(f"The model's custom objects cannot be pickled: {error}") from error


def _dicts(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _dicts(value)


def _live_objects(model) -> Iterator[Any]:
    """The model's and its layers' classes, the functions and objects they hold, and the
    compile arguments (losses, metrics, the optimizer and its schedule)."""
    for layer in model._flatten_layers(include_self=True):
        yield type(layer)
        for value in vars(layer).values():
            yield from _objects_in(value)
    compiled = getattr(model, "_compile_config", None)
    if compiled is not None:
        yield from _objects_in(compiled.config)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        yield type(optimizer)
        yield from _objects_in(getattr(optimizer, "_learning_rate", None))


def _objects_in(value: Any, depth: int = 0) -> Iterator[Any]:
    if isinstance(value, (types.FunctionType, type)):
        yield value
    elif isinstance(value, (list, tuple)) and depth < 3:
        for item in value:
            yield from _objects_in(item, depth + 1)
    elif isinstance(value, dict) and depth < 3:
        for item in value.values():
            yield from _objects_in(item, depth + 1)
    elif hasattr(value, "get_config") and not isinstance(value, (str, bytes)):
        yield type(value)


def _from_keras(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.split(".", 1)[0] in _KERAS_PACKAGES


def _describe(obj: Any) -> str:
    kind = "class" if isinstance(obj, type) else type(obj).__name__
    return f"a {kind} from module {getattr(obj, '__module__', '?')}"
