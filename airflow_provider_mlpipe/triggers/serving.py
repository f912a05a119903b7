"""Async wait until a serving endpoint reports the expected model version AVAILABLE."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_mlpipe.hooks.local_process import RUNNING, process_status, tail_log
from airflow_provider_mlpipe.runtimes.base import FAILED, SUCCESS, TAIL_LINES, TIMEOUT, outcome_event


class ServingReadyTrigger(BaseTrigger):
    """Poll `GET {url}/v1/models/{model_name}/versions/{version}` until its state is AVAILABLE.

    Events (`runtimes.base.outcome_event`): `success`, `failed` (the server process ended), `timeout`;
    details: `url`.

    :param process_dir: for the local runtime, the server's process directory: if the server process
        ends while we wait, the trigger reports `failed` at once with its last output lines.
    """

    def __init__(
        self,
        *,
        url: str,
        model_name: str,
        version: int,
        timeout_at: float,
        poll_interval: float = 1.0,
        process_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.model_name = model_name
        self.version = version
        self.timeout_at = timeout_at
        self.poll_interval = poll_interval
        self.process_dir = process_dir

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "url": self.url,
                "model_name": self.model_name,
                "version": self.version,
                "timeout_at": self.timeout_at,
                "poll_interval": self.poll_interval,
                "process_dir": self.process_dir,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import aiohttp

        status_url = f"{self.url.rstrip('/')}/v1/models/{self.model_name}/versions/{self.version}"
        last = "no answer yet"
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    async with session.get(status_url) as resp:
                        body = await resp.json(content_type=None)
                        states = [s.get("state") for s in body.get("model_version_status", [])]
                        last = f"HTTP {resp.status}: {body}"
                        if resp.status == 200 and "AVAILABLE" in states:
                            yield TriggerEvent(outcome_event(SUCCESS, last, url=self.url))
                            return
                except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError) as err:
                    last = f"{type(err).__name__}: {err}"
                if self.process_dir:
                    pdir = Path(self.process_dir)
                    status = await asyncio.to_thread(process_status, pdir)
                    if status.state != RUNNING:
                        yield TriggerEvent(
                            outcome_event(
                                FAILED,
                                f"server process {status.state} (exit code {status.exit_code})",
                                tail=tail_log(pdir, TAIL_LINES),
                                url=self.url,
                            )
                        )
                        return
                if time.time() >= self.timeout_at:
                    yield TriggerEvent(
                        outcome_event(TIMEOUT, f"not AVAILABLE in time; last: {last}", url=self.url)
                    )
                    return
                await asyncio.sleep(self.poll_interval)
