"""The real DAG under a real Airflow (scheduler, dag-processor, triggerer and api-server as processes,
SQLite, LocalExecutor), run once with runtime=kubernetes against an emulated Kubernetes API.

What is real: Airflow scheduling the DAG, deferring to the triggerer, branching at the gates, the approval
given through `PATCH .../hitlDetails`; the operators, hooks and triggers talking HTTP to the API through the
cncf-kubernetes provider; real TensorFlow training of a small subset; a real TF-Serving-compatible REST
endpoint scored by the real AccuracySensor; README's documented setup for the store: an `oss://` store, the
Airflow connection `oss_default` in the Alibaba provider's fields (extras `region`, `endpoint`), and the pods'
Secret holding exactly the keys README step 2 creates (parsed from README.md), nothing else.

What is emulated, and how:
- Alibaba Cloud OSS: the OSS protocol emulator (tests/emulators/oss_server.py) on 127.0.0.1, its URL as the
  connection's `endpoint` (the pods get it from the manifest, as OSS_ENDPOINT, like an internal endpoint);
- the Kubernetes API server: kmock + shim (tests/kubernetes_emulator.py), served over HTTP from this test
  process and given to every Airflow process as the `kubernetes_emulator` connection;
- the kubelet and the controllers: `PodActor` below watches the emulated API and "runs" each pod spec by
  executing its containers' command and args as local processes (a container without a command runs its
  image's ENTRYPOINT, read from the Dockerfile that builds the image), with the env from the manifest
  (secretKeyRef resolved from a fake Secret), `/models` and `/scratch` mapped to temporary directories;
  it writes the pod, its log and the Job / Deployment status back. TF Serving's main container
  (`tensorflow_model_server`) is replaced by its REST-compatible stand-in, serving_image/server.py, with
  the same flags (minus the gRPC `--port`);
- cluster DNS, kube-proxy and the cloud load balancer: an HTTP proxy (HTTP_PROXY of the Airflow processes)
  maps the Service's in-cluster name (staging) and the load balancer hostname the actor assigns
  (production) to the local server's port.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from airflow_provider_mlpipe.demo.stack import COMPONENTS, AirflowClient, AirflowStack, StackConfig, free_port
from airflow_provider_mlpipe.modelstore import ModelStore, open_store
from airflow_provider_mlpipe.modelstore.oss import OssCredentials
from tests.emulators.oss_server import OssEmulator
from tests.kubernetes_emulator import (
    CONN_ID,
    NAMESPACE,
    EmulatedCluster,
    Gone,
    emulated_cluster,
    mlpipe_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DAG_ID = "mlpipe_fashion_mnist"

README = Path(__file__).resolve().parents[2] / "README.md"
OSS_KEY_ID, OSS_KEY_SECRET = "LTAI5tE2EFAKEID", "e2e-fake-secret-value"
OSS_BUCKET = "mlpipe-k8s-e2e"


def readme_secret_keys() -> list[str]:
    """The keys of the Secret README's *Run on Kubernetes* step 2 creates (`--from-literal=<key>=`)."""
    text = README.read_text()
    step = text[text.index("kubectl -n mlpipe create secret generic mlpipe-oss") :]
    return re.findall(r"--from-literal=(\w+)=", step[: step.index("```")])


# The Secret `mlpipe-oss` as README step 2 creates it: exactly its keys, with the emulator's key pair.
FAKE_SECRET = {
    "mlpipe-oss": {
        key: {"access_key_id": OSS_KEY_ID, "access_key_secret": OSS_KEY_SECRET}[key]
        for key in readme_secret_keys()
    }
}
DIGEST = "sha256:" + "cd" * 32


