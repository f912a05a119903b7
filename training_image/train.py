"""Fashion-MNIST trainer: validate, train a small CNN, export a SavedModel and publish it to the model store.

Run as ``python -m airflow_provider_mlpipe.images.training.train`` (installed, and in the container) or as
``python training_image/train.py`` from a checkout. Every flag can also come from an environment variable
(the Kubernetes Job sets those); a flag given on the command line wins.

Exit codes: 0 published (or already published), 1 unexpected error (traceback on stderr),
2 invalid argument or dataset (one line on stderr), 143 terminated by SIGTERM (nothing published).

TensorFlow is imported inside functions so that ``--help`` and argument validation answer in well under a
second and bad Airflow parameters fail before a 10-second TensorFlow import.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if __package__ in (None, ""):
    # Started as a script from a checkout: make the provider package next to this folder importable.
    _repo_root = Path(__file__).resolve().parent.parent
    if (_repo_root / "airflow_provider_mlpipe").is_dir():
        sys.path.insert(0, str(_repo_root))

from airflow_provider_mlpipe.datasets import (
    CLASS_NAMES,
    IMAGE_SHAPE,
    KERAS_DOWNLOAD,
    NUM_CLASSES,
    FashionMnist,
    default_dataset_dir,
    load_fashion_mnist,
)
from airflow_provider_mlpipe.exceptions import ConfigError, DatasetError
from airflow_provider_mlpipe.holds import hold
from airflow_provider_mlpipe.modelstore import METRICS, open_store
from airflow_provider_mlpipe.params import DIGEST_EXPECTED, DIGEST_RE, HYPERPARAMETERS
from airflow_provider_mlpipe.training import (
    ENV_DATASET,
    ENV_DIGEST,
    ENV_IMAGE,
    ENV_MODEL_NAME,
    ENV_MODEL_STORE,
    ENV_RUN_ID,
    ENV_SCRATCH_DIR,
    ENV_VERSION,
    hyperparameter_env,
    manifest_digest,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

log = logging.getLogger("mlpipe.train")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SIGTERM = 143
EXIT_SIGINT = 130

# Defaults chosen by measurement on 2 CPU cores with the full 60k/10k data (see the provider docs).
DEFAULT_MODEL_NAME = "fashion_mnist"
DEFAULT_EPOCHS = 9
DEFAULT_BATCH_SIZE = 128
DEFAULT_LEARNING_RATE = 0.003
DEFAULT_SEED = 42

TRAINER_MODULE = "airflow_provider_mlpipe.images.training.train"


class Terminated(BaseException):
    """Raised from the SIGTERM handler; a BaseException so no `except Exception` on the way swallows it."""


@dataclass(frozen=True)
class TrainConfig:
    dataset: str | None
    model_store: str
    model_name: str
    version: int
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    train_limit: int
    test_limit: int
    threads: int
    image: str | None
    digest: str | None
    run_id: str | None
    scratch_dir: str | None

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "lr_schedule": "cosine_decay",
            "optimizer": "adam",
            "seed": self.seed,
            "train_limit": self.train_limit,
            "test_limit": self.test_limit,
            "threads": self.threads,
            "architecture": ARCHITECTURE,
        }


ARCHITECTURE = "rescale-conv16-bn-relu-pool-conv32-bn-relu-pool-dropout0.2-dense256-dropout0.2-dense10"


# Flag -> environment variable. The order is the order of --help.
ENV_VARS: dict[str, str] = {
    "--dataset": ENV_DATASET,
    "--model-store": ENV_MODEL_STORE,
    "--model-name": ENV_MODEL_NAME,
    "--version": ENV_VERSION,
    # The training contract's hyperparameter variables (MLPIPE_EPOCHS, ...), in the order of --help.
    **{
        f"--{name.replace('_', '-')}": hyperparameter_env(name)
        for name in ("epochs", "batch_size", "learning_rate", "seed", "train_limit", "test_limit", "threads")
    },
    "--image": ENV_IMAGE,
    "--digest": ENV_DIGEST,
    "--run-id": ENV_RUN_ID,
    "--scratch-dir": ENV_SCRATCH_DIR,
}

_HELP: dict[str, str] = {
    "--dataset": (
        "dataset directory, file:// or oss:// URI (default: the shared local copy, else Keras download)"
    ),
    "--model-store": (
        "model store URI: file:///abs/path, a path, or oss://bucket/prefix (credentials from OSS_ACCESS_KEY_ID, "
        "OSS_ACCESS_KEY_SECRET, OSS_REGION / OSS_ENDPOINT) (required)"
    ),
    "--model-name": f"model name in the store (default {DEFAULT_MODEL_NAME})",
    "--version": "version to publish, integer >= 1 (required)",
    "--epochs": f"training epochs (default {DEFAULT_EPOCHS})",
    "--batch-size": f"batch size (default {DEFAULT_BATCH_SIZE})",
    "--learning-rate": f"peak Adam learning rate, cosine-decayed to 0 (default {DEFAULT_LEARNING_RATE})",
    "--seed": f"random seed (default {DEFAULT_SEED})",
    "--train-limit": "use only the first N training examples, 0 = all (default 0)",
    "--test-limit": "use only the first N test examples, 0 = all (default 0)",
    "--threads": "TensorFlow intra/inter-op threads, 0 = TensorFlow default (default 0)",
    "--image": "training image reference (metadata only)",
    "--digest": "training image digest (metadata only)",
    "--run-id": "Airflow run id (metadata only)",
    "--scratch-dir": "where the SavedModel is exported before publishing (default: a temporary directory)",
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus a message; operators grep task logs, so emit one line naming the problem."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"train: error: {message}: see --help\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m " + TRAINER_MODULE,
        description="Train the Fashion-MNIST CNN and publish it as a versioned SavedModel.",
        epilog="Every flag may also be set by the environment variable shown; the flag wins.",
    )
    for flag, env in ENV_VARS.items():
        bounded = HYPERPARAMETERS.get(flag.removeprefix("--").replace("-", "_"))
        accepted = f", {bounded.expected}" if bounded is not None else ""
        # Raw strings here; validate_args() converts them so errors name the flag or env var uniformly.
        parser.add_argument(flag, default=None, metavar="VALUE", help=f"{_HELP[flag]}{accepted} [env {env}]")
    return parser


def _raw(ns: argparse.Namespace, flag: str) -> tuple[str | None, str]:
    """The flag's value (or its env var's) and the name to blame in an error message."""
    value = getattr(ns, flag.lstrip("-").replace("-", "_"))
    if value is not None:
        return value, flag
    env = ENV_VARS[flag]
    env_value = os.environ.get(env)
    if env_value is not None and env_value.strip() != "":
        return env_value.strip(), f"{flag} (from {env})"
    return None, flag


def _missing(flag: str, expected: str) -> ConfigError:
    """ConfigError for an absent required flag: "is missing" reads better than "=None is invalid"."""
    error = ConfigError(flag, None, expected)
    error.args = (f"{flag} is missing: expected {expected} (or set {ENV_VARS[flag]})",)
    return error


def _int(ns: argparse.Namespace, flag: str, default: int | None, minimum: int, expected: str) -> int:
    value, name = _raw(ns, flag)
    if value is None:
        if default is None:
            raise _missing(flag, expected)
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(name, value, expected) from None
    if number < minimum:
        raise ConfigError(name, value, expected)
    return number


def _hyperparameter(ns: argparse.Namespace, name: str, default: int | float) -> int | float:
    """A hyperparameter flag, in exactly the range the DAG's Params and `validate_params` accept."""
    value, flag = _raw(ns, f"--{name.replace('_', '-')}")
    if value is None:
        return default
    return HYPERPARAMETERS[name].parse(flag, value)


