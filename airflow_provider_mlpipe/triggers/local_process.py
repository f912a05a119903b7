"""Async wait for a supervised local process (the local runtime's training run)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_mlpipe.hooks.local_process import (
    ABSENT,
    LOST,
    RUNNING,
    SUCCEEDED,
    process_status,
    read_log,
    tail_log,
)
from airflow_provider_mlpipe.runtimes.base import FAILED, GONE, SUCCESS, TAIL_LINES, TIMEOUT, outcome_event

# The process's end state -> the event's status (the state itself is in the event's details).
_STATUS = {SUCCEEDED: SUCCESS, ABSENT: GONE}


class LocalProcessTrigger(BaseTrigger):
    """Wait until the process in `process_dir` ends, copying its output into the task log as it comes.

    Events (`runtimes.base.outcome_event`): `success` (exit 0), `failed` (non-zero exit, killed, lost),
    `gone` (no such process), `timeout`; details: `state`, `process_dir`, `exit_code`, `stopped`.

    :param process_dir: the process directory written by LocalProcessHook.
    :param timeout_at: wall-clock deadline (epoch seconds); past it the trigger reports `timeout`.
    :param poll_interval: seconds between checks.
    :param log_offset: byte offset of output already shown (a restarted triggerer resumes from the
        offset it was serialized with; a few lines may then show twice, none is lost).
    """

    def __init__(
        self,
        *,
        process_dir: str,
        timeout_at: float,
        poll_interval: float = 2.0,
        log_offset: int = 0,
    ) -> None:
        super().__init__()
        self.process_dir = process_dir
        self.timeout_at = timeout_at
        self.poll_interval = poll_interval
        self.log_offset = log_offset

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "process_dir": self.process_dir,
                "timeout_at": self.timeout_at,
                "poll_interval": self.poll_interval,
                "log_offset": self.log_offset,
            },
        )

    def _drain(self, pdir: Path) -> None:
        while True:
            lines, self.log_offset = read_log(pdir, self.log_offset)
            for line in lines:
                self.log.info("[%s] %s", pdir.name, line)
            if not lines:
                return

    async def run(self) -> AsyncIterator[TriggerEvent]:
        pdir = Path(self.process_dir)
        while True:
            # File reads of a few KiB: cheap, but keep them off the triggerer's event loop anyway.
            status = await asyncio.to_thread(process_status, pdir)
            await asyncio.to_thread(self._drain, pdir)
            if status.state not in (RUNNING,):
                yield TriggerEvent(
                    outcome_event(
                        _STATUS.get(status.state, FAILED),
                        _describe(status.state, status.exit_code, status.stopped),
                        tail=tail_log(pdir, TAIL_LINES),
                        state=status.state,
                        process_dir=self.process_dir,
                        exit_code=status.exit_code,
                        stopped=status.stopped,
                    )
                )
                return
            if time.time() >= self.timeout_at:
                yield TriggerEvent(
                    outcome_event(
                        TIMEOUT,
                        f"still running at the deadline ({time.ctime(self.timeout_at)})",
                        tail=tail_log(pdir, TAIL_LINES),
                        state=status.state,
                        process_dir=self.process_dir,
                        exit_code=None,
                        stopped=False,
                    )
                )
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """A user marked the deferred task failed/success or cleared it: stop the process we wait for.

        (Not `cleanup()`: that also runs on every triggerer restart, when the work must go on.)"""
        self.log.info("Task killed by a user: stopping %s", self.process_dir)
        await _stop(Path(self.process_dir))


async def _stop(pdir: Path) -> None:
    from airflow_provider_mlpipe.hooks.local_process import LocalProcessHook

    hook = LocalProcessHook(str(pdir.parent))
    await asyncio.to_thread(hook.stop, pdir.name)


def _describe(state: str, exit_code: int | None, stopped: bool) -> str:
    if state == SUCCEEDED:
        return "exited 0"
    if state == LOST:
        return "its supervisor disappeared without recording an exit status (killed or machine restarted)"
    if state == ABSENT:
        return "no such process was ever started"
    if stopped:
        return f"stopped on request (exit code {exit_code})"
    if exit_code is not None and exit_code < 0:
        return f"killed by signal {-exit_code}"
    return f"exited with code {exit_code}"
