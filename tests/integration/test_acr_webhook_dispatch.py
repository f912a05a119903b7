"""The ACR webhook's dispatcher in a production-like Airflow: PostgreSQL metadata database, two api-server
processes (each runs its own dispatcher, as workers and replicas do), dag-processor and scheduler.

- Under 50 concurrent duplicates and 500 distinct pushes spread over both api-servers, runs == unique
  digests: the claims (`FOR UPDATE SKIP LOCKED`) and the deterministic run id keep it one run per image.
- An api-server SIGKILLed in the middle of a batch (held at the dispatcher's hold point, after it wrote
  the runs and before it committed): after the restart every acknowledged event has its run, none twice.
  Both api-servers have the hold point: the one that received the pushes waits for a pause in them before
  it dispatches, so the other one's poll may claim the events first; the test kills whichever holds a batch.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_mlpipe.demo.stack import AirflowClient, AirflowStack, StackConfig, free_port
from airflow_provider_mlpipe.holds import HELD, env_name
from airflow_provider_mlpipe.webhooks.acr import run_id_for
from airflow_provider_mlpipe.webhooks.dispatch import HOLD_POINT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SECRET = "it-" + "4b1d" * 8
DAG_ID = "mlpipe_acr_dispatch"
REPO = "mlpipe/dispatch-test"
KILL_REPO = "mlpipe/dispatch-kill"
# max_active_runs=1: hundreds of runs are created, the scheduler need not start them all meanwhile.
DAG_FILE = f"""
from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param

with DAG(
    dag_id="{DAG_ID}",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={{"image": Param("", type="string"), "digest": Param("", type="string"), "tag": Param("")}},
):
    EmptyOperator(task_id="noop")
