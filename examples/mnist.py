"""MNIST end to end with distkeras: DataFrame, Spark ML scaling, ADAG, evaluation, prediction.

Runs as it is on an embedded Spark (`python examples/mnist.py`) and under spark-submit
(`spark-submit --master spark://host:7077 examples/mnist.py --workers 4`), whose master wins.
Reads the MNIST IDX files from --data, or uses scikit-learn's 8x8 digits when they are absent.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger("mnist")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default="../shared/data/mnist/",
        help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz; "
        "scikit-learn's digits when absent (default: %(default)s)",
    )
    parser.add_argument(
        "--master",
        default="local[*]",
        help="Spark master when not run by spark-submit (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=2, help="ADAG workers (default: 2)")
    parser.add_argument("--epochs", type=int, default=5, help="passes over the data (default: 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per step (default: 32)")
    parser.add_argument("--rows", type=int, help="use only the first ROWS training rows")
    parser.add_argument(
        "--output", default="mnist.keras", help="where to save the model (default: %(default)s)"
    )
    return parser.parse_args(argv)


def build_model(input_dim: int, classes: int = 10):
    import keras

    model = keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    # ADAG commits the mean update of a window (Δ/λ): workers use a larger learning rate.
    model.compile(
        keras.optimizers.Adam(0.005), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from pyspark.ml.feature import StandardScaler
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import functions as F

    from distkeras.data import numpy_to_frame
    from distkeras.datasets import load_mnist_or_digits
    from distkeras.predictors import ModelPredictor, evaluate
    from distkeras.spark.session import get_spark_session
    from distkeras.trainers import ADAG

    # 1. Data: numpy arrays to Spark DataFrames with an ML vector column of raw pixels.
    name, ((x_train, y_train), (x_test, y_test)) = load_mnist_or_digits(args.data)
    if args.rows:
        x_train, y_train = x_train[: args.rows], y_train[: args.rows]
    logger.info("%s: %d training rows, %d test rows", name, len(x_train), len(x_test))
    spark = get_spark_session(args.master, app_name="distkeras-mnist")

    def frame(x, y):
        df = numpy_to_frame(spark, {"pixels": x, "label": y})
        return df.select(array_to_vector("pixels").alias("pixels"), "label")

    train_raw, test_raw = frame(x_train, y_train), frame(x_test, y_test)

    # 2. Normalise with Spark ML: mean 0, variance 1 per pixel, fitted on the training rows.
    scaler = StandardScaler(inputCol="pixels", outputCol="features", withMean=True).fit(train_raw)
    train_df = scaler.transform(train_raw).select("features", "label").cache()
    test_df = scaler.transform(test_raw).select("features", "label").cache()

    # 3. Train with ADAG: a progress bar, validation at every epoch end.
    model = build_model(x_train.shape[1])
    trainer = ADAG(model, num_workers=args.workers, batch_size=args.batch_size, seed=0)
    history = trainer.fit(train_df, epochs=args.epochs, validation_data=test_df)
    logger.info(
        "trained in %.1f s; validation accuracy by epoch: %s",
        trainer.get_training_time(),
        [round(v, 4) for v in history.history["val_accuracy"]],
    )

    # 4. Evaluate on the executors.
    metrics = evaluate(model, test_df)
    logger.info("test metrics: %s", {k: round(v, 4) for k, v in metrics.items()})

    # 5. Predict on a DataFrame: the class is the argmax of the probability vector.
    predicted = ModelPredictor(model, output_col="probabilities").predict(test_df)
    probabilities = vector_to_array("probabilities")
    predicted = predicted.withColumn(
        "predicted", F.array_position(probabilities, F.array_max(probabilities)) - 1
    )
    accuracy = predicted.select(F.avg((F.col("predicted") == F.col("label")).cast("double")))
    logger.info("accuracy of the DataFrame predictions: %.4f", accuracy.first()[0])
    predicted.select("label", "predicted").show(5)

    # 6. Save the model: a plain Keras file.
    model.save(args.output)
    logger.info("model saved to %s", args.output)
    sys.stdout.write(f"test accuracy: {metrics['accuracy']:.4f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
