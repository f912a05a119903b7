"""The ACR webhook in a real Airflow: api-server (with the plugin loaded from the repository's `plugins/`),
dag-processor and scheduler as separate processes, SQLite metadata database, requests over loopback.

Runs go to a tiny DAG (one EmptyOperator, finished by the scheduler without a worker) and to the real
`mlpipe_fashion_mnist`, which stays paused so nothing trains: its events wait `pending` (a paused DAG's
events get their runs once it is unpaused) with the conf its run will get.

The webhook answers 202 once an event is recorded; the api-server's dispatcher creates the run behind it,
so the tests wait for the event's state (the events endpoint) rather than for a stretch of time.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_mlpipe.demo.stack import REPO_ROOT, AirflowClient, AirflowStack, StackConfig, free_port
from airflow_provider_mlpipe.webhooks.acr import DIGEST_PATTERN, run_id_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SECRET = "it-" + "7f3a9c" * 6
TEST_DAG = "mlpipe_acr_test"
LATE_DAG = "mlpipe_acr_late"
REAL_DAG = "mlpipe_fashion_mnist"
TEST_REPO = "mlpipe/acr-test"
REAL_REPO = "mlpipe/fashion-trainer"
ROUTES = [
    {"repository": TEST_REPO, "tag": "*", "dag_id": TEST_DAG, "params": {"model_name": "acr_test"}},
    {"repository": "mlpipe/late", "dag_id": LATE_DAG},
    {"repository": REAL_REPO, "tag": "v*", "dag_id": REAL_DAG, "params": {"min_accuracy": 0.9}},
]

DAG_TEMPLATE = """
from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param

with DAG(
    dag_id="{dag_id}",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=64,
    params={{
        "image": Param(type="string", minLength=1, pattern=r"^\\S+@sha256:[0-9a-f]{{64}}$"),
        "digest": Param("", type="string", pattern=r"^(|sha256:[0-9a-f]{{64}})$"),
        "tag": Param("", type="string"),
        "model_name": Param("fashion_mnist", type="string"),
    }},
):
    EmptyOperator(task_id="noop")
"""


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def payload(repo: str = TEST_REPO, dig: str = digest(1), tag: str = "latest") -> dict[str, Any]:
    namespace, name = repo.split("/", 1)
    return {
        "push_data": {"digest": dig, "pushed_at": "2016-11-29 12:25:46", "tag": tag},
        "repository": {
            "date_created": "2016-10-28 21:31:42",
            "name": name,
            "namespace": namespace,
            "region": "cn-hangzhou",
            "repo_authentication_type": "NO_CERTIFIED",
            "repo_full_name": repo,
            "repo_origin_type": "NO_CERTIFIED",
            "repo_type": "PUBLIC",
        },
    }


def image(repo: str, dig: str) -> str:
    return f"registry.cn-hangzhou.aliyuncs.com/{repo}@{dig}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("airflow-acr")
    dags = home / "dags"
    dags.mkdir()
    (dags / f"{TEST_DAG}.py").write_text(DAG_TEMPLATE.format(dag_id=TEST_DAG))
    shutil.copy(REPO_ROOT / "dags" / f"{REAL_DAG}.py", dags / f"{REAL_DAG}.py")
    airflow = AirflowStack(
        StackConfig(
            home=home,
            port=free_port(),
            production_port=free_port(),
            dags_folder=dags,
            extra_config={
                # Everything starts paused: the real pipeline must never start here.
                "core": {"dags_are_paused_at_creation": "True"},
                "dag_processor": {"refresh_interval": "3", "min_file_process_interval": "30"},
                "mlpipe": {"acr_webhook_retry_interval": "1", "acr_webhook_config_ttl": "0"},
            },
        )
    )
    try:
        airflow.start(components=("api-server", "dag-processor", "scheduler"))
        admin = airflow.client("admin")
        admin.call("POST", "/variables", json={"key": "mlpipe_acr_webhook_secret", "value": SECRET})
        admin.call("POST", "/variables", json={"key": "mlpipe_acr_routes", "value": json.dumps(ROUTES)})
        admin.wait_for_dag(TEST_DAG)
        admin.wait_for_dag(REAL_DAG)
        admin.unpause(TEST_DAG)
        yield airflow
    finally:
        airflow.stop()


@pytest.fixture(scope="module")
def admin(stack: AirflowStack) -> AirflowClient:
    return stack.client("admin")


@pytest.fixture(scope="module")
def hook_url(stack: AirflowStack) -> str:
    return f"{stack.url}/mlpipe/webhooks/acr"


@pytest.fixture(scope="module")
def deliver(hook_url: str) -> Callable[..., requests.Response]:
    def post(body: Any, token: str | None = SECRET, **kwargs: Any) -> requests.Response:
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        params = {"token": token} if token is not None else None
        return requests.post(hook_url, data=data, headers=headers, params=params, timeout=60, **kwargs)

    return post


def runs_of(client: AirflowClient, dag_id: str) -> dict[str, dict[str, Any]]:
    body = client.call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})
    return {run["dag_run_id"]: run for run in body["dag_runs"]}


def event_of(hook_url: str, event_id: str) -> dict[str, Any] | None:
    resp = requests.get(f"{hook_url}/events", params={"token": SECRET, "limit": "500"}, timeout=30)
    resp.raise_for_status()
    return next((e for e in resp.json()["events"] if e["event_id"] == event_id), None)


def wait_event(hook_url: str, event_id: str, state: str, timeout: float = 120) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = event_of(hook_url, event_id)
        return found if found is not None and found["state"] == state else None

    return dict(wait_until(reached, timeout, f"event {event_id} {state}"))


def stored_conf(stack: AirflowStack, event_id: str) -> dict[str, Any] | None:
    """The conf the event's run gets, read from the event table (the endpoint does not show it)."""
    from sqlalchemy import create_engine

    from airflow_provider_mlpipe.webhooks.events import EventLog

    engine = create_engine(f"sqlite:///{stack.home / 'airflow.db'}")
    try:
        record = EventLog(engine).get(event_id)
    finally:
        engine.dispose()
    return record.conf if record is not None else None


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise TimeoutError(f"{what} not within {timeout:.0f} s (last: {last})")


