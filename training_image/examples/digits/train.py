"""The digits example's training image: a team's own trainer, written against the training contract.

Reads the run from the environment (airflow_provider_mlpipe.training), trains a small dense network on
`$MLPIPE_DATASET/train.npz` (prepare_data.py writes it), measures accuracy on `test.npz`, and publishes a
SavedModel whose `serving_default` signature takes `features` [batch, 64] float32 and returns
`probabilities` [batch, 10]. Hyperparameters used: epochs, batch_size, learning_rate, seed.

Exit codes: 0 published (or already published), 2 bad settings or data (one line on stderr), 1 anything
else. The Kubernetes image runs it as its ENTRYPOINT (Dockerfile beside it); the local runtime runs
`python training_image/examples/digits/train.py`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from airflow_provider_mlpipe.exceptions import ConfigError, DatasetError
from airflow_provider_mlpipe.training import TrainingRun

log = logging.getLogger("digits.train")
FEATURES = 64
CLASS_NAMES = [str(digit) for digit in range(10)]


def load_split(dataset: str | None, split: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], str]:
    """`inputs`, `labels` and the sha256 of `<dataset>/<split>.npz`."""
    if not dataset:
        raise ConfigError(
            "MLPIPE_DATASET", dataset, "the directory prepare_data.py wrote train.npz/test.npz to"
        )
    path = Path(dataset.removeprefix("file://")) / f"{split}.npz"
    if not path.is_file():
        raise DatasetError(f"digits dataset {dataset!r}: {path.name} is missing (run prepare_data.py)")
    with np.load(path, allow_pickle=False) as data:
        inputs, labels = data["inputs"].astype(np.float32), data["labels"].astype(np.int64)
    if inputs.ndim != 2 or inputs.shape[1] != FEATURES or len(labels) != len(inputs):
        raise DatasetError(
            f"digits dataset {path}: inputs {inputs.shape}, labels {labels.shape}: expected [N, 64], [N]"
        )
    return inputs, labels, hashlib.sha256(path.read_bytes()).hexdigest()


def train(run: TrainingRun) -> dict[str, Any]:
    x_train, y_train, train_sha = load_split(run.dataset, "train")
    x_test, y_test, test_sha = load_split(run.dataset, "test")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(int(run.hyperparameter("seed", 0)))
    features = tf.keras.Input(shape=(FEATURES,), dtype="float32", name="features")
    # Scaling inside the model: the served signature takes raw 0..16 intensities, as the data holds them.
    hidden = tf.keras.layers.Dense(64, activation="relu")(tf.keras.layers.Rescaling(1 / 16)(features))
    probabilities = tf.keras.layers.Dense(len(CLASS_NAMES), activation="softmax")(hidden)
    model = tf.keras.Model(features, probabilities)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(float(run.hyperparameter("learning_rate", 0.01))),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    epochs = int(run.hyperparameter("epochs", 30))
    model.fit(
        x_train, y_train, batch_size=int(run.hyperparameter("batch_size", 32)), epochs=epochs, verbose=0
    )
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    log.info("trained %s v%d: %d epochs, test accuracy %.4f", run.model_name, run.version, epochs, accuracy)

    class Serving(tf.Module):  # type: ignore[misc, name-defined]
        def __init__(self, keras_model: Any) -> None:
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32, name="features")])
        def serve(self, features: Any) -> dict[str, Any]:
            return {"probabilities": self.model(features, training=False)}

    with tempfile.TemporaryDirectory(dir=run.scratch_dir) as export:
        module = Serving(model)
        tf.saved_model.save(module, export, signatures={"serving_default": module.serve})
        return run.publish(
            export,
            test_accuracy=float(accuracy),
            class_names=CLASS_NAMES,
            metrics={"epochs": epochs, "test_examples": len(y_test), "train_examples": len(y_train)},
            dataset={"checksum": hashlib.sha256((train_sha + test_sha).encode()).hexdigest()},
            trainer="training_image/examples/digits/train.py",
        )


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        run = TrainingRun.from_env()
        if run.is_published():
            log.info("%s v%d is published already: nothing to do", run.model_name, run.version)
            return 0
        manifest = train(run)
    except (ConfigError, DatasetError) as exc:
        sys.stderr.write(f"train: error: {exc}\n")
        return 2
    log.info("published %s", manifest["uri"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
