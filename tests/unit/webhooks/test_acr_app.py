"""The webhook app through FastAPI's TestClient: a real SQLite event log, a fake Airflow behind `trigger`.

Covers authentication, content type, size, validation (with >= 1,000 generated malformed bodies),
routing, one run per (repository, digest), pending events and their retry, and the events listing.
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

from airflow_provider_mlpipe.exceptions import PendingError, RejectedError
from airflow_provider_mlpipe.migrations import upgrade
from airflow_provider_mlpipe.webhooks.acr import DEFAULT_DAG_ID, DIGEST_PATTERN, Route, run_id_for
from airflow_provider_mlpipe.webhooks.app import MAX_BODY_BYTES, TOKEN_HEADER, create_app
from airflow_provider_mlpipe.webhooks.dispatch import TriggerOutcome, WebhookSettings, build_settings
from airflow_provider_mlpipe.webhooks.events import EventLog, EventRecord

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
    """What the app needs from Airflow: create a run (idempotently) and report run states."""

    runs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    parsed: set[str] = field(default_factory=lambda: {"train"})
    paused: set[str] = field(default_factory=set)
    reject: set[str] = field(default_factory=set)
    fail_with: Exception | None = None
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> TriggerOutcome:
        with self.lock:
            self.calls += 1
            if self.fail_with is not None:
                raise self.fail_with
            if dag_id not in self.parsed:
                raise PendingError(f"DAG {dag_id!r} is not parsed yet")
            if dag_id in self.reject:
                raise RejectedError("Invalid input for param min_accuracy")
            if (dag_id, run_id) in self.runs:
                return TriggerOutcome(run_id, created=False, dag_paused=dag_id in self.paused)
            self.runs[(dag_id, run_id)] = dict(conf)
            return TriggerOutcome(run_id, created=True, dag_paused=dag_id in self.paused)

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


def make_harness(tmp_path: Path) -> Harness:
    engine = create_engine(f"sqlite:///{tmp_path / 'events.db'}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _wal(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.execute("PRAGMA journal_mode=WAL")

    upgrade(engine)  # the provider's migrations, as a deployment runs them before the api-server starts
    events = EventLog(engine)
    airflow = FakeAirflow()
    config = {"current": WebhookSettings(secret=SECRET, routes=ROUTES, retry_interval=0.05, ttl=0)}
    app = create_app(
        settings=lambda: config["current"],
        event_log=lambda: events,
        trigger=airflow.trigger,
        run_states=airflow.run_states,
        retry_loop=False,
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
    assert h.post(payload(), token=None, headers={TOKEN_HEADER: SECRET}).status_code == 201
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
    assert h.post(payload(), headers={"Content-Type": "Application/JSON; charset=utf-8"}).status_code == 201


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
    assert h.post(body).status_code == 201


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


# ------------------------------------------------------------------------------------- runs and routing
def test_valid_event_creates_one_run_with_the_expected_conf(h: Harness) -> None:
    resp = h.post(payload())
    assert resp.status_code == 201, resp.text
    body = resp.json()
    run_id = run_id_for("mlpipe/fashion-trainer", DIGEST)
    image = f"registry.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer@{DIGEST}"
    assert body == {
        "status": "queued",
        "event_id": run_id,
        "dag_id": "train",
        "run_id": run_id,
        "image": image,
        "tag": "latest",
        "reason": None,
        "duplicate": False,
    }
    assert h.airflow.runs == {
        ("train", run_id): {"image": image, "digest": DIGEST, "tag": "latest", "min_accuracy": 0.9}
    }


def test_duplicate_delivery_answers_with_the_same_run(h: Harness) -> None:
    first = h.post(payload()).json()
    again = h.post(payload())
    assert again.status_code == 200
    assert again.json()["run_id"] == first["run_id"]
    assert again.json()["duplicate"] is True
    # Another tag for the same digest is the same image: still the one run.
    other_tag = h.post(payload(tag="v2"))
    assert other_tag.status_code == 200 and other_tag.json()["run_id"] == first["run_id"]
    assert len(h.airflow.runs) == 1
    (event,) = h.events.recent()
    assert event.deliveries == 3


def test_concurrent_identical_deliveries_create_one_run(h: Harness) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: h.post(payload()), range(50)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 49 + [201]
    assert {r.json()["run_id"] for r in responses} == {run_id_for("mlpipe/fashion-trainer", DIGEST)}
    assert len(h.airflow.runs) == 1


def test_redelivery_after_the_run_was_deleted_creates_it_again(h: Harness) -> None:
    run_id = h.post(payload()).json()["run_id"]
    h.airflow.runs.clear()
    resp = h.post(payload())
    assert resp.status_code == 201 and resp.json()["run_id"] == run_id
    assert len(h.airflow.runs) == 1


def test_different_digests_are_different_runs(h: Harness) -> None:
    a = h.post(payload()).json()["run_id"]
    b = h.post(payload(digest="sha256:" + "e" * 64)).json()["run_id"]
    assert a != b and len(h.airflow.runs) == 2


def test_unrouted_push_is_202_ignored_and_logged_with_no_run(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"):
        resp = h.post(payload(repo="other/repo"))
    assert resp.status_code == 202
    assert resp.json()["status"] == "ignored"
    assert "ignored" in resp.json()["reason"]
    assert h.airflow.runs == {}
    assert any("ignored: no route matches other/repo:latest" in r.getMessage() for r in caplog.records)


def test_ignored_then_routed_tag_of_the_same_digest_starts_the_run(h: Harness) -> None:
    h.configure(routes=(Route(repository="mlpipe/*", tag="v*", dag_id="train"),))
    assert h.post(payload(tag="dev")).json()["status"] == "ignored"
    resp = h.post(payload(tag="v1"))
    assert resp.status_code == 201
    assert h.airflow.runs[("train", resp.json()["run_id"])]["tag"] == "v1"


def test_vpc_registry_host_is_a_configuration_choice(h: Harness) -> None:
    h.configure(registry_host="registry-vpc.{region}.aliyuncs.com")
    resp = h.post(payload())
    assert resp.json()["image"] == f"registry-vpc.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer@{DIGEST}"


def test_paused_dag_gets_its_run_and_the_answer_says_so(h: Harness) -> None:
    h.airflow.paused.add("train")
    resp = h.post(payload())
    assert resp.status_code == 201
    assert "paused" in resp.json()["reason"]


def test_dag_refusing_the_conf_is_recorded_as_rejected(h: Harness) -> None:
    h.airflow.reject.add("train")
    resp = h.post(payload())
    assert resp.status_code == 202
    assert resp.json()["status"] == "rejected"
    assert "min_accuracy" in resp.json()["reason"]
    # A redelivery after the route is fixed tries again.
    h.airflow.reject.clear()
    assert h.post(payload()).status_code == 201


# ----------------------------------------------------------------------------- pending events and retry
def test_unparsed_dag_leaves_the_event_pending_and_the_retry_creates_the_run(h: Harness) -> None:
    resp = h.post(payload(repo="mlpipe/late"))
    assert resp.status_code == 202
    assert resp.json()["status"] == "pending"
    assert "not parsed" in resp.json()["reason"]
    dispatcher = h.client.app.state.dispatcher  # type: ignore[attr-defined]
    assert dispatcher.retry_due() == 0
    h.airflow.parsed.add("late_dag")
    assert dispatcher.retry_due() == 1
    (event,) = h.events.recent()
    assert event.state == "queued" and event.run_id == resp.json()["event_id"]
    assert event.attempts == 3
    assert list(h.airflow.runs) == [("late_dag", event.run_id)]
    assert dispatcher.retry_due() == 0


def test_database_busy_while_creating_the_run_is_pending_not_5xx(h: Harness) -> None:
    from sqlalchemy.exc import OperationalError

    h.airflow.fail_with = OperationalError("INSERT", {}, Exception("database is locked"))
    resp = h.post(payload())
    assert resp.status_code == 202 and resp.json()["status"] == "pending"
    h.airflow.fail_with = None
    assert h.client.app.state.dispatcher.retry_due() == 1  # type: ignore[attr-defined]
    assert len(h.airflow.runs) == 1


def test_broken_routes_keep_events_pending_until_fixed(h: Harness) -> None:
    h.configure(routes=None, routes_error="mlpipe_acr_routes is not valid JSON")
    resp = h.post(payload())
    assert resp.status_code == 202 and "routes configuration invalid" in resp.json()["reason"]
    h.configure(routes=ROUTES)
    assert h.client.app.state.dispatcher.retry_due() == 1  # type: ignore[attr-defined]


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
    resp = h.post(payload())
    assert resp.status_code == 202 and resp.json()["status"] == "pending"
    assert expected in resp.json()["reason"]
    assert h.airflow.calls == 0
    h.config["current"] = build_settings(SECRET, json.dumps([{**routes[0], "params": {}}]), ttl=0)
    assert h.client.get(f"{URL}/events", params={"token": SECRET}).json()["routes_error"] is None


def _dropped(statement: str) -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError(statement, {}, Exception("server closed the connection unexpectedly"))


@dataclass
class FlakyUpdates:
    """`EventLog.update` failing like a dropped database: `failures` more times, or while `down`."""

    real: Callable[..., EventRecord]
    failures: int = 0
    down: bool = False
    failing_ids: set[str] = field(default_factory=set)

    def __call__(self, event_id: str, **values: Any) -> EventRecord:
        if self.down or event_id in self.failing_ids:
            raise _dropped("UPDATE")
        if self.failures > 0:
            self.failures -= 1
            raise _dropped("UPDATE")
        return self.real(event_id, **values)


def flaky_updates(h: Harness, monkeypatch: pytest.MonkeyPatch) -> FlakyUpdates:
    flaky = FlakyUpdates(real=h.events.update)
    monkeypatch.setattr(h.events, "update", flaky)
    return flaky


def test_event_log_failing_once_after_recording_answers_pending_and_a_retry_creates_the_run(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = flaky_updates(h, monkeypatch)
    flaky.failures = 1
    # The database dropped mid-request: the run insert failed, then so did recording that.
    h.airflow.fail_with = _dropped("INSERT")
    resp = h.post(payload())
    run_id = run_id_for("mlpipe/fashion-trainer", DIGEST)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "pending"
    assert body["run_id"] == body["event_id"] == run_id
    assert "processing failed (OperationalError)" in body["reason"]
    assert h.airflow.runs == {}
    # Marked pending by the failure path, so the next pass retries it without waiting for it to go stale.
    (event,) = h.events.recent()
    assert event.state == "pending"
    h.airflow.fail_with = None
    assert h.client.app.state.dispatcher.retry_due() == 1  # type: ignore[attr-defined]
    assert list(h.airflow.runs) == [("train", run_id)]
    (event,) = h.events.recent()
    assert event.state == "queued" and event.run_id == run_id


def test_database_down_for_the_whole_request_answers_pending_and_the_stale_pickup_retries_it(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = flaky_updates(h, monkeypatch)
    flaky.down = True
    h.airflow.fail_with = _dropped("INSERT")
    resp = h.post(payload())
    assert resp.status_code == 202 and resp.json()["status"] == "pending", resp.text
    assert resp.json()["run_id"] == run_id_for("mlpipe/fashion-trainer", DIGEST)
    # It could not be marked pending: it keeps the state it was recorded with.
    (event,) = h.events.recent()
    assert event.state == "received"
    flaky.down = False
    h.airflow.fail_with = None
    dispatcher = h.client.app.state.dispatcher  # type: ignore[attr-defined]
    # Not stale yet: a request might still be processing it.
    assert dispatcher.retry_due() == 0
    assert h.airflow.runs == {}
    dispatcher.stale_after = timedelta(0)
    assert dispatcher.retry_due() == 1
    assert list(h.airflow.runs) == [("train", event.event_id)]


def test_redelivery_of_a_finished_event_that_cannot_be_processed_is_503_not_a_false_pending(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert h.post(payload()).status_code == 201
    h.airflow.runs.clear()  # deleted: a redelivery would create it again
    flaky = flaky_updates(h, monkeypatch)
    flaky.down = True
    h.airflow.fail_with = _dropped("INSERT")
    resp = h.post(payload())
    # The retry loop never looks at a queued event, so "pending" would be a promise nobody keeps.
    assert resp.status_code == 503, resp.text
    assert resp.headers["Retry-After"] == "30"
    flaky.down = False
    h.airflow.fail_with = None
    assert h.post(payload()).status_code == 201
    assert len(h.airflow.runs) == 1


def test_one_event_failing_in_a_retry_pass_does_not_hold_back_the_others_or_the_pruning(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = h.post(payload(repo="mlpipe/late")).json()["event_id"]
    second = h.post(payload(repo="mlpipe/late", digest="sha256:" + "e" * 64)).json()["event_id"]
    h.airflow.parsed.add("late_dag")
    flaky = flaky_updates(h, monkeypatch)
    flaky.failing_ids.add(first)  # due() returns the oldest first: the failing event comes before the other
    pruned: list[timedelta] = []
    real_prune = h.events.prune

    def prune(older_than: timedelta) -> int:
        pruned.append(older_than)
        return real_prune(older_than)

    monkeypatch.setattr(h.events, "prune", prune)
    dispatcher = h.client.app.state.dispatcher  # type: ignore[attr-defined]
    with caplog.at_level("WARNING"):
        assert dispatcher.retry_due() == 1
    states = {e.event_id: e.state for e in h.events.recent()}
    assert states == {first: "pending", second: "queued"}
    assert pruned == [timedelta(days=30)]
    assert any(
        first in r.getMessage() and "retry failed (OperationalError" in r.getMessage() for r in caplog.records
    )
    # The failing event is still due: once its bookkeeping works again, the next pass finishes it.
    flaky.failing_ids.clear()
    assert dispatcher.retry_due() == 1
    event = h.events.get(first)
    assert event is not None and event.state == "queued"


def test_event_log_unavailable_is_503_and_nothing_claims_success(tmp_path: Path) -> None:
    def broken() -> EventLog:
        raise RuntimeError("metadata database unreachable")

    app = create_app(
        settings=lambda: WebhookSettings(secret=SECRET, routes=ROUTES),
        event_log=broken,
        trigger=FakeAirflow().trigger,
        retry_loop=False,
    )
    client = TestClient(app, raise_server_exceptions=False)
    resp = client.post(URL, json=payload(), params={"token": SECRET})
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "30"


def test_retry_loop_runs_in_the_app_lifespan(tmp_path: Path) -> None:
    h = make_harness(tmp_path)
    app = create_app(
        settings=lambda: h.config["current"],
        event_log=lambda: h.events,
        trigger=h.airflow.trigger,
        run_states=h.airflow.run_states,
    )
    with TestClient(app) as client:
        resp = client.post(URL, json=payload(repo="mlpipe/late"), params={"token": SECRET})
        assert resp.json()["status"] == "pending"
        h.airflow.parsed.add("late_dag")
        for _ in range(200):
            if h.airflow.runs:
                break
            threading.Event().wait(0.02)
        assert len(h.airflow.runs) == 1


# --------------------------------------------------------------------------------------- events listing
def test_events_list_run_ids_and_states(h: Harness) -> None:
    h.post(payload())
    h.post(payload(repo="other/repo"))
    h.post(payload(repo="mlpipe/late"))
    resp = h.client.get(f"{URL}/events", params={"token": SECRET})
    assert resp.status_code == 200
    events = {e["repository"]: e for e in resp.json()["events"]}
    assert events["mlpipe/fashion-trainer"]["state"] == "queued"
    assert events["mlpipe/fashion-trainer"]["run_state"] == "queued"
    assert events["mlpipe/fashion-trainer"]["run_id"] == run_id_for("mlpipe/fashion-trainer", DIGEST)
    assert events["other/repo"]["state"] == "ignored" and events["other/repo"]["run_id"] is None
    assert events["mlpipe/late"]["state"] == "pending"
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
