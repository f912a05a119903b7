"""Supervisor of one local runtime process (training run or serving endpoint).

Started detached (its own session) by :class:`LocalProcessHook`, so the Airflow task that launched it can
defer, be killed or be retried without touching the work. It owns the child's whole life: it writes the
child's output to `output.log`, and the exit status to `exit.json` as the very last step, so any later
reader (a trigger, a retried task, a restarted triggerer) can tell running / finished / lost apart.

Usage: python -m airflow_provider_mlpipe.hooks.local_supervisor <process_dir> -- <argv...>
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If the supervisor itself is killed -9, take the child down too: an unsupervised child would be an
    # orphan nobody records or stops. Linux only; elsewhere the child merely outlives a crashed supervisor.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _write_json(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    # Handlers first: a stop that arrives while we start must be recorded as a stop, not kill us silently.
    stop = {"signal": 0, "at": 0.0}
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        if not stop["signal"]:
            stop["signal"], stop["at"] = signum, time.monotonic()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: local_supervisor <process_dir> -- <argv...>\n")
        return 2
    child_argv = argv[2:]
    child_cwd = os.environ.get("MLPIPE_PROCESS_CWD") or os.getcwd()
    # Work inside the process directory by relative paths: if it is ever renamed (archived), our files
    # follow it instead of landing in a newer attempt's directory.
    os.chdir(argv[0])
    proc_dir = Path(".")
    grace = float(os.environ.get("MLPIPE_STOP_GRACE_SECONDS", "20"))

    code: int = -int(signal.SIGTERM)
    if not stop["signal"]:
        with (proc_dir / "output.log").open("ab", buffering=0) as log:
            child = subprocess.Popen(
                child_argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=child_cwd,
                preexec_fn=_die_with_parent,
            )
            _write_json(proc_dir / "child.json", {"pid": child.pid, "started_at": time.time()})
            if stop["signal"]:
                child.send_signal(signal.SIGTERM)
            while True:
                try:
                    code = child.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if stop["signal"] and time.monotonic() - stop["at"] > grace:
                        child.kill()

    _write_json(
        proc_dir / "exit.json",
        {"exit_code": code, "stopped": bool(stop["signal"]), "finished_at": time.time()},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
