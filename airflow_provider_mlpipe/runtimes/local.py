"""The `local` runtime: training and serving as processes on this machine, supervised by
`hooks.local_supervisor` in sessions of their own (a killed or deferred task leaves them running).

Each has a process directory named deterministically after the run (`train-<model>-v<version>`, the
endpoint's name), holding its pid, output and exit status: a retried task, a restarted scheduler or a new
triggerer finds it there and adopts it.
"""

from __future__ import annotations

import logging
import socket
import sys
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow_provider_mlpipe import config
from airflow_provider_mlpipe.exceptions import ServingError
from airflow_provider_mlpipe.hooks.local_process import RUNNING, SUCCEEDED, LocalProcessHook
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
from airflow_provider_mlpipe.training import trainer_env
from airflow_provider_mlpipe.triggers.local_process import LocalProcessTrigger
from airflow_provider_mlpipe.triggers.serving import ServingReadyTrigger
from airflow_provider_mlpipe.validation import check_hyperparameters

TRAINER_MODULE = "airflow_provider_mlpipe.images.training.train"
SERVER_MODULE = "airflow_provider_mlpipe.images.serving.server"
# The task's backstop past the trigger's own deadline, for when the triggerer is down.
TRAINING_BACKSTOP = timedelta(minutes=5)
SERVING_BACKSTOP = timedelta(minutes=2)

log = logging.getLogger(__name__)


