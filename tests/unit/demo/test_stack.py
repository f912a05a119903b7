"""AirflowStack's clean-up: what it starts carries its mark, and `kill_strays` ends exactly those."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from airflow_provider_mlpipe.demo.stack import STACK_MARK, AirflowStack, StackConfig

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_kill_strays_ends_the_stacks_detached_processes_and_nothing_else(tmp_path: Path) -> None:
    stack = AirflowStack(StackConfig(home=tmp_path / "home"))
    other = AirflowStack(StackConfig(home=tmp_path / "other"))
    # Detached like the local runtime's supervisors: a session of their own, the stack's environment.
    ours = subprocess.Popen(SLEEPER, env=stack.env, start_new_session=True)
    theirs = subprocess.Popen(SLEEPER, env=other.env, start_new_session=True)
    # A user's shell that exports the same AIRFLOW_HOME is not the stack's.
    shell = subprocess.Popen(SLEEPER, env={"AIRFLOW_HOME": str(stack.home), "PATH": "/usr/bin:/bin"})
    try:
        assert stack.env[STACK_MARK] == str(stack.home)
        assert stack.kill_strays() == [ours.pid]
        assert ours.wait(30) == -9
        assert theirs.poll() is None and shell.poll() is None
    finally:
        for proc in (ours, theirs, shell):
            proc.kill()
            proc.wait(30)


# Logs its name to a file on SIGTERM, then exits; `delay` seconds later for the scheduler, which in Airflow
# waits for its executor's tasks before it exits.
RECORDER = """
import os, signal, sys, time
name, log, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
def stop(*_):
    time.sleep(delay)
    with open(log, "a") as f:
        f.write(name + "\\n")
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
open(log + "." + name + ".ready", "w").close()
while True:
    time.sleep(1)
"""


def test_stop_ends_the_tasks_and_components_before_the_api_server(tmp_path: Path) -> None:
    """A running task's supervisor reports through the api-server, so the api-server must outlive the rest."""
    stack = AirflowStack(StackConfig(home=tmp_path / "home"))
    log = tmp_path / "terminated.log"

    def start(name: str, delay: float) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-c", RECORDER, name, str(log), str(delay)]
        return subprocess.Popen(cmd, env=stack.env, start_new_session=True)

    procs = {"api-server": start("api-server", 0), "scheduler": start("scheduler", 0.5)}
    task = start("task", 0)  # detached, like a task process: not one of stack.procs
    try:
        for name in ("api-server", "scheduler", "task"):
            while not Path(f"{log}.{name}.ready").exists():
                assert task.poll() is None and all(p.poll() is None for p in procs.values())
                time.sleep(0.05)
        stack.procs.update(procs)
        stack.stop(timeout=60)
        order = log.read_text().split()
        assert sorted(order[:2]) == ["scheduler", "task"] and order[2:] == ["api-server"]
        assert all(p.returncode == 0 for p in procs.values())
    finally:
        for proc in (*procs.values(), task):
            proc.kill()
            proc.wait(30)