def validate_args(ns: argparse.Namespace) -> TrainConfig:
    """Turn raw flag/env strings into a config; raise ConfigError naming the flag, value and expectation."""
    from airflow_provider_mlpipe.modelstore.store import check_model_name

    store, store_name = _raw(ns, "--model-store")
    if store is None:
        raise _missing("--model-store", "a model store URI such as file:///var/mlpipe/models or a path")
    if "://" in store and not store.startswith(("file://", "oss://")):
        raise ConfigError(store_name, store, "file:///absolute/path, oss://bucket/prefix or a local path")

    model_name_raw, model_name_flag = _raw(ns, "--model-name")
    model_name = model_name_raw if model_name_raw is not None else DEFAULT_MODEL_NAME
    try:
        check_model_name(model_name)
    except ConfigError as exc:
        raise ConfigError(model_name_flag, model_name, exc.expected) from None

    dataset, dataset_flag = _raw(ns, "--dataset")
    if dataset is not None and "://" in dataset and not dataset.startswith(("file://", "oss://")):
        raise ConfigError(dataset_flag, dataset, "a directory, file:// or oss:// URI")

    scratch, scratch_flag = _raw(ns, "--scratch-dir")
    if scratch is not None and Path(scratch).exists() and not Path(scratch).is_dir():
        raise ConfigError(scratch_flag, scratch, "a directory (or a path that does not exist yet)")

    digest, digest_flag = _raw(ns, "--digest")
    if digest and not DIGEST_RE.fullmatch(digest):
        raise ConfigError(digest_flag, digest, f"empty or {DIGEST_EXPECTED}")

    return TrainConfig(
        dataset=dataset,
        model_store=store,
        model_name=model_name,
        version=_int(ns, "--version", None, 1, "an integer >= 1"),
        epochs=int(_hyperparameter(ns, "epochs", DEFAULT_EPOCHS)),
        batch_size=int(_hyperparameter(ns, "batch_size", DEFAULT_BATCH_SIZE)),
        learning_rate=float(_hyperparameter(ns, "learning_rate", DEFAULT_LEARNING_RATE)),
        seed=int(_hyperparameter(ns, "seed", DEFAULT_SEED)),
        train_limit=int(_hyperparameter(ns, "train_limit", 0)),
        test_limit=int(_hyperparameter(ns, "test_limit", 0)),
        threads=int(_hyperparameter(ns, "threads", 0)),
        image=_raw(ns, "--image")[0],
        digest=digest,
        run_id=_raw(ns, "--run-id")[0],
        scratch_dir=scratch,
    )


