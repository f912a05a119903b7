"""The one place that tells transient errors from permanent ones, and the one retry policy.

Every client the provider uses goes through here: the model store's OSS backend (oss2), the TF-Serving REST
client (requests), and both Kubernetes hooks (the `kubernetes` client on urllib3, `kubernetes_asyncio` on
aiohttp). A transient error (the server restarting, overloaded or throttling, a connection reset, a timeout)
is retried with capped exponential backoff; anything else (403, 404, 400, 409, 422, a validation error) is
permanent and fails at once, since retrying cannot change the answer and only delays the report.

No Airflow import: the training and fetch containers use this module through the model store. Each client
library is imported only to classify an exception raised by that library, so it must be installed then.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from airflow_provider_mlpipe.exceptions import ConfigError, RetriesExhausted, describe

log = logging.getLogger(__name__)

T = TypeVar("T")

# 408 request timeout, 429 throttled, 500 internal error, 502/504 a proxy in between, 503 unavailable.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# OSS error codes worth retrying whatever the status says (a skewed clock is fixed by re-signing).
OSS_TRANSIENT_CODES = frozenset({"RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "SlowDown"})

# Bounds of a policy given as configuration (a DAG Param): beyond them a typo would hang a task for hours.
MAX_ATTEMPTS = 100
MAX_BASE_DELAY = 600.0
MAX_MAX_DELAY = 3600.0
CONF_FIELD = "retry_policy"


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` calls in all; the wait before retry n is min(max_delay, base_delay * 2**(n-1)), jittered
    down by up to half so that many workers hitting the same throttled server do not retry in lockstep.

    A server's `Retry-After` (seconds) lengthens a wait up to `max_delay`, never shortens it.
    `sleep` / `async_sleep` are how the policy waits (tests pass recorders).
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    async_sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False, compare=False)

    def delay(self, retry: int) -> float:
        """Backoff before retry number `retry` (1 for the first retry), jittered."""
        capped = min(self.max_delay, self.base_delay * (2 ** (retry - 1)))
        return capped * random.uniform(0.5, 1.0)

    def wait(self, retry: int, exc: BaseException) -> float:
        """The backoff, lengthened to the server's Retry-After (capped at `max_delay`) when it sent one."""
        backoff = self.delay(retry)
        asked = retry_after(exc)
        return max(backoff, min(asked, self.max_delay)) if asked is not None else backoff

    def as_conf(self) -> dict[str, int | float]:
        """The policy as configuration (JSON), e.g. for a trigger's serialised kwargs."""
        return {"attempts": self.attempts, "base_delay": self.base_delay, "max_delay": self.max_delay}

    @classmethod
    def from_conf(cls, value: object, field_name: str = CONF_FIELD) -> RetryPolicy:
        """A policy from configuration: None (the defaults), a RetryPolicy, or an object such as
        {"attempts": 5, "base_delay": 0.5, "max_delay": 30} (as a mapping or a JSON string); missing keys
        take the defaults. Errors name the field, e.g. `retry_policy.max_delay`."""
        if value is None or value == "":
            return cls()
        if isinstance(value, RetryPolicy):
            return value
        if isinstance(value, str):
            # An operator used outside a DAG that renders templates as native objects gets JSON text.
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigError(field_name, value, _EXPECTED) from None
        if not isinstance(value, Mapping):
            raise ConfigError(field_name, value, _EXPECTED)
        unknown = sorted(set(value) - {"attempts", "base_delay", "max_delay"})
        if unknown:
            raise ConfigError(
                f"{field_name}.{unknown[0]}",
                value[unknown[0]],
                "one of the keys attempts, base_delay, max_delay",
            )
        defaults = cls()
        attempts = value.get("attempts", defaults.attempts)
        if (
            isinstance(attempts, bool)
            or not isinstance(attempts, int | float)
            or not float(attempts).is_integer()
            or not 1 <= attempts <= MAX_ATTEMPTS
        ):
            raise ConfigError(f"{field_name}.attempts", attempts, f"an integer in [1, {MAX_ATTEMPTS}]")
        base_delay = _seconds(f"{field_name}.base_delay", value.get("base_delay", defaults.base_delay), 0.0)
        if base_delay > MAX_BASE_DELAY:
            raise ConfigError(
                f"{field_name}.base_delay", base_delay, f"a number of seconds in [0, {MAX_BASE_DELAY:g}]"
            )
        max_delay = _seconds(f"{field_name}.max_delay", value.get("max_delay", defaults.max_delay), 0.0)
        if not base_delay <= max_delay <= MAX_MAX_DELAY:
            raise ConfigError(
                f"{field_name}.max_delay",
                max_delay,
                f"a number of seconds in [base_delay ({base_delay:g}), {MAX_MAX_DELAY:g}]",
            )
        return cls(attempts=int(attempts), base_delay=base_delay, max_delay=max_delay)


_EXPECTED = 'an object such as {"attempts": 5, "base_delay": 0.5, "max_delay": 30}'


def _seconds(field_name: str, value: object, minimum: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < minimum
    ):
        raise ConfigError(field_name, value, f"a number of seconds >= {minimum:g}")
    return float(value)


# --- classification -----------------------------------------------------------------------------------


def is_transient_status(status: object) -> bool:
    """An HTTP status worth retrying: 408, 429, 500, 502, 503, 504."""
    try:
        return int(status) in TRANSIENT_STATUS  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return False


