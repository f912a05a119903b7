"""The dispatcher's pacing (deliveries first) and the settings cache the request path reads.

What is emulated: Airflow (the `FakeAirflow` of test_acr_app: runs in a dict) and, where a test says so,
the time: a `FakeClock` the dispatcher reads, advanced by the fake run creation and by the dispatcher's rests,
so which batch happens while deliveries arrive is decided by the test, not by the machine's speed. The
event log is the real one on SQLite.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from airflow_provider_mlpipe.webhooks.app import airflow_gc_freeze, create_app
from airflow_provider_mlpipe.webhooks.dispatch import (
    BUSY_REST_FACTOR,
    BUSY_SLICE,
    QUIET_SECONDS,
    CachedSettings,
    RunRequest,
    RunResult,
    WebhookSettings,
)
from tests.unit.webhooks.test_acr_app import ROUTES, SECRET, FakeAirflow, Harness, make_harness, payload

SLICE_SECONDS = 0.02  # what one fake batch "takes" on the fake clock


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Recorder:
    """Wraps FakeAirflow.create_runs: each batch's size, and the fake time it takes."""

    airflow: FakeAirflow
    clock: FakeClock | None = None
    sizes: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, session: Any, requests: list[RunRequest]) -> dict[str, RunResult]:
        with self.lock:
            self.sizes.append(len(requests))
        if self.clock is not None:
            self.clock.now += SLICE_SECONDS
        return self.airflow.create_runs(session, requests)


def paced_harness(tmp_path: Path, events: int) -> tuple[Harness, FakeClock, Recorder, list[float]]:
    """`events` pushes acknowledged at the fake clock's now; the dispatcher reads that clock."""
    h = make_harness(tmp_path)
    clock = FakeClock()
    recorder = Recorder(h.airflow, clock)
    rests: list[float] = []
    d = h.dispatcher
    d.clock = clock
    d.create_runs = recorder
    for n in range(events):
        assert h.post(payload(digest=f"sha256:{n:064x}")).status_code == 202
    return h, clock, recorder, rests


def test_while_deliveries_keep_coming_runs_are_created_in_small_slices_with_rests(tmp_path: Path) -> None:
    h, clock, recorder, rests = paced_harness(tmp_path, 25)

    def rest(seconds: float) -> None:
        rests.append(seconds)
        clock.now += seconds
        h.dispatcher.note_delivery()  # another push was answered meanwhile: still busy

    h.dispatcher.rest = rest
    assert h.dispatcher.drain(paced=True) == 25
    assert recorder.sizes == [BUSY_SLICE, BUSY_SLICE, 5]
    # Each rest is BUSY_REST_FACTOR times the slice it follows: run creation takes a quarter of the time.
    assert rests == pytest.approx([BUSY_REST_FACTOR * SLICE_SECONDS] * 2)
    assert len(h.airflow.runs) == 25