def _configure_logging() -> None:
    # Plain messages on stdout: the last line is a machine-read contract and the pod log adds timestamps.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signum}")


def _import_tensorflow(threads: int) -> Any:
    # Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads > 0:
        # Must happen before TensorFlow creates its runtime (first op); nothing has run yet here.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    return tf


def build_model(tf: Any) -> Any:
    """Small CNN: two conv blocks with batch norm reach ~0.92 in under two minutes on 2 CPU cores.

    Scaling lives inside the model so the served signature takes raw 0..255 pixels (CONTRACTS.md).
    """
    layers = tf.keras.layers

    def conv_block(x: Any, filters: int) -> Any:
        # No conv bias: batch norm's beta makes it redundant.
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        # momentum 0.9: the moving statistics settle within tens of steps, so short runs serve well too.
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        return layers.MaxPooling2D()(x)

    images = tf.keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="images")
    x = layers.Rescaling(1.0 / 255.0)(images)
    x = layers.Reshape((*IMAGE_SHAPE, 1))(x)
    # Narrow convolutions and a wide dense layer: on 2 CPU cores the 14x14 convolution is most of the
    # cost, while the dense layer buys accuracy cheaply (README, Benchmarks: 24/48 filters with 128 dense
    # units reached 0.917 in ~136 s; 16/32 with 256 reach 0.92 in about two minutes).
    x = conv_block(x, 16)
    x = conv_block(x, 32)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dropout(0.2)(x)
    probabilities = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return tf.keras.Model(images, probabilities, name="fashion_mnist_cnn")


def _epoch_logger(tf: Any, epochs: int) -> Any:
    class EpochLog(tf.keras.callbacks.Callback):  # type: ignore[misc, name-defined]
        """One flushed line per epoch: long runs show progress in the Airflow task log while they run."""

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            # Fault tests hold training here, mid-run, until they have injected their fault.
            hold("training_epoch", log)
            self._started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            parts = [f"epoch {epoch + 1}/{epochs}"]
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                if key in logs:
                    parts.append(f"{key}={float(logs[key]):.4f}")
            parts.append(f"seconds={time.monotonic() - self._started:.1f}")
            log.info(" ".join(parts))
            for handler in log.handlers:
                handler.flush()

    return EpochLog()