def _raised_by(exc: BaseException, package: str) -> bool:
    """Whether `exc` is an exception class of `package`: then that package is installed and may be imported
    to classify it, while errors of other libraries never pay for (or require) the import."""
    return any(
        cls.__module__ == package or cls.__module__.startswith(f"{package}.") for cls in type(exc).__mro__
    )


def _oss2_transient(exc: BaseException) -> bool:
    import oss2

    if isinstance(exc, oss2.exceptions.RequestError | oss2.exceptions.InconsistentError):
        return True  # connection reset / timeout, or bytes damaged in flight (CRC64 mismatch)
    if isinstance(exc, oss2.exceptions.ServerError):
        return is_transient_status(exc.status) or exc.code in OSS_TRANSIENT_CODES
    return False


def _kubernetes_family(package: str) -> Callable[[BaseException], bool]:
    """The classifier of `kubernetes` or `kubernetes_asyncio`: both raise their own ApiException alike."""

    def classify(exc: BaseException) -> bool:
        api_exception = importlib.import_module(f"{package}.client.exceptions").ApiException
        # Status 0: the client got no HTTP answer at all.
        return isinstance(exc, api_exception) and (not exc.status or is_transient_status(exc.status))

    return classify


def _requests_transient(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        return False  # a certificate or TLS set-up problem does not heal by asking again
    if isinstance(exc, requests.HTTPError):
        return exc.response is not None and is_transient_status(exc.response.status_code)
    return isinstance(
        exc, requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError
    )


def _urllib3_transient(exc: BaseException) -> bool:
    from urllib3 import exceptions as e

    if isinstance(exc, e.SSLError):
        return False
    # TimeoutError covers ReadTimeoutError and ConnectTimeoutError (NewConnectionError included).
    return isinstance(exc, e.ProtocolError | e.TimeoutError | e.NewConnectionError | e.MaxRetryError)


def _aiohttp_transient(exc: BaseException) -> bool:
    import aiohttp

    if isinstance(exc, aiohttp.ClientSSLError):
        return False
    if isinstance(exc, aiohttp.ClientResponseError):
        return is_transient_status(exc.status)
    # ClientConnectionError covers ServerDisconnectedError, ClientOSError and refused connections;
    # ClientPayloadError is a connection that broke in the middle of a body.
    return isinstance(
        exc, aiohttp.ClientConnectionError | aiohttp.ServerTimeoutError | aiohttp.ClientPayloadError
    )


_FAMILIES: tuple[tuple[str, Callable[[BaseException], bool]], ...] = (
    ("oss2", _oss2_transient),
    ("kubernetes_asyncio", _kubernetes_family("kubernetes_asyncio")),
    ("kubernetes", _kubernetes_family("kubernetes")),
    ("requests", _requests_transient),
    ("urllib3", _urllib3_transient),
    ("aiohttp", _aiohttp_transient),
)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the call that raised `exc` may succeed. Everything not known to be transient is
    permanent."""
    for package, classify in _FAMILIES:
        if _raised_by(exc, package):
            return classify(exc)
    # asyncio.TimeoutError is TimeoutError since Python 3.11.
    return isinstance(exc, ConnectionError | TimeoutError)


def _status(exc: BaseException) -> int | None:
    for candidate in (
        getattr(exc, "status", None),
        getattr(getattr(exc, "response", None), "status_code", None),
    ):
        if isinstance(candidate, int) and candidate > 0:
            return candidate
    return None


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (`Retry-After: <seconds>`) in a throttling or unavailable answer;
    None when it asked nothing (an HTTP-date value is ignored: the backoff applies)."""
    if not is_transient_status(_status(exc)):
        return None
    headers = getattr(exc, "headers", None)
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    try:
        raw = headers.get("Retry-After") if headers is not None else None
    except (AttributeError, TypeError):
        return None
    try:
        seconds = float(raw) if raw is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


# --- the loops ----------------------------------------------------------------------------------------


def _wait_or_raise(
    exc: Exception,
    policy: RetryPolicy,
    attempt: int,
    attempts: int,
    what: str,
    is_transient: Callable[[BaseException], bool],
) -> float:
    """The shared step of both retry loops: re-raise a permanent error, give up after the last attempt,
    else log and return how long to wait before the next one. Called inside the `except` block."""
    if not is_transient(exc):
        raise exc
    if attempt == attempts:
        raise RetriesExhausted(attempts, exc) from exc
    wait = policy.wait(attempt, exc)
    log.warning(
        "%s failed (attempt %d of %d, %s): retrying in %.2f s", what, attempt, attempts, describe(exc), wait
    )
    return wait


def call_with_retry(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    what: str,
    is_transient: Callable[[BaseException], bool] = is_transient,
) -> T:
    """Call `fn` until it returns, raises a permanent error (re-raised at once), or `policy.attempts`
    transient errors occurred (then RetriesExhausted carrying the last one)."""
    attempts = max(1, policy.attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            policy.sleep(_wait_or_raise(exc, policy, attempt, attempts, what, is_transient))
    raise AssertionError("unreachable")  # pragma: no cover


async def call_with_retry_async(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    what: str,
    is_transient: Callable[[BaseException], bool] = is_transient,
) -> T:
    """The async twin of `call_with_retry` (waits with `policy.async_sleep`, never blocking the loop)."""
    attempts = max(1, policy.attempts)
    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except Exception as exc:
            await policy.async_sleep(_wait_or_raise(exc, policy, attempt, attempts, what, is_transient))
    raise AssertionError("unreachable")  # pragma: no cover
