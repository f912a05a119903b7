"""No orphans: whatever way a test session ends, every process its tests started ends with it.

The integration tests start whole Airflows, Celery workers, trainers and serving servers, most of them in
sessions of their own (so that a kill -9 of one component is a real fault), which also means they outlive a
pytest that is stopped without running its teardown. Three guards:

- SIGTERM (CI's timeout, `kill`) raises KeyboardInterrupt like Ctrl-C, so pytest tears every fixture down;
- pytest is a child subreaper, so a process whose parent died (a supervisor started by a killed Airflow
  worker) is re-parented here instead of to init, and stays findable;
- at the very end, any process still descended from pytest, or carrying this session's tag in its
  environment, is a leftover: it is killed and the run fails, naming it.

Registered by tests/conftest.py; `pytest -p tests.process_guard` loads it into any other session.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest

SESSION_TAG = "MLPIPE_TEST_SESSION"
_PR_SET_CHILD_SUBREAPER = 36


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def pytest_configure(config: pytest.Config) -> None:
    os.environ[SESSION_TAG] = f"{os.getpid()}-{time.monotonic_ns()}"
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGTERM, _interrupt)


@dataclass(frozen=True)
class Leftover:
    pid: int
    parent: int
    command: str


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of `pid`, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _tagged(pid: int, tag: bytes) -> bool:
    try:
        return tag in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def leftover_processes() -> list[Leftover]:
    """Live processes this test session started (descendants of pytest, or tagged with its session)."""
    me = os.getpid()
    tag = f"{SESSION_TAG}={os.environ.get(SESSION_TAG, '')}".encode()
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        stat = _stat(int(entry.name))
        if stat is None:
            continue
        state, parent = stat
        if state == "Z":
            # An exited orphan re-parented to us: collect it, it is no leftover.
            if parent == me:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(entry.name), os.WNOHANG)
            continue
        parents[int(entry.name)] = parent

    def descends(pid: int) -> bool:
        seen = set()
        while pid in parents and pid not in seen:
            seen.add(pid)
            pid = parents[pid]
            if pid == me:
                return True
        return False

    found = []
    for pid, parent in sorted(parents.items()):
        if descends(pid) or _tagged(pid, tag):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            found.append(Leftover(pid, parent, command[:200]))
    return found


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Runs after pytest's own sessionfinish has torn the fixtures down. A process told to stop may still be
    # on its way out: give it a moment before calling it a leftover.
    deadline = time.monotonic() + 10
    left = leftover_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftover_processes()
    if not left:
        return
    for proc in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, signal.SIGKILL)
    lines = "\n".join(f"  pid {p.pid} (parent {p.parent}): {p.command}" for p in left)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"{len(left)} process(es) started by the tests outlived them (now killed):\n{lines}"
    if reporter is not None:
        reporter.write_sep("=", "leftover processes", red=True)
        reporter.write_line(message)
    else:
        sys.stderr.write(message + "\n")
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