def test_once_deliveries_pause_the_backlog_goes_in_full_batches(tmp_path: Path) -> None:
    h, clock, recorder, rests = paced_harness(tmp_path, 260)

    def rest(seconds: float) -> None:
        rests.append(seconds)
        clock.now += seconds  # no push meanwhile

    h.dispatcher.rest = rest
    assert h.dispatcher.drain(paced=True) == 260
    # Busy while the fake clock is within QUIET_SECONDS of the last push, then batches of batch_size (100).
    slice_and_rest = SLICE_SECONDS * (1 + BUSY_REST_FACTOR)
    busy_slices = int(QUIET_SECONDS // slice_and_rest) + 1
    assert recorder.sizes[:busy_slices] == [BUSY_SLICE] * busy_slices
    rest_of_it = 260 - BUSY_SLICE * busy_slices
    assert recorder.sizes[busy_slices:] == [100] * (rest_of_it // 100) + [rest_of_it % 100]
    assert len(rests) == busy_slices
    assert len(h.airflow.runs) == 260


def test_an_unpaced_drain_ignores_deliveries(tmp_path: Path) -> None:
    """The retry endpoint of tests and `retry_due` called directly: full batches, no rests."""
    h, _clock, recorder, rests = paced_harness(tmp_path, 25)
    h.dispatcher.rest = rests.append
    assert h.dispatcher.drain() == 25
    assert recorder.sizes == [25]
    assert rests == []


def test_stop_ends_a_paced_drain_between_batches_and_leaves_the_rest_received(tmp_path: Path) -> None:
    h, clock, _recorder, _rests = paced_harness(tmp_path, 25)

    def rest(seconds: float) -> None:
        clock.now += seconds
        h.dispatcher.note_delivery()
        h.dispatcher.stop()  # the app shuts down while the dispatcher rests

    h.dispatcher.rest = rest
    assert h.dispatcher.drain(paced=True) == BUSY_SLICE
    assert h.events.count("received") == 25 - BUSY_SLICE
    assert h.events.count("run_created") == BUSY_SLICE


def test_pushes_that_never_pause_still_get_their_runs_after_the_max_delay(tmp_path: Path) -> None:
    """The lifespan task, with this process's deliveries held 'arriving' for good: it waits
    `dispatch_max_delay`, then creates every run anyway, in paced slices."""
    h = make_harness(tmp_path)  # records the pushes; its own app runs no dispatcher task
    for n in range(25):
        assert h.post(payload(digest=f"sha256:{n:064x}")).status_code == 202
    recorder = Recorder(h.airflow)
    done = threading.Event()

    def create_runs(session: Any, requests: list[RunRequest]) -> dict[str, RunResult]:
        results = recorder(session, requests)
        if len(h.airflow.runs) == 25:
            done.set()
        return results

    settings = WebhookSettings(
        secret=SECRET,
        routes=ROUTES,
        ttl=0,
        dispatch_interval=0.05,
        retry_interval=600.0,
        dispatch_max_delay=0.1,
    )
    app = create_app(
        settings=lambda: settings,
        event_log=lambda: h.events,
        create_runs=create_runs,
        run_states=h.airflow.run_states,
        gc_freeze=lambda: False,
    )
    dispatcher = app.state.dispatcher
    # Busy for good: the last delivery is in the future, so the quiet period never comes.
    dispatcher._last_delivery = float("inf")
    with TestClient(app):
        assert done.wait(60), f"runs created: {len(h.airflow.runs)}"
    assert recorder.sizes == [BUSY_SLICE, BUSY_SLICE, 5]


def test_cached_settings_are_read_without_loading_until_they_expire() -> None:
    loads: list[int] = []
    clock = FakeClock(0.0)

    def loader() -> WebhookSettings:
        loads.append(1)
        return WebhookSettings(secret=SECRET, routes=ROUTES, ttl=30.0)

    cached = CachedSettings(loader, clock=clock)
    assert cached.fresh() is None  # nothing loaded yet: the request path goes to a thread and loads
    first = cached()
    assert cached.fresh() is first and len(loads) == 1
    clock.now = 29.9
    assert cached.fresh() is first and cached() is first and len(loads) == 1
    clock.now = 30.0
    assert cached.fresh() is None
    assert cached() is not first and len(loads) == 2


def test_every_answered_delivery_counts_as_traffic_new_redelivered_or_ignored(tmp_path: Path) -> None:
    h, clock, _recorder, _rests = paced_harness(tmp_path, 1)
    for body, status in [
        (payload(digest=f"sha256:{0:064x}"), 200),  # a redelivery
        (payload(repo="elsewhere/unrouted"), 202),  # ignored: no route
        (payload(digest=f"sha256:{1:064x}"), 202),  # new
    ]:
        clock.now += 10 * QUIET_SECONDS
        assert h.dispatcher.quiet_left() == 0
        assert h.post(body).status_code == status
        assert h.dispatcher.quiet_left() == QUIET_SECONDS


def test_the_api_server_start_up_heap_is_frozen_out_of_the_cyclic_gc(tmp_path: Path) -> None:
    """The lifespan freezes what exists at start-up (`freeze_startup_heap`: full collections of the
    api-server scanned it for 200+ ms each); this test process's heap is unfrozen again afterwards."""
    h = make_harness(tmp_path)
    settings = WebhookSettings(secret=SECRET, routes=ROUTES, dispatch_interval=600.0, retry_interval=600.0)
    app = create_app(
        settings=lambda: settings,
        event_log=lambda: h.events,
        create_runs=h.airflow.create_runs,
        gc_freeze=lambda: True,
    )
    assert gc.get_freeze_count() == 0
    try:
        with TestClient(app):
            assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_gc_freeze_is_a_setting_that_defaults_to_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert airflow_gc_freeze() is True
    monkeypatch.setenv("AIRFLOW__MLPIPE__API_SERVER_GC_FREEZE", "False")
    assert airflow_gc_freeze() is False
