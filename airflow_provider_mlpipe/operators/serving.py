"""ServingDeployOperator / ServingTeardownOperator: TF-Serving endpoints for a model version.

Endpoints are `staging` (one per pipeline run, so parked runs never share one) and `production` (one per
model). The run's runtime (`runtimes`) deploys them: `local` runs the serving image's server (TF Serving's
REST API) as a supervised process; `kubernetes` runs a Deployment (init container fetching the version from
the store into an emptyDir, then `tensorflow/serving`) behind a Service: ClusterIP for staging,
LoadBalancer for production, rolling a new version out and a failed rollout back. Either way the task
waits deferred and fails naming the endpoint and the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowSkipException

from airflow_provider_mlpipe import config
from airflow_provider_mlpipe.exceptions import ConfigError, ServingError
from airflow_provider_mlpipe.modelstore.store import check_model_name
from airflow_provider_mlpipe.operators.base import RuntimeOperator, StoreOperator, merged_template_fields
from airflow_provider_mlpipe.runs import push_keys, run_key
from airflow_provider_mlpipe.runtimes.base import Handle, Outcome, ServingSpec

if TYPE_CHECKING:
    from airflow.sdk import Context, XComArg


def endpoint_name(endpoint: str, model_name: str, context: Context) -> str:
    """Resource name of an endpoint: per run for staging, per model for production."""
    if endpoint not in config.ENDPOINTS:
        raise ConfigError("endpoint", endpoint, f"one of {', '.join(config.ENDPOINTS)}")
    base = f"serve-{model_name.replace('_', '-')}-{endpoint}"
    if endpoint == "staging":
        return f"{base}-{hashlib.sha256(run_key(context).encode()).hexdigest()[:10]}"
    return base


class ServingDeployOperator(StoreOperator, RuntimeOperator):
    """Serve `version` of `model_name` at `endpoint`; XCom: endpoint URL, version served, version replaced.

    :param endpoint: `staging` or `production`.
    :param version: the model version; None to take the version the store's `from_alias` points at.
    :param from_alias: alias to resolve when `version` is None (rollback: `production`).
    :param teardown_if_unresolved: with no version and no alias, stop the endpoint instead of failing
        (rolling back a first-ever deployment leaves no production endpoint).
    :param skip_unless_ran: task id; skip unless that task ran in this run (a rollback has nothing to
        undo when the deployment it guards never started).
    :param port: fixed port; default for production: the model's `[mlpipe] production_ports` entry, else
        `[mlpipe] production_port`; a free port for staging.
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

    template_fields: Sequence[str] = merged_template_fields(
        StoreOperator,
        RuntimeOperator,
        own=(
            "endpoint",
            "version",
            "replicas",
            "service_annotations",
        ),
    )
    ui_color = "#d5f5e3"

    def __init__(
        self,
        *,
        endpoint: str,
        version: int | str | XComArg | None = None,
        from_alias: str | None = None,
        teardown_if_unresolved: bool = False,
        skip_unless_ran: str | None = None,
        port: int | None = None,
        ready_timeout: timedelta = timedelta(minutes=10),
        poll_interval: float = 1.0,
        replicas: int | str = 1,
        cpu: str = "500m",
        memory: str = "1Gi",
        service_type: str | None = None,
        service_annotations: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.version = version
        self.from_alias = from_alias
        self.teardown_if_unresolved = teardown_if_unresolved
        self.skip_unless_ran = skip_unless_ran
        self.port = port
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval
        self.replicas = replicas
        self.cpu = cpu
        self.memory = memory
        self.service_type = service_type
        self.service_annotations = service_annotations or {}
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
        runtime = self.runtime_backend  # an unknown runtime or a bad transient_retry fails here
        check_model_name(self.model_name)
        name = endpoint_name(self.endpoint, self.model_name, context)
        version = self._resolve_version()
        if version is None:
            if not self.teardown_if_unresolved:
                raise ServingError(f"{self.model_name} has no {self.from_alias} alias: nothing to deploy")
            previous = runtime.served_version(name)
            self.log.info("No %s version of %s: tearing %s down", self.from_alias, self.model_name, name)
            runtime.teardown_serving(name)
            result = {"endpoint": self.endpoint, "url": None, "version": None, "previous_version": previous}
            return push_keys(context, result, ("url", "version"))

        store = self.store_hook.store
        if not store.is_published(self.model_name, version):
            raise ServingError(f"cannot serve {self.model_name} v{version}: not published in {store.uri}")
        spec = ServingSpec(
            endpoint=self.endpoint,
            model_name=self.model_name,
            store=store,
            ready_timeout=self.ready_timeout,
            poll_interval=self.poll_interval,
            dag_id=context["dag"].dag_id,
            port=self.port,
            replicas=self.replicas,
            cpu=str(self.cpu),
            memory=str(self.memory),
            service_type=self.service_type,
            service_annotations=self.service_annotations,
        )
        started = runtime.deploy_serving(spec, name=name, version=version, run_key=run_key(context))
        self.defer(
            trigger=started.wait.trigger,
            method_name="execute_complete",
            kwargs={"version": version, "previous": started.previous, "handle": started.handle},
            timeout=started.wait.timeout,
        )

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any],
        version: int,
        previous: int | None,
        handle: Handle | None = None,
        **legacy: Any,
    ) -> dict[str, Any]:
        runtime = self.runtime_backend
        if handle is None:
            handle = runtime.legacy_serving_handle({**legacy, "version": version, "previous": previous})
        outcome = Outcome.from_event(event)
        if not outcome.succeeded:
            done = runtime.abandon_serving(handle, outcome)
            tail = "\n".join(outcome.tail)
            raise ServingError(
                f"{self.endpoint} endpoint {handle['resource']} did not become ready with "
                f"{self.model_name} v{version}: {runtime.reason(outcome)}"
                + (f"; {done}" if done else "")
                + (f"; last output:\n{tail}" if tail else "")
            )
        located = runtime.serving_result(handle, outcome)
        self.log.info("%s serves %s v%s at %s", self.endpoint, self.model_name, version, located["url"])
        result = {
            "endpoint": self.endpoint,
            **located,
            "model_name": self.model_name,
            "version": version,
            "previous_version": previous,
        }
        return push_keys(context, result, ("url", "version"))

    def execute_complete_kubernetes(
        self,
        context: Context,
        event: dict[str, Any],
        name: str,
        namespace: str,
        version: int,
        previous: int | None,
    ) -> dict[str, Any]:
        """Where a task deferred by 0.1.0 resumes (the method name is stored with the deferral)."""
        return self.execute_complete(context, event, version, previous, name=name, namespace=namespace)


class ServingTeardownOperator(RuntimeOperator):
    """Stop an endpoint and remove what the runtime created for it. Idempotent.

    :param transient_retry: in-task retries of transient Kubernetes API errors, as for KubeTrainJobOperator.
    """

    template_fields: Sequence[str] = merged_template_fields(
        RuntimeOperator,
        own=("endpoint",),
    )
    ui_color = "#fadbd8"

    def __init__(
        self,
        *,
        endpoint: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint

    def execute(self, context: Context) -> dict[str, Any]:
        runtime = self.runtime_backend
        teardown = runtime.teardown_serving(endpoint_name(self.endpoint, self.model_name, context))
        self.log.info("Endpoint %s torn down (was %s)", teardown.resource, teardown.was)
        return {"endpoint": self.endpoint, "name": teardown.resource, "was": teardown.was}
