"""Three Keras examples ported with one change: `model.fit(...)` -> `ADAG(model).fit(...)`.

The MNIST convnet (keras.io/examples/vision/mnist_convnet) with `validation_split`; text
classification from raw strings with TextVectorization inside the model; the functional
API guide's model with named dict inputs and outputs, here with `sample_weight`. Each run
is small (a few hundred rows, one epoch) and must report the History `model.fit` reports.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from distkeras.trainers import ADAG

pytestmark = pytest.mark.usefixtures("spark")


def keys_of_model_fit(build, *args, **kwargs) -> list[str]:
    """The History keys `model.fit` reports for the same call."""
    return sorted(build().fit(*args, verbose=0, **kwargs).history)


def convnet():
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(8, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def test_mnist_convnet_with_validation_split(mnist):
    (x_train, y_train), _ = mnist
    x_train = x_train[:300].reshape(-1, 28, 28, 1)
    y_train = keras.utils.to_categorical(y_train[:300], 10)
    arguments = dict(batch_size=32, epochs=1, validation_split=0.1)

    model = convnet()
    before = model.get_weights()
    history = ADAG(model, num_workers=2).fit(x_train, y_train, verbose=0, **arguments)

    assert sorted(history.history) == keys_of_model_fit(convnet, x_train, y_train, **arguments)
    assert history.epoch == [0] and np.isfinite(history.history["val_loss"][0])
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))


TEXTS = np.array(
    ["a great film, wonderful acting", "great fun and a wonderful story", "loved it, great"]
    + ["an awful film, boring acting", "boring and awful story", "hated it, awful"],
    dtype=object,  # Keras takes strings as object arrays (or string tensors)
)


def text_classifier():
    vectorize = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=6)
    vectorize.adapt(TEXTS)
    inputs = keras.Input(shape=(1,), dtype="string")
    x = vectorize(inputs)
    x = keras.layers.Embedding(40, 8)(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy", metrics=["accuracy"])
    return model


def test_text_classification_from_raw_strings():
    texts = np.repeat(TEXTS, 40)
    labels = np.repeat([1, 1, 1, 0, 0, 0], 40)
    arguments = dict(epochs=2, batch_size=16, validation_data=(TEXTS, np.array([1, 1, 1, 0, 0, 0])))

    model = text_classifier()
    history = ADAG(model, num_workers=1).fit(texts, labels, verbose=0, **arguments)

    assert sorted(history.history) == keys_of_model_fit(text_classifier, texts, labels, **arguments)
    assert history.history["val_accuracy"][-1] == 1.0  # the model reads the raw strings
    predictions = model.predict(
        np.array(["wonderful great film", "awful boring"], object), verbose=0
    )
    assert predictions[0, 0] > 0.5 > predictions[1, 0]


NUM_TAGS, NUM_WORDS, NUM_DEPARTMENTS = 12, 100, 4


def ticket_model():
    """The functional API guide's model: three named inputs, two named outputs."""
    title_input = keras.Input(shape=(None,), name="title")
    body_input = keras.Input(shape=(None,), name="body")
    tags_input = keras.Input(shape=(NUM_TAGS,), name="tags")
    title_features = keras.layers.Embedding(NUM_WORDS, 8)(title_input)
    body_features = keras.layers.Embedding(NUM_WORDS, 8)(body_input)
    title_features = keras.layers.LSTM(8)(title_features)
    body_features = keras.layers.LSTM(4)(body_features)
    x = keras.layers.concatenate([title_features, body_features, tags_input])
    priority_pred = keras.layers.Dense(1, name="priority")(x)
    department_pred = keras.layers.Dense(NUM_DEPARTMENTS, name="department")(x)
    model = keras.Model(
        inputs=[title_input, body_input, tags_input],
        outputs={"priority": priority_pred, "department": department_pred},
    )
    model.compile(
        optimizer=keras.optimizers.RMSprop(1e-3),
        loss={
            "priority": keras.losses.BinaryCrossentropy(from_logits=True),
            "department": keras.losses.CategoricalCrossentropy(from_logits=True),
        },
        loss_weights={"priority": 1.0, "department": 0.2},
    )
    return model


def test_functional_model_with_named_inputs_outputs_and_sample_weight():
    rng = np.random.default_rng(0)
    rows = 256
    title_data = rng.integers(NUM_WORDS, size=(rows, 10))  # integer token ids
    body_data = rng.integers(NUM_WORDS, size=(rows, 20))
    tags_data = rng.integers(2, size=(rows, NUM_TAGS)).astype("float32")
    priority_targets = rng.random(size=(rows, 1))
    dept_targets = rng.integers(2, size=(rows, NUM_DEPARTMENTS))
    x = {"title": title_data, "body": body_data, "tags": tags_data}
    y = {"priority": priority_targets, "department": dept_targets}
    arguments = dict(epochs=1, batch_size=32, sample_weight=rng.random(rows))

    model = ticket_model()
    before = model.get_weights()
    history = ADAG(model, num_workers=2).fit(x, y, verbose=0, **arguments)

    assert sorted(history.history) == keys_of_model_fit(ticket_model, x, y, **arguments)
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
