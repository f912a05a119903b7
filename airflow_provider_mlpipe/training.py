"""The training-image contract: what a trainer receives, and how it publishes what it made.

A pipeline runs a team's training image once per model version, on either runtime: a Kubernetes Job
runs the image's own entrypoint, the local runtime runs the command that stands in for the image on this
machine. Either way the trainer receives the same environment (`trainer_env`) and must publish one
version to the model store: a TensorFlow SavedModel whose `serving_default` signature takes one input
and returns one output of class scores (`[batch, classes]`), plus a manifest with the held-out accuracy
and the class names. `TrainingRun.from_env()` reads the environment, `TrainingRun.publish()` writes the
version in the store's layout (README, "Bring your own training image").

Import-light on purpose: a training image installs the provider with `--no-deps` and imports this
module without Airflow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.params import DIGEST_EXPECTED, DIGEST_RE, FRACTION, HYPERPARAMETERS, image_digest

# The environment every trainer receives (the values are strings, as environment variables are).
ENV_MODEL_STORE = "MLPIPE_MODEL_STORE"
ENV_MODEL_NAME = "MLPIPE_MODEL_NAME"
ENV_VERSION = "MLPIPE_MODEL_VERSION"
ENV_DATASET = "MLPIPE_DATASET"
ENV_IMAGE = "MLPIPE_IMAGE"
ENV_DIGEST = "MLPIPE_IMAGE_DIGEST"
ENV_RUN_ID = "MLPIPE_RUN_ID"
ENV_SCRATCH_DIR = "MLPIPE_SCRATCH_DIR"


def hyperparameter_env(name: str) -> str:
    """The variable carrying hyperparameter `name` (`learning_rate` -> `MLPIPE_LEARNING_RATE`)."""
    return f"MLPIPE_{name.upper()}"


def trainer_env(
    *,
    model_store: str,
    model_name: str,
    version: int,
    dataset: str | None,
    image: str,
    digest: str,
    run_key: str,
    hyperparameters: Mapping[str, int | float],
) -> dict[str, str]:
    """The contract's environment for one training run (without store credentials, which each runtime
    adds its own way: a process environment, or a Secret reference)."""
    env = {
        ENV_MODEL_STORE: model_store,
        ENV_MODEL_NAME: model_name,
        ENV_VERSION: str(version),
        ENV_IMAGE: image,
        ENV_DIGEST: digest,
        ENV_RUN_ID: run_key,
    }
    if dataset:
        env[ENV_DATASET] = dataset
    for name, value in sorted(hyperparameters.items()):
        env[hyperparameter_env(name)] = str(value)
    return env


def manifest_digest(image: str | None, digest: str | None) -> str | None:
    """The digest a manifest records: `digest` when given, else the one a pinned `image` reference
    (`repo@sha256:...`) carries, so a run started with a pinned reference alone still names its image."""
    if digest:
        return digest
    pinned = image_digest(image)
    if pinned is not None and DIGEST_RE.fullmatch(pinned):
        return pinned
    return digest


def _required(environ: Mapping[str, str], name: str, expected: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(name, environ.get(name), expected)
    return value


@dataclass(frozen=True)
class TrainingRun:
    """One training run as the pipeline asked for it."""

    model_store: str
    model_name: str
    version: int
    dataset: str | None = None
    image: str | None = None
    digest: str | None = None
    run_id: str | None = None
    scratch_dir: str | None = None
    # Only those the run set: a trainer keeps its own defaults for the rest.
    hyperparameters: dict[str, int | float] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainingRun:
        """The run from the contract's environment; a ConfigError names the variable that is wrong."""
        from airflow_provider_mlpipe.modelstore.store import check_model_name

        env = os.environ if environ is None else environ
        model_name = _required(env, ENV_MODEL_NAME, "a model name")
        try:
            check_model_name(model_name)
        except ConfigError as exc:
            raise ConfigError(ENV_MODEL_NAME, model_name, exc.expected) from None
        raw_version = _required(env, ENV_VERSION, "an integer >= 1")
        if not raw_version.isdigit() or int(raw_version) < 1:
            raise ConfigError(ENV_VERSION, raw_version, "an integer >= 1")
        digest = env.get(ENV_DIGEST, "").strip() or None
        if digest and not DIGEST_RE.fullmatch(digest):
            raise ConfigError(ENV_DIGEST, digest, f"empty or {DIGEST_EXPECTED}")
        hyperparameters: dict[str, int | float] = {}
        for name, bounded in HYPERPARAMETERS.items():
            raw = env.get(hyperparameter_env(name), "").strip()
            if raw:
                hyperparameters[name] = bounded.parse(hyperparameter_env(name), raw)
        return cls(
            model_store=_required(env, ENV_MODEL_STORE, "a model store URI (file://, oss:// or a path)"),
            model_name=model_name,
            version=int(raw_version),
            dataset=env.get(ENV_DATASET, "").strip() or None,
            image=env.get(ENV_IMAGE, "").strip() or None,
            digest=digest,
            run_id=env.get(ENV_RUN_ID, "").strip() or None,
            scratch_dir=env.get(ENV_SCRATCH_DIR, "").strip() or None,
            hyperparameters=hyperparameters,
        )

    def hyperparameter(self, name: str, default: int | float) -> int | float:
        return self.hyperparameters.get(name, default)

    def is_published(self) -> bool:
        """Whether this version is in the store already (a retried run then has nothing to do)."""
        from airflow_provider_mlpipe.modelstore import open_store

        return open_store(self.model_store).is_published(self.model_name, self.version)

    def publish(
        self,
        export_dir: Path | str,
        *,
        test_accuracy: float,
        class_names: Sequence[str],
        metrics: Mapping[str, Any] | None = None,
        dataset: Mapping[str, Any] | None = None,
        trainer: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Publish the SavedModel in `export_dir` as this run's version; returns the stored manifest.

        `test_accuracy` is the held-out accuracy the trainer measured (the pipeline's staging evaluation
        measures it again, through the served model); `class_names[i]` names output `i`. Idempotent:
        when another attempt published the version first, its manifest is returned unchanged.
        """
        from airflow_provider_mlpipe.modelstore import METRICS, open_store

        export = Path(export_dir)
        if not (export / "saved_model.pb").is_file():
            raise ConfigError("export_dir", str(export), "a directory holding a SavedModel (saved_model.pb)")
        accuracy = FRACTION.check("test_accuracy", test_accuracy)
        names = list(class_names)
        if (
            len(names) < 2
            or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)
        ):
            raise ConfigError(
                "class_names", class_names, "at least 2 distinct non-empty strings, one per output"
            )
        all_metrics = {**dict(metrics or {}), "test_accuracy": round(accuracy, 4)}
        (export / METRICS).write_text(json.dumps(all_metrics, indent=2, sort_keys=True) + "\n", "utf-8")
        manifest = {
            **dict(extra or {}),
            "image": self.image,
            "digest": manifest_digest(self.image, self.digest),
            "run_id": self.run_id,
            "trainer": trainer,
            "hyperparameters": dict(self.hyperparameters),
            "dataset": {"location": self.dataset, **dict(dataset or {})},
            "metrics": all_metrics,
            "class_names": names,
        }
        return open_store(self.model_store).publish(self.model_name, self.version, export, manifest)