def export_saved_model(tf: Any, model: Any, export_dir: Path) -> None:
    """Export through a tf.Module so the signature is exactly CONTRACTS.md's, independent of Keras' own
    export naming (``images`` in, ``probabilities`` out, float32 raw pixels)."""

    class Serving(tf.Module):  # type: ignore[misc, name-defined]
        def __init__(self, keras_model: Any) -> None:
            super().__init__(name="fashion_mnist_serving")
            self.model = keras_model

        @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name="images")])
        def serve(self, images: Any) -> dict[str, Any]:
            return {"probabilities": self.model(images, training=False)}

    module = Serving(model)
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})


def evaluate(model: Any, data: FashionMnist, batch_size: int) -> dict[str, Any]:
    import numpy as np

    x_test = data.x_test.astype("float32")
    test_loss, test_accuracy = model.evaluate(x_test, data.y_test, batch_size=max(batch_size, 500), verbose=0)
    predictions = np.argmax(model.predict(x_test, batch_size=max(batch_size, 500), verbose=0), axis=1)
    per_class: dict[str, float | None] = {}
    per_class_by_name: dict[str, float | None] = {}
    for index, name in enumerate(CLASS_NAMES):
        mask = data.y_test == index
        # A tiny --test-limit subset may lack a class entirely: report null rather than a fake 0.
        accuracy = round(float(np.mean(predictions[mask] == index)), 4) if mask.any() else None
        per_class[str(index)] = accuracy
        per_class_by_name[name] = accuracy
    return {
        "test_accuracy": round(float(test_accuracy), 4),
        "test_loss": round(float(test_loss), 4),
        "per_class_accuracy": per_class,
        "per_class_accuracy_by_name": per_class_by_name,
        "class_names": list(CLASS_NAMES),
        "test_examples": int(data.x_test.shape[0]),
        "train_examples": int(data.x_train.shape[0]),
    }


