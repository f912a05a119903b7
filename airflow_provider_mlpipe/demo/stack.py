"""A whole Airflow on this machine, as separate processes, and a REST client for it.

Used by the demo (`make demo`) and by the end-to-end tests, so both exercise the same set-up a platform
team runs: metadata database (SQLite here), scheduler, dag-processor, triggerer and api-server, the
provider's DAGs and plugins from the repository, and Airflow's REST API v2 with a JWT.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# In the environment of every process a stack starts, and so of everything those start (`kill_strays`).
STACK_MARK = "MLPIPE_STACK_HOME"
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The shipped scheduling settings, beside Airflow's defaults in benchmarks/orchestration.py: an idle
# scheduler looks for work every 0.1 s instead of every 1 s, which is most of the gap between two tasks.
# A task's supervisor notices its process has exited within min_heartbeat_interval (5 s by default): a
# trigger that fires sooner (a model that loads in 2 s) resumes the task before the deferral's exit is
# reported, and Airflow 3.3.2 then fails the resumed try as "state changed externally" (apache/airflow
# #72716). At 1 s the exit is reported before a resumed try can be running.
FAST_SCHEDULING: dict[str, dict[str, str]] = {
    "scheduler": {"scheduler_idle_sleep_time": "0.1"},
    "workers": {"min_heartbeat_interval": "1"},
}


@dataclass
class StackConfig:
    home: Path
    port: int = 8080
    production_port: int = 8501
    dataset_dir: str | None = None
    # user name -> (role, password); roles of Airflow's simple auth manager: admin, op, user, viewer.
    users: dict[str, tuple[str, str]] = field(default_factory=lambda: {"admin": ("admin", "admin")})
    executor: str = "LocalExecutor"
    sql_alchemy_conn: str | None = None
    # Production-like: CeleryExecutor with this many `airflow celery worker` processes on `broker_url`.
    celery_workers: int = 0
    broker_url: str = "redis://127.0.0.1:6379/0"
    dags_folder: Path = REPO_ROOT / "dags"
    plugins_folder: Path = REPO_ROOT / "plugins"
    parallelism: int = 8
    extra_config: dict[str, dict[str, str]] = field(default_factory=dict)
    # component -> extra environment, e.g. {"scheduler": {"AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG"}}.
    component_env: dict[str, dict[str, str]] = field(default_factory=dict)
    # Extra environment of every component (and so of the tasks and local runtime processes they start).
    env: dict[str, str] = field(default_factory=dict)


class AirflowStack:
    """Start and stop the Airflow components for `config.home` (AIRFLOW_HOME)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.home = config.home.resolve()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.components: list[str] = []

    @property
    def celery_queue(self) -> str:
        return "mlpipe-" + hashlib.sha256(str(self.home).encode()).hexdigest()[:12]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    def write_config(self) -> None:
        """airflow.cfg in AIRFLOW_HOME, so the user's own `airflow ...` commands see the same Airflow."""
        cfg = self.config
        self.home.mkdir(parents=True, exist_ok=True)
        secret_file = self.home / ".jwt_secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(32))
        jwt_secret = secret_file.read_text().strip()
        sections: dict[str, dict[str, str]] = {
            "core": {
                "dags_folder": str(cfg.dags_folder),
                "plugins_folder": str(cfg.plugins_folder),
                "executor": cfg.executor,
                "load_examples": "False",
                "dags_are_paused_at_creation": "False",
                "parallelism": str(cfg.parallelism),
                "execution_api_server_url": f"{self.url}/execution/",
                "simple_auth_manager_users": ",".join(f"{u}:{role}" for u, (role, _) in cfg.users.items()),
                "simple_auth_manager_passwords_file": str(self.home / "passwords.json"),
            },
            "database": {
                "sql_alchemy_conn": cfg.sql_alchemy_conn or f"sqlite:///{self.home / 'airflow.db'}",
            },
            "api": {"port": str(cfg.port), "host": "127.0.0.1", "base_url": self.url, "workers": "1"},
            "api_auth": {"jwt_secret": jwt_secret},
            "logging": {"base_log_folder": str(self.home / "logs")},
            "scheduler": {"standalone_dag_processor": "True"},
            "dag_processor": {"refresh_interval": "5", "min_file_process_interval": "30"},
            "mlpipe": {
                "model_store": (self.home / "mlpipe" / "models").as_uri(),
                "local_state_dir": str(self.home / "mlpipe" / "state"),
                "production_port": str(cfg.production_port),
            },
        }
        if cfg.executor == "CeleryExecutor":
            # Our own queue: other Airflows on the same broker (or stale messages of an earlier one) must not
            # take our tasks, nor we theirs.
            sections["operators"] = {"default_queue": self.celery_queue}
            sections["celery"] = {
                "broker_url": cfg.broker_url,
                "result_backend": "db+" + (cfg.sql_alchemy_conn or f"sqlite:///{self.home / 'airflow.db'}"),
                "worker_concurrency": "4",
            }
        for section, values in [*FAST_SCHEDULING.items(), *cfg.extra_config.items()]:
            sections.setdefault(section, {}).update(values)
        text = "".join(
            f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items()) + "\n"
            for name, values in sections.items()
        )
        (self.home / "airflow.cfg").write_text(text)
        (self.home / "passwords.json").write_text(json.dumps({u: pw for u, (_, pw) in cfg.users.items()}))

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        env["AIRFLOW_HOME"] = str(self.home)
        env[STACK_MARK] = str(self.home)
        env["PYTHONUNBUFFERED"] = "1"
        if self.config.dataset_dir:
            env["MLPIPE_DATASET_DIR"] = self.config.dataset_dir
        env.update(self.config.env)
        return env

    def airflow(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run one `airflow` CLI command against this stack."""
        return subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def migrate(self) -> None:
        """Airflow's schema, then the provider's own tables (its versioned migrations), as a deployment
        runs them before starting the api-server."""
        self.airflow("db", "migrate")
        subprocess.run(
            [sys.executable, "-m", "airflow_provider_mlpipe.migrations", "upgrade"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )

    def start(self, components: Iterable[str] = COMPONENTS, timeout: float = 240) -> None:
        self.write_config()
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        self.migrate()
        self.components = [
            *components,
            *(f"celery-worker-{index}" for index in range(1, self.config.celery_workers + 1)),
        ]
        for component in self.components:
            self.start_component(component)
        self.wait_healthy(timeout)

    def restore(self, timeout: float = 240) -> list[str]:
        """Start again every component of `start` that is not running (killed by a test, or crashed),
        and wait until Airflow is healthy. Returns the components started."""
        restarted = []
        for component in self.components:
            proc = self.procs.get(component)
            if proc is None or proc.poll() is not None:
                self.procs.pop(component, None)
                self.start_component(component)
                restarted.append(component)
        self.wait_healthy(timeout)
        return restarted

    @contextlib.contextmanager
    def running(self, dag_id: str, components: Iterable[str] = COMPONENTS) -> Iterator[AirflowStack]:
        """Start, wait until `dag_id` is parsed and unpause it; on exit stop the local runtime's processes
        and Airflow, whatever happened (the tests' module fixtures)."""
        try:
            self.start(components)
            client = self.client(next(iter(self.config.users)))
            client.wait_for_dag(dag_id)
            client.unpause(dag_id)
            yield self
        finally:
            self.stop_local_runtime()
            self.stop()

    def start_component(self, component: str) -> subprocess.Popen[bytes]:
        """Start `component` (scheduler, triggerer, ..., or `celery-worker-N`) with its log in logs/."""
        log = (self.home / "logs" / f"{component}.log").open("ab")
        if component.startswith("celery-worker-"):
            # Distinct hostnames: two workers on one machine must not collide in Celery's bookkeeping.
            args = ["celery", "worker", "--celery-hostname", f"{component}@%h", "--skip-serve-logs"]
            args += ["--queues", self.celery_queue]
        else:
            # "scheduler-2": a second instance of a component (Airflow runs several schedulers on PostgreSQL).
            kind = component.rstrip("0123456789").removesuffix("-") if component[-1].isdigit() else component
            args = [kind]
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env={**self.env, **self.config.component_env.get(component, {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs[component] = proc
        return proc

    def kill_component(self, component: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(component)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)

    def wait_healthy(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"Airflow {name} exited with {proc.returncode}; see {self.home / 'logs' / (name + '.log')}"
                    )
            try:
                resp = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5)
                last = resp.json()
                wanted = ["metadatabase"] + [
                    c.replace("-", "_")
                    for c in self.procs
                    if c in ("scheduler", "triggerer", "dag-processor")
                ]
                if resp.ok and all(last.get(part, {}).get("status") == "healthy" for part in wanted):
                    return
            except (requests.RequestException, ValueError) as err:
                last = err
            time.sleep(2)
        raise TimeoutError(f"Airflow at {self.url} not healthy after {timeout:.0f} s: {last}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM everything, the api-servers last; SIGKILL what is left after `timeout` seconds.

        The api-servers go last because a running task's supervisor reports the task's end through the
        api-server's Execution API: with the api-server gone first it retried that report, the scheduler
        waited for its executor's tasks, and the stop took the whole timeout (the Kubernetes e2e module's
        teardown: 32.5 s, 8 s in this order).
        The tasks (in sessions of their own, so outside the components' process groups) get SIGTERM with
        the first wave and end as killed tasks do.
        """
        deadline = time.monotonic() + timeout
        api_servers = {name for name in self.procs if name.startswith("api-server")}
        spare = set()
        for name in api_servers:
            with contextlib.suppress(ProcessLookupError):
                spare.add(os.getpgid(self.procs[name].pid))
        others = [name for name in self.procs if name not in api_servers]
        for wave, with_tasks in ((others, True), (sorted(api_servers), False)):
            for name in wave:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.procs[name].pid, signal.SIGTERM)
            if with_tasks:
                self.kill_strays(signal.SIGTERM, spare_groups=spare)
            for name in wave:
                proc = self.procs[name]
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.procs.clear()
        self.kill_strays()

    def kill_strays(self, sig: int = signal.SIGKILL, spare_groups: set[int] | None = None) -> list[int]:
        """SIGKILL (or `sig`) every process left that carries this stack's mark in its environment, but
        those in a process group of `spare_groups`.

        A component's process group is not all it started: Airflow's task processes and the local
        runtime's supervisors run in sessions of their own, and a component killed with SIGKILL leaves
        its children behind. The environment they all inherit is what they have in common. The mark is a
        variable of our own, not AIRFLOW_HOME, which a user's shell may export too.
        """
        marker = f"{STACK_MARK}={self.home}".encode()
        killed = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if spare_groups and os.getpgid(int(entry.name)) in spare_groups:
                        continue
                    os.kill(int(entry.name), sig)
                    killed.append(int(entry.name))
        return killed

    def stop_local_runtime(self) -> list[str]:
        """Stop every process the local runtime started under this home (serving endpoints, training)."""
        from airflow_provider_mlpipe.hooks.local_process import RUNNING, LocalProcessHook

        hook = LocalProcessHook(str(self.home / "mlpipe" / "state"))
        stopped = []
        if hook.state_dir.is_dir():
            for pdir in sorted(hook.state_dir.iterdir()):
                if pdir.is_dir() and ".attempt-" not in pdir.name and hook.status(pdir.name).state == RUNNING:
                    hook.stop(pdir.name)
                    stopped.append(pdir.name)
        return stopped

    def client(self, user: str = "admin") -> AirflowClient:
        return AirflowClient(self.url, user, self.config.users[user][1])

    def wait_parked(self, dag_id: str, run_id: str, task_id: str, timeout: float = 300) -> None:
        """Wait until a scheduler has handled the executor event of `task_id`'s process exiting after it
        parked (deferred, or awaiting input).

        Airflow 3.3.2 fails a resumed task if that event is handled after the resume (apache/airflow
        #72716): a script that answers a human-in-the-loop task must wait for this event, not for a
        stretch of time, which a busy machine can outlast.
        """
        line = (
            "Received executor event with state success for task instance TaskInstanceKey("
            f"dag_id='{dag_id}', task_id='{task_id}', run_id='{run_id}'"
        )
        logs = self.home / "logs"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for log in logs.glob("scheduler*.log"):
                if line in log.read_text(errors="replace"):
                    return
            time.sleep(0.2)
        raise TimeoutError(
            f"no scheduler handled the exit of parked {dag_id}/{run_id}/{task_id} in {timeout} s"
        )

    def respond(
        self,
        client: AirflowClient,
        dag_id: str,
        run_id: str,
        task_id: str,
        option: str,
        params_input: dict[str, Any] | None = None,
    ) -> requests.Response:
        """Answer a human-in-the-loop task as `client`'s user once it is safely parked (`wait_parked`)."""
        self.wait_parked(dag_id, run_id, task_id)
        return client.respond(dag_id, run_id, task_id, option, settle=0, params_input=params_input)


class AirflowClient:
    """The few calls of Airflow's REST API v2 the demo and tests need."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url
        self.username = username
        self.session = requests.Session()
        resp = self.session.post(
            f"{url}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        resp.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.url}/api/v2{path}", timeout=30, **kwargs)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        if not resp.ok:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp = self.request("GET", f"/dags/{dag_id}")
            if resp.ok:
                return dict(resp.json())
            time.sleep(2)
        raise TimeoutError(f"DAG {dag_id} not parsed within {timeout:.0f} s")

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None) -> str:
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return str(self.call("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        body = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        return list(body["task_instances"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        body = self.call(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"deserialize": True},
        )
        return body["value"]

    def respond(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        option: str,
        *,
        settle: float = 5.0,
        params_input: dict[str, Any] | None = None,
    ) -> requests.Response:
        """Answer a human-in-the-loop task (Approve / Reject) as this client's user; `params_input` fills
        the request's fields (e.g. the `reason` an inconclusive accuracy gate asks for).

        Airflow 3.3.2 races a response that arrives within about a second of the task parking: the
        scheduler then handles the parked attempt's late executor event after the resume and fails the
        task ("finished with state success, but the task instance's state attribute is queued"). A
        person never answers that fast; a script must, so it lets the task settle first, or, where it
        can read the stack's logs, waits for that event (`AirflowStack.respond`).
        """
        time.sleep(settle)
        return self.request(
            "PATCH",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
            json={"chosen_options": [option], "params_input": params_input or {}},
        )

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout: float,
        until_task: tuple[str, str | tuple[str, ...]] | None = None,
        on_change: Any = None,
        on_poll: Any = None,
        interval: float = 1.0,
    ) -> dict[str, str | None]:
        """Poll every `interval` s until the run ends (or `until_task` = (task_id, state or states) is
        reached); report changes."""
        deadline = time.monotonic() + timeout
        seen: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            states = self.task_states(dag_id, run_id)
            if on_change:
                for task_id, state in states.items():
                    if seen.get(task_id, "-") != state:
                        on_change(task_id, state)
            seen = states
            if on_poll:
                on_poll(states)
            if until_task:
                task_id, wanted = until_task
                if states.get(task_id) in ((wanted,) if isinstance(wanted, str) else wanted):
                    return states
            if self.run_state(dag_id, run_id) in ("success", "failed"):
                return self.task_states(dag_id, run_id)
            time.sleep(interval)
        raise TimeoutError(f"run {run_id} of {dag_id} not finished within {timeout:.0f} s; tasks: {seen}")