class Router(http.server.ThreadingHTTPServer):
    """Cluster DNS + kube-proxy + load balancer: `host:port` of a Service -> the local server's port."""

    def __init__(self) -> None:
        self.routes: dict[str, int] = {}
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    def _forward(self) -> None:
        target = urlsplit(self.path)
        port = self.server.routes.get(target.netloc)  # type: ignore[attr-defined]
        if port is None:
            self.send_error(502, f"no route to {target.netloc}")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        path = target.path + (f"?{target.query}" if target.query else "")
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=self.command)
        req.add_header("Content-Type", self.headers.get("Content-Type") or "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, data = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, data = err.code, err.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _forward

    def log_message(self, *args: Any) -> None:
        pass


def _in_mount(value: str, mount: str) -> bool:
    """Whether a path in a pod spec lies in `mount`. Only the bare `/tmp` counts for the pod's /tmp: host
    paths below /tmp (pytest's temporary dirs, a checkout under /tmp) are shared with the emulated pod
    as they are, like the dataset a real cluster would mount."""
    if mount == "/tmp":
        return value == mount
    return value == mount or value.startswith(f"{mount}/")


# The Dockerfile building each image the pipeline runs without a command (the training Job).
IMAGE_DOCKERFILES = {"registry.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer": "training_image/Dockerfile"}


def image_entrypoint(image: str) -> list[str]:
    """The ENTRYPOINT (exec form) of the Dockerfile that builds `image`, as a container runtime runs it."""
    repository = image.split("@")[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    dockerfile = Path(__file__).resolve().parents[2] / IMAGE_DOCKERFILES[repository]
    (line,) = [x for x in dockerfile.read_text().splitlines() if x.startswith("ENTRYPOINT ")]
    entrypoint: list[str] = json.loads(line.removeprefix("ENTRYPOINT "))
    return entrypoint


class PodActor(threading.Thread):
    """Plays kubelet + Job and Deployment controllers + load balancer for the emulated cluster."""

    def __init__(self, k8s: EmulatedCluster, router: Router, root: Path) -> None:
        super().__init__(daemon=True)
        self.k8s, self.router, self.root = k8s, router, root
        self.stopping = threading.Event()
        self.jobs: dict[str, subprocess.Popen[str]] = {}
        self.servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
        self.error: BaseException | None = None
        self.starting: list[subprocess.Popen[bytes]] = []

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self._step()
                time.sleep(0.1)
        except BaseException as err:  # surfaced by the test
            self.error = err

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(10)
        for proc in [*self.jobs.values(), *self.starting, *(p for _, p in self.servers.values())]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def _env(self, container: dict[str, Any], mapped: dict[str, str]) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "TF_CPP_MIN_LOG_LEVEL": "2"}
        for item in container.get("env", []):
            if "value" in item:
                value = item["value"]
                for prefix, local in mapped.items():
                    if _in_mount(value, prefix):
                        value = local + value[len(prefix) :]
                        break
                env[item["name"]] = value
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                value = FAKE_SECRET.get(ref["name"], {}).get(ref["key"])
                assert value is not None or ref.get("optional"), ref
                if value is not None:
                    env[item["name"]] = value
        return env

    @staticmethod
    def _argv(container: dict[str, Any], mapped: dict[str, str]) -> list[str]:
        command = container.get("command") or image_entrypoint(container["image"])
        argv = [*command, *container.get("args", [])]
        out = []
        for arg in argv:
            flag, eq, value = arg.partition("=")
            for prefix, local in mapped.items():
                if eq and _in_mount(value, prefix):
                    arg = f"{flag}={local}{value[len(prefix) :]}"
                    break
            out.append(arg)
        return [sys.executable if out[0] == "python" else out[0], *out[1:]]

    def _step(self) -> None:
        # Like a real controller, each object is handled on its own, and one deleted between the list and
        # the read or write (a teardown racing the loop) is skipped: `get` answers None, a write raises
        # Gone. Anything else is the actor's own bug and fails the test.
        jobs = self.k8s.names("jobs")
        for name in jobs:
            with contextlib.suppress(Gone):
                self._sync_job(name)
        # A deleted Job's pod is killed, as the garbage collector and the kubelet do.
        for name in set(self.jobs) - set(jobs):
            proc = self.jobs.pop(name)
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        deployments = set(self.k8s.names("deployments"))
        for name in deployments:
            with contextlib.suppress(Gone):
                self._sync_deployment(name)
        for name in set(self.servers) - deployments:
            _, proc = self.servers.pop(name)
            proc.terminate()
            proc.wait(10)
        for name in self.k8s.names("services"):
            with contextlib.suppress(Gone):
                self._sync_service(name)
        for name, (port, _) in self.servers.items():
            self.router.routes[f"{name}.{NAMESPACE}.svc.cluster.local:8501"] = port
            self.router.routes[f"{name}.lb.emulated.example:8501"] = port

    def _sync_job(self, name: str) -> None:
        job = self.k8s.get("jobs", name)
        if job is None:
            return
        if name not in self.jobs:
            if not (job.get("status") or {}).get("conditions"):
                self._start_job(name, job)
            return
        proc = self.jobs[name]
        if proc.poll() is None or self._finished(name):
            return
        code = proc.returncode
        self.k8s.patch(
            "pods",
            f"{name}-pod",
            {
                "status": {
                    "phase": "Succeeded" if code == 0 else "Failed",
                    "containerStatuses": [
                        {
                            "name": "trainer",
                            "state": {
                                "terminated": {
                                    "exitCode": code,
                                    "reason": "Completed" if code == 0 else "Error",
                                }
                            },
                        }
                    ],
                }
            },
        )
        self.k8s.finish_job(name, succeeded=code == 0, reason="BackoffLimitExceeded")

    def _sync_deployment(self, name: str) -> None:
        dep = self.k8s.get("deployments", name)
        if dep is None:
            return
        status = dep.get("status") or {}
        if int(status.get("observedGeneration") or 0) < int(dep["metadata"]["generation"]):
            self._roll_out(name, dep)

    def _sync_service(self, name: str) -> None:
        svc = self.k8s.get("services", name)
        if (
            svc
            and svc["spec"]["type"] == "LoadBalancer"
            and not (svc.get("status") or {}).get("loadBalancer")
        ):
            host = f"{name}.lb.emulated.example"
            self.k8s.patch("services", name, {"status": {"loadBalancer": {"ingress": [{"hostname": host}]}}})

    def _finished(self, name: str) -> bool:
        return bool(((self.k8s.get("jobs", name) or {}).get("status") or {}).get("conditions"))

    def _start_job(self, name: str, job: dict[str, Any]) -> None:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        scratch = self.root / name / "scratch"
        tmp = self.root / name / "tmp"
        scratch.mkdir(parents=True)
        tmp.mkdir(parents=True)
        mapped = {"/scratch": str(scratch), "/tmp": str(tmp)}
        pod = f"{name}-pod"
        self.k8s.add_job_pod(name, pod)
        self.k8s.patch("jobs", name, {"status": {"active": 1}})
        proc = subprocess.Popen(
            self._argv(container, mapped),
            env=self._env(container, mapped),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=scratch,
        )
        self.jobs[name] = proc

        def pump() -> None:
            lines: list[str] = []
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                self.k8s.set_log(pod, lines)

        threading.Thread(target=pump, daemon=True).start()

    def _roll_out(self, name: str, dep: dict[str, Any]) -> None:
        pod = dep["spec"]["template"]["spec"]
        models = self.root / name / f"models-g{dep['metadata']['generation']}"
        tmp = self.root / name / "tmp"
        models.mkdir(parents=True)
        tmp.mkdir(parents=True, exist_ok=True)
        mapped = {"/models": str(models), "/tmp": str(tmp)}
        (init,) = pod["initContainers"]
        subprocess.run(self._argv(init, mapped), env=self._env(init, mapped), check=True, timeout=120)
        (server,) = pod["containers"]
        port = free_port()
        args = [a for a in server["args"] if not a.startswith(("--port=", "--rest_api_port="))]
        args = self._argv({"command": ["x"], "args": args}, mapped)[1:]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airflow_provider_mlpipe.images.serving.server",
                *args,
                f"--rest_api_port={port}",
                "--host=127.0.0.1",
            ],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            stdout=(self.root / name / "server.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        # Tracked before the readiness wait, so stop() ends it whatever happens next.
        self.starting.append(proc)
        probe = f"http://127.0.0.1:{port}{server['readinessProbe']['httpGet']['path']}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(probe, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                f"{name} never became ready: {(self.root / name / 'server.log').read_text()[-2000:]}"
            )
            time.sleep(0.2)
        old = self.servers.get(name)
        self.servers[name] = (port, proc)
        self.starting.remove(proc)
        self.router.routes[f"{name}.{NAMESPACE}.svc.cluster.local:8501"] = port
        self.router.routes[f"{name}.lb.emulated.example:8501"] = port
        # Gone (deleted while the server started): the next step stops the server, as for any deletion.
        self.k8s.roll_out(name)
        if old:
            old[1].terminate()
            old[1].wait(10)


