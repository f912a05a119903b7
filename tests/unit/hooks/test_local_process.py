"""LocalProcessHook with real supervisor and child processes in a temporary state directory."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from airflow_provider_mlpipe.exceptions import ConfigError, MlpipeError
from airflow_provider_mlpipe.hooks.local_process import (
    ABSENT,
    FAILED,
    LOST,
    RUNNING,
    SUCCEEDED,
    LocalProcessHook,
    process_status,
    read_log,
    tail_log,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# A child that announces itself, then waits; it ignores SIGTERM when asked to.
SLEEPER = (
    "import signal, sys, time\n"
    "if 'ignore' in sys.argv: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def pid_running(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def child_pid(pdir: Path) -> int:
    wait_for(lambda: (pdir / "child.json").exists())
    pid: int = json.loads((pdir / "child.json").read_text())["pid"]
    return pid


def log_has(pdir: Path, text: str) -> bool:
    path = pdir / "output.log"
    return path.exists() and text in path.read_text()


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[LocalProcessHook]:
    hook = LocalProcessHook(str(tmp_path / "state"))
    yield hook
    # Leave nothing running, whatever the test did.
    if hook.state_dir.is_dir():
        for pdir in hook.state_dir.iterdir():
            if pdir.is_dir() and process_status(pdir).state == RUNNING:
                hook.stop(pdir.name, timeout=3)


def sleeper(*extra: str) -> list[str]:
    return [sys.executable, "-c", SLEEPER, *extra]


def start_ready(hook: LocalProcessHook, name: str, *extra: str, env: dict[str, str] | None = None) -> Path:
    """Start a sleeper and wait until it runs its own code (signal disposition in place)."""
    status, adopted = hook.start(name, sleeper(*extra), env=env)
    assert (status.state, adopted) == (RUNNING, False)
    pdir = hook.process_dir(name)
    wait_for(lambda: log_has(pdir, "ready"))
    return pdir


def wait_finished(hook: LocalProcessHook, name: str, timeout: float = 10.0) -> None:
    wait_for(lambda: hook.status(name).finished, timeout=timeout)


# ------------------------------------------------------------------------------------------ start/adopt


def test_start_runs_argv_with_env_and_records_spec(hook: LocalProcessHook) -> None:
    status, adopted = hook.start(
        "job-1",
        ["sh", "-c", 'echo "hello $MLPIPE_TEST_VALUE"; echo err >&2; exit 0'],
        env={"MLPIPE_TEST_VALUE": "world"},
        metadata={"version": 3},
    )
    assert adopted is False
    assert status.state == RUNNING and status.pid is not None
    wait_finished(hook, "job-1")
    final = hook.status("job-1")
    assert (final.state, final.exit_code, final.stopped) == (SUCCEEDED, 0, False)
    pdir = hook.process_dir("job-1")
    assert (pdir / "output.log").read_text().splitlines() == ["hello world", "err"]
    spec = hook.read_spec("job-1")
    assert spec["argv"][0] == "sh" and spec["metadata"] == {"version": 3}
    assert hook.read_spec("never-started") == {}
    assert hook.status("never-started").state == ABSENT


def test_start_adopts_a_running_process(hook: LocalProcessHook) -> None:
    pdir = start_ready(hook, "serve-a")
    first_child = child_pid(pdir)
    status, adopted = hook.start("serve-a", ["sh", "-c", "echo second start; exit 1"])
    assert adopted is True
    assert status.state == RUNNING
    assert status.pid == json.loads((pdir / "supervisor.json").read_text())["pid"]
    assert child_pid(pdir) == first_child
    assert hook.read_spec("serve-a")["argv"] == sleeper()
    assert not log_has(pdir, "second start")


def test_start_adopts_a_succeeded_process(hook: LocalProcessHook) -> None:
    hook.start("train-ok", ["sh", "-c", "echo done"])
    wait_finished(hook, "train-ok")
    status, adopted = hook.start("train-ok", ["sh", "-c", "echo again"])
    assert adopted is True
    assert (status.state, status.exit_code) == (SUCCEEDED, 0)
    assert (hook.process_dir("train-ok") / "output.log").read_text() == "done\n"


def test_start_archives_and_restarts_a_failed_process(hook: LocalProcessHook) -> None:
    hook.start("train-bad", ["sh", "-c", "echo first; exit 3"])
    wait_finished(hook, "train-bad")
    assert hook.status("train-bad").state == FAILED
    status, adopted = hook.start("train-bad", ["sh", "-c", "echo second"])
    assert (status.state, adopted) == (RUNNING, False)
    wait_finished(hook, "train-bad")
    assert hook.status("train-bad").state == SUCCEEDED
    assert (hook.process_dir("train-bad") / "output.log").read_text() == "second\n"
    archives = sorted(hook.state_dir.glob("train-bad.attempt-*"))
    assert len(archives) == 1
    assert json.loads((archives[0] / "exit.json").read_text())["exit_code"] == 3
    assert (archives[0] / "output.log").read_text() == "first\n"


def test_start_archives_and_restarts_a_lost_process(hook: LocalProcessHook) -> None:
    pdir = start_ready(hook, "train-lost")
    os.kill(hook.status("train-lost").pid or 0, signal.SIGKILL)
    wait_for(lambda: hook.status("train-lost").state == LOST)
    status, adopted = hook.start("train-lost", ["sh", "-c", "echo restarted"])
    assert (status.state, adopted) == (RUNNING, False)
    wait_finished(hook, "train-lost")
    assert (pdir / "output.log").read_text() == "restarted\n"
    archives = list(hook.state_dir.glob("train-lost.attempt-*"))
    assert len(archives) == 1 and not (archives[0] / "exit.json").exists()


def test_start_without_adopt_replaces_a_succeeded_process(hook: LocalProcessHook) -> None:
    hook.start("serve-b", ["sh", "-c", "echo v1"])
    wait_finished(hook, "serve-b")
    _, adopted = hook.start("serve-b", ["sh", "-c", "echo v2"], adopt=False)
    assert adopted is False
    wait_finished(hook, "serve-b")
    assert (hook.process_dir("serve-b") / "output.log").read_text() == "v2\n"


def test_concurrent_starts_of_one_name_start_one_process(hook: LocalProcessHook) -> None:
    barrier = threading.Barrier(4)
    results: list[tuple[object, bool]] = []

    def attempt() -> None:
        barrier.wait()
        status, adopted = hook.start("race", sleeper())
        results.append((status.pid, adopted))

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(adopted for _, adopted in results) == [False, True, True, True]
    assert len({pid for pid, _ in results}) == 1
    assert list(hook.state_dir.glob("race.attempt-*")) == []


@pytest.mark.parametrize(
    "name", ["", "Upper", "under_score", "-lead", "trail-", "a/b", "..", "a b", "x" * 254, "naïve"]
)
def test_bad_names_are_rejected(hook: LocalProcessHook, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        hook.start(name, ["true"])
    assert info.value.field == "process name"
    assert info.value.value == name
    assert not hook.state_dir.exists() or list(hook.state_dir.iterdir()) == []


def test_good_names_are_accepted(hook: LocalProcessHook) -> None:
    for name in ("a", "serve-fashion-mnist-staging-0123abcd", "train.v1", "x" * 253):
        assert hook.process_dir(name) == hook.state_dir / name


# ------------------------------------------------------------------------------------------------- stop


def test_stop_forwards_sigterm_to_the_child(hook: LocalProcessHook) -> None:
    pdir = start_ready(hook, "stop-me")
    child = child_pid(pdir)
    started = time.monotonic()
    status = hook.stop("stop-me", timeout=10)
    assert time.monotonic() - started < 5
    assert (status.state, status.exit_code, status.stopped) == (FAILED, -signal.SIGTERM, True)
    wait_for(lambda: not pid_running(child))


def test_stop_kills_a_child_ignoring_sigterm_after_the_grace_period(hook: LocalProcessHook) -> None:
    pdir = start_ready(hook, "stubborn", "ignore", env={"MLPIPE_STOP_GRACE_SECONDS": "0.2"})
    child = child_pid(pdir)
    started = time.monotonic()
    status = hook.stop("stubborn", timeout=15)
    elapsed = time.monotonic() - started
    assert (status.state, status.exit_code, status.stopped) == (FAILED, -signal.SIGKILL, True)
    assert 0.2 <= elapsed < 5, elapsed
    wait_for(lambda: not pid_running(child))


def test_stop_kills_the_process_group_when_the_supervisor_does_not_finish(hook: LocalProcessHook) -> None:
    # Supervisor grace 60 s, hook timeout 0.5 s: the hook's SIGKILL fallback has to end both.
    pdir = start_ready(hook, "stuck", "ignore", env={"MLPIPE_STOP_GRACE_SECONDS": "60"})
    child = child_pid(pdir)
    hook.stop("stuck", timeout=0.5)
    wait_for(lambda: hook.status("stuck").state != RUNNING)
    wait_for(lambda: not pid_running(child))
    assert hook.status("stuck").state == LOST


def test_stop_of_a_finished_or_absent_process_is_a_no_op(hook: LocalProcessHook) -> None:
    assert hook.stop("nothing-here").state == ABSENT
    hook.start("quick", ["true"])
    wait_finished(hook, "quick")
    assert hook.stop("quick").state == SUCCEEDED


def test_stop_right_after_start_is_recorded_as_a_stop(hook: LocalProcessHook) -> None:
    hook.start("early-stop", sleeper())
    status = hook.stop("early-stop", timeout=10)
    assert status.state == FAILED
    assert status.stopped is True


def test_killing_the_supervisor_takes_the_child_down(hook: LocalProcessHook) -> None:
    pdir = start_ready(hook, "orphan-check")
    child = child_pid(pdir)
    supervisor = hook.status("orphan-check").pid
    assert supervisor is not None and pid_running(child)
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: not pid_running(child), timeout=5)
    wait_for(lambda: hook.status("orphan-check").state == LOST)
    status = hook.status("orphan-check")
    assert (status.pid, status.exit_code) == (supervisor, None)
    assert not (pdir / "exit.json").exists()


# --------------------------------------------------------------------------------------------- remove


def test_remove_refuses_a_running_process_then_removes_a_finished_one(hook: LocalProcessHook) -> None:
    pdir = start_ready(hook, "to-remove")
    with pytest.raises(MlpipeError, match="still running"):
        hook.remove("to-remove")
    assert pdir.is_dir() and hook.status("to-remove").state == RUNNING
    hook.stop("to-remove", timeout=10)
    hook.remove("to-remove")
    assert not pdir.exists()
    assert hook.status("to-remove").state == ABSENT
    hook.remove("to-remove")  # idempotent


# ------------------------------------------------------------------------------------------------ logs


def test_read_log_returns_complete_lines_and_offsets(tmp_path: Path) -> None:
    assert read_log(tmp_path, 0) == ([], 0)
    log = tmp_path / "output.log"
    log.write_bytes(b"one\ntwo\npart")
    lines, offset = read_log(tmp_path, 0)
    assert (lines, offset) == (["one", "two"], 8)
    assert read_log(tmp_path, offset) == ([], 8)
    with log.open("ab") as handle:
        handle.write(b"ial\nthree\n")
    assert read_log(tmp_path, offset) == (["partial", "three"], 22)
    assert read_log(tmp_path, 4) == (["two", "partial", "three"], 22)
    # max_bytes: only the complete lines inside the window are returned.
    assert read_log(tmp_path, 0, max_bytes=9) == (["one", "two"], 8)
    # Invalid UTF-8 does not break the reader.
    with log.open("ab") as handle:
        handle.write(b"bad \xff byte\n")
    lines, _ = read_log(tmp_path, 22)
    assert lines == ["bad \ufffd byte"]


def test_read_log_makes_progress_past_a_line_longer_than_max_bytes(tmp_path: Path) -> None:
    (tmp_path / "output.log").write_bytes(b"x" * 64 + b"\nafter\n")
    offset, seen = 0, []
    for _ in range(10):
        lines, offset = read_log(tmp_path, offset, max_bytes=32)
        seen.extend(lines)
    assert "after" in seen


def test_tail_log(tmp_path: Path) -> None:
    assert tail_log(tmp_path) == []
    (tmp_path / "output.log").write_text("".join(f"line {i}\n" for i in range(100)) + "unterminated")
    assert tail_log(tmp_path, 3) == ["line 98", "line 99", "unterminated"]
    assert len(tail_log(tmp_path)) == 20


def test_tail_log_of_a_real_failed_process(hook: LocalProcessHook) -> None:
    hook.start("noisy", ["sh", "-c", "for i in $(seq 1 30); do echo row $i; done; exit 2"])
    wait_finished(hook, "noisy")
    assert hook.status("noisy").exit_code == 2
    tail = tail_log(hook.process_dir("noisy"), 5)
    assert tail == [f"row {i}" for i in range(26, 31)]