"""


def payload(repo: str, n: int) -> bytes:
    namespace, name = repo.split("/")
    return json.dumps(
        {
            "push_data": {"digest": f"sha256:{n:064x}", "pushed_at": "2026-11-29 12:25:46", "tag": "latest"},
            "repository": {
                "name": name,
                "namespace": namespace,
                "region": "cn-hangzhou",
                "repo_full_name": repo,
            },
        }
    ).encode()


class Servers:
    def __init__(self, stack: AirflowStack, second_port: int, hold_file: Path) -> None:
        self.stack = stack
        self.urls = [
            f"{stack.url}/mlpipe/webhooks/acr",
            f"http://127.0.0.1:{second_port}/mlpipe/webhooks/acr",
        ]
        self.hold_file = hold_file
        self.components = ("api-server", "api-server-2")

    def deliver(self, server: int, body: bytes, session: requests.Session | None = None) -> requests.Response:
        return (session or requests).post(
            self.urls[server],
            data=body,
            params={"token": SECRET},
            headers={"Content-Type": "application/json"},
            timeout=60,
        )

    def events(self, server: int = 1) -> dict[str, dict[str, Any]]:
        resp = requests.get(
            f"{self.urls[server]}/events", params={"token": SECRET, "limit": "500"}, timeout=60
        )
        resp.raise_for_status()
        return {e["event_id"]: e for e in resp.json()["events"]}


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise TimeoutError(f"{what} not within {timeout:.0f} s (last: {last})")


def wait_serving(url: str, timeout: float = 240) -> None:
    def up() -> bool:
        try:
            return requests.get(f"{url}/events", timeout=10).status_code == 401
        except requests.RequestException:
            return False

    wait_until(up, timeout, f"{url} serving")


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, postgres_database: Callable[[], str]
) -> Iterator[Servers]:
    home = tmp_path_factory.mktemp("airflow-acr-dispatch")
    dags = home / "dags"
    dags.mkdir()
    (dags / f"{DAG_ID}.py").write_text(DAG_FILE)
    hold_file = home / "hold-dispatch"
    second_port = free_port()
    stack = AirflowStack(
        StackConfig(
            home=home,
            port=free_port(),
            production_port=free_port(),
            dags_folder=dags,
            sql_alchemy_conn=postgres_database(),
            extra_config={
                "dag_processor": {"refresh_interval": "3", "min_file_process_interval": "30"},
                "mlpipe": {"acr_webhook_retry_interval": "1", "acr_webhook_config_ttl": "0"},
            },
            # Both api-servers have the hold point; they hold only while the file exists.
            component_env={
                "api-server": {env_name(HOLD_POINT): str(hold_file)},
                "api-server-2": {
                    "AIRFLOW__API__PORT": str(second_port),
                    env_name(HOLD_POINT): str(hold_file),
                },
            },
        )
    )
    try:
        stack.start(components=("api-server", "api-server-2", "dag-processor", "scheduler"))
        admin = stack.client("admin")
        admin.call("POST", "/variables", json={"key": "mlpipe_acr_webhook_secret", "value": SECRET})
        routes = [{"repository": "mlpipe/dispatch-*", "dag_id": DAG_ID}]
        admin.call("POST", "/variables", json={"key": "mlpipe_acr_routes", "value": json.dumps(routes)})
        admin.wait_for_dag(DAG_ID)
        admin.unpause(DAG_ID)
        result = Servers(stack, second_port, hold_file)
        for url in result.urls:
            wait_serving(url)
        yield result
    finally:
        hold_file.unlink(missing_ok=True)
        stack.stop()


@pytest.fixture(scope="module")
def admin(servers: Servers) -> AirflowClient:
    return servers.stack.client("admin")


def run_ids(admin: AirflowClient) -> list[str]:
    ids: list[str] = []
    while True:
        body = admin.call(
            "GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 100, "offset": len(ids), "order_by": "id"}
        )
        ids += [run["dag_run_id"] for run in body["dag_runs"]]
        if len(ids) >= body["total_entries"] or not body["dag_runs"]:
            return ids


def test_two_api_servers_under_duplicates_and_distinct_pushes_create_one_run_per_digest(
    servers: Servers, admin: AirflowClient
) -> None:
    before = run_ids(admin)
    # 50 concurrent deliveries of one push, then 500 distinct ones, each alternating between the servers.
    with ThreadPoolExecutor(50) as pool:
        dupes = list(pool.map(lambda i: servers.deliver(i % 2, payload(REPO, 1)), range(50)))
    assert sorted(r.status_code for r in dupes) == [200] * 49 + [202], [
        r.text for r in dupes if r.status_code > 202
    ]
    with ThreadPoolExecutor(16) as pool:
        distinct = list(pool.map(lambda n: servers.deliver(n % 2, payload(REPO, n)), range(2, 502)))
    assert {r.status_code for r in distinct} == {202}, {r.status_code for r in distinct}
    expected = {run_id_for(REPO, f"sha256:{n:064x}") for n in [1, *range(2, 502)]}
    assert {r.json()["run_id"] for r in [*dupes, *distinct]} == expected

    def all_created() -> bool:
        return len(set(run_ids(admin)) - set(before)) >= len(expected)

    wait_until(all_created, 300, "a run for every acknowledged push")
    created = [r for r in run_ids(admin) if r not in before]
    assert sorted(created) == sorted(expected)  # runs == unique digests, none twice
    states = {e["state"] for e in servers.events(0).values() if e["event_id"] in expected}
    assert states == {"run_created"}


def test_api_server_killed_mid_batch_every_acknowledged_event_gets_exactly_one_run(
    servers: Servers, admin: AirflowClient
) -> None:
    stack = servers.stack
    logs = [stack.home / "logs" / f"{name}.log" for name in servers.components]

    def held_counts() -> list[int]:
        return [log.read_text(errors="replace").count(f"{HELD} {HOLD_POINT}") for log in logs]

    held_before = held_counts()
    before = run_ids(admin)
    servers.hold_file.write_text("hold")
    try:
        with requests.Session() as session:
            acked = [servers.deliver(0, payload(KILL_REPO, n), session) for n in range(1, 31)]
        assert {r.status_code for r in acked} == {202}
        expected = {r.json()["run_id"] for r in acked}
        # A dispatcher (the first server's once the pushes pause, or the second one's poll) now holds a
        # batch: runs written, not committed. Wait for that, not for a stretch of time.
        holding = wait_until(
            lambda: [
                i for i, (now, was) in enumerate(zip(held_counts(), held_before, strict=True)) if now > was
            ],
            120,
            "a dispatcher holding its batch",
        )
        victim, survivor = holding[0], 1 - holding[0]
        # The held batch's events are locked, so no other dispatcher takes them: they are still `received`
        # and their runs, written but not committed, are visible to nobody.
        # (Runs read first: an event still `received` after that had no committed run then, since a batch
        # commits runs and states together.)
        runs = set(run_ids(admin))
        events = servers.events(survivor)
        held = {r for r in expected if events[r]["state"] == "received"}
        assert held
        assert not held & runs
        stack.kill_component(servers.components[victim], signal.SIGKILL)
    finally:
        servers.hold_file.unlink(missing_ok=True)
        restarted = stack.restore(240)
    assert restarted == [servers.components[victim]]
    wait_serving(servers.urls[victim])

    def all_created() -> bool:
        events = servers.events(0)
        return all(events.get(r, {}).get("state") == "run_created" for r in expected)

    wait_until(all_created, 240, "every acknowledged event's run")
    created = [r for r in run_ids(admin) if r not in before]
    assert sorted(created) == sorted(expected)
    # A redelivery now answers with the same run and creates nothing.
    again = servers.deliver(0, payload(KILL_REPO, 1))
    assert again.status_code == 200 and again.json()["run_id"] == run_id_for(KILL_REPO, f"sha256:{1:064x}")
