"""AirflowStack's clean-up: what it starts carries its mark, and `kill_strays` ends exactly those."""

from __future__ import annotations

import subprocess
import sys
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
