"""The webhook app through FastAPI's TestClient: a real SQLite event log (migrated), a fake Airflow behind
`create_runs` (emulated: a dict of runs, not Airflow's DagRun table).

Covers authentication, content type, size, validation (with >= 1,000 generated malformed bodies), the
202-on-record contract, routing, one run per (repository, digest), the dispatcher's batches and claims,
pending events and their retry, and the events listing.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

from airflow_provider_mlpipe.migrations import upgrade
from airflow_provider_mlpipe.webhooks.acr import DEFAULT_DAG_ID, DIGEST_PATTERN, Route, run_id_for
from airflow_provider_mlpipe.webhooks.app import MAX_BODY_BYTES, TOKEN_HEADER, create_app
from airflow_provider_mlpipe.webhooks.dispatch import (
    Dispatcher,
    RunRequest,
    RunResult,
    WebhookSettings,
    build_settings,
)
from airflow_provider_mlpipe.webhooks.events import EventLog

SECRET = "s3cr3t-token_+/="
DIGEST = "sha256:" + "0123456789abcdef" * 4
URL = "/webhooks/acr"
ROUTES = (
    Route(repository="mlpipe/fashion-*", tag="*", dag_id="train", params={"min_accuracy": 0.9}),
    Route(repository="mlpipe/late", dag_id="late_dag"),
)


def payload(
    repo: str = "mlpipe/fashion-trainer", digest: str = DIGEST, tag: str = "latest"
) -> dict[str, Any]:
    namespace, name = repo.split("/", 1)
    return {
        "push_data": {"digest": digest, "pushed_at": "2016-11-29 12:25:46", "tag": tag},
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


@dataclass
class FakeAirflow:
    """What the dispatcher needs from Airflow: create runs (idempotently) and report run states."""

    runs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    parsed: set[str] = field(default_factory=lambda: {"train"})
    paused: set[str] = field(default_factory=set)
    reject: set[str] = field(default_factory=set)
    fail_with: Exception | None = None
    calls: int = 0
    requested: list[str] = field(default_factory=list)
    created: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def create_runs(self, session: Any, requests: list[RunRequest]) -> dict[str, RunResult]:
        with self.lock:
            self.calls += 1
            if self.fail_with is not None:
                raise self.fail_with
            results = {}
            for r in requests:
                self.requested.append(r.run_id)
                if r.dag_id not in self.parsed:
                    results[r.run_id] = RunResult("pending", f"DAG {r.dag_id!r} is not parsed yet")
                elif r.dag_id in self.paused:
                    results[r.run_id] = RunResult("pending", f"DAG {r.dag_id!r} is paused")
                elif r.dag_id in self.reject:
                    results[r.run_id] = RunResult("rejected", "Invalid input for param min_accuracy")
                elif (r.dag_id, r.run_id) in self.runs:
                    results[r.run_id] = RunResult("existing")
                else:
                    self.runs[(r.dag_id, r.run_id)] = dict(r.conf)
                    results[r.run_id] = RunResult("created")
            if self.runs:
                self.created.set()
            return results

    def run_states(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        return {key: "queued" for key in keys if key in self.runs}


@dataclass
class Harness:
    client: TestClient
    airflow: FakeAirflow
    events: EventLog
    config: dict[str, WebhookSettings]

    def post(self, body: Any, *, token: str | None = SECRET, **kwargs: Any) -> Any:
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        params = {"token": token} if token is not None else {}
        content = body if isinstance(body, bytes | str) else json.dumps(body)
        return self.client.post(URL, content=content, headers=headers, params=params, **kwargs)

    def configure(self, **changes: Any) -> None:
        self.config["current"] = replace(self.config["current"], **changes)

    @property
    def dispatcher(self) -> Dispatcher:
        return self.client.app.state.dispatcher  # type: ignore[attr-defined,no-any-return]

    def dispatch(self) -> int:
        """What the lifespan task does when woken: batches of `received` events until none is left."""
        return self.dispatcher.drain()


def sqlite_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _wal(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.execute("PRAGMA journal_mode=WAL")

    return engine


def make_harness(tmp_path: Path, *, batch_size: int = 100) -> Harness:
    engine = sqlite_engine(tmp_path / "events.db")
    upgrade(engine)  # the provider's migrations, as a deployment runs them before the api-server starts
    events = EventLog(engine)
    airflow = FakeAirflow()
    config = {
        "current": WebhookSettings(
            secret=SECRET, routes=ROUTES, retry_interval=0.05, ttl=0, batch_size=batch_size
        )
    }
    app = create_app(
        settings=lambda: config["current"],
        event_log=lambda: events,
        create_runs=airflow.create_runs,
        run_states=airflow.run_states,
        dispatcher_task=False,
    )
    return Harness(TestClient(app, raise_server_exceptions=False), airflow, events, config)


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return make_harness(tmp_path)


# ---------------------------------------------------------------------------------------- authentication
@pytest.mark.parametrize("token", [None, "", "wrong", SECRET + "x", SECRET[:-1], SECRET.upper()])
def test_missing_or_wrong_secret_is_a_bare_401(h: Harness, token: str | None) -> None:
    resp = h.post(payload(), token=token)
    assert resp.status_code == 401
    assert resp.content == b""
    assert h.airflow.calls == 0
    assert h.events.recent() == []


def test_secret_in_header_works_and_wrong_one_in_header_wins_over_nothing(h: Harness) -> None:
    assert h.post(payload(), token=None, headers={TOKEN_HEADER: SECRET}).status_code == 202
    assert h.post(payload(), token=None, headers={TOKEN_HEADER: "nope"}).status_code == 401


def test_unauthenticated_gets_401_before_anything_about_the_body(h: Harness) -> None:
    assert h.post(b"x" * (MAX_BODY_BYTES + 10), token="wrong").status_code == 401
    assert h.post(payload(), token="wrong", headers={"Content-Type": "text/plain"}).status_code == 401


def test_unset_secret_refuses_everything(h: Harness) -> None:
    h.configure(secret=None)
    assert h.post(payload(), token="").status_code == 401
    assert h.post(payload(), token="None").status_code == 401


def test_events_listing_needs_the_secret(h: Harness) -> None:
    assert h.client.get(f"{URL}/events").status_code == 401
    assert h.client.get(f"{URL}/events", params={"token": "x"}).status_code == 401
    assert h.client.get(f"{URL}/events", params={"token": SECRET}).status_code == 200


# ------------------------------------------------------------------------------------- input validation
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "", "json"])
def test_wrong_content_type_is_415(h: Harness, content_type: str) -> None:
    resp = h.post(payload(), headers={"Content-Type": content_type})
    assert resp.status_code == 415
    assert resp.json()["detail"][0]["field"] == "header.content-type"


def test_json_content_type_with_charset_is_fine(h: Harness) -> None:
    assert h.post(payload(), headers={"Content-Type": "Application/JSON; charset=utf-8"}).status_code == 202


def test_body_over_64_kib_is_413_with_or_without_content_length(h: Harness) -> None:
    body = payload()
    body["padding"] = "x" * MAX_BODY_BYTES
    assert h.post(body).status_code == 413

    def chunks() -> Any:
        for _ in range(70):
            yield b"x" * 1024

    # Streamed (chunked, no Content-Length): the limit holds while reading.
    resp = h.client.post(
        URL, content=chunks(), params={"token": SECRET}, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 413
    assert h.airflow.calls == 0


def test_exactly_64_kib_is_accepted(h: Harness) -> None:
    body = payload()
    body["padding"] = ""
    body["padding"] = "x" * (MAX_BODY_BYTES - len(json.dumps(body)))
    assert len(json.dumps(body).encode()) == MAX_BODY_BYTES
    assert h.post(body).status_code == 202


def test_malformed_json_is_400(h: Harness) -> None:
    resp = h.post(b'{"push_data": ')
    assert resp.status_code == 400
    assert resp.json()["detail"][0]["type"] == "json_invalid"


def test_missing_and_wrong_fields_are_422_naming_the_field(h: Harness) -> None:
    body = payload()
    del body["push_data"]["digest"]
    body["repository"]["region"] = 7
    resp = h.post(body)
    assert resp.status_code == 422
    fields = {d["field"] for d in resp.json()["detail"]}
    assert fields == {"push_data.digest", "repository.region"}
    # The input is not echoed back.
    assert all("input" not in d for d in resp.json()["detail"])


# ------------------------------------------------------------------------- generated malformed bodies
def _valid() -> dict[str, Any]:
    return payload()


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
REQUIRED = [
    ("push_data",),
    ("repository",),
    ("push_data", "digest"),
    ("push_data", "tag"),
    ("push_data", "pushed_at"),
    ("repository", "repo_full_name"),
    ("repository", "region"),
]


@st.composite
def missing_field(draw: st.DrawFn) -> bytes:
    body = _valid()
    path = draw(st.sampled_from(REQUIRED))
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return json.dumps(body).encode()


@st.composite
def wrong_type(draw: st.DrawFn) -> bytes:
    body = _valid()
    path = draw(st.sampled_from(REQUIRED))
    value = draw(
        JSON_VALUES.filter(lambda v: not isinstance(v, str) or path[-1] in ("push_data", "repository"))
    )
    if path[-1] in ("push_data", "repository") and isinstance(value, dict):
        value = [value]
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(body).encode()


@st.composite
def bad_digest(draw: st.DrawFn) -> bytes:
    body = _valid()
    body["push_data"]["digest"] = draw(st.text(max_size=80).filter(lambda s: not re.match(DIGEST_PATTERN, s)))
    return json.dumps(body).encode()


@st.composite
def not_an_object(draw: st.DrawFn) -> bytes:
    value = draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict) or "push_data" not in v))
    return json.dumps(value).encode()


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    raw = json.dumps(_valid()).encode()
    cut = draw(st.integers(min_value=0, max_value=len(raw) - 1))
    return raw[:cut]


GARBAGE = st.binary(max_size=300).filter(lambda b: b.strip()[:1] != b"{")
MALFORMED = st.one_of(missing_field(), wrong_type(), bad_digest(), not_an_object(), truncated(), GARBAGE)


@settings(
    max_examples=1200,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
    ],
)
@given(body=MALFORMED, content_type=st.sampled_from(["application/json", "application/json; charset=utf-8"]))
def test_generated_malformed_bodies_never_5xx_and_never_create_a_run(
    h: Harness, body: bytes, content_type: str
) -> None:
    resp = h.post(body, headers={"Content-Type": content_type})
    assert 400 <= resp.status_code < 500, (resp.status_code, body[:200], resp.text[:300])
    detail = resp.json()["detail"]
    assert detail and all(d["field"] for d in detail)
    assert h.airflow.runs == {}
    assert h.events.count() == 0


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    content_type=st.text(max_size=40).filter(lambda t: not t.lower().strip().startswith("application/json")),
)
def test_generated_content_types_are_415(h: Harness, content_type: str) -> None:
    # httpx refuses header values it cannot encode; those never reach a server anyway.
    try:
        content_type.encode("ascii")
    except UnicodeEncodeError:
        return
    if "\n" in content_type or "\r" in content_type:
        return
    resp = h.post(payload(), headers={"Content-Type": content_type})
    assert resp.status_code == 415
    assert h.airflow.runs == {}


# ------------------------------------------------------------------------------- the 202-on-record contract
RUN_ID = run_id_for("mlpipe/fashion-trainer", DIGEST)
IMAGE = f"registry.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer@{DIGEST}"


def test_valid_event_is_202_once_recorded_and_the_dispatcher_creates_its_run(h: Harness) -> None:
    resp = h.post(payload())
    assert resp.status_code == 202, resp.text
    assert resp.json() == {
        "status": "received",
        "event_id": RUN_ID,
        "dag_id": "train",
        "run_id": RUN_ID,
        "image": IMAGE,
        "tag": "latest",
        "reason": None,
        "duplicate": False,
    }
    # Answered before any run exists: the record is the commit point.
    assert h.airflow.runs == {}
    stored = h.events.get(RUN_ID)
    assert stored is not None and stored.state == "received"
    assert h.dispatch() == 1
    assert h.airflow.runs == {
        ("train", RUN_ID): {"image": IMAGE, "digest": DIGEST, "tag": "latest", "min_accuracy": 0.9}
    }
    stored = h.events.get(RUN_ID)
    assert stored is not None and stored.state == "run_created" and stored.run_id == RUN_ID
    assert stored.run_created_at is not None and stored.run_created_at >= stored.received_at


def test_redelivery_is_200_with_the_same_ids_and_records_nothing_new(h: Harness) -> None:
    first = h.post(payload()).json()
    again = h.post(payload())
    assert again.status_code == 200
    assert (again.json()["event_id"], again.json()["run_id"]) == (first["event_id"], first["run_id"])
    assert again.json()["duplicate"] is True
    assert h.events.count() == 1
    h.dispatch()
    # Once the run exists, and for another tag of the same digest (the same image): still the one run.
    for tag in ("latest", "v2"):
        resp = h.post(payload(tag=tag))
        assert resp.status_code == 200 and resp.json()["run_id"] == RUN_ID
        assert resp.json()["status"] == "run_created"
    assert h.dispatch() == 0
    assert list(h.airflow.runs) == [("train", RUN_ID)]
    (stored,) = h.events.recent()
    # Redeliveries wrote nothing: the event is as its first delivery recorded it, apart from the dispatch.
    assert stored.deliveries == 1 and stored.tag == "latest" and stored.attempts == 1


def test_concurrent_identical_deliveries_record_one_event_and_one_run(h: Harness) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: h.post(payload()), range(50)))
    assert sorted(r.status_code for r in responses) == [200] * 49 + [202]
    assert {r.json()["run_id"] for r in responses} == {RUN_ID}
    h.dispatch()
    assert list(h.airflow.runs) == [("train", RUN_ID)]
    assert h.airflow.requested == [RUN_ID]


def test_redelivery_after_the_run_was_deleted_creates_it_again(h: Harness) -> None:
    h.post(payload())
    h.dispatch()
    h.airflow.runs.clear()
    resp = h.post(payload())
    assert resp.status_code == 200 and resp.json()["status"] == "received"
    h.dispatch()
    assert list(h.airflow.runs) == [("train", RUN_ID)]


def test_different_digests_are_different_runs(h: Harness) -> None:
    a = h.post(payload()).json()["run_id"]
    b = h.post(payload(digest="sha256:" + "e" * 64)).json()["run_id"]
    assert h.dispatch() == 2
    assert a != b and set(h.airflow.runs) == {("train", a), ("train", b)}


def test_unrouted_push_is_202_ignored_and_logged_with_no_run(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"):
        resp = h.post(payload(repo="other/repo"))
    assert resp.status_code == 202
    assert resp.json()["status"] == "ignored" and resp.json()["run_id"] is None
    assert "ignored" in resp.json()["reason"]
    assert h.dispatch() == 0
    assert h.airflow.runs == {}
    assert any("ignored: no route matches other/repo:latest" in r.getMessage() for r in caplog.records)


def test_ignored_then_routed_tag_of_the_same_digest_starts_the_run(h: Harness) -> None:
    h.configure(routes=(Route(repository="mlpipe/*", tag="v*", dag_id="train"),))
    assert h.post(payload(tag="dev")).json()["status"] == "ignored"
    resp = h.post(payload(tag="v1"))
    assert resp.status_code == 200 and resp.json()["status"] == "received"
    h.dispatch()
    assert h.airflow.runs[("train", RUN_ID)]["tag"] == "v1"


def test_vpc_registry_host_is_a_configuration_choice(h: Harness) -> None:
    h.configure(registry_host="registry-vpc.{region}.aliyuncs.com")
    resp = h.post(payload())
    assert resp.json()["image"] == f"registry-vpc.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer@{DIGEST}"
    h.dispatch()
    assert h.airflow.runs[("train", RUN_ID)]["image"] == resp.json()["image"]


def test_paused_dag_keeps_its_events_pending_until_it_is_unpaused(h: Harness) -> None:
    h.airflow.paused.add("train")
    assert h.post(payload()).status_code == 202
    h.dispatch()
    stored = h.events.get(RUN_ID)
    assert stored is not None and stored.state == "pending" and "paused" in (stored.reason or "")
    assert h.airflow.runs == {}
    assert h.dispatcher.retry_due() == 0
    h.airflow.paused.clear()
    assert h.dispatcher.retry_due() == 1
    assert list(h.airflow.runs) == [("train", RUN_ID)]


def test_dag_refusing_the_conf_is_recorded_as_rejected_and_a_redelivery_retries(h: Harness) -> None:
    h.airflow.reject.add("train")
    h.post(payload())
    h.dispatch()
    stored = h.events.get(RUN_ID)
    assert stored is not None and stored.state == "rejected" and "min_accuracy" in (stored.reason or "")
    assert h.dispatcher.retry_due() == 0
    h.airflow.reject.clear()
    assert h.post(payload()).json()["status"] == "received"
    h.dispatch()
    assert list(h.airflow.runs) == [("train", RUN_ID)]


# ----------------------------------------------------------------------------- pending events and retry
def test_unparsed_dag_leaves_the_event_pending_and_the_retry_creates_the_run(h: Harness) -> None:
    event_id = h.post(payload(repo="mlpipe/late")).json()["event_id"]
    h.dispatch()
    stored = h.events.get(event_id)
    assert stored is not None and stored.state == "pending" and "not parsed" in (stored.reason or "")
    assert h.dispatcher.retry_due() == 0
    h.airflow.parsed.add("late_dag")
    assert h.dispatcher.retry_due() == 1
    (stored,) = h.events.recent()
    assert stored.state == "run_created" and stored.run_id == event_id
    assert stored.attempts == 3
    assert list(h.airflow.runs) == [("late_dag", event_id)]
    assert h.dispatcher.retry_due() == 0


def test_database_error_while_creating_runs_rolls_back_and_leaves_the_events_pending(h: Harness) -> None:
    from sqlalchemy.exc import OperationalError

    h.post(payload())
    h.airflow.fail_with = OperationalError("INSERT", {}, Exception("database is locked"))
    h.dispatch()
    stored = h.events.get(RUN_ID)
    assert stored is not None and stored.state == "pending"
    assert "creating the run failed (OperationalError)" in (stored.reason or "")
    h.airflow.fail_with = None
    assert h.dispatcher.retry_due() == 1
    assert list(h.airflow.runs) == [("train", RUN_ID)]


def test_broken_routes_keep_events_pending_until_fixed(h: Harness) -> None:
    h.configure(routes=None, routes_error="mlpipe_acr_routes is not valid JSON")
    assert h.post(payload()).status_code == 202
    h.dispatch()
    stored = h.events.get(RUN_ID)
    assert stored is not None and stored.state == "pending"
    assert "routes configuration invalid" in (stored.reason or "")
    h.configure(routes=ROUTES)
    assert h.dispatcher.retry_due() == 1


def test_events_endpoint_reports_a_bad_route_before_any_push(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    routes = [{"repository": "mlpipe/*", "dag_id": DEFAULT_DAG_ID, "params": {"min_acuracy": 0.95}}]
    with caplog.at_level("ERROR", logger="airflow_provider_mlpipe.webhooks.dispatch"):
        h.config["current"] = build_settings(SECRET, json.dumps(routes), ttl=0)
    expected = "mlpipe_acr_routes[0].params: unknown param 'min_acuracy'; did you mean 'min_accuracy'?"
    assert expected in caplog.text
    listing = h.client.get(f"{URL}/events", params={"token": SECRET})
    assert listing.status_code == 200
    assert listing.json()["events"] == []
    assert listing.json()["routes_error"].startswith(expected)
    # A push meanwhile waits, naming the route, instead of starting a run that would ignore the key.
    assert h.post(payload()).status_code == 202
    h.dispatch()
    (pending,) = h.client.get(f"{URL}/events", params={"token": SECRET, "state": "pending"}).json()["events"]
    assert expected in pending["reason"]
    assert h.airflow.calls == 0
    h.config["current"] = build_settings(SECRET, json.dumps([{**routes[0], "params": {}}]), ttl=0)
    assert h.client.get(f"{URL}/events", params={"token": SECRET}).json()["routes_error"] is None


def _dropped(statement: str) -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError(statement, {}, Exception("server closed the connection unexpectedly"))


@dataclass
class FlakySettle:
    """`EventLog.settle` failing like a dropped database: `failures` more times, or for `failing_ids`."""

    real: Callable[..., None]
    failures: int = 0
    failing_ids: set[str] = field(default_factory=set)

    def __call__(self, session: Any, changes: list[dict[str, Any]]) -> None:
        if {c["b_event_id"] for c in changes} & self.failing_ids:
            raise _dropped("UPDATE")
        if self.failures > 0:
            self.failures -= 1
            raise _dropped("UPDATE")
        self.real(session, changes)


def test_database_dropping_while_a_batch_is_settled_loses_nothing_and_creates_no_second_run(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's transaction rolls back: its events are `received` again and the next try settles them.
    (The fake's runs survive the rollback, as runs committed by a crashed earlier try would.)"""
    digests = [DIGEST, "sha256:" + "e" * 64, "sha256:" + "d" * 64]
    for dig in digests:
        assert h.post(payload(digest=dig)).status_code == 202
    flaky = FlakySettle(real=h.events.settle, failures=1)
    monkeypatch.setattr(h.events, "settle", flaky)
    h.dispatch()
    states = {e.state for e in h.events.recent()}
    assert states == {"run_created"}
    assert len(h.airflow.runs) == 3
    assert sorted(h.airflow.requested) == sorted(
        [run_id_for("mlpipe/fashion-trainer", d) for d in digests] * 2
    )


