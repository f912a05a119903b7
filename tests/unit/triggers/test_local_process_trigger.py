"""LocalProcessTrigger against real processes started by LocalProcessHook."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_mlpipe.hooks.local_process import LOST, RUNNING, LocalProcessHook, process_status
from airflow_provider_mlpipe.triggers.local_process import LocalProcessTrigger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from airflow.triggers.base import TriggerEvent

LOGGER = "mlpipe.tests.local_process_trigger"
SLEEPER = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"]


def import_string(classpath: str) -> Any:
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[LocalProcessHook]:
    hook = LocalProcessHook(str(tmp_path / "state"))
    yield hook
    if hook.state_dir.is_dir():
        for pdir in hook.state_dir.iterdir():
            if pdir.is_dir() and process_status(pdir).state == RUNNING:
                hook.stop(pdir.name, timeout=3)


def make_trigger(pdir: Path, *, timeout: float = 20.0, **kwargs: Any) -> LocalProcessTrigger:
    return LocalProcessTrigger(
        process_dir=str(pdir), timeout_at=time.time() + timeout, poll_interval=0.05, **kwargs
    )


def capture_log(trigger: LocalProcessTrigger, caplog: pytest.LogCaptureFixture) -> None:
    """Send the trigger's log lines (normally structlog, to the task log) to a stdlib logger caplog sees."""
    trigger._log = logging.getLogger(LOGGER)
    caplog.set_level(logging.INFO, logger=LOGGER)


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def events_of(trigger: LocalProcessTrigger) -> list[TriggerEvent]:
    return [event async for event in trigger.run()]


# ---------------------------------------------------------------------------------------- serialization


def test_serialize_returns_classpath_and_every_init_argument(tmp_path: Path) -> None:
    trigger = LocalProcessTrigger(
        process_dir=str(tmp_path / "p"), timeout_at=1234.5, poll_interval=0.25, log_offset=42
    )
    classpath, kwargs = trigger.serialize()
    assert import_string(classpath) is LocalProcessTrigger
    params = set(inspect.signature(LocalProcessTrigger.__init__).parameters) - {"self"}
    assert set(kwargs) == params
    assert kwargs == {
        "process_dir": str(tmp_path / "p"),
        "timeout_at": 1234.5,
        "poll_interval": 0.25,
        "log_offset": 42,
    }
    # The triggerer stores these as JSON.
    assert json.loads(json.dumps(kwargs)) == kwargs


async def test_rebuilt_trigger_behaves_the_same(hook: LocalProcessHook) -> None:
    hook.start("job", ["sh", "-c", "echo alpha; echo beta; exit 5"])
    pdir = hook.process_dir("job")
    wait_for(lambda: hook.status("job").finished)
    original = make_trigger(pdir)
    classpath, kwargs = original.serialize()
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == original.serialize()
    first, second = await events_of(original), await events_of(rebuilt)
    assert first == second
    assert len(first) == 1 and first[0].payload["status"] == "failed"


# ------------------------------------------------------------------------------------------------- run


async def test_success_event_and_log_streamed(
    hook: LocalProcessHook, caplog: pytest.LogCaptureFixture
) -> None:
    hook.start("train-ok", ["sh", "-c", "echo epoch 1; sleep 0.3; echo epoch 2"])
    pdir = hook.process_dir("train-ok")
    trigger = make_trigger(pdir)
    capture_log(trigger, caplog)
    events = await events_of(trigger)
    assert len(events) == 1
    payload = events[0].payload
    assert payload == {
        "status": "success",
        "message": "exited 0",
        "tail": ["epoch 1", "epoch 2"],
        "details": {"state": "succeeded", "process_dir": str(pdir), "exit_code": 0, "stopped": False},
    }
    # Every output line went to the task log, and the offset now points past all of them.
    assert trigger.log_offset == (pdir / "output.log").stat().st_size
    assert logged(caplog) == ["[train-ok] epoch 1", "[train-ok] epoch 2"]