def test_emulated_controllers_skip_objects_deleted_since_the_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The actor's races with a deletion, provoked deterministically: each object it lists is deleted
    before it reads it, and an object it reads is deleted before it writes to it. A real controller
    skips such objects, and so must the actor; a bug of its own still surfaces."""
    with emulated_cluster() as k8s:
        router = Router()
        actor = PodActor(k8s, router, tmp_path)  # driven step by step here, not started
        try:
            k8s.add("jobs", {"metadata": {"name": "train-listed"}, "spec": {}})
            k8s.add("deployments", {"metadata": {"name": "staging-listed", "generation": 1}, "spec": {}})
            k8s.add("services", {"metadata": {"name": "prod-listed"}, "spec": {"type": "LoadBalancer"}})
            listed = k8s.names

            def list_then_delete(kind: str, namespace: str = NAMESPACE) -> list[str]:
                names = listed(kind, namespace)
                for name in names:
                    k8s.delete(kind, name, namespace)
                return names

            monkeypatch.setattr(k8s, "names", list_then_delete)
            actor._step()
            assert actor.jobs == {} and actor.servers == {} and actor.starting == []
            assert [listed(kind) for kind in ("jobs", "deployments", "services")] == [[], [], []]
            monkeypatch.undo()

            # Read, then deleted before the write: the finished training's pod and Job status.
            k8s.add("jobs", {"metadata": {"name": "train-read"}, "spec": {}, "status": {"active": 1}})
            done = subprocess.Popen([sys.executable, "-c", "pass"])
            done.wait(30)
            actor.jobs["train-read"] = done
            read = k8s.get

            def read_then_delete(kind: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
                obj = read(kind, name, namespace)
                if obj is not None:
                    k8s.delete(kind, name, namespace)
                return obj

            monkeypatch.setattr(k8s, "get", read_then_delete)
            actor._step()
            monkeypatch.undo()
            assert k8s.get("jobs", "train-read") is None
            actor._step()  # the next step sees the deletion and forgets the Job's pod
            assert "train-read" not in actor.jobs

            # Its own bug is not swallowed: the thread stops and the test sees why.
            monkeypatch.setattr(k8s, "names", lambda *a, **k: 1 / 0)
            actor.start()
            actor.join(30)
            assert isinstance(actor.error, ZeroDivisionError)
        finally:
            monkeypatch.undo()
            actor.stop()
            router.shutdown()


@pytest.fixture(scope="module")
def oss() -> Iterator[OssEmulator]:
    with OssEmulator(OSS_KEY_ID, OSS_KEY_SECRET, buckets=(OSS_BUCKET,)) as emulator:
        yield emulator


def open_oss_store(oss: OssEmulator, uri: str) -> ModelStore:
    return open_store(
        uri, credentials=OssCredentials(OSS_KEY_ID, OSS_KEY_SECRET, "cn-hangzhou", oss.endpoint)
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatedCluster, PodActor, Router]]:
    with emulated_cluster() as k8s:
        router = Router()
        actor = PodActor(k8s, router, tmp_path_factory.mktemp("kubelet"))
        actor.start()
        try:
            yield k8s, actor, router
        finally:
            actor.stop()
            router.shutdown()


@pytest.fixture(scope="module")
def stack(
    cluster: tuple[EmulatedCluster, PodActor, Router],
    oss: OssEmulator,
    tmp_path_factory: pytest.TempPathFactory,
    fashion_mnist_dir: Path,
) -> Iterator[AirflowStack]:
    k8s, _, router = cluster
    proxy = f"http://127.0.0.1:{router.server_port}"
    # What every Airflow process sees: the emulated cluster as the Kubernetes connection, and cluster DNS
    # (the Services' names, the load balancer's hostname) through the router; Airflow's own API on
    # loopback bypasses it.
    # README's `oss_default`, in the Alibaba provider's fields; its endpoint is the emulator's URL.
    oss_extra = {
        "auth_type": "AK",
        "access_key_id": OSS_KEY_ID,
        "access_key_secret": OSS_KEY_SECRET,
        "region": "cn-hangzhou",
        "endpoint": oss.endpoint,
    }
    env = {
        f"AIRFLOW_CONN_{CONN_ID.upper()}": k8s.connection_json(),
        "AIRFLOW_CONN_OSS_DEFAULT": json.dumps({"conn_type": "oss", "extra": oss_extra}),
        "HTTP_PROXY": proxy,
        "http_proxy": proxy,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    airflow = AirflowStack(
        StackConfig(
            home=tmp_path_factory.mktemp("airflow-home"),
            port=free_port(),
            production_port=free_port(),
            dataset_dir=str(fashion_mnist_dir),
            extra_config={"mlpipe": mlpipe_settings()},
            component_env={component: env for component in COMPONENTS},
        )
    )
    with airflow.running(DAG_ID):
        yield airflow


def _wait(admin: AirflowClient, actor: PodActor, run_id: str, **kwargs: Any) -> dict[str, str | None]:
    """Wait for the run, failing at once if the actor playing the cluster broke."""

    def check(_: dict[str, str | None]) -> None:
        if actor.error is not None:
            raise AssertionError(f"the emulated kubelet/controllers failed: {actor.error!r}") from actor.error

    return admin.wait_for_run(DAG_ID, run_id, timeout=600, on_poll=check, **kwargs)


def _in_order(calls: list[tuple[str, str, str]], expected: list[tuple[str, str, str]]) -> bool:
    """Whether `expected` occurs in `calls` in this order (other calls may come between)."""
    rest = iter(calls)
    return all(call in rest for call in expected)


def test_the_fake_secret_holds_exactly_the_readme_keys() -> None:
    assert sorted(FAKE_SECRET["mlpipe-oss"]) == ["access_key_id", "access_key_secret"]


def test_dag_runs_on_kubernetes(
    cluster: tuple[EmulatedCluster, PodActor, Router],
    stack: AirflowStack,
    oss: OssEmulator,
    fashion_mnist_dir: Path,
) -> None:
    k8s, actor, router = cluster
    admin = stack.client("admin")
    store_uri = f"oss://{OSS_BUCKET}/e2e"
    conf = {
        "image": "registry.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer:e2e",
        "digest": DIGEST,
        "runtime": "kubernetes",
        "model_store": store_uri,
        "dataset": str(fashion_mnist_dir),
        "evaluation_sample": 1000,
        "verify_sample": 1000,
        "min_accuracy": 0.3,
        "approvers": ["admin"],
        "hyperparameters": {"epochs": 2, "train_limit": 5000, "test_limit": 500, "threads": 2},
        "kubernetes": {"cpu": "1", "memory": "2Gi", "replicas": 1},
    }
    run_id = admin.trigger(DAG_ID, conf, run_id="k8s-e2e")
    states = _wait(admin, actor, run_id, until_task=("approval", "awaiting_input"))
    assert states["approval"] == "awaiting_input", states
    # The writes up to the approval gate, in order: nothing reaches production before a person answers.
    job_name = k8s.names("jobs")[0]
    evaluated = admin.xcom(DAG_ID, run_id, "evaluate_staging")
    staging = admin.xcom(DAG_ID, run_id, "deploy_staging")
    staging_name = staging["name"]
    assert k8s.writes() == [
        ("create", "jobs", job_name),
        ("create", "deployments", staging_name),
        ("create", "services", staging_name),
    ]
    assert stack.respond(admin, DAG_ID, run_id, "approval", "Approve").status_code == 200
    states = _wait(admin, actor, run_id)
    assert admin.run_state(DAG_ID, run_id) == "success", states
    for task in (
        "train",
        "deploy_staging",
        "evaluate_staging",
        "accuracy_gate",
        "approval",
        "deploy_production",
        "verify_production",
        "promote_model",
        "teardown_staging",
    ):
        assert states[task] == "success", (task, states)
    assert states["rollback_production"] == "skipped" and states["accuracy_rejected"] == "skipped"
    assert admin.xcom(DAG_ID, run_id, "record_outcome")["outcome"] == "promoted"

    # After the approval, production's rollout and staging's teardown run side by side: each in order.
    prod_name = "serve-fashion-mnist-production"
    writes = k8s.writes()
    assert sorted(writes[3:]) == sorted(
        [
            ("create", "deployments", prod_name),
            ("create", "services", prod_name),
            ("delete(Foreground)", "deployments", staging_name),
            ("delete(Foreground)", "services", staging_name),
        ]
    ), writes
    assert _in_order(writes, [("create", "deployments", prod_name), ("create", "services", prod_name)])
    assert _in_order(
        writes,
        [
            ("delete(Foreground)", "deployments", staging_name),
            ("delete(Foreground)", "services", staging_name),
        ],
    )
    assert k8s.names("deployments") == [prod_name]

    trained = admin.xcom(DAG_ID, run_id, "train")
    production = admin.xcom(DAG_ID, run_id, "deploy_production")
    verified = admin.xcom(DAG_ID, run_id, "verify_production")
    store = open_oss_store(oss, store_uri)
    assert trained["version"] == 1 and store.is_published("fashion_mnist", 1)
    assert staging["url"] == f"http://{staging_name}.{NAMESPACE}.svc.cluster.local:8501"
    assert production["url"] == f"http://{prod_name}.lb.emulated.example:8501"
    assert production["version"] == evaluated["version"] == verified["version"] == 1
    assert 0.3 <= evaluated["accuracy"] <= 1.0 and evaluated["samples"] == 1000
    assert store.get_alias("fashion_mnist", "production")["version"] == 1
    # The trainer wrote the version and the fetch step read it, through OSS (the pods' only way in).
    assert oss.operations["PutObject"] >= 1 and oss.operations["GetObject"] >= 1
    # The production Service answers through the (emulated) load balancer.
    proxies = {"http": f"http://127.0.0.1:{router.server_port}"}
    status = requests.get(f"{production['url']}/v1/models/fashion_mnist", proxies=proxies, timeout=10).json()
    assert status["model_version_status"][0] == {
        "version": "1",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }

    job = k8s.get("jobs", job_name)
    assert job is not None
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"registry.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer@{DIGEST}"
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    oss_env = {e["name"]: e.get("value") for e in container["env"] if e["name"].startswith("OSS_")}
    assert oss_env == {
        "OSS_ACCESS_KEY_ID": None,
        "OSS_ACCESS_KEY_SECRET": None,
        "OSS_REGION": "cn-hangzhou",
        "OSS_ENDPOINT": oss.endpoint,
    }

    # The training pod's log, copied into the train task's log by the trigger.
    logs = stack.home / "logs"
    train_log = "".join(
        p.read_text(errors="replace") for p in logs.glob(f"dag_id={DAG_ID}/run_id={run_id}/task_id=train/*")
    )
    assert "epoch 2/2" in train_log
    # No credential in any manifest, XCom or log file.
    xcoms = [
        admin.xcom(DAG_ID, run_id, t)
        for t in ("train", "deploy_staging", "evaluate_staging", "deploy_production", "verify_production")
    ]
    everything = json.dumps(xcoms) + json.dumps(
        [k8s.get(k, n) for k in ("jobs", "deployments", "services") for n in k8s.names(k)]
    )
    for secret in FAKE_SECRET["mlpipe-oss"].values():
        assert secret not in everything
        assert not [p for p in logs.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
