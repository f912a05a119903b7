"""The original demo's model, trained in its own process so it pays the same TensorFlow start-up as ours:
Conv2D(8, 3, stride 2) -> Flatten -> Dense(10), Adam, 5 epochs, batch 32, pixels scaled to [0, 1].

Prints one JSON line: {"test_accuracy": ..., "training_seconds": ...}."""

from __future__ import annotations

import json
import os
import sys
import time


def main(dataset: str) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from airflow_provider_mlpipe.datasets.fashion_mnist import load_fashion_mnist

    data = load_fashion_mnist(dataset, None, None)
    x_train = (data.x_train / 255.0).astype("float32")[..., None]
    x_test = (data.x_test / 255.0).astype("float32")[..., None]
    tf.keras.utils.set_random_seed(42)
    model = tf.keras.Sequential(
        [
            tf.keras.Input(shape=(28, 28, 1)),
            tf.keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer="adam",
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    started = time.monotonic()
    model.fit(x_train, data.y_train, epochs=5, batch_size=32, verbose=0)
    seconds = time.monotonic() - started
    _, accuracy = model.evaluate(x_test, data.y_test, batch_size=1000, verbose=0)
    sys.stdout.write(json.dumps({"test_accuracy": float(accuracy), "training_seconds": seconds}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
