"""Shipping Keras models to Spark executors.

ModelSpec holds what rebuilds a model anywhere: its architecture (JSON), its weights
(numpy arrays), its compile configuration (JSON) and the user's classes and functions these
name (model_objects; Spark's cloudpickle ships them by value, as a UDF's code); a model whose
layers keep assets outside their weights (the vocabulary of TextVectorization, StringLookup)
also travels as its `.keras` archive. It holds no live Keras model, so it travels inside
a Spark task closure. set_weights: weights in, and the state layers derive from them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from distkeras import model_objects


def _keras():
    import keras

    return keras


def ensure_keras_model(model: Any, argument: str = "keras_model"):
    """Returns `model` if it is a `keras.Model`.

    Raises:
        TypeError: naming `argument` and the type received.
    """
    keras = _keras()
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Expected `{argument}` to be a keras.Model. Received: {argument}={model!r} "
            f"of type {type(model).__name__}"
        )
    return model


def compile_settings(
    model, optimizer=None, loss=None, metrics=None, custom_objects: dict | None = None
) -> dict:
    """Returns the compile arguments of `model`, with the non-None overrides applied.

    The model's own losses, metrics and schedules are rebuilt fresh from their
    configuration, resolved as `ModelSpec` resolves them on the executors.

    Raises:
        ValueError: if the model is not compiled and `loss` or `optimizer` is missing.
    """
    keras = _keras()
    settings: dict = {}
    if model.compiled and model.get_compile_config():
        config = model.get_compile_config()
        scope = model_objects.collect(model, [config], custom_objects)
        with keras.saving.custom_object_scope({**(custom_objects or {}), **scope}):
            settings = keras.saving.deserialize_keras_object(config)
    if optimizer is not None:
        settings["optimizer"] = keras.optimizers.get(optimizer)
    if loss is not None:
        settings["loss"] = loss
    if metrics is not None:
        settings["metrics"] = metrics
    _check_loss_weights(settings.get("loss_weights"))
    missing = [name for name in ("optimizer", "loss") if settings.get(name) is None]
    if missing:
        names = " and ".join(f"`{name}`" for name in missing)
        raise ValueError(
            f"The model is not compiled and no {names} was given. Compile the model, or pass "
            f"{names} to the trainer (e.g. worker_optimizer='adam', "
            f"loss='sparse_categorical_crossentropy'). Received: model.compiled={model.compiled}"
        )
    return settings


def _check_loss_weights(loss_weights) -> None:
    """Refuses non-numeric loss weights, e.g. metrics passed as compile's third argument."""
    if loss_weights is None:
        return
    values = loss_weights.values() if isinstance(loss_weights, dict) else loss_weights
    if not isinstance(values, (list, tuple, type({}.values()))):
        values = [values]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ValueError(
            "The model was compiled with non-numeric `loss_weights` (compile's third "
            "positional argument is loss_weights; pass metrics as `metrics=[...]`). "
            f"Received: loss_weights={loss_weights!r}"
        )


def is_built(model) -> bool:
    """True when every layer of `model` has its variables (as `model.fit` checks)."""
    return all(layer.built for layer in model._flatten_layers())


def build_like_fit(model, first_batch: Callable[[], tuple]) -> None:
    """Builds an unbuilt compiled model from the first batch of its input, exactly as
    `model.fit` does (Keras' `_symbolic_build`: the layers, the compiled metrics and loss,
    the optimizer), so a model `fit` would refuse gets Keras' own error here.

    Args:
        model: a compiled keras.Model, built or not.
        first_batch: returns `(x, y, sample_weight)`; called only if the model is unbuilt.
    """
    if not is_built(model):
        from keras.src.random.seed_generator import global_seed_generator

        # Made now, outside the symbolic build, as fit's input handling makes it first: an
        # initializer drawing unseeded numbers there needs its state to be a real variable.
        global_seed_generator()
        model._symbolic_build(data_batch=_as_fit_sees_it(first_batch()))


