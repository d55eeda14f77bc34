"""What one training run will do, decided on the driver before anything starts.

RunPlan is a pure value (algorithm, worker model, batch size, epochs, data path, workers):
the trainer makes it from its settings and `fit`'s arguments, and trainers.run.TrainingRun
carries it out. Making it starts nothing: no server, no Spark job.
"""

from __future__ import annotations

import dataclasses

from distkeras.algorithms.base import Algorithm
from distkeras.model_spec import ModelSpec

# The data paths: in-memory rows sent to each worker over its parameter-server connection,
# or the rows of a Spark DataFrame read by each worker's task from its partition.
SHARDS, FRAME = "shards", "frame"


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """One run's decisions.

    Attributes:
        algorithm: the exchange rule, with its parameters.
        spec: the model the workers rebuild, with their compile settings.
        num_workers: workers, one barrier task each.
        batch_size: rows per local step.
        epochs: the epoch to stop at.
        first_epoch: the epoch to start at (after `initial_epoch` or a resumed checkpoint).
        data_path: SHARDS or FRAME. SHARDS falls back to FRAME when the server runs in the
            cluster (its workers cannot reach the driver's rows).
        shuffle: shuffle each worker's rows every epoch.
        worker_steps: each worker's batches per epoch, or None for all its rows.
        class_weight: {class index: weight}, or None.
        threads: TensorFlow threads per worker (Spark's cpus per task).
        seed: seed of the workers' shuffles.
        custom_objects: classes and functions the model refers to by name.
        worker_timeout: seconds a worker may stay silent (also a round's time limit).
        input_shapes: per input, the shape without batch that flat rows take, or None.
        allow_cpu_fallback: workers given GPUs that TensorFlow cannot see train on the CPU
            (else they fail naming them).
        rate_scale: the workers' learning rate over the model's (the algorithm's
            adaptive_rate_scale when the workers train with the model's adaptive optimizer,
            else 1).
    """

    algorithm: Algorithm
    spec: ModelSpec
    num_workers: int
    batch_size: int
    epochs: int
    first_epoch: int
    data_path: str
    shuffle: bool = True
    worker_steps: int | None = None
    class_weight: dict | None = None
    threads: int = 1
    seed: int | None = None
    custom_objects: dict | None = None
    worker_timeout: float = 600.0
    input_shapes: tuple = ()
    allow_cpu_fallback: bool = False
    rate_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.data_path not in (SHARDS, FRAME):
            raise ValueError(f"Expected a data path in {[SHARDS, FRAME]}: {self.data_path!r}")
