"""distkeras: distributed training of Keras 3 models on Apache Spark."""

__version__ = "0.1.0"
