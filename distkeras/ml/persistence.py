"""Saving and loading the stage: Spark's metadata JSON plus a `.keras` file, no pickle.

KerasStageWriter: the Params go in `<path>/metadata` (DefaultParamsWriter's format, so a
Pipeline can hold the stage) and the Keras model in `<path>/model.keras`. KerasStageReader:
the reverse. Paths on a non-local Hadoop file system (HDFS, S3, ...) go through a local
temporary file.
"""

from __future__ import annotations

import logging
import os
import tempfile

from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)

from distkeras.spark.facts import is_connect

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"


class KerasStageWriter(MLWriter):
    """Writes a stage: its Params as metadata JSON and its Keras model as `model.keras`."""

    def __init__(self, instance) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        model = self.instance.getModel()
        extra = dict(self.instance._extra_metadata())
        extra["modelFile"] = MODEL_FILE if model is not None else None
        DefaultParamsWriter.saveMetadata(
            self.instance, path, self.sparkSession, extraMetadata={"distkeras": extra}
        )
        if model is not None:
            save_keras_model(model, path, self.sparkSession)


class KerasStageReader(MLReader):
    """Reads a stage written by KerasStageWriter into a new instance of `cls`."""

    def __init__(self, cls) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        name = f"{self.cls.__module__}.{self.cls.__name__}"
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession, name)
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        extra = metadata.get("distkeras", {})
        if extra.get("modelFile"):
            instance.setModel(load_keras_model(path, self.sparkSession))
        instance._restore_metadata(extra)
        return instance


class KerasStagePersistence(MLReadable, MLWritable):
    """MLWritable and MLReadable for the stages, through KerasStageWriter / KerasStageReader.

    Subclasses may override `_extra_metadata` / `_restore_metadata` to keep more than the
    Params and the model (JSON values only).
    """

    def write(self) -> KerasStageWriter:
        """An MLWriter: Params as metadata JSON, the model as `model.keras`."""
        return KerasStageWriter(self)

    @classmethod
    def read(cls) -> KerasStageReader:
        """An MLReader for stages saved by `write()`."""
        return KerasStageReader(cls)

    def _extra_metadata(self) -> dict:
        return {}

    def _restore_metadata(self, extra: dict) -> None:
        """Nothing beyond the Params and the model by default."""


def _resolve(path: str, spark):
    """Returns (local path, None) for a local file system, else (None, (fs, Hadoop path))."""
    if is_connect(spark):  # no Hadoop client on this side: the path must be local
        return path.removeprefix("file://").removeprefix("file:"), None
    jvm = spark._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    fs = hadoop_path.getFileSystem(spark._jsc.hadoopConfiguration())
    qualified = fs.makeQualified(hadoop_path)
    if fs.getScheme() == "file":
        return qualified.toUri().getPath(), None
    return None, (fs, qualified)


def save_keras_model(model, path: str, spark, filename: str = MODEL_FILE) -> None:
    """Saves `model` as `<path>/<filename>` in the Keras format."""
    local, remote = _resolve(path, spark)
    if remote is None:
        os.makedirs(local, exist_ok=True)
        model.save(os.path.join(local, filename))
        return
    fs, directory = remote
    jvm = spark._jvm
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, filename)
        model.save(source)
        target = jvm.org.apache.hadoop.fs.Path(directory, filename)
        fs.copyFromLocalFile(False, True, jvm.org.apache.hadoop.fs.Path(source), target)
    logger.debug("Saved the Keras model to %s", path)


def load_keras_model(path: str, spark, filename: str = MODEL_FILE):
    """Loads `<path>/<filename>` saved by `save_keras_model`, compiled as it was saved."""
    import keras

    local, remote = _resolve(path, spark)
    if remote is None:
        return _load(keras, os.path.join(local, filename), path)
    fs, directory = remote
    jvm = spark._jvm
    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, filename)
        source = jvm.org.apache.hadoop.fs.Path(directory, filename)
        fs.copyToLocalFile(False, source, jvm.org.apache.hadoop.fs.Path(target), True)
        return _load(keras, target, path)


def _load(keras, file: str, path: str):
    """`keras.models.load_model(file)`; a custom object it cannot find is named, with the
    two ways to provide it (the registry, or a `custom_object_scope` around the load)."""
    try:
        return keras.models.load_model(file)
    except (TypeError, ValueError) as error:
        if "Could not locate" not in str(error):
            raise
        raise TypeError(
            f"Loading the Keras model saved in {path} failed: {str(error).splitlines()[0]} "
            "Define the missing object in this process and register it "
            "(@keras.saving.register_keras_serializable()), or load inside "
            "`with keras.saving.custom_object_scope({'Name': Name}):`, as "
            "keras.models.load_model(custom_objects=...) takes it."
        ) from error
