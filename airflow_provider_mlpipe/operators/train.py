"""KubeTrainJobOperator: train a model version from a pushed training image.

Runtime `local` runs the image's entrypoint (`airflow_provider_mlpipe.images.training.train`) as a
supervised process on this machine; the `kubernetes` runtime runs the same entrypoint as a batch/v1 Job.
Either way the operator reserves the run's model version, starts or adopts the training, and waits
deferred: no worker slot is held while training runs.

On Kubernetes the Job's name is deterministic per run and version (`train-<model>-v<version>-<hash>`):
a retried or restarted task finds the Job it created and waits for it instead of starting a second one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_mlpipe import config, manifests
from airflow_provider_mlpipe.exceptions import ConfigError, TrainingError
from airflow_provider_mlpipe.hooks.kubernetes_status import FAILED as JOB_FAILED
from airflow_provider_mlpipe.hooks.kubernetes_status import SUCCEEDED as JOB_SUCCEEDED
from airflow_provider_mlpipe.hooks.kubernetes_status import job_state
from airflow_provider_mlpipe.hooks.local_process import SUCCEEDED
from airflow_provider_mlpipe.modelstore.store import check_model_name
from airflow_provider_mlpipe.operators.base import RuntimeOperator, StoreOperator, merged_template_fields
from airflow_provider_mlpipe.runs import push_keys, run_key
from airflow_provider_mlpipe.triggers.kubernetes_job import KubernetesJobTrigger
from airflow_provider_mlpipe.triggers.local_process import LocalProcessTrigger
from airflow_provider_mlpipe.validation import check_digest, check_hyperparameters, check_image

if TYPE_CHECKING:
    from airflow.sdk import Context

TRAINER_MODULE = "airflow_provider_mlpipe.images.training.train"


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
        self.transient_retry_policy  # noqa: B018  (a bad transient_retry fails here, before any work)
        check_image(self.image)
        check_digest(self.digest)
        check_model_name(self.model_name)
        check_hyperparameters(self.hyperparameters)
        if self.runtime == "kubernetes":
            # Refuse an unpinned image or a bad GPU count before a version is reserved.
            manifests.pinned_image(self.image, self.digest)
            self._gpus()
        key = run_key(context)
        store = self.store_hook.store
        version = store.reserve_version(self.model_name, key)
        self.log.info("Run %s trains %s version %s into %s", key, self.model_name, version, store.uri)
        if store.is_published(self.model_name, version):
            self.log.info("Version %s is already published by an earlier attempt: adopting it", version)
            return self._result(context, version)

        if self.runtime == "kubernetes":
            return self._execute_kubernetes(context, version, key)

        name = self._process_name(version)
        self._started_process = name
        status, adopted = self.process_hook.start(
            name,
            self._trainer_argv(version, key),
            metadata={"run": key, "model_name": self.model_name, "version": version, "image": self.image},
            # Store credentials (oss://) travel as the process environment only, never argv or state files.
            env=self.store_hook.child_env(),
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

    def _gpus(self) -> int:
        try:
            gpus = int(self.gpus)
        except (TypeError, ValueError):
            raise ConfigError("gpus", self.gpus, "a whole number of GPUs >= 0") from None
        if gpus < 0:
            raise ConfigError("gpus", self.gpus, "a whole number of GPUs >= 0")
        return gpus

    def _job_manifest(self, context: Context, version: int, key: str, name: str) -> dict[str, Any]:
        return manifests.train_job(
            name=name,
            namespace=self.kube_hook.namespace,
            image=self.image,
            digest=self.digest,
            model_name=self.model_name,
            version=version,
            model_store=self.store_hook.store.uri,
            dataset=self.dataset,
            hyperparameters=check_hyperparameters(self.hyperparameters),
            run_key=key,
            dag_id=context["dag"].dag_id,
            oss_secret=config.kubernetes_oss_secret(),
            cpu=str(self.cpu),
            memory=str(self.memory),
            gpus=self._gpus(),
            node_selector=self.node_selector,
            tolerations=self.tolerations,
            backoff_limit=self.backoff_limit,
            active_deadline_seconds=int(self.training_timeout.total_seconds()),
            ttl_seconds_after_finished=self.ttl_seconds_after_finished,
            service_account=config.kubernetes_service_account(),
        )

    def _execute_kubernetes(self, context: Context, version: int, key: str) -> dict[str, Any]:
        hook = self.kube_hook
        name = manifests.train_job_name(self.model_name, version, key)
        # Built (and so validated: digest pinning, GPUs) before anything is written to the cluster.
        body = self._job_manifest(context, version, key, name)
        existing = hook.get("Job", name)
        if existing is not None and job_state(existing)[0] == JOB_FAILED:
            # A retry after the Job failed: start over with a fresh Job of the same name.
            self.log.info("Job %s/%s failed in an earlier attempt: replacing it", hook.namespace, name)
            hook.delete("Job", name, propagation="Foreground")
            hook.wait_deleted("Job", name)
        self._started_job = name
        job, created = hook.create_or_adopt(body)
        self.log.info(
            "%s Job %s/%s: image %s",
            "Created" if created else "Adopted",
            hook.namespace,
            name,
            body["spec"]["template"]["spec"]["containers"][0]["image"],
        )
        if job_state(job)[0] == JOB_SUCCEEDED:
            return self._finish(context, version, f"job {hook.namespace}/{name}")
        self.defer(
            trigger=KubernetesJobTrigger(
                job_name=name,
                namespace=hook.namespace,
                conn_id=self.kubernetes_conn_id or config.kubernetes_conn_id(),
                # activeDeadlineSeconds ends the Job first; this catches a Job stuck without a verdict.
                timeout_at=time.time() + self.training_timeout.total_seconds() + 600,
                poll_interval=self.poll_interval,
                transient_retry=self.transient_retry_policy.as_conf(),
            ),
            method_name="execute_complete_kubernetes",
            kwargs={"version": version, "job_name": name, "namespace": hook.namespace},
            timeout=self.training_timeout + timedelta(minutes=15),
        )

    def execute_complete_kubernetes(
        self, context: Context, event: dict[str, Any], version: int, job_name: str, namespace: str
    ) -> dict[str, Any]:
        status = event.get("status")
        if status == "success":
            return self._finish(context, version, f"job {namespace}/{job_name}")
        where = f"Job {namespace}/{job_name} training {self.model_name} v{version}"
        problems = "; ".join(event.get("pod_problems") or []) or "no pod reported a reason"
        tail = "\n".join(event.get("tail") or [])
        if status == "timeout":
            self.kube_hook.delete("Job", job_name, propagation="Foreground")
            raise TrainingError(
                f"{where} did not finish in time and was deleted: {event.get('message')}; pods: {problems}; "
                f"last log lines:\n{tail}"
            )
        raise TrainingError(
            f"{where} failed: {event.get('message')}; pods: {problems}; last log lines:\n{tail}"
        )

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
        job = getattr(self, "_started_job", None)
        if job:
            self.kube_hook.delete("Job", job, propagation="Foreground")
