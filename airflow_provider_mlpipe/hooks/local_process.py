"""Local runtime: start, adopt, watch and stop supervised processes on this machine.

Each process has a directory `<state_dir>/<name>/` (deterministic name per run and step), holding
`spec.json` (argv, metadata), `supervisor.json` (pid), `output.log`, and `exit.json` once it ended.
That directory, not the Airflow worker, is the source of truth: a retried task or a restarted scheduler
finds the process by name and adopts it instead of starting a second one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow.sdk.bases.hook import BaseHook

from airflow_provider_mlpipe.exceptions import ConfigError, MlpipeError

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
LOST = "lost"
ABSENT = "absent"


def default_state_dir() -> str:
    from airflow.configuration import conf

    airflow_home = conf.get("core", "airflow_home", fallback=os.environ.get("AIRFLOW_HOME", "~/airflow"))
    return conf.get("mlpipe", "local_state_dir", fallback=os.path.join(airflow_home, "mlpipe", "state"))


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    state: str
    pid: int | None = None
    exit_code: int | None = None
    stopped: bool = False

    @property
    def finished(self) -> bool:
        return self.state in (SUCCEEDED, FAILED, LOST)


def _start_ticks(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # A zombie has exited; only its parent's wait() is missing.
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _pid_alive(pid: int, start_ticks: int | None) -> bool:
    """True if `pid` still is the process we started: pids get reused, start times do not."""
    current = _start_ticks(pid)
    return current is not None and (start_ticks is None or current == start_ticks)


class LocalProcessHook(BaseHook):
    """Supervised local processes, addressed by a deterministic name."""

    hook_name = "MLPipe local process"

    def __init__(self, state_dir: str | None = None) -> None:
        super().__init__()
        self.state_dir = Path(state_dir or default_state_dir()).expanduser().resolve()

    def process_dir(self, name: str) -> Path:
        if not _NAME_RE.match(name):
            raise ConfigError("process name", name, "lowercase DNS-1123 style: [a-z0-9.-], at most 253 chars")
        return self.state_dir / name

    def read_spec(self, name: str) -> dict[str, Any]:
        path = self.process_dir(name) / "spec.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        return data

    def status(self, name: str) -> ProcessStatus:
        return process_status(self.process_dir(name))

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        adopt: bool = True,
    ) -> tuple[ProcessStatus, bool]:
        """Start `argv` under a supervisor, or adopt the process already registered under `name`.

        Returns (status, adopted). A process that finished successfully is adopted as well (its result
        stands); a failed or lost one is archived and started afresh.
        """
        pdir = self.process_dir(name)
        pdir.parent.mkdir(parents=True, exist_ok=True)
        with (pdir.parent / f".{name}.lock").open("w") as lock:
            # Serialise concurrent starts of the same name (two attempts racing after a retry).
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = process_status(pdir)
            if adopt and current.state in (RUNNING, SUCCEEDED):
                self.log.info("Adopting %s process %s (pid %s)", current.state, name, current.pid)
                return current, True
            if current.state != ABSENT:
                self._archive(pdir)
            pdir.mkdir(parents=True)
            spec = {"argv": argv, "metadata": metadata or {}, "created_at": time.time()}
            (pdir / "spec.json").write_text(json.dumps(spec, indent=2))
            child_env = {**os.environ, **(env or {})}
            supervisor = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "airflow_provider_mlpipe.hooks.local_supervisor",
                    str(pdir),
                    "--",
                    *argv,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=(pdir / "supervisor.log").open("ab"),
                env=child_env,
                # Its own session: killing the Airflow task (or its process group) leaves the work running.
                start_new_session=True,
                close_fds=True,
            )
            (pdir / "supervisor.json").write_text(
                json.dumps({"pid": supervisor.pid, "start_ticks": _start_ticks(supervisor.pid)})
            )
            self.log.info("Started %s (supervisor pid %s): %s", name, supervisor.pid, " ".join(argv))
            return ProcessStatus(name=name, state=RUNNING, pid=supervisor.pid), False

    def _archive(self, pdir: Path) -> None:
        target = pdir.with_name(f"{pdir.name}.attempt-{int(time.time() * 1000)}")
        pdir.rename(target)
        self.log.info("Archived the previous attempt's state to %s", target)

    def stop(self, name: str, *, timeout: float = 30.0) -> ProcessStatus:
        """SIGTERM the supervisor (which stops its child), wait, then SIGKILL what is left."""
        pdir = self.process_dir(name)
        current = process_status(pdir)
        if current.state != RUNNING or current.pid is None:
            return current
        self.log.info("Stopping %s (supervisor pid %s)", name, current.pid)
        # A supervisor still starting its interpreter has no signal handler yet: let it get that far.
        ready_by = time.monotonic() + 5.0
        while not (pdir / "child.json").exists() and time.monotonic() < ready_by:
            if process_status(pdir).state != RUNNING:
                return process_status(pdir)
            time.sleep(0.05)
        try:
            os.kill(current.pid, signal.SIGTERM)
        except ProcessLookupError:
            return process_status(pdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = process_status(pdir)
            if status.state != RUNNING:
                return status
            time.sleep(0.2)
        self.log.warning("%s did not stop within %.0f s: killing its process group", name, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(current.pid, signal.SIGKILL)
        return process_status(pdir)

    def remove(self, name: str) -> None:
        """Forget a finished process: its directory goes (teardown leaves nothing behind)."""
        import shutil

        pdir = self.process_dir(name)
        if process_status(pdir).state == RUNNING:
            raise MlpipeError(f"process {name} is still running: stop it before removing its state")
        shutil.rmtree(pdir, ignore_errors=True)


def process_status(pdir: Path) -> ProcessStatus:
    name = pdir.name
    exit_file = pdir / "exit.json"
    if exit_file.exists():
        data = json.loads(exit_file.read_text())
        code = int(data["exit_code"])
        return ProcessStatus(
            name=name,
            state=SUCCEEDED if code == 0 else FAILED,
            exit_code=code,
            stopped=bool(data.get("stopped")),
        )
    sup = pdir / "supervisor.json"
    if not sup.exists():
        return ProcessStatus(name=name, state=ABSENT)
    record = json.loads(sup.read_text())
    pid = int(record["pid"])
    if _pid_alive(pid, record.get("start_ticks")):
        return ProcessStatus(name=name, state=RUNNING, pid=pid)
    # The supervisor may have written exit.json between our two reads.
    if exit_file.exists():
        return process_status(pdir)
    return ProcessStatus(name=name, state=LOST, pid=pid)


def read_log(pdir: Path, offset: int, max_bytes: int = 1 << 20) -> tuple[list[str], int]:
    """Complete lines of the process output from byte `offset`, and the offset after them."""
    path = pdir / "output.log"
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read(max_bytes)
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        if len(chunk) < max_bytes:
            return [], offset
        # A line longer than max_bytes (a \r progress bar): hand it on in pieces rather than stall.
        return [chunk.decode(errors="replace")], offset + len(chunk)
    lines = chunk[: end + 1].decode(errors="replace").splitlines()
    return lines, offset + end + 1


def tail_log(pdir: Path, lines: int = 20) -> list[str]:
    path = pdir / "output.log"
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 64 * 1024))
            return list(deque(handle.read().decode(errors="replace").splitlines(), maxlen=lines))
    except FileNotFoundError:
        return []