def test_one_event_failing_in_a_retry_pass_does_not_hold_back_the_others_or_the_pruning(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = h.post(payload(repo="mlpipe/late")).json()["event_id"]
    second = h.post(payload(repo="mlpipe/late", digest="sha256:" + "e" * 64)).json()["event_id"]
    h.dispatch()
    h.airflow.parsed.add("late_dag")
    flaky = FlakySettle(real=h.events.settle, failing_ids={first})
    monkeypatch.setattr(h.events, "settle", flaky)
    pruned: list[timedelta] = []
    real_prune = h.events.prune

    def prune(older_than: timedelta) -> int:
        pruned.append(older_than)
        return real_prune(older_than)

    monkeypatch.setattr(h.events, "prune", prune)
    with caplog.at_level("WARNING"):
        assert h.dispatcher.retry_due() == 1
    states = {e.event_id: e.state for e in h.events.recent()}
    assert states == {first: "pending", second: "run_created"}
    assert pruned == [timedelta(days=30)]
    assert any(
        first in r.getMessage() and "creating its run failed" in r.getMessage() for r in caplog.records
    )
    flaky.failing_ids.clear()
    assert h.dispatcher.retry_due() == 1
    event = h.events.get(first)
    assert event is not None and event.state == "run_created"


def test_event_log_unavailable_is_503_and_nothing_claims_success(tmp_path: Path) -> None:
    def broken() -> EventLog:
        raise RuntimeError("metadata database unreachable")

    app = create_app(
        settings=lambda: WebhookSettings(secret=SECRET, routes=ROUTES),
        event_log=broken,
        create_runs=FakeAirflow().create_runs,
        dispatcher_task=False,
    )
    client = TestClient(app, raise_server_exceptions=False)
    resp = client.post(URL, json=payload(), params={"token": SECRET})
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "30"


def test_unmigrated_database_is_503_and_creates_no_table(tmp_path: Path) -> None:
    engine = sqlite_engine(tmp_path / "bare.db")
    events = EventLog(engine)
    app = create_app(
        settings=lambda: WebhookSettings(secret=SECRET, routes=ROUTES),
        event_log=lambda: events,
        create_runs=FakeAirflow().create_runs,
        dispatcher_task=False,
    )
    resp = TestClient(app, raise_server_exceptions=False).post(URL, json=payload(), params={"token": SECRET})
    assert resp.status_code == 503
    from sqlalchemy import inspect

    assert inspect(engine).get_table_names() == []


def test_dispatcher_runs_in_the_app_lifespan_and_is_woken_by_a_push(tmp_path: Path) -> None:
    h = make_harness(tmp_path)
    # A long poll interval: only the push's wake-up can create the run within the wait below.
    h.configure(dispatch_interval=600.0, retry_interval=600.0)
    app = create_app(
        settings=lambda: h.config["current"],
        event_log=lambda: h.events,
        create_runs=h.airflow.create_runs,
        run_states=h.airflow.run_states,
        gc_freeze=lambda: False,
    )
    with TestClient(app) as client:
        resp = client.post(URL, json=payload(), params={"token": SECRET})
        assert resp.status_code == 202
        assert h.airflow.created.wait(60)
    assert list(h.airflow.runs) == [("train", RUN_ID)]


# ------------------------------------------------------------------------------- batches and claims
def test_a_burst_is_dispatched_in_batches(tmp_path: Path) -> None:
    h = make_harness(tmp_path, batch_size=10)
    for n in range(25):
        assert h.post(payload(digest=f"sha256:{n:064x}")).status_code == 202
    assert h.dispatch() == 25
    assert h.airflow.calls == 3  # 10 + 10 + 5
    assert len(h.airflow.runs) == 25


def test_two_dispatchers_on_one_sqlite_database_claim_each_event_once(tmp_path: Path) -> None:
    """Two processes' dispatchers, emulated as two engines on one SQLite file draining at once: the claim
    takes SQLite's write lock first, so no event is handed to both."""
    h = make_harness(tmp_path, batch_size=7)
    for n in range(120):
        h.post(payload(digest=f"sha256:{n:064x}"))
    other_events = EventLog(sqlite_engine(tmp_path / "events.db"))
    other = Dispatcher(
        event_log=lambda: other_events,
        settings=lambda: h.config["current"],
        create_runs=h.airflow.create_runs,
        run_states=h.airflow.run_states,
    )
    start = threading.Barrier(2)

    def drain(dispatcher: Dispatcher) -> int:
        start.wait()
        return dispatcher.drain()

    with ThreadPoolExecutor(2) as pool:
        claimed = list(pool.map(drain, [h.dispatcher, other]))
    assert sum(claimed) == 120
    assert sorted(h.airflow.requested) == sorted(set(h.airflow.requested))
    assert len(h.airflow.runs) == 120
    assert h.events.count("run_created") == 120


# --------------------------------------------------------------------------------------- events listing
def test_events_list_states_reasons_run_ids_and_ack_to_run_time(h: Harness) -> None:
    h.post(payload())
    h.post(payload(repo="other/repo"))
    h.post(payload(repo="mlpipe/late"))
    received = h.client.get(f"{URL}/events", params={"token": SECRET, "state": "received"}).json()["events"]
    assert {e["repository"] for e in received} == {"mlpipe/fashion-trainer", "mlpipe/late"}
    assert all(e["run_id"] == e["event_id"] and e["ack_to_run_created_ms"] is None for e in received)
    h.dispatch()
    resp = h.client.get(f"{URL}/events", params={"token": SECRET})
    assert resp.status_code == 200
    events = {e["repository"]: e for e in resp.json()["events"]}
    created = events["mlpipe/fashion-trainer"]
    assert created["state"] == "run_created" and created["run_state"] == "queued"
    assert created["run_id"] == RUN_ID
    assert created["ack_to_run_created_ms"] >= 0
    assert created["run_created_at"] >= created["received_at"]
    assert events["other/repo"]["state"] == "ignored" and events["other/repo"]["run_id"] is None
    late = events["mlpipe/late"]
    assert late["state"] == "pending" and "not parsed" in late["reason"]
    assert late["run_id"] == late["event_id"] and late["run_state"] is None
    pending = h.client.get(f"{URL}/events", params={"token": SECRET, "state": "pending"}).json()["events"]
    assert [e["repository"] for e in pending] == ["mlpipe/late"]


@pytest.mark.parametrize(
    ("params", "field"), [({"limit": "0"}, "query.limit"), ({"state": "x"}, "query.state")]
)
def test_events_listing_bad_query_is_422(h: Harness, params: dict[str, str], field: str) -> None:
    resp = h.client.get(f"{URL}/events", params={"token": SECRET, **params})
    assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == field


def test_plugin_registers_the_app_once_at_mlpipe(repo_root: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mlpipe_webhooks_plugin", repo_root / "plugins" / "mlpipe_webhooks.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (app,) = module.MlpipeWebhooksPlugin.fastapi_apps
    assert app["url_prefix"] == "/mlpipe"
    paths = {route.path for route in app["app"].routes}  # type: ignore[attr-defined]
    assert {"/webhooks/acr", "/webhooks/acr/events"} <= paths
    # No second registration through an entry point.
    from importlib.metadata import entry_points

    assert not [ep for ep in entry_points(group="airflow.plugins") if "mlpipe" in ep.value]
