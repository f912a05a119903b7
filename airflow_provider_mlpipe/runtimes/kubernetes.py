"""The `kubernetes` runtime: training as a batch/v1 Job, serving as a Deployment behind a Service, through
the cncf-kubernetes provider's hooks (`hooks.kubernetes`, `hooks.kubernetes_async`).

Names are deterministic per run (`train-<model>-v<version>-<run hash>`, `serve-<model>-<endpoint>`): a
retried task finds what it created and adopts it. A rollout that fails is patched back to the previous pod
template.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_mlpipe import config, manifests
from airflow_provider_mlpipe.exceptions import ConfigError, KubernetesConflict, ServingError
from airflow_provider_mlpipe.hooks.kubernetes import KubernetesResourceHook
from airflow_provider_mlpipe.hooks.kubernetes_status import FAILED as JOB_FAILED
from airflow_provider_mlpipe.hooks.kubernetes_status import SUCCEEDED as JOB_SUCCEEDED
from airflow_provider_mlpipe.hooks.kubernetes_status import job_state
from airflow_provider_mlpipe.runtimes.base import (
    Handle,
    Outcome,
    Runtime,
    ServingSpec,
    ServingStarted,
    Teardown,
    TrainingSpec,
    TrainingStarted,
    Wait,
)
from airflow_provider_mlpipe.triggers.kubernetes_job import KubernetesJobTrigger
from airflow_provider_mlpipe.triggers.kubernetes_serving import KubernetesServingTrigger
from airflow_provider_mlpipe.validation import check_hyperparameters

if TYPE_CHECKING:
    from airflow_provider_mlpipe.modelstore import ModelStore

# activeDeadlineSeconds ends a Job first; the trigger's deadline, this much later, catches a Job stuck
# without a verdict, and the task's backstop (later still) a triggerer that is down.
TRAINING_TRIGGER_GRACE = timedelta(minutes=10)
TRAINING_BACKSTOP = timedelta(minutes=15)
# A minute past the Deployment's own progress deadline, so that the controller's verdict (and its
# reason) normally arrives first.
SERVING_TRIGGER_GRACE = timedelta(minutes=1)
SERVING_BACKSTOP = timedelta(minutes=2)
# How often a guarded patch is recomputed from a fresh read after a 409 before giving up.
CONFLICT_ATTEMPTS = 3

log = logging.getLogger(__name__)


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return None


def check_gpus(gpus: object) -> int:
    try:
        count = int(gpus)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError("gpus", gpus, "a whole number of GPUs >= 0") from None
    if count < 0:
        raise ConfigError("gpus", gpus, "a whole number of GPUs >= 0")
    return count


def check_replicas(replicas: object) -> int:
    try:
        count = int(replicas)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError("replicas", replicas, "an integer >= 1") from None
    if count < 1:
        raise ConfigError("replicas", replicas, "an integer >= 1")
    return count


def _store_location(store: ModelStore) -> dict[str, str]:
    return dict(getattr(store.backend, "location", None) or {})


def pod_oss_location(
    uris: tuple[str | None, ...], store_location: Callable[[], dict[str, str]]
) -> dict[str, str]:
    """`OSS_REGION` / `OSS_ENDPOINT` for pods that read `uris`: `[mlpipe] kubernetes_oss_region` /
    `kubernetes_oss_endpoint` when either is set, else the store's own settings (the `oss` connection's
    extras `region` / `endpoint`, or the OSS_* environment of Airflow's worker); {} when nothing is on OSS.

    Without them the trainer and the fetch step stop at start-up ("missing OSS_REGION"), after the image
    pull and the scheduling wait: refused here instead, before anything is created.
    """
    if not manifests.uses_oss(*uris):
        return {}
    location = config.kubernetes_oss_location() or store_location()
    if not location:
        raise ConfigError(
            "OSS region",
            None,
            "the oss connection's extra region or endpoint, or [mlpipe] kubernetes_oss_region / "
            "kubernetes_oss_endpoint: the pods need to know where the bucket lives",
        )
    return location


class KubernetesRuntime(Runtime):
    name = "kubernetes"

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._started_job: str | None = None

    @cached_property
    def kube_hook(self) -> KubernetesResourceHook:
        return KubernetesResourceHook(self.kubernetes_conn_id, self.namespace, retry=self.retry)

    @property
    def conn_id(self) -> str:
        """The connection the triggers use (they get no Airflow defaults of their own)."""
        return self.kubernetes_conn_id or config.kubernetes_conn_id()

    def reason(self, outcome: Outcome) -> str:
        # The pods' termination reasons (OOMKilled, ImagePullBackOff, exit codes) often say more than the
        # Job's or the Deployment's own condition.
        problems = outcome.details.get("pod_problems") or []
        return outcome.message + (f"; pods: {'; '.join(problems)}" if problems else "")

    # --- training ----------------------------------------------------------------------------------

    def check_training(self, spec: TrainingSpec) -> None:
        # An unpinned image or a bad GPU count is refused before a version is reserved.
        manifests.pinned_image(spec.image, spec.digest)
        check_gpus(spec.gpus)

    def job_manifest(self, spec: TrainingSpec, *, version: int, run_key: str, name: str) -> dict[str, Any]:
        return manifests.train_job(
            name=name,
            namespace=self.kube_hook.namespace,
            image=spec.image,
            digest=spec.digest,
            model_name=spec.model_name,
            version=version,
            model_store=spec.store.store.uri,
            dataset=spec.dataset,
            hyperparameters=check_hyperparameters(spec.hyperparameters),
            run_key=run_key,
            dag_id=spec.dag_id,
            oss_secret=config.kubernetes_oss_secret(),
            cpu=str(spec.cpu),
            memory=str(spec.memory),
            gpus=check_gpus(spec.gpus),
            node_selector=spec.node_selector,
            tolerations=spec.tolerations,
            backoff_limit=spec.backoff_limit,
            active_deadline_seconds=int(spec.timeout.total_seconds()),
            ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
            service_account=config.kubernetes_service_account(),
            oss_location=pod_oss_location(
                (spec.store.store.uri, spec.dataset), lambda: self._training_store_location(spec)
            ),
            image_pull_secrets=config.kubernetes_image_pull_secrets(),
        )

    @staticmethod
    def _training_store_location(spec: TrainingSpec) -> dict[str, str]:
        # The model store's backend already read the connection; a file:// store with an oss:// dataset
        # reads it here.
        return _store_location(spec.store.store) or spec.store.oss_credentials().location_env()

    @staticmethod
    def _training_handle(namespace: str, job_name: str) -> Handle:
        return {"resource": f"Job {namespace}/{job_name}", "job_name": job_name, "namespace": namespace}

    def start_training(self, spec: TrainingSpec, *, version: int, run_key: str) -> TrainingStarted:
        hook = self.kube_hook
        name = manifests.train_job_name(spec.model_name, version, run_key)
        # Built (and so validated: digest pinning, GPUs) before anything is written to the cluster.
        body = self.job_manifest(spec, version=version, run_key=run_key, name=name)
        existing = hook.get_live("Job", name)
        if existing is not None and job_state(existing)[0] == JOB_FAILED:
            # A retry after the Job failed: start over with a fresh Job of the same name.
            log.info("Job %s/%s failed in an earlier attempt: replacing it", hook.namespace, name)
            hook.delete("Job", name, propagation="Foreground")
            hook.wait_deleted("Job", name)
        # Recorded before the create, so that a kill arriving during it still deletes the Job.
        self._started_job = name
        job, created = hook.create_or_adopt(body)
        log.info(
            "%s Job %s/%s: image %s",
            "Created" if created else "Adopted",
            hook.namespace,
            name,
            body["spec"]["template"]["spec"]["containers"][0]["image"],
        )
        handle = self._training_handle(hook.namespace, name)
        if job_state(job)[0] == JOB_SUCCEEDED:
            return TrainingStarted(handle, None)
        trigger = KubernetesJobTrigger(
            job_name=name,
            namespace=hook.namespace,
            conn_id=self.conn_id,
            timeout_at=self.deadline(spec.timeout + TRAINING_TRIGGER_GRACE),
            poll_interval=spec.poll_interval,
            transient_retry=self.retry.as_conf(),
            stuck_after=config.kubernetes_stuck_timeout(),
        )
        return TrainingStarted(handle, Wait(trigger, spec.timeout + TRAINING_BACKSTOP))

    def stop_training(self, handle: Handle) -> None:
        self.kube_hook.delete("Job", handle["job_name"], propagation="Foreground")

    def cancel(self) -> None:
        if self._started_job:
            self.kube_hook.delete("Job", self._started_job, propagation="Foreground")

    def legacy_training_handle(self, model_name: str, version: int, kwargs: dict[str, Any]) -> Handle:
        return self._training_handle(str(kwargs["namespace"]), str(kwargs["job_name"]))

    # --- serving -----------------------------------------------------------------------------------

    def served_version(self, name: str) -> int | None:
        deployment = self.kube_hook.get("Deployment", manifests.serving_name(name))
        return _int_or_none(_annotations(deployment).get(manifests.A_VERSION))

    def deploy_serving(self, spec: ServingSpec, *, name: str, version: int, run_key: str) -> ServingStarted:
        hook = self.kube_hook
        name = manifests.serving_name(name)
        template = manifests.serving_pod_template(
            name=name,
            model_name=spec.model_name,
            version=version,
            model_store=spec.store.uri,
            serving_image=config.kubernetes_serving_image(),
            fetch_image=config.kubernetes_fetch_image(),
            oss_secret=config.kubernetes_oss_secret(),
            cpu=str(spec.cpu),
            memory=str(spec.memory),
            service_account=config.kubernetes_service_account(),
            oss_location=pod_oss_location((spec.store.uri,), lambda: _store_location(spec.store)),
            startup_timeout_seconds=int(spec.ready_timeout.total_seconds()),
            image_pull_secrets=config.kubernetes_image_pull_secrets(),
        )
        replicas = check_replicas(spec.replicas)
        desired = manifests.serving_deployment(
            name=name,
            namespace=hook.namespace,
            endpoint=spec.endpoint,
            model_name=spec.model_name,
            version=version,
            run_key=run_key,
            dag_id=spec.dag_id,
            template=template,
            replicas=replicas,
            progress_deadline_seconds=int(spec.ready_timeout.total_seconds()),
        )
        # Built (and so checked: load balancer settings) before anything is written to the cluster.
        wanted_service = manifests.serving_service(
            name=name,
            namespace=hook.namespace,
            service_type=spec.service_type or config.kubernetes_service_type(spec.endpoint),
            model_name=spec.model_name,
            run_key=run_key,
            dag_id=spec.dag_id,
            annotations=spec.service_annotations,
            address_type=config.kubernetes_load_balancer_address_type(),
            source_ranges=config.kubernetes_load_balancer_source_ranges(),
            expose_grpc=config.kubernetes_expose_grpc(),
        )
        deployment, previous = self._roll_out(desired, version)
        if replicas >= 2:
            hook.create_or_adopt(
                manifests.serving_pdb(
                    name=name,
                    namespace=hook.namespace,
                    model_name=spec.model_name,
                    run_key=run_key,
                    dag_id=spec.dag_id,
                )
            )
        service, created = hook.create_or_adopt(wanted_service)
        drift = None if created else manifests.service_patch(service, wanted_service)
        if drift is not None:
            log.info(
                "Service %s/%s differs from the settings: patching it to %s", hook.namespace, name, drift
            )
            service = hook.patch("Service", name, drift)
        wait_for_address = (service.get("spec") or {}).get("type") == "LoadBalancer"
        timeout = spec.ready_timeout * (2 if wait_for_address else 1) + SERVING_TRIGGER_GRACE
        trigger = KubernetesServingTrigger(
            deployment=name,
            service=name,
            namespace=hook.namespace,
            conn_id=self.conn_id,
            generation=int((deployment.get("metadata") or {}).get("generation") or 0),
            pod_selector={**manifests.serving_selector(name), manifests.L_VERSION: str(version)},
            wait_for_address=wait_for_address,
            version=str(version),
            timeout_at=self.deadline(timeout),
            poll_interval=spec.poll_interval,
            transient_retry=self.retry.as_conf(),
        )
        handle = self._serving_handle(hook.namespace, name, version, previous)
        return ServingStarted(handle, previous, Wait(trigger, timeout + SERVING_BACKSTOP))

    def _roll_out(self, desired: dict[str, Any], version: int) -> tuple[dict[str, Any], int | None]:
        """Create the Deployment, adopt it when it already runs `version`, or patch it to `desired`: the
        (Deployment, version it served before). The patch is guarded by the resourceVersion it was computed
        from, so that a concurrent deploy between the read and the write is never overwritten blindly (nor
        recorded as the version to roll back to): on 409 the Deployment is read again and the decision
        made anew."""
        hook = self.kube_hook
        name = desired["metadata"]["name"]
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            # A Deployment being deleted (a teardown in progress) is waited out, never patched.
            deployment = hook.get_live("Deployment", name)
            annotations = _annotations(deployment)
            serving = _int_or_none(annotations.get(manifests.A_VERSION))
            if deployment is None:
                created, _ = hook.create_or_adopt(desired)
                if _int_or_none(_annotations(created).get(manifests.A_VERSION)) == version:
                    return created, None
                # Another deploy created it between the read and the create: decide again on it.
                continue
            if serving == version:
                # A retried task, or this version is already live: wait on what is there.
                log.info("%s/%s already runs v%s: adopting it", hook.namespace, name, version)
                return deployment, _int_or_none(annotations.get(manifests.A_PREVIOUS_VERSION))
            log.info("%s/%s runs v%s: rolling out v%s", hook.namespace, name, serving, version)
            try:
                patched = hook.patch(
                    "Deployment",
                    name,
                    manifests.rollout_patch(deployment, desired),
                    resource_version=(deployment.get("metadata") or {}).get("resourceVersion"),
                )
            except KubernetesConflict as err:
                log.warning("%s (attempt %d of %d): reading it again", err, attempt, CONFLICT_ATTEMPTS)
                continue
            return patched, serving
        raise KubernetesConflict(
            f"Deployment {hook.namespace}/{name} kept changing under this deploy of v{version} "
            f"({CONFLICT_ATTEMPTS} reads and guarded patches): another deploy is running on this endpoint"
        )

    @staticmethod
    def _serving_handle(namespace: str, name: str, version: int, previous: int | None) -> Handle:
        return {
            "resource": f"{namespace}/{name}",
            "name": name,
            "namespace": namespace,
            "version": version,
            "previous": previous,
        }

    def serving_result(self, handle: Handle, outcome: Outcome) -> dict[str, Any]:
        name, namespace = handle["name"], handle["namespace"]
        # Confirmed from the Deployment itself, not from the wait: verify and promote must act on the version
        # that is served, which a concurrent deploy may have replaced since the rollout finished.
        served = self.served_version(name)
        if served != int(handle["version"]):
            raise ServingError(
                f"{handle['resource']} serves v{served}, not v{handle['version']}: another deploy replaced this "
                "rollout; nothing is recorded for it"
            )
        host = outcome.details.get("address") or f"{name}.{namespace}.svc.cluster.local"
        template = config.kubernetes_url_template()
        if template:
            url = template.format(service=name, namespace=namespace, host=host, port=manifests.REST_PORT)
        else:
            url = f"http://{host}:{manifests.REST_PORT}"
        return {"name": name, "namespace": namespace, "url": url}

    def abandon_serving(self, handle: Handle, outcome: Outcome) -> str | None:
        if outcome.details.get("stage") == "address":
            # The new version did roll out; only the load balancer is missing. The DAG's rollback task
            # restores the production version.
            return None
        if outcome.details.get("superseded"):
            # Another deploy replaced this rollout: what runs now is not this task's to roll back.
            return None
        name = handle["name"]
        for _ in range(CONFLICT_ATTEMPTS):
            deployment = self.kube_hook.get_live("Deployment", name)
            serving = _int_or_none(_annotations(deployment).get(manifests.A_VERSION))
            if deployment is None or serving != int(handle["version"]):
                # Gone, or another deploy's version now: rolling "back" would undo someone else's work.
                return None if deployment is None else f"not rolled back: the endpoint now serves v{serving}"
            patch = manifests.rollback_patch(deployment)
            if patch is None:
                return None
            try:
                self.kube_hook.patch(
                    "Deployment",
                    name,
                    patch,
                    resource_version=(deployment.get("metadata") or {}).get("resourceVersion"),
                )
            except KubernetesConflict as err:
                log.warning("%s: reading it again", err)
                continue
            break
        else:
            return "not rolled back: the Deployment kept changing (another deploy is running)"
        log.warning(
            "%s: rollout of v%s failed; rolled back to v%s",
            handle["resource"],
            handle["version"],
            handle["previous"],
        )
        return f"rolled back to v{handle['previous']}"

    def teardown_serving(self, name: str) -> Teardown:
        name = manifests.serving_name(name)
        deleted = [kind for kind in ("Deployment", "Service") if self.kube_hook.delete(kind, name)]
        # Only endpoints with replicas >= 2 have one: read first, so that the others cost no failed delete.
        pdb = self.kube_hook.get("PodDisruptionBudget", name)
        if pdb is not None and self.kube_hook.delete("PodDisruptionBudget", name):
            deleted.append("PodDisruptionBudget")
        log.info("Deleted %s of %s/%s", deleted or "nothing", self.kube_hook.namespace, name)
        return Teardown(name, "deleted" if deleted else "absent")

    def legacy_serving_handle(self, kwargs: dict[str, Any]) -> Handle:
        return self._serving_handle(
            str(kwargs["namespace"]), str(kwargs["name"]), int(kwargs["version"]), kwargs.get("previous")
        )


def _annotations(obj: dict[str, Any] | None) -> dict[str, Any]:
    return ((obj or {}).get("metadata") or {}).get("annotations") or {}
