"""The one place where object-store calls are retried: capped exponential backoff with jitter."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` calls in all; the wait before retry n is min(max_delay, base_delay * 2**(n-1)), jittered
    down by up to half so that many workers hitting the same throttled bucket do not retry in lockstep."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def delay(self, retry: int) -> float:
        capped = min(self.max_delay, self.base_delay * (2 ** (retry - 1)))
        return capped * random.uniform(0.5, 1.0)


class RetriesExhausted(Exception):
    """Internal: the last transient error after `attempts` tries (callers translate it to a store error)."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"{attempts} attempts, last error: {last}")
        self.attempts = attempts
        self.last = last


def call_with_retry(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    what: str,
) -> T:
    """Call `fn` until it returns, raises a non-transient error (re-raised at once), or `policy.attempts`
    transient errors occurred (then RetriesExhausted carrying the last one)."""
    attempts = max(1, policy.attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == attempts:
                raise RetriesExhausted(attempts, exc) from exc
            wait = policy.delay(attempt)
            log.warning(
                "%s failed (attempt %d of %d, %s): retrying in %.1fs", what, attempt, attempts, exc, wait
            )
            policy.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