# ------------------------------------------------------------------------------------------ happy path
def test_valid_event_is_acknowledged_then_gets_one_run_with_the_expected_conf(
    deliver: Callable[..., requests.Response], admin: AirflowClient, hook_url: str
) -> None:
    resp = deliver(payload(dig=digest(1)))
    assert resp.status_code == 202, resp.text
    run_id = run_id_for(TEST_REPO, digest(1))
    assert resp.json()["run_id"] == resp.json()["event_id"] == run_id
    assert resp.json()["status"] == "received"
    event = wait_event(hook_url, run_id, "run_created")
    assert event["ack_to_run_created_ms"] >= 0
    run = admin.call("GET", f"/dags/{TEST_DAG}/dagRuns/{run_id}")
    assert run["conf"] == {
        "image": image(TEST_REPO, digest(1)),
        "digest": digest(1),
        "tag": "latest",
        "model_name": "acr_test",
    }
    assert run["run_type"] == "manual"
    assert run["triggering_user_name"] == "acr-webhook"
    wait_until(lambda: admin.run_state(TEST_DAG, run_id) == "success", 90, "the webhook's run succeeding")


def test_redelivery_answers_200_with_the_same_ids(
    deliver: Callable[..., requests.Response], admin: AirflowClient, hook_url: str
) -> None:
    first = deliver(payload(dig=digest(2)))
    assert first.status_code == 202, first.text
    again = deliver(payload(dig=digest(2)))
    assert again.status_code == 200, again.text
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.json()["event_id"] == first.json()["event_id"]
    assert again.json()["duplicate"] is True
    wait_event(hook_url, first.json()["event_id"], "run_created")
    later = deliver(payload(dig=digest(2)))
    assert (later.status_code, later.json()["status"]) == (200, "run_created")
    assert [r for r in runs_of(admin, TEST_DAG) if r == first.json()["run_id"]] == [first.json()["run_id"]]