def _as_fit_sees_it(batch):
    """The batch with numpy strings as string tensors: `model.fit` reads numpy strings
    through tf.data (TensorFlow only), and Keras' symbolic build takes no object dtype."""
    from keras import tree

    def convert(value):
        if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
            import tensorflow as tf

            return tf.constant(value.astype(str))
        return value

    return tree.map_structure(convert, batch)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A Keras model as plain data: architecture, weights, compile configuration, objects.

    Attributes:
        architecture: the model's JSON (`model.to_json()`).
        weights: the model's weights, in `model.get_weights()` order.
        compile_config: JSON of the compile arguments (optimizer, loss, metrics, ...).
        archive: the model's `.keras` file when a layer has assets (vocabularies), else None.
        objects: the user's classes and functions the JSON names (`model_objects.collect`);
            Spark's cloudpickle ships them by value with the task, as a UDF's code.
        objects_key: their fingerprint (`model_objects.check_shippable`).
    """

    architecture: str
    weights: list[np.ndarray]
    compile_config: str
    archive: bytes | None = None
    objects: dict = dataclasses.field(default_factory=dict)
    objects_key: str = ""

    @classmethod
    def from_model(
        cls, model, optimizer=None, loss=None, metrics=None, custom_objects: dict | None = None
    ) -> ModelSpec:
        """Captures `model`, compiled with its own settings or the non-None overrides.

        Raises:
            TypeError: naming a custom object that cannot be shipped (see `uncompiled`).
        """
        keras = _keras()
        ensure_keras_model(model, "model")
        settings = compile_settings(model, optimizer, loss, metrics, custom_objects)
        settings["optimizer"] = keras.optimizers.get(settings["optimizer"])
        # A fresh optimizer instance: its slots are rebuilt on the executor.
        settings["optimizer"] = settings["optimizer"].__class__.from_config(
            settings["optimizer"].get_config()
        )
        compile_config = json.dumps(keras.saving.serialize_keras_object(settings))
        return cls.uncompiled(model, compile_config, custom_objects, also=settings)

    @classmethod
    def uncompiled(
        cls, model, compile_config: str = "", custom_objects: dict | None = None, also=None
    ) -> ModelSpec:
        """Captures `model`'s architecture, weights, assets and the user's objects they name,
        without compiling.

        Raises:
            TypeError: naming a custom object that cannot be shipped (pickled).
        """
        weights = [np.asarray(w) for w in model.get_weights()]
        archive = _archive(model) if _has_assets(model) else None
        architecture = model.to_json()
        configs = [json.loads(architecture)] + (
            [json.loads(compile_config)] if compile_config else []
        )
        objects = model_objects.collect(model, configs, custom_objects, also)
        key = model_objects.check_shippable(objects)
        return cls(architecture, weights, compile_config, archive, objects, key)

    def build(self, custom_objects: dict | None = None, weights=None, compiled: bool = True):
        """Rebuilds the model with these (or the given) weights.

        The model's Python code (a `Lambda`'s function) is trusted: a ModelSpec is made from
        a live model in the driver's process and reaches executors inside the Spark job.

        Args:
            custom_objects: classes or functions the architecture refers to by name, besides
                the shipped `objects`.
            weights: optional weights to load instead of `self.weights`.
            compiled: compile it with `compile_config`.

        Returns:
            A keras.Model, compiled if `compiled`.
        """
        keras = _keras()
        scope = {**self.objects, **(custom_objects or {})}
        with keras.saving.custom_object_scope(scope):
            if self.archive is None:
                model = keras.saving.deserialize_keras_object(
                    json.loads(self.architecture), safe_mode=False
                )
            else:
                model = _from_archive(self.archive)
            if compiled:
                model.compile_from_config(json.loads(self.compile_config))
        set_weights(model, self.weights if weights is None else weights)
        return model

    @property
    def num_bytes(self) -> int:
        """Total size of the weights in bytes."""
        return sum(w.nbytes for w in self.weights)


def set_weights(model, weights) -> None:
    """`model.set_weights(weights)`, then the state a layer derives from its weights, as
    Keras' own loading does (`Normalization.load_own_variables`): the mean and variance an
    adapted Normalization divides by are tensors computed from its weights."""
    keras = _keras()
    model.set_weights(weights)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Normalization) and layer.built:
            layer.finalize_state()


def _has_assets(model) -> bool:
    """True if a layer keeps state outside its weights (`save_assets`, e.g. a vocabulary)."""
    return any(hasattr(layer, "save_assets") for layer in model._flatten_layers())


def _archive(model) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        with open(path, "rb") as file:
            return file.read()


def _from_archive(archive: bytes):
    keras = _keras()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        with open(path, "wb") as file:
            file.write(archive)
        return keras.saving.load_model(path, compile=False, safe_mode=False)
