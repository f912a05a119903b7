"""The test session's process guard (tests/process_guard.py), exercised on inner pytest sessions: a
process a test leaves behind fails the run and is killed; SIGTERM tears the fixtures down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _inner(tmp_path: Path, source: str) -> subprocess.Popen[str]:
    """An inner pytest session with only the guard loaded, running `source` as its test module."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(source))
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "tests.process_guard", "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "WORK": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(inner: subprocess.Popen[str], timeout: float = 120) -> str:
    """The inner session's output once it ended; killed if it outlives `timeout`."""
    try:
        return inner.communicate(timeout=timeout)[0]
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait()


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_process_left_behind_fails_the_run_and_is_killed(tmp_path: Path) -> None:
    inner = _inner(
        tmp_path,
        """
        import os, subprocess, sys
        from pathlib import Path

        def test_forgets_its_server():
            # Its own session, like the stack's components: pytest's process group does not hold it.
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                    start_new_session=True)
            Path(os.environ["WORK"], "pid").write_text(str(proc.pid))
        """,
    )
    output = _finish(inner)
    pid = int((tmp_path / "pid").read_text())
    assert inner.returncode == 1, output
    assert "1 passed" in output
    assert "1 process(es) started by the tests outlived them (now killed)" in output
    assert f"pid {pid} " in output and "time.sleep(600)" in output
    assert not _alive(pid)


def test_a_process_of_a_dead_parent_is_found(tmp_path: Path) -> None:
    """A grandchild whose parent exited (a supervisor started by an Airflow task) is re-parented to
    pytest, the child subreaper, and reported."""
    inner = _inner(
        tmp_path,
        """
        import os, subprocess, sys
        from pathlib import Path

        def test_starts_a_detached_grandchild():
            code = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
                    "'import time; time.sleep(600)'], start_new_session=True, "
                    "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)")
            pid = subprocess.run([sys.executable, "-c", code], env={"PATH": os.environ["PATH"]},
                                 capture_output=True, text=True, check=True).stdout.strip()
            Path(os.environ["WORK"], "pid").write_text(pid)
        """,
    )
    output = _finish(inner)
    pid = int((tmp_path / "pid").read_text())
    assert inner.returncode == 1, output
    assert f"pid {pid} " in output
    assert not _alive(pid)


def test_sigterm_tears_the_fixtures_down(tmp_path: Path) -> None:
    inner = _inner(
        tmp_path,
        """
        import os, subprocess, sys, time
        from pathlib import Path
        import pytest

        WORK = Path(os.environ["WORK"])

        @pytest.fixture(scope="module")
        def server():
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                    start_new_session=True)
            (WORK / "pid").write_text(str(proc.pid))
            yield proc
            proc.kill()
            proc.wait()
            (WORK / "torn-down").write_text("yes")

        def test_waits(server):
            (WORK / "ready").write_text("yes")
            time.sleep(600)
        """,
    )
    try:
        _wait_for(tmp_path / "ready", inner)
        inner.send_signal(signal.SIGTERM)
    finally:
        output = _finish(inner)
    pid = int((tmp_path / "pid").read_text())
    assert inner.returncode != 0, output
    assert "KeyboardInterrupt" in output and "signal SIGTERM" in output
    assert (tmp_path / "torn-down").read_text() == "yes"
    assert not _alive(pid)
    assert "outlived them" not in output