def test_fifty_concurrent_identical_deliveries_create_one_run(
    deliver: Callable[..., requests.Response], admin: AirflowClient, hook_url: str
) -> None:
    before = set(runs_of(admin, TEST_DAG))
    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(lambda _: deliver(payload(dig=digest(3))), range(50)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 49 + [202], [r.text for r in responses if r.status_code >= 300]
    assert {r.json()["run_id"] for r in responses} == {run_id_for(TEST_REPO, digest(3))}
    wait_event(hook_url, run_id_for(TEST_REPO, digest(3)), "run_created")
    assert set(runs_of(admin, TEST_DAG)) - before == {run_id_for(TEST_REPO, digest(3))}


def test_wrong_or_missing_secret_is_401(
    deliver: Callable[..., requests.Response], admin: AirflowClient
) -> None:
    before = set(runs_of(admin, TEST_DAG))
    for token in ("wrong", "", None, SECRET[:-1]):
        resp = deliver(payload(dig=digest(4)), token=token)
        assert resp.status_code == 401, (token, resp.text)
        assert resp.content == b""
    # Airflow's own JWT is not the webhook secret either.
    jwt = admin.session.headers["Authorization"]
    assert deliver(payload(dig=digest(4)), token=None, headers={"Authorization": jwt}).status_code == 401
    assert set(runs_of(admin, TEST_DAG)) == before


# ---------------------------------------------------------------------------------- malformed bodies
REQUIRED = [
    ("push_data",),
    ("repository",),
    ("push_data", "digest"),
    ("push_data", "tag"),
    ("push_data", "pushed_at"),
    ("repository", "repo_full_name"),
    ("repository", "region"),
]
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
VALUES = st.recursive(
    SCALARS | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=8,
)


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["missing", "wrong_type", "digest", "not_object", "truncated", "garbage"]))
    body = payload(dig=digest(99))
    path = draw(st.sampled_from(REQUIRED))
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    if kind == "missing":
        del target[path[-1]]
    elif kind == "wrong_type":
        value = draw(SCALARS | st.lists(VALUES, max_size=3))
        target[path[-1]] = value
    elif kind == "digest":
        body["push_data"]["digest"] = draw(
            st.text(max_size=80).filter(lambda s: not re.match(DIGEST_PATTERN, s))
        )
    elif kind == "not_object":
        return json.dumps(draw(SCALARS | st.lists(VALUES, max_size=3))).encode()
    elif kind == "truncated":
        raw = json.dumps(body).encode()
        return raw[: draw(st.integers(min_value=0, max_value=len(raw) - 1))]
    else:
        return draw(st.binary(max_size=200).filter(lambda b: b.strip()[:1] != b"{"))
    return json.dumps(body).encode()


