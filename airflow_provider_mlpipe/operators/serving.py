"""ServingDeployOperator / ServingTeardownOperator: TF-Serving endpoints for a model version.

Endpoints are `staging` (one per pipeline run, so parked runs never share one) and `production` (one per
model). Runtime `local` runs the serving image's server (TF Serving's REST API) as a supervised process.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from airflow_provider_mlpipe import config
from airflow_provider_mlpipe.exceptions import ConfigError, ServingError
from airflow_provider_mlpipe.hooks.local_process import RUNNING, LocalProcessHook
from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook
from airflow_provider_mlpipe.modelstore.store import check_model_name
from airflow_provider_mlpipe.runs import push_keys, run_key
from airflow_provider_mlpipe.triggers.serving import ServingReadyTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context, XComArg

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


class ServingDeployOperator(BaseOperator):
    """Serve `version` of `model_name` at `endpoint`; XCom: endpoint URL, version served, version replaced.

    :param endpoint: `staging` or `production`.
    :param version: the model version; None to take the version the store's `from_alias` points at.
    :param from_alias: alias to resolve when `version` is None (rollback: `production`).
    :param teardown_if_unresolved: with no version and no alias, stop the endpoint instead of failing
        (rolling back a first-ever deployment leaves no production endpoint).
    :param skip_unless_ran: task id; skip unless that task ran in this run (a rollback has nothing to
        undo when the deployment it guards never started).
    :param port: fixed port; default `[mlpipe] production_port` for production, a free port for staging.
    :param ready_timeout: how long to wait for the model to become AVAILABLE.
    """

    template_fields: Sequence[str] = (
        *BaseOperator.template_fields,
        "endpoint",
        "model_name",
        "version",
        "runtime",
        "model_store",
    )
    ui_color = "#d5f5e3"

    def __init__(
        self,
        *,
        endpoint: str,
        model_name: str = "fashion_mnist",
        version: int | str | XComArg | None = None,
        from_alias: str | None = None,
        teardown_if_unresolved: bool = False,
        skip_unless_ran: str | None = None,
        runtime: str = "local",
        model_store: str | None = None,
        port: int | None = None,
        ready_timeout: timedelta = timedelta(minutes=10),
        poll_interval: float = 1.0,
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
        if version is None and from_alias is None:
            raise ConfigError("version", version, "a model version, or from_alias to resolve one")

    @cached_property
    def store_hook(self) -> ModelStoreHook:
        return ModelStoreHook(self.model_store)

    @cached_property
    def process_hook(self) -> LocalProcessHook:
        return LocalProcessHook()

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
        check_model_name(self.model_name)
        name = endpoint_name(self.endpoint, self.model_name, context)
        version = self._resolve_version()
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
                f"--model_base_path={store.model_base_dir(self.model_name)}",
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


class ServingTeardownOperator(BaseOperator):
    """Stop an endpoint and remove what the runtime created for it. Idempotent."""

    template_fields: Sequence[str] = (*BaseOperator.template_fields, "endpoint", "model_name", "runtime")
    ui_color = "#fadbd8"

    def __init__(
        self, *, endpoint: str, model_name: str = "fashion_mnist", runtime: str = "local", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.model_name = model_name
        self.runtime = runtime

    @cached_property
    def process_hook(self) -> LocalProcessHook:
        return LocalProcessHook()

    def execute(self, context: Context) -> dict[str, Any]:
        config.check_runtime(self.runtime)
        name = endpoint_name(self.endpoint, self.model_name, context)
        status = self.process_hook.stop(name)
        if status.state == RUNNING:
            raise ServingError(f"endpoint {name} is still running after the stop request")
        self.process_hook.remove(name)
        self.log.info("Endpoint %s torn down (was %s)", name, status.state)
        return {"endpoint": self.endpoint, "name": name, "was": status.state}
