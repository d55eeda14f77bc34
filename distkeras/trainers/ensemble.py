"""EnsembleTrainer: independent copies of a model trained side by side, then averaged.

Each worker trains one member from its own random initialisation over the whole data set
(every partition holds all rows), with its own shuffle. The driver follows the members as
one Keras model that averages their outputs; `ensemble_model()` returns it.
"""

from __future__ import annotations

from distkeras import validation
from distkeras.model_spec import compile_settings
from distkeras.trainers.base import Trainer

_MEMBER = "__distkeras_member"


def average_model(members):
    """One Keras model whose outputs are the mean of the members' outputs."""
    import keras

    first = members[0]
    inputs = [keras.Input(tuple(t.shape[1:]), dtype=t.dtype) for t in first.inputs]
    feed = inputs[0] if len(inputs) == 1 else inputs
    outputs = [keras.tree.flatten(member(feed)) for member in members]
    averaged = [
        keras.layers.Average(name=f"average_{i}")([out[i] for out in outputs])
        for i in range(len(outputs[0]))
    ]
    return keras.Model(inputs, averaged[0] if len(averaged) == 1 else averaged, name="ensemble")


def _fresh_copy(model, index: int, settings: dict):
    import keras

    member = keras.models.clone_model(model)  # new layers: a new random initialisation
    member.name = f"member_{index}"
    optimizer = settings["optimizer"]
    member.compile(
        **{**settings, "optimizer": optimizer.__class__.from_config(optimizer.get_config())}
    )
    return member


class EnsembleTrainer(Trainer, algorithm="ensemble"):
    """Trains `num_ensembles` independent copies of the model in parallel.

    Args:
        keras_model: the model to copy; its architecture and compile settings are used.
        num_ensembles: number of members, one worker each.
        **kwargs: the arguments of `Trainer` except `num_workers`.
    """

    shard_every_row = True

    def __init__(self, keras_model, num_ensembles: int = 2, **kwargs):
        if "num_workers" in kwargs:
            raise TypeError("EnsembleTrainer takes `num_ensembles`, not `num_workers`")
        validation.positive_int("num_ensembles", num_ensembles)
        super().__init__(keras_model, num_workers=num_ensembles, **kwargs)
        self.num_ensembles = num_ensembles
        self.members: list = []
        self._ensemble = None

    def algorithm(self):
        return self.spec.algorithm(
            self.communication_window, len(self.model.weights), self.num_ensembles
        )

    def train(self, dataframe, shuffle: bool = False, verbose="auto") -> list:
        """Trains the members on `dataframe` and returns them (a list of Keras models)."""
        super().train(dataframe, shuffle, verbose)
        return list(self.members)

    def ensemble_model(self):
        """The Keras model averaging the trained members' outputs."""
        if self._ensemble is None:
            raise RuntimeError("ensemble_model() is available after train() or fit()")
        return self._ensemble

    def _driver_model(self, train, batch_size: int):
        model = super()._driver_model(train, batch_size)
        settings = compile_settings(model, self.worker_optimizer, self.loss, self.metrics)
        self.members = [_fresh_copy(model, i, settings) for i in range(self.num_ensembles)]
        self._ensemble = average_model(self.members)
        self._ensemble.compile(**{**settings, "optimizer": "sgd"})  # evaluated, never trained
        return self._ensemble

    def _partition(self, frame):
        """Gives every member's partition all the rows."""
        from distkeras.spark.facts import partition_keys

        spark = frame.sparkSession
        keys = partition_keys(spark, self.num_ensembles)
        members = spark.createDataFrame([(key,) for key in keys], f"{_MEMBER} long")
        return frame.crossJoin(members).repartition(self.num_ensembles, _MEMBER).drop(_MEMBER)