def test_a_thousand_malformed_bodies_never_5xx_and_create_no_run(hook_url: str, admin: AirflowClient) -> None:
    before = set(runs_of(admin, TEST_DAG))
    session = requests.Session()
    seen: dict[int, int] = {}

    @settings(
        max_examples=1000,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(body=malformed())
    def check(body: bytes) -> None:
        resp = session.post(
            hook_url,
            data=body,
            params={"token": SECRET},
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        assert 400 <= resp.status_code < 500, (resp.status_code, body[:200], resp.text[:300])
        assert resp.json()["detail"][0]["field"]

    check()
    assert sum(seen.values()) >= 1000, seen
    assert set(runs_of(admin, TEST_DAG)) == before
    # Oversized and non-JSON bodies too.
    big = json.dumps({**payload(dig=digest(98)), "pad": "x" * 70_000}).encode()
    resp = session.post(
        hook_url, data=big, params={"token": SECRET}, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 413
    resp = session.post(hook_url, data=json.dumps(payload(dig=digest(98))), params={"token": SECRET})
    assert resp.status_code == 415
    assert set(runs_of(admin, TEST_DAG)) == before


# ------------------------------------------------------------------------------------ no event lost
def test_event_for_a_paused_dag_stays_pending_and_runs_once_it_is_unpaused(
    stack: AirflowStack, deliver: Callable[..., requests.Response], admin: AirflowClient, hook_url: str
) -> None:
    admin.call("PATCH", f"/dags/{TEST_DAG}", json={"is_paused": True})
    try:
        resp = deliver(payload(dig=digest(5)))
        assert resp.status_code == 202, resp.text
        run_id = resp.json()["run_id"]
        event = wait_event(hook_url, run_id, "pending")
        assert "paused" in event["reason"]
        assert run_id not in runs_of(admin, TEST_DAG)
    finally:
        admin.unpause(TEST_DAG)
    event = wait_event(hook_url, run_id, "run_created")
    assert event["run_id"] == run_id and event["reason"] is None
    wait_until(lambda: admin.run_state(TEST_DAG, run_id) == "success", 90, "the held run succeeding")
    assert deliver(payload(dig=digest(5))).json()["run_id"] == run_id


def test_event_for_a_dag_not_yet_parsed_is_retried_until_it_runs(
    stack: AirflowStack, deliver: Callable[..., requests.Response], admin: AirflowClient, hook_url: str
) -> None:
    resp = deliver(payload(repo="mlpipe/late", dig=digest(6)))
    assert resp.status_code == 202, resp.text
    run_id = run_id_for("mlpipe/late", digest(6))
    assert "not parsed" in wait_event(hook_url, run_id, "pending")["reason"]
    (stack.config.dags_folder / f"{LATE_DAG}.py").write_text(DAG_TEMPLATE.format(dag_id=LATE_DAG))
    admin.wait_for_dag(LATE_DAG)
    # Parsed, but paused at creation in this module: the event waits for that now.
    wait_until(
        lambda: "paused" in ((event_of(hook_url, run_id) or {}).get("reason") or ""), 60, "the DAG parsed"
    )
    admin.unpause(LATE_DAG)
    wait_event(hook_url, run_id, "run_created")
    assert list(runs_of(admin, LATE_DAG)) == [run_id]
    assert runs_of(admin, LATE_DAG)[run_id]["conf"]["image"] == image("mlpipe/late", digest(6))


# ------------------------------------------------------------------------------- routing, real DAG
def test_route_to_the_real_dag_passes_its_params_and_unrouted_tags_are_ignored(
    stack: AirflowStack, deliver: Callable[..., requests.Response], admin: AirflowClient, hook_url: str
) -> None:
    resp = deliver(payload(repo=REAL_REPO, dig=digest(7), tag="v1.0"))
    assert resp.status_code == 202, resp.text
    # The DAG stays paused in this module (nothing trains): the event waits with the conf of its run.
    event = wait_event(hook_url, resp.json()["event_id"], "pending")
    assert "paused" in event["reason"] and event["dag_id"] == REAL_DAG
    assert stored_conf(stack, event["event_id"]) == {
        "image": image(REAL_REPO, digest(7)),
        "digest": digest(7),
        "tag": "v1.0",
        "min_accuracy": 0.9,
    }
    assert event["event_id"] not in runs_of(admin, REAL_DAG)

    ignored = deliver(payload(repo=REAL_REPO, dig=digest(8), tag="dev"))
    assert ignored.status_code == 202
    assert ignored.json()["status"] == "ignored" and ignored.json()["run_id"] is None
    assert run_id_for(REAL_REPO, digest(8)) not in runs_of(admin, REAL_DAG)


def test_events_endpoint_lists_run_ids_and_states(hook_url: str) -> None:
    assert requests.get(f"{hook_url}/events", timeout=30).status_code == 401
    resp = requests.get(f"{hook_url}/events", params={"token": SECRET, "limit": "200"}, timeout=30)
    assert resp.status_code == 200
    events = {e["event_id"]: e for e in resp.json()["events"]}
    first = events[run_id_for(TEST_REPO, digest(1))]
    assert first["state"] == "run_created"
    assert first["ack_to_run_created_ms"] >= 0
    assert first["run_id"] == run_id_for(TEST_REPO, digest(1))
    assert first["run_state"] == "success"
    assert events[run_id_for(TEST_REPO, digest(3))]["state"] == "run_created"
    assert events[run_id_for(REAL_REPO, digest(8))]["state"] == "ignored"


# ---------------------------------------------------------------- the other two ways to start a run
def test_rest_api_v2_trigger_validates_conf_against_params(admin: AirflowClient) -> None:
    good = {"image": image(REAL_REPO, digest(9)), "digest": digest(9), "tag": "manual"}
    for bad, fragment in (
        ({"digest": digest(9)}, "image"),
        ({**good, "min_accuracy": 2}, "min_accuracy"),
        ({**good, "runtime": "mars"}, "runtime"),
        # Outside the trainer's range: refused here, not by the trainer once a version is reserved.
        ({**good, "hyperparameters": {"learning_rate": 2}}, "learning_rate"),
        ({**good, "hyperparameters": {"learning_rat": 0.1}}, "learning_rat"),
    ):
        resp = admin.request("POST", f"/dags/{REAL_DAG}/dagRuns", json={"logical_date": None, "conf": bad})
        assert resp.status_code == 400, (bad, resp.text)
        assert fragment in resp.text
    run_id = admin.trigger(REAL_DAG, good, run_id="rest-manual")
    assert admin.call("GET", f"/dags/{REAL_DAG}/dagRuns/{run_id}")["conf"] == good


def test_cli_trigger_with_conf_validates_against_params(stack: AirflowStack, admin: AirflowClient) -> None:
    good = {"image": image(REAL_REPO, digest(10)), "min_accuracy": 0.88}
    done = stack.airflow("dags", "trigger", REAL_DAG, "--run-id", "cli-manual", "--conf", json.dumps(good))
    assert done.returncode == 0, done.stderr
    assert admin.call("GET", f"/dags/{REAL_DAG}/dagRuns/cli-manual")["conf"] == good
    bad = stack.airflow(
        "dags",
        "trigger",
        REAL_DAG,
        "--run-id",
        "cli-bad",
        "--conf",
        json.dumps({"min_accuracy": 0.5}),
        check=False,
    )
    assert bad.returncode != 0
    assert "image" in bad.stdout + bad.stderr
    assert admin.request("GET", f"/dags/{REAL_DAG}/dagRuns/cli-bad").status_code == 404


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"min_acuracy": 0.95},
            "mlpipe_acr_routes[2].params: unknown param 'min_acuracy'; did you mean 'min_accuracy'?",
        ),
        (
            {"runtime": "local", "kubernetes": {"gpus": 2}},
            "these settings apply to runtime 'kubernetes' only",
        ),
    ],
)
def test_bad_route_params_are_reported_and_no_run_is_created(
    stack: AirflowStack,
    deliver: Callable[..., requests.Response],
    admin: AirflowClient,
    hook_url: str,
    params: dict[str, Any],
    message: str,
) -> None:
    """A route whose params the pipeline would ignore or cannot honour is reported on the events endpoint
    (and in the api-server log) when the routes are read; pushes wait pending, and are routed again once the
    route is fixed."""
    dig = digest(12 if "min_acuracy" in params else 13)
    routes = [*ROUTES[:2], {**ROUTES[2], "params": params}]
    admin.call(
        "PATCH",
        "/variables/mlpipe_acr_routes",
        json={"key": "mlpipe_acr_routes", "value": json.dumps(routes)},
    )
    try:
        listing = requests.get(f"{hook_url}/events", params={"token": SECRET}, timeout=30)
        assert listing.status_code == 200
        assert message in listing.json()["routes_error"]
        resp = deliver(payload(repo=REAL_REPO, dig=dig, tag="v2"))
        assert resp.status_code == 202, resp.text
        event = wait_event(hook_url, resp.json()["event_id"], "pending")
        assert message in event["reason"]
        assert run_id_for(REAL_REPO, dig) not in runs_of(admin, REAL_DAG)
    finally:
        admin.call(
            "PATCH",
            "/variables/mlpipe_acr_routes",
            json={"key": "mlpipe_acr_routes", "value": json.dumps(ROUTES)},
        )
    assert (
        requests.get(f"{hook_url}/events", params={"token": SECRET}, timeout=30).json()["routes_error"]
        is None
    )
    # Routed again on the next retry pass: now it waits only for the (paused) DAG, with the fixed params.
    run_id = run_id_for(REAL_REPO, dig)
    wait_until(
        lambda: "paused" in ((event_of(hook_url, run_id) or {}).get("reason") or ""),
        60,
        "the held push routed with the fixed routes",
    )
    assert (stored_conf(stack, run_id) or {})["min_accuracy"] == 0.9


# ------------------------------------------------------------------------------- fault: api-server down
def test_api_server_down_during_delivery_then_redelivered_creates_one_run(
    stack: AirflowStack, deliver: Callable[..., requests.Response], admin: AirflowClient
) -> None:
    """The api-server (which hosts the webhook) is killed -9 when a push arrives: the delivery fails at
    the connection, so ACR keeps it and redelivers. Once the api-server is back, the redelivery creates
    the run and a further redelivery answers with the same run."""
    body = payload(dig=digest(77))
    stack.kill_component("api-server", signal.SIGKILL)
    try:
        with pytest.raises(requests.ConnectionError):
            deliver(body)
    finally:
        # Back up whatever happened, so a failure here does not fail the module's later tests too.
        restarted = stack.restore(180)
    assert restarted == ["api-server"]
    first, again = deliver(body), deliver(body)
    assert (first.status_code, again.status_code) == (202, 200), (first.text, again.text)
    run_id = run_id_for(TEST_REPO, digest(77))
    assert first.json()["run_id"] == again.json()["run_id"] == run_id
    wait_event(f"{stack.url}/mlpipe/webhooks/acr", run_id, "run_created")
    assert run_id in runs_of(admin, TEST_DAG)
