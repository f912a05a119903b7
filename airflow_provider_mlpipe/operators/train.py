"""KubeTrainJobOperator: train a model version from a pushed training image.

Runtime `local` runs the image's entrypoint (`airflow_provider_mlpipe.images.training.train`) as a
supervised process on this machine; the `kubernetes` runtime runs the same entrypoint as a batch/v1 Job.
Either way the operator reserves the run's model version, starts or adopts the training, and waits
deferred: no worker slot is held while training runs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_mlpipe import config
from airflow_provider_mlpipe.exceptions import ConfigError, TrainingError
from airflow_provider_mlpipe.hooks.local_process import SUCCEEDED, LocalProcessHook
from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook
from airflow_provider_mlpipe.modelstore.store import check_model_name
from airflow_provider_mlpipe.runs import push_keys, run_key
from airflow_provider_mlpipe.triggers.local_process import LocalProcessTrigger
from airflow_provider_mlpipe.validation import check_digest, check_hyperparameters, check_image

if TYPE_CHECKING:
    from airflow.sdk import Context

TRAINER_MODULE = "airflow_provider_mlpipe.images.training.train"


class KubeTrainJobOperator(BaseOperator):
    """Train `model_name` from `image`; XCom: model URI, version and metrics.

    :param image: the pushed training image (reference, shown in the manifest; on Kubernetes: run).
    :param digest: its `sha256:` digest (the Kubernetes runtime pins the image by it).
    :param model_name: model name in the store (lowercase, digits, `-`, `_`).
    :param runtime: `local` (default).
    :param model_store: store URI; default `[mlpipe] model_store`.
    :param dataset: dataset location (directory with the four Fashion-MNIST files, `file://`, `oss://`);
        empty: the trainer's default (`MLPIPE_DATASET_DIR`, the shared copy, else Keras' download).
    :param hyperparameters: epochs, batch_size, learning_rate, seed, threads, train_limit, test_limit.
    :param training_timeout: longest the training may run before it is stopped and the task fails.
    :param poll_interval: seconds between status checks while deferred.
    """

    template_fields: Sequence[str] = (
        *BaseOperator.template_fields,
        "image",
        "digest",
        "model_name",
        "runtime",
        "model_store",
        "dataset",
        "hyperparameters",
    )
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        image: str,
        digest: str = "",
        model_name: str = "fashion_mnist",
        runtime: str = "local",
        model_store: str | None = None,
        dataset: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        training_timeout: timedelta = timedelta(hours=6),
        poll_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image = image
        self.digest = digest
        self.model_name = model_name
        self.runtime = runtime
        self.model_store = model_store
        self.dataset = dataset
        self.hyperparameters = hyperparameters or {}
        if training_timeout.total_seconds() <= 0:
            raise ConfigError("training_timeout", training_timeout, "a positive duration")
        self.training_timeout = training_timeout
        self.poll_interval = poll_interval

    @cached_property
    def store_hook(self) -> ModelStoreHook:
        return ModelStoreHook(self.model_store)

    @cached_property
    def process_hook(self) -> LocalProcessHook:
        return LocalProcessHook()

    def _process_name(self, version: int) -> str:
        return f"train-{self.model_name.replace('_', '-')}-v{version}"

    def _trainer_argv(self, version: int, run_id: str) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            TRAINER_MODULE,
            f"--model-store={self.store_hook.store.uri}",
            f"--model-name={self.model_name}",
            f"--version={version}",
            f"--image={self.image}",
            f"--digest={self.digest}",
            f"--run-id={run_id}",
        ]
        if self.dataset:
            argv.append(f"--dataset={self.dataset}")
        for key, value in check_hyperparameters(self.hyperparameters).items():
            argv.append(f"--{key.replace('_', '-')}={value}")
        return argv

    def execute(self, context: Context) -> dict[str, Any]:
        config.check_runtime(self.runtime)
        check_image(self.image)
        check_digest(self.digest)
        check_model_name(self.model_name)
        check_hyperparameters(self.hyperparameters)
        key = run_key(context)
        store = self.store_hook.store
        version = store.reserve_version(self.model_name, key)
        self.log.info("Run %s trains %s version %s into %s", key, self.model_name, version, store.uri)
        if store.is_published(self.model_name, version):
            self.log.info("Version %s is already published by an earlier attempt: adopting it", version)
            return self._result(context, version)

        name = self._process_name(version)
        self._started_process = name
        status, adopted = self.process_hook.start(
            name,
            self._trainer_argv(version, key),
            metadata={"run": key, "model_name": self.model_name, "version": version, "image": self.image},
        )
        if adopted and status.state == SUCCEEDED:
            return self._finish(context, version, self.process_hook.process_dir(name).as_posix())
        self.defer(
            trigger=LocalProcessTrigger(
                process_dir=self.process_hook.process_dir(name).as_posix(),
                timeout_at=time.time() + self.training_timeout.total_seconds(),
                poll_interval=self.poll_interval,
            ),
            method_name="execute_complete",
            kwargs={"version": version},
            # The trigger reports the deadline itself; this is the backstop if the triggerer is down.
            timeout=self.training_timeout + timedelta(minutes=5),
        )

    def execute_complete(self, context: Context, event: dict[str, Any], version: int) -> dict[str, Any]:
        status = event.get("status")
        tail = "\n".join(event.get("tail") or [])
        if status == "timeout":
            self.process_hook.stop(self._process_name(version))
            raise TrainingError(
                f"training of {self.model_name} v{version} exceeded {self.training_timeout} and was stopped; "
                f"last output:\n{tail}"
            )
        if status != "success":
            raise TrainingError(
                f"training of {self.model_name} v{version} failed: {event.get('message')}; last output:\n{tail}"
            )
        return self._finish(context, version, event.get("process_dir", ""))

    def _finish(self, context: Context, version: int, process_dir: str) -> dict[str, Any]:
        if not self.store_hook.store.is_published(self.model_name, version):
            raise TrainingError(
                f"the trainer for {self.model_name} v{version} exited 0 but published nothing in "
                f"{self.store_hook.store.uri} (process state: {process_dir})"
            )
        return self._result(context, version)

    def _result(self, context: Context, version: int) -> dict[str, Any]:
        manifest = self.store_hook.store.read_manifest(self.model_name, version)
        metrics = manifest.get("metrics") or {}
        result = {
            "model_name": self.model_name,
            "version": version,
            "model_uri": manifest.get("uri"),
            "image": manifest.get("image", self.image),
            "digest": manifest.get("digest", self.digest),
            "test_accuracy": metrics.get("test_accuracy"),
            "per_class_accuracy": metrics.get("per_class_accuracy"),
            "train_seconds": metrics.get("train_seconds"),
        }
        self.log.info(
            "Model %s v%s: test accuracy %s (%s)",
            self.model_name,
            version,
            result["test_accuracy"],
            result["model_uri"],
        )
        return push_keys(context, result, ("version", "model_uri"))

    def on_kill(self) -> None:
        # Reachable while execute() runs (before deferral); once deferred, the trigger's on_kill stops it.
        name = getattr(self, "_started_process", None)
        if name:
            self.process_hook.stop(name)
