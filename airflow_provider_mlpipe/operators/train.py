"""KubeTrainJobOperator: train a model version from a pushed training image.

The operator reserves the run's model version, has the run's runtime (`runtimes`: a supervised local
process, or a batch/v1 Job on Kubernetes) start or adopt the training of the image's entrypoint
(`airflow_provider_mlpipe.images.training.train`), and waits deferred: no worker slot is held while
training runs. Names are deterministic per run and version: a retried or restarted task finds the training
it started and waits for it instead of starting a second one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_mlpipe.exceptions import ConfigError, TrainingError
from airflow_provider_mlpipe.modelstore.store import check_model_name
from airflow_provider_mlpipe.operators.base import RuntimeOperator, StoreOperator, merged_template_fields
from airflow_provider_mlpipe.runs import push_keys, run_key
from airflow_provider_mlpipe.runtimes.base import TIMEOUT, Handle, Outcome, TrainingSpec
from airflow_provider_mlpipe.validation import check_digest, check_hyperparameters, check_image

if TYPE_CHECKING:
    from airflow.sdk import Context


class KubeTrainJobOperator(StoreOperator, RuntimeOperator):
    """Train `model_name` from `image`; XCom: model URI, version and metrics.

    :param image: the pushed training image (reference, shown in the manifest; on Kubernetes: run).
    :param digest: its `sha256:` digest (the Kubernetes runtime pins the image by it).
    :param model_name: model name in the store (lowercase, digits, `-`, `_`).
    :param runtime: `local` (default) or `kubernetes`.
    :param model_store: store URI; default `[mlpipe] model_store`.
    :param dataset: the trainer's dataset location (a directory, `file://` or `oss://`);
        empty: the trainer's default (`MLPIPE_DATASET_DIR`, the shared copy, else Keras' download).
    :param hyperparameters: epochs, batch_size, learning_rate, seed, threads, train_limit, test_limit.
        The trainer receives them as `MLPIPE_<NAME>` environment variables (airflow_provider_mlpipe.training).
    :param local_command: local runtime: the command that stands in for `image` on this machine (argv; a
        leading `python` is the worker's interpreter); None: the trainer this repository ships
        (training_image/). A Kubernetes Job runs the image's own entrypoint.
    :param training_timeout: longest the training may run before it is stopped and the task fails.
    :param poll_interval: seconds between status checks while deferred.
    :param gpus: Kubernetes: `nvidia.com/gpu` limit of the training pod (0: none).
    :param cpu: / :param memory: Kubernetes: the training pod's requests (memory also its limit).
    :param node_selector: / :param tolerations: Kubernetes: where the training pod may run.
    :param backoff_limit: Kubernetes: pod retries inside the Job before it is failed.
    :param ttl_seconds_after_finished: Kubernetes: how long a finished Job is kept for inspection.
    :param kubernetes_conn_id: / :param namespace: Kubernetes: default `[mlpipe] kubernetes_conn_id`,
        `[mlpipe] kubernetes_namespace` (else the connection's namespace, else `mlpipe`).
    :param oss_conn_id: Airflow connection (type `oss`) for an oss:// store: this task reads the store with
        it and a local training process gets its keys; Kubernetes pods read the
        `[mlpipe] kubernetes_oss_secret` Secret instead.
    :param transient_retry: in-task retries of transient errors (Kubernetes API, object store), e.g.
        {"attempts": 8, "base_delay": 0.5, "max_delay": 60}; None: `RetryPolicy()`. The trigger gets it too.
        (The DAG passes its `retry_policy` Param; Airflow's own `retry_policy` argument is another thing.)
    """

    template_fields: Sequence[str] = merged_template_fields(
        StoreOperator,
        RuntimeOperator,
        own=(
            "image",
            "digest",
            "dataset",
            "hyperparameters",
            "gpus",
            "cpu",
            "memory",
            "node_selector",
            "tolerations",
        ),
    )
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        image: str,
        digest: str = "",
        dataset: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        local_command: Sequence[str] | None = None,
        training_timeout: timedelta = timedelta(hours=6),
        poll_interval: float = 5.0,
        gpus: int | str = 0,
        cpu: str = "2",
        memory: str = "4Gi",
        node_selector: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None,
        backoff_limit: int = 1,
        ttl_seconds_after_finished: int = 24 * 3600,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image = image
        self.digest = digest
        self.dataset = dataset
        self.hyperparameters = hyperparameters or {}
        if local_command is not None and (
            isinstance(local_command, str)
            or not local_command
            or not all(isinstance(a, str) for a in local_command)
        ):
            raise ConfigError("local_command", local_command, "a non-empty list of strings (argv)")
        self.local_command = tuple(local_command or ())
        if training_timeout.total_seconds() <= 0:
            raise ConfigError("training_timeout", training_timeout, "a positive duration")
        self.training_timeout = training_timeout
        self.poll_interval = poll_interval
        self.gpus = gpus
        self.cpu = cpu
        self.memory = memory
        self.node_selector = node_selector or {}
        self.tolerations = tolerations or []
        if backoff_limit < 0:
            raise ConfigError("backoff_limit", backoff_limit, "an integer >= 0")
        self.backoff_limit = backoff_limit
        self.ttl_seconds_after_finished = ttl_seconds_after_finished

    def _spec(self, context: Context) -> TrainingSpec:
        return TrainingSpec(
            model_name=self.model_name,
            image=self.image,
            digest=self.digest,
            store=self.store_hook,
            dataset=self.dataset,
            hyperparameters=check_hyperparameters(self.hyperparameters),
            timeout=self.training_timeout,
            poll_interval=self.poll_interval,
            dag_id=context["dag"].dag_id,
            command=self.local_command,
            gpus=self.gpus,
            cpu=str(self.cpu),
            memory=str(self.memory),
            node_selector=self.node_selector,
            tolerations=self.tolerations,
            backoff_limit=self.backoff_limit,
            ttl_seconds_after_finished=self.ttl_seconds_after_finished,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        runtime = self.runtime_backend  # an unknown runtime or a bad transient_retry fails here
        check_image(self.image)
        check_digest(self.digest)
        check_model_name(self.model_name)
        check_hyperparameters(self.hyperparameters)
        spec = self._spec(context)
        runtime.check_training(spec)
        key = run_key(context)
        store = self.store_hook.store
        version = store.reserve_version(self.model_name, key)
        self.log.info("Run %s trains %s version %s into %s", key, self.model_name, version, store.uri)
        if store.is_published(self.model_name, version):
            self.log.info("Version %s is already published by an earlier attempt: adopting it", version)
            return self._result(context, version)

        started = runtime.start_training(spec, version=version, run_key=key)
        if started.wait is None:
            return self._finish(context, version, started.handle)
        self.defer(
            trigger=started.wait.trigger,
            method_name="execute_complete",
            kwargs={"version": version, "handle": started.handle},
            timeout=started.wait.timeout,
        )

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any],
        version: int,
        handle: Handle | None = None,
        **legacy: Any,
    ) -> dict[str, Any]:
        runtime = self.runtime_backend
        if handle is None:
            handle = runtime.legacy_training_handle(self.model_name, version, legacy)
        outcome = Outcome.from_event(event)
        if outcome.succeeded:
            return self._finish(context, version, handle)
        where = f"{handle['resource']} training {self.model_name} v{version}"
        tail = "\n".join(outcome.tail)
        if outcome.status == TIMEOUT:
            runtime.stop_training(handle)
            raise TrainingError(
                f"{where} did not finish in time ({self.training_timeout}) and was stopped: {runtime.reason(outcome)}; "
                f"last output:\n{tail}"
            )
        if outcome.details.get("stuck"):
            # The Job itself would wait for capacity until its deadline: stopped, so that a retry starts a
            # fresh one rather than adopting this one.
            runtime.stop_training(handle)
            raise TrainingError(f"{where} could not start and was stopped: {runtime.reason(outcome)}")
        raise TrainingError(f"{where} failed: {runtime.reason(outcome)}; last output:\n{tail}")

    def execute_complete_kubernetes(
        self, context: Context, event: dict[str, Any], version: int, job_name: str, namespace: str
    ) -> dict[str, Any]:
        """Where a task deferred by 0.1.0 resumes (the method name is stored with the deferral)."""
        return self.execute_complete(context, event, version, job_name=job_name, namespace=namespace)

    def _finish(self, context: Context, version: int, handle: Handle) -> dict[str, Any]:
        if not self.store_hook.store.is_published(self.model_name, version):
            raise TrainingError(
                f"the trainer for {self.model_name} v{version} exited 0 but published nothing in "
                f"{self.store_hook.store.uri} ({handle['resource']})"
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
        if "runtime_backend" in self.__dict__:
            self.runtime_backend.cancel()