def train_and_publish(config: TrainConfig) -> int:
    store = open_store(config.model_store)
    if store.is_published(config.model_name, config.version):
        manifest = store.read_manifest(config.model_name, config.version)
        accuracy = manifest.get("metrics", {}).get("test_accuracy")
        log.info(
            "already published model=%s version=%d uri=%s test_accuracy=%s: nothing to do",
            config.model_name,
            config.version,
            store.version_uri(config.model_name, config.version),
            accuracy,
        )
        return EXIT_OK

    location = config.dataset or default_dataset_dir()
    log.info("loading dataset from %s", location or KERAS_DOWNLOAD)
    data = load_fashion_mnist(location, config.train_limit or None, config.test_limit or None)
    log.info(
        "dataset ok train=%d test=%d checksum=%s", data.x_train.shape[0], data.x_test.shape[0], data.checksum
    )

    tf = _import_tensorflow(config.threads)
    tf.keras.utils.set_random_seed(config.seed)
    model = build_model(tf)
    steps_per_epoch = -(-data.x_train.shape[0] // config.batch_size)
    # Cosine decay lets a large peak rate converge within the few epochs a CPU budget allows.
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        config.learning_rate, steps_per_epoch * config.epochs
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        # 32 steps per call into the compiled graph instead of one: less Python per step (~10% per epoch).
        steps_per_execution=32,
    )
    log.info(
        "training model=%s version=%d epochs=%d batch_size=%d learning_rate=%g params=%d tensorflow=%s",
        config.model_name,
        config.version,
        config.epochs,
        config.batch_size,
        config.learning_rate,
        model.count_params(),
        tf.__version__,
    )
    started = time.monotonic()
    # No per-epoch pass over the test set: it cost ~5% of the training time, and the test set is scored
    # once, after training, for the metrics (so it cannot bias any choice made during training either).
    history = model.fit(
        data.x_train.astype("float32"),
        data.y_train,
        batch_size=config.batch_size,
        epochs=config.epochs,
        verbose=0,
        callbacks=[_epoch_logger(tf, config.epochs)],
    )
    training_seconds = round(time.monotonic() - started, 1)

    metrics = evaluate(model, data, config.batch_size)
    metrics["training_seconds"] = training_seconds
    metrics["epochs"] = config.epochs
    metrics["history"] = {
        key: [round(float(v), 4) for v in values] for key, values in history.history.items()
    }
    log.info(
        "evaluated test_accuracy=%.4f test_loss=%.4f training_seconds=%.1f",
        metrics["test_accuracy"],
        metrics["test_loss"],
        training_seconds,
    )

    scratch_root, owns_scratch = _scratch_root(config)
    try:
        export_dir = scratch_root / f"export-{config.model_name}-{config.version}"
        if export_dir.exists():
            # Left over from an interrupted attempt with the same scratch dir.
            shutil.rmtree(export_dir)
        export_saved_model(tf, model, export_dir)
        (export_dir / METRICS).write_text(
            json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        manifest = {
            "image": config.image,
            "digest": manifest_digest(config.image, config.digest),
            "run_id": config.run_id,
            "trainer": TRAINER_MODULE,
            "hyperparameters": config.hyperparameters(),
            "dataset": {
                "location": location or KERAS_DOWNLOAD,
                "checksum": data.checksum,
                "train_examples": metrics["train_examples"],
                "test_examples": metrics["test_examples"],
            },
            "metrics": {
                "test_accuracy": metrics["test_accuracy"],
                "test_loss": metrics["test_loss"],
                "per_class_accuracy": metrics["per_class_accuracy"],
                "training_seconds": training_seconds,
            },
            # What output i means, for anyone scoring this version (the AccuracySensor, the approval).
            "class_names": list(CLASS_NAMES),
            "signature": {
                "key": "serving_default",
                "inputs": {"images": {"dtype": "float32", "shape": [None, *IMAGE_SHAPE]}},
                "outputs": {"probabilities": {"dtype": "float32", "shape": [None, NUM_CLASSES]}},
            },
            "tensorflow_version": tf.__version__,
            "keras_version": tf.keras.__version__ if hasattr(tf.keras, "__version__") else None,
            "config": {k: v for k, v in asdict(config).items() if k not in ("scratch_dir",)},
        }
        final = store.publish(config.model_name, config.version, export_dir, manifest)
    finally:
        if owns_scratch:
            shutil.rmtree(scratch_root, ignore_errors=True)

    # publish() is idempotent: if another attempt won the race, report what is actually in the store.
    published_accuracy = final.get("metrics", {}).get("test_accuracy", metrics["test_accuracy"])
    log.info(
        "published model=%s version=%d uri=%s test_accuracy=%.4f",
        config.model_name,
        config.version,
        final.get("uri") or store.version_uri(config.model_name, config.version),
        float(published_accuracy),
    )
    return EXIT_OK


def _scratch_root(config: TrainConfig) -> tuple[Path, bool]:
    if config.scratch_dir:
        path = Path(config.scratch_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path, False
    return Path(tempfile.mkdtemp(prefix="mlpipe-train-")), True


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    ns = build_parser().parse_args(argv)
    try:
        config = validate_args(ns)
    except ConfigError as exc:
        sys.stderr.write(f"train: error: {exc}\n")
        return EXIT_USAGE

    # signal.signal only works on the main thread; an in-process caller on another thread keeps its own.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if on_main_thread else None
    try:
        return train_and_publish(config)
    except (ConfigError, DatasetError) as exc:
        sys.stderr.write(f"train: error: {exc}\n")
        return EXIT_USAGE
    except Terminated:
        log.info(
            "terminated by SIGTERM: model=%s version=%d not published", config.model_name, config.version
        )
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        log.info("interrupted: model=%s version=%d not published", config.model_name, config.version)
        return EXIT_SIGINT
    except Exception:
        sys.stderr.write("train: unexpected error, nothing published:\n" + traceback.format_exc())
        return EXIT_ERROR
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