async def test_resumed_trigger_does_not_repeat_shown_output(
    hook: LocalProcessHook, caplog: pytest.LogCaptureFixture
) -> None:
    hook.start("resume", ["sh", "-c", "echo shown-before; echo new-line"])
    pdir = hook.process_dir("resume")
    wait_for(lambda: hook.status("resume").finished)
    trigger = make_trigger(pdir, log_offset=len("shown-before\n"))
    capture_log(trigger, caplog)
    events = await events_of(trigger)
    assert events[0].payload["status"] == "success"
    assert logged(caplog) == ["[resume] new-line"]


async def test_failed_event_carries_tail_and_exit_code(hook: LocalProcessHook) -> None:
    hook.start(
        "train-bad", ["sh", "-c", "for i in $(seq 1 25); do echo line $i; done; echo boom >&2; exit 3"]
    )
    events = await events_of(make_trigger(hook.process_dir("train-bad")))
    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "failed"
    assert payload["details"]["exit_code"] == 3
    assert payload["details"]["stopped"] is False
    assert payload["message"] == "exited with code 3"
    assert len(payload["tail"]) == 20
    assert payload["tail"][-1] == "boom"
    assert payload["tail"][0] == "line 7"


async def test_stopped_process_is_reported_as_stopped(hook: LocalProcessHook) -> None:
    hook.start("stopped", SLEEPER)
    pdir = hook.process_dir("stopped")
    wait_for(lambda: (pdir / "output.log").exists() and "ready" in (pdir / "output.log").read_text())
    hook.stop("stopped", timeout=10)
    payload = (await events_of(make_trigger(pdir)))[0].payload
    details = payload["details"]
    assert (payload["status"], details["stopped"], details["exit_code"]) == ("failed", True, -signal.SIGTERM)
    assert payload["message"] == f"stopped on request (exit code {-signal.SIGTERM})"


async def test_lost_event_when_the_supervisor_is_killed(hook: LocalProcessHook) -> None:
    hook.start("train-lost", SLEEPER)
    pdir = hook.process_dir("train-lost")
    wait_for(lambda: (pdir / "output.log").exists() and "ready" in (pdir / "output.log").read_text())
    os.kill(hook.status("train-lost").pid or 0, signal.SIGKILL)
    wait_for(lambda: hook.status("train-lost").state == LOST)
    payload = (await events_of(make_trigger(pdir)))[0].payload
    # Normalised: the status says failed, the details say how.
    assert payload["status"] == "failed" and payload["details"]["state"] == "lost"
    assert payload["details"]["exit_code"] is None
    assert "supervisor disappeared" in payload["message"]
    assert payload["tail"] == ["ready"]


async def test_timeout_event_for_a_process_still_running(hook: LocalProcessHook) -> None:
    hook.start("slow", SLEEPER)
    pdir = hook.process_dir("slow")
    started = time.monotonic()
    events = await events_of(make_trigger(pdir, timeout=0.5))
    assert 0.4 <= time.monotonic() - started < 5
    payload = events[0].payload
    assert payload["status"] == "timeout"
    assert payload["details"]["exit_code"] is None
    assert "still running at the deadline" in payload["message"]
    # The trigger only reports; stopping is the operator's job.
    assert hook.status("slow").state == RUNNING


async def test_absent_process_dir(tmp_path: Path) -> None:
    payload = (await events_of(make_trigger(tmp_path / "state" / "never")))[0].payload
    assert payload["status"] == "gone" and payload["details"]["state"] == "absent"
    assert payload["message"] == "no such process was ever started"
    assert payload["tail"] == []


async def test_on_kill_stops_the_process(hook: LocalProcessHook) -> None:
    hook.start("killed", SLEEPER)
    pdir = hook.process_dir("killed")
    wait_for(lambda: (pdir / "output.log").exists() and "ready" in (pdir / "output.log").read_text())
    await make_trigger(pdir).on_kill()
    status = hook.status("killed")
    assert status.finished and status.stopped