def training_process_name(model_name: str, version: int) -> str:
    return f"train-{model_name.replace('_', '-')}-v{version}"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalRuntime(Runtime):
    name = "local"

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._started_training: str | None = None

    @cached_property
    def process_hook(self) -> LocalProcessHook:
        return LocalProcessHook(self.state_dir)

    # --- training ----------------------------------------------------------------------------------

    def _training_handle(self, name: str) -> Handle:
        return {
            "resource": f"local process {name}",
            "process": name,
            "process_dir": self.process_hook.process_dir(name).as_posix(),
        }

    @staticmethod
    def trainer_command(spec: TrainingSpec) -> list[str]:
        """What stands in for the training image here: the spec's command, else the trainer this
        repository ships (training_image/). A leading `python` is this worker's own interpreter, so the
        trainer sees the packages the provider was installed with."""
        command = list(spec.command) or ["python", "-m", TRAINER_MODULE]
        if command[0] == "python":
            command[0] = sys.executable
        return command

    @staticmethod
    def trainer_environment(spec: TrainingSpec, version: int, run_key: str) -> dict[str, str]:
        """The training contract's environment (airflow_provider_mlpipe.training), as a Job's pod gets it,
        plus the store's credentials (oss://): a process environment only, never argv or state files."""
        env = trainer_env(
            model_store=spec.store.store.uri,
            model_name=spec.model_name,
            version=version,
            dataset=spec.dataset,
            image=spec.image,
            digest=spec.digest,
            run_key=run_key,
            hyperparameters=check_hyperparameters(spec.hyperparameters),
        )
        return {**env, **spec.store.child_env()}

    def start_training(self, spec: TrainingSpec, *, version: int, run_key: str) -> TrainingStarted:
        name = training_process_name(spec.model_name, version)
        # Recorded before the start, so that a kill arriving during it still stops the process.
        self._started_training = name
        status, adopted = self.process_hook.start(
            name,
            self.trainer_command(spec),
            metadata={"run": run_key, "model_name": spec.model_name, "version": version, "image": spec.image},
            env=self.trainer_environment(spec, version, run_key),
        )
        handle = self._training_handle(name)
        if adopted and status.state == SUCCEEDED:
            return TrainingStarted(handle, None)
        trigger = LocalProcessTrigger(
            process_dir=handle["process_dir"],
            timeout_at=self.deadline(spec.timeout),
            poll_interval=spec.poll_interval,
        )
        return TrainingStarted(handle, Wait(trigger, spec.timeout + TRAINING_BACKSTOP))

    def stop_training(self, handle: Handle) -> None:
        self.process_hook.stop(handle["process"])

    def cancel(self) -> None:
        if self._started_training:
            self.process_hook.stop(self._started_training)

    def legacy_training_handle(self, model_name: str, version: int, kwargs: dict[str, Any]) -> Handle:
        return self._training_handle(training_process_name(model_name, version))

    # --- serving -----------------------------------------------------------------------------------

    def _running_metadata(self, name: str) -> dict[str, Any] | None:
        """The metadata of the server running as `name`; None when none runs."""
        if self.process_hook.status(name).state != RUNNING:
            return None
        metadata: dict[str, Any] = self.process_hook.read_spec(name).get("metadata", {})
        return metadata

    def served_version(self, name: str) -> int | None:
        metadata = self._running_metadata(name)
        return metadata.get("version") if metadata else None

    def _production_port(self, model_name: str, name: str) -> int:
        """`[mlpipe] production_port(s)` for the model, refused when another model's production holds it
        (two models on one port would each replace the other's server)."""
        port = config.production_port(model_name)
        state_dir = self.process_hook.state_dir
        others = sorted(p.name for p in state_dir.glob("*-production") if p.is_dir() and p.name != name)
        for other in others:
            metadata = self._running_metadata(other)
            if metadata and str(metadata.get("url", "")).endswith(f":{port}"):
                raise ServingError(
                    f"endpoint {name}: port {port} is held by {other}; give {model_name} a port of its own: "
                    f"[mlpipe] production_ports = {model_name}=<port>"
                )
        return port

    def deploy_serving(self, spec: ServingSpec, *, name: str, version: int, run_key: str) -> ServingStarted:
        metadata = self._running_metadata(name)
        previous = metadata.get("version") if metadata else None
        if metadata and previous == version:
            log.info("%s already serves %s v%s: adopting it", name, spec.model_name, version)
            url = str(metadata["url"])
        else:
            if metadata:
                log.info("%s serves v%s: replacing it with v%s", name, previous, version)
                self.process_hook.stop(name)
            host = config.local_host()
            port = spec.port or (
                self._production_port(spec.model_name, name)
                if spec.endpoint == "production"
                else _free_port(host)
            )
            url = f"http://{host}:{port}"
            # file:// serves from the store itself; oss:// from a verified local copy of the version.
            base = spec.store.local_model_base(
                spec.model_name, version, self.process_hook.state_dir / "model-cache"
            )
            argv = [
                sys.executable,
                "-m",
                SERVER_MODULE,
                f"--model_name={spec.model_name}",
                f"--model_base_path={base}",
                f"--model_version={version}",
                f"--rest_api_port={port}",
                f"--host={host}",
            ]
            self.process_hook.start(
                name,
                argv,
                metadata={"endpoint": spec.endpoint, "version": version, "url": url, "run": run_key},
                adopt=False,
            )
        trigger = ServingReadyTrigger(
            url=url,
            model_name=spec.model_name,
            version=version,
            timeout_at=self.deadline(spec.ready_timeout),
            poll_interval=spec.poll_interval,
            process_dir=self.process_hook.process_dir(name).as_posix(),
        )
        handle = {"resource": name, "name": name, "url": url}
        return ServingStarted(handle, previous, Wait(trigger, spec.ready_timeout + SERVING_BACKSTOP))

    def serving_result(self, handle: Handle, outcome: Outcome) -> dict[str, Any]:
        return {"name": handle["name"], "url": outcome.details.get("url") or handle["url"]}

    def abandon_serving(self, handle: Handle, outcome: Outcome) -> str | None:
        # A server that never became ready must not linger holding the port.
        self.process_hook.stop(handle["name"])
        return None

    def teardown_serving(self, name: str) -> Teardown:
        status = self.process_hook.stop(name)
        if status.state == RUNNING:
            raise ServingError(f"endpoint {name} is still running after the stop request")
        self.process_hook.remove(name)
        return Teardown(name, status.state)

    def legacy_serving_handle(self, kwargs: dict[str, Any]) -> Handle:
        name = str(kwargs["name"])
        return {"resource": name, "name": name, "url": ""}
