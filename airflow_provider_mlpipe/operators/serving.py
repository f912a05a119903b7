"""ServingDeployOperator / ServingTeardownOperator: TF-Serving endpoints for a model version.

Endpoints are `staging` (one per pipeline run, so parked runs never share one) and `production` (one per
model). Runtime `local` runs the serving image's server (TF Serving's REST API) as a supervised process.
Runtime `kubernetes` runs a Deployment (init container fetching the version from the store into an
emptyDir, then `tensorflow/serving`) behind a Service: ClusterIP for staging, LoadBalancer for production.
Deploying a new version to an existing endpoint patches its Deployment and waits for the rollout; a
failed rollout is patched back to the previous pod template and the task fails naming the reason.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from airflow_provider_mlpipe import config, manifests
from airflow_provider_mlpipe.demo.pipeline import MODEL_NAME as DEFAULT_MODEL_NAME
from airflow_provider_mlpipe.exceptions import ConfigError, ServingError
from airflow_provider_mlpipe.hooks.local_process import RUNNING
from airflow_provider_mlpipe.modelstore.store import check_model_name
from airflow_provider_mlpipe.operators._hooks import RuntimeHooksMixin, StoreHookMixin
from airflow_provider_mlpipe.runs import push_keys, run_key
from airflow_provider_mlpipe.triggers.kubernetes_serving import KubernetesServingTrigger
from airflow_provider_mlpipe.triggers.serving import ServingReadyTrigger

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.sdk import Context, XComArg

    from airflow_provider_mlpipe.modelstore.store import ModelStore

SERVER_MODULE = "airflow_provider_mlpipe.images.serving.server"


def endpoint_name(endpoint: str, model_name: str, context: Context) -> str:
    """Resource name of an endpoint: per run for staging, per model for production."""
    if endpoint not in config.ENDPOINTS:
        raise ConfigError("endpoint", endpoint, f"one of {', '.join(config.ENDPOINTS)}")
    base = f"serve-{model_name.replace('_', '-')}-{endpoint}"
    if endpoint == "staging":
        return f"{base}-{hashlib.sha256(run_key(context).encode()).hexdigest()[:10]}"
    return base


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServingDeployOperator(StoreHookMixin, RuntimeHooksMixin, BaseOperator):
    """Serve `version` of `model_name` at `endpoint`; XCom: endpoint URL, version served, version replaced.

    :param endpoint: `staging` or `production`.
    :param version: the model version; None to take the version the store's `from_alias` points at.
    :param from_alias: alias to resolve when `version` is None (rollback: `production`).
    :param teardown_if_unresolved: with no version and no alias, stop the endpoint instead of failing
        (rolling back a first-ever deployment leaves no production endpoint).
    :param skip_unless_ran: task id; skip unless that task ran in this run (a rollback has nothing to
        undo when the deployment it guards never started).
    :param port: fixed port; default `[mlpipe] production_port` for production, a free port for staging.
    :param ready_timeout: how long to wait for the model to become AVAILABLE (Kubernetes: for the
        rollout, and as long again for a LoadBalancer's external address).
    :param replicas: / :param cpu: / :param memory: Kubernetes: serving pods and their requests.
    :param service_type: Kubernetes: default `[mlpipe] kubernetes_<endpoint>_service_type`
        (ClusterIP for staging, LoadBalancer for production).
    :param service_annotations: Kubernetes: e.g. the cloud's load balancer settings.
    :param kubernetes_conn_id: / :param namespace: as for KubeTrainJobOperator.
    :param oss_conn_id: Airflow connection (type `oss`) this task reads an oss:// store with (local
        serving fetches the version through it); pods read the `[mlpipe] kubernetes_oss_secret` Secret.
    :param transient_retry: in-task retries of transient errors (Kubernetes API, object store), as for
        KubeTrainJobOperator; the trigger gets it too.
    """

    template_fields: Sequence[str] = (
        *BaseOperator.template_fields,
        "endpoint",
        "model_name",
        "version",
        "runtime",
        "model_store",
        "replicas",
        "service_annotations",
        "transient_retry",
    )
    ui_color = "#d5f5e3"

    def __init__(
        self,
        *,
        endpoint: str,
        model_name: str = DEFAULT_MODEL_NAME,
        version: int | str | XComArg | None = None,
        from_alias: str | None = None,
        teardown_if_unresolved: bool = False,
        skip_unless_ran: str | None = None,
        runtime: str = "local",
        model_store: str | None = None,
        port: int | None = None,
        ready_timeout: timedelta = timedelta(minutes=10),
        poll_interval: float = 1.0,
        replicas: int | str = 1,
        cpu: str = "500m",
        memory: str = "1Gi",
        service_type: str | None = None,
        service_annotations: dict[str, str] | None = None,
        kubernetes_conn_id: str | None = None,
        namespace: str | None = None,
        oss_conn_id: str = "oss_default",
        transient_retry: dict[str, Any] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.model_name = model_name
        self.version = version
        self.from_alias = from_alias
        self.teardown_if_unresolved = teardown_if_unresolved
        self.skip_unless_ran = skip_unless_ran
        self.runtime = runtime
        self.model_store = model_store
        self.port = port
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval
        self.replicas = replicas
        self.cpu = cpu
        self.memory = memory
        self.service_type = service_type
        self.service_annotations = service_annotations or {}
        self.kubernetes_conn_id = kubernetes_conn_id
        self.namespace = namespace
        self.oss_conn_id = oss_conn_id
        self.transient_retry = transient_retry
        if version is None and from_alias is None:
            raise ConfigError("version", version, "a model version, or from_alias to resolve one")

    def _resolve_version(self) -> int | None:
        if self.version not in (None, ""):
            try:
                version = int(self.version)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ConfigError("version", self.version, "an integer model version") from None
            return version
        record = self.store_hook.store.get_alias(self.model_name, str(self.from_alias))
        return int(record["version"]) if record else None

    def _skip_if_guarded_task_never_ran(self, context: Context) -> None:
        if not self.skip_unless_ran:
            return
        run_id = context["run_id"]
        states = context["ti"].get_task_states(dag_id=context["dag"].dag_id, run_ids=[run_id]).get(run_id, {})
        state = states.get(self.skip_unless_ran)
        if state not in ("success", "failed"):
            raise AirflowSkipException(f"{self.skip_unless_ran} did not run (state {state}): nothing to undo")

    def execute(self, context: Context) -> dict[str, Any]:
        self._skip_if_guarded_task_never_ran(context)
        config.check_runtime(self.runtime)
        self.transient_retry_policy  # noqa: B018  (a bad transient_retry fails here, before any work)
        check_model_name(self.model_name)
        name = endpoint_name(self.endpoint, self.model_name, context)
        version = self._resolve_version()
        if self.runtime == "kubernetes":
            return self._execute_kubernetes(context, manifests.serving_name(name), version)
        spec = self.process_hook.read_spec(name).get("metadata", {})
        running = self.process_hook.status(name).state == RUNNING
        previous = spec.get("version") if running else None
        if version is None:
            if not self.teardown_if_unresolved:
                raise ServingError(f"{self.model_name} has no {self.from_alias} alias: nothing to deploy")
            self.log.info("No %s version of %s: tearing %s down", self.from_alias, self.model_name, name)
            self.process_hook.stop(name)
            self.process_hook.remove(name)
            result = {"endpoint": self.endpoint, "url": None, "version": None, "previous_version": previous}
            return push_keys(context, result, ("url", "version"))

        store = self.store_hook.store
        if not store.is_published(self.model_name, version):
            raise ServingError(f"cannot serve {self.model_name} v{version}: not published in {store.uri}")
        if running and previous == version:
            self.log.info("%s already serves %s v%s: adopting it", name, self.model_name, version)
            url = spec["url"]
        else:
            if running:
                self.log.info("%s serves v%s: replacing it with v%s", name, previous, version)
                self.process_hook.stop(name)
            host = config.local_host()
            port = self.port or (
                config.production_port() if self.endpoint == "production" else _free_port(host)
            )
            url = f"http://{host}:{port}"
            argv = [
                sys.executable,
                "-m",
                SERVER_MODULE,
                f"--model_name={self.model_name}",
                # file:// serves from the store itself; oss:// from a verified local copy of the version.
                f"--model_base_path={self._local_model_base(store, version)}",
                f"--model_version={version}",
                f"--rest_api_port={port}",
                f"--host={host}",
            ]
            metadata = {"endpoint": self.endpoint, "version": version, "url": url, "run": run_key(context)}
            self.process_hook.start(name, argv, metadata=metadata, adopt=False)
        self.defer(
            trigger=ServingReadyTrigger(
                url=url,
                model_name=self.model_name,
                version=version,
                timeout_at=time.time() + self.ready_timeout.total_seconds(),
                poll_interval=self.poll_interval,
                process_dir=self.process_hook.process_dir(name).as_posix(),
            ),
            method_name="execute_complete",
            kwargs={"name": name, "version": version, "previous": previous},
            timeout=self.ready_timeout + timedelta(minutes=2),
        )

    def _local_model_base(self, store: ModelStore, version: int) -> Path:
        return store.local_model_base(self.model_name, version, self.process_hook.state_dir / "model-cache")

    def execute_complete(
        self, context: Context, event: dict[str, Any], name: str, version: int, previous: int | None
    ) -> dict[str, Any]:
        if event.get("status") != "available":
            # A server that never became ready must not linger holding the port.
            self.process_hook.stop(name)
            tail = "\n".join(event.get("tail") or [])
            raise ServingError(
                f"{self.endpoint} endpoint {name} did not serve {self.model_name} v{version}: "
                f"{event.get('message')}" + (f"; last output:\n{tail}" if tail else "")
            )
        self.log.info("%s serves %s v%s at %s", self.endpoint, self.model_name, version, event["url"])
        result = {
            "endpoint": self.endpoint,
            "name": name,
            "url": event["url"],
            "model_name": self.model_name,
            "version": version,
            "previous_version": previous,
        }
        return push_keys(context, result, ("url", "version"))

    # --- kubernetes runtime -------------------------------------------------------------------------

    def _replicas(self) -> int:
        try:
            replicas = int(self.replicas)
        except (TypeError, ValueError):
            raise ConfigError("replicas", self.replicas, "an integer >= 1") from None
        if replicas < 1:
            raise ConfigError("replicas", self.replicas, "an integer >= 1")
        return replicas

    def _execute_kubernetes(self, context: Context, name: str, version: int | None) -> dict[str, Any]:
        hook = self.kube_hook
        deployment = hook.get("Deployment", name)
        annotations = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
        serving = _int_or_none(annotations.get(manifests.A_VERSION))
        if version is None:
            if not self.teardown_if_unresolved:
                raise ServingError(f"{self.model_name} has no {self.from_alias} alias: nothing to deploy")
            self.log.info(
                "No %s version of %s: deleting %s/%s", self.from_alias, self.model_name, hook.namespace, name
            )
            hook.delete("Deployment", name)
            hook.delete("Service", name)
            result = {"endpoint": self.endpoint, "url": None, "version": None, "previous_version": serving}
            return push_keys(context, result, ("url", "version"))

        store = self.store_hook.store
        if not store.is_published(self.model_name, version):
            raise ServingError(f"cannot serve {self.model_name} v{version}: not published in {store.uri}")
        key = run_key(context)
        dag_id = context["dag"].dag_id
        template = manifests.serving_pod_template(
            name=name,
            model_name=self.model_name,
            version=version,
            model_store=store.uri,
            serving_image=config.kubernetes_serving_image(),
            fetch_image=config.kubernetes_fetch_image(),
            oss_secret=config.kubernetes_oss_secret(),
            cpu=str(self.cpu),
            memory=str(self.memory),
            service_account=config.kubernetes_service_account(),
        )
        desired = manifests.serving_deployment(
            name=name,
            namespace=hook.namespace,
            endpoint=self.endpoint,
            model_name=self.model_name,
            version=version,
            run_key=key,
            dag_id=dag_id,
            template=template,
            replicas=self._replicas(),
            progress_deadline_seconds=int(self.ready_timeout.total_seconds()),
        )
        if deployment is None:
            deployment, _ = hook.create_or_adopt(desired)
            previous = None
        elif serving == version:
            # A retried task, or this version is already live: wait on what is there.
            self.log.info(
                "%s/%s already runs %s v%s: adopting it", hook.namespace, name, self.model_name, version
            )
            previous = _int_or_none(annotations.get(manifests.A_PREVIOUS_VERSION))
        else:
            self.log.info("%s/%s runs v%s: rolling out v%s", hook.namespace, name, serving, version)
            deployment = hook.patch("Deployment", name, manifests.rollout_patch(deployment, desired))
            previous = serving
        service, _ = hook.create_or_adopt(
            manifests.serving_service(
                name=name,
                namespace=hook.namespace,
                service_type=self.service_type or config.kubernetes_service_type(self.endpoint),
                model_name=self.model_name,
                run_key=key,
                dag_id=dag_id,
                annotations=self.service_annotations,
            )
        )
        wait_for_address = (service.get("spec") or {}).get("type") == "LoadBalancer"
        # A minute past the Deployment's own progress deadline, so the controller's verdict (and its
        # reason) normally arrives first.
        timeout = self.ready_timeout * (2 if wait_for_address else 1) + timedelta(minutes=1)
        self.defer(
            trigger=KubernetesServingTrigger(
                deployment=name,
                service=name,
                namespace=hook.namespace,
                conn_id=self.kubernetes_conn_id or config.kubernetes_conn_id(),
                generation=int((deployment.get("metadata") or {}).get("generation") or 0),
                pod_selector={**manifests.serving_selector(name), manifests.L_VERSION: str(version)},
                wait_for_address=wait_for_address,
                timeout_at=time.time() + timeout.total_seconds(),
                poll_interval=self.poll_interval,
                transient_retry=self.transient_retry_policy.as_conf(),
            ),
            method_name="execute_complete_kubernetes",
            kwargs={"name": name, "namespace": hook.namespace, "version": version, "previous": previous},
            timeout=timeout + timedelta(minutes=2),
        )

    def _endpoint_url(self, name: str, namespace: str, address: str | None) -> str:
        host = address or f"{name}.{namespace}.svc.cluster.local"
        template = config.kubernetes_url_template()
        if template:
            return template.format(service=name, namespace=namespace, host=host, port=manifests.REST_PORT)
        return f"http://{host}:{manifests.REST_PORT}"

    def execute_complete_kubernetes(
        self,
        context: Context,
        event: dict[str, Any],
        name: str,
        namespace: str,
        version: int,
        previous: int | None,
    ) -> dict[str, Any]:
        status = event.get("status")
        if status == "available":
            url = self._endpoint_url(name, namespace, event.get("address"))
            self.log.info("%s serves %s v%s at %s", self.endpoint, self.model_name, version, url)
            result = {
                "endpoint": self.endpoint,
                "name": name,
                "namespace": namespace,
                "url": url,
                "model_name": self.model_name,
                "version": version,
                "previous_version": previous,
            }
            return push_keys(context, result, ("url", "version"))
        problems = "; ".join(event.get("pod_problems") or [])
        reason = f"{event.get('message')}" + (f"; pods: {problems}" if problems else "")
        where = f"{self.endpoint} endpoint {namespace}/{name}"
        if status == "timeout" and event.get("stage") == "address":
            # The new version did roll out; only the load balancer is missing. The DAG's rollback task
            # restores the production version.
            raise ServingError(f"{where} serves v{version} but got no external address: {reason}")
        hook = self.kube_hook
        deployment = hook.get("Deployment", name)
        patch = manifests.rollback_patch(deployment) if deployment else None
        if patch is None:
            raise ServingError(f"{where} did not become ready with {self.model_name} v{version}: {reason}")
        hook.patch("Deployment", name, patch)
        self.log.warning("%s: rollout of v%s failed; rolled back to v%s", where, version, previous)
        raise ServingError(
            f"{where}: rollout of {self.model_name} v{version} failed ({reason}); rolled back to v{previous}"
        )


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return None


class ServingTeardownOperator(RuntimeHooksMixin, BaseOperator):
    """Stop an endpoint and remove what the runtime created for it. Idempotent.

    :param transient_retry: in-task retries of transient Kubernetes API errors, as for KubeTrainJobOperator.
    """

    template_fields: Sequence[str] = (
        *BaseOperator.template_fields,
        "endpoint",
        "model_name",
        "runtime",
        "transient_retry",
    )
    ui_color = "#fadbd8"

    def __init__(
        self,
        *,
        endpoint: str,
        model_name: str = DEFAULT_MODEL_NAME,
        runtime: str = "local",
        kubernetes_conn_id: str | None = None,
        namespace: str | None = None,
        transient_retry: dict[str, Any] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.model_name = model_name
        self.runtime = runtime
        self.kubernetes_conn_id = kubernetes_conn_id
        self.namespace = namespace
        self.transient_retry = transient_retry

    def execute(self, context: Context) -> dict[str, Any]:
        config.check_runtime(self.runtime)
        name = endpoint_name(self.endpoint, self.model_name, context)
        if self.runtime == "kubernetes":
            kname = manifests.serving_name(name)
            deleted = [kind for kind in ("Deployment", "Service") if self.kube_hook.delete(kind, kname)]
            self.log.info("Endpoint %s/%s torn down (deleted: %s)", self.kube_hook.namespace, kname, deleted)
            return {"endpoint": self.endpoint, "name": kname, "was": "deleted" if deleted else "absent"}
        status = self.process_hook.stop(name)
        if status.state == RUNNING:
            raise ServingError(f"endpoint {name} is still running after the stop request")
        self.process_hook.remove(name)
        self.log.info("Endpoint %s torn down (was %s)", name, status.state)
        return {"endpoint": self.endpoint, "name": name, "was": status.state}
