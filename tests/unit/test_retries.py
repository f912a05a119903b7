"""The one transient/permanent classifier and the one retry policy (airflow_provider_mlpipe/retries.py).

The exceptions are real instances of each client library's classes, built the way the libraries build
them; the loops run with recorded waits instead of the clock.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import oss2
import pytest
import requests
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes_asyncio.client.exceptions import ApiException as AsyncApiException

from airflow_provider_mlpipe.exceptions import ConfigError, KubernetesRuntimeError, RetriesExhausted
from airflow_provider_mlpipe.retries import (
    RetryPolicy,
    call_with_retry,
    call_with_retry_async,
    is_transient,
    is_transient_status,
    retry_after,
)


def http_error(status: int, headers: dict[str, str] | None = None) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    return requests.HTTPError(f"HTTP {status}", response=response)


def oss_error(status: int, code: str) -> oss2.exceptions.OssError:
    # What oss2.exceptions.make_exception builds from an OSS answer.
    return oss2.exceptions.ServerError(status, {}, b"", {"Code": code, "Message": "m"})


def api_error(status: int, headers: dict[str, str] | None = None) -> ApiException:
    err = ApiException(status=status, reason="r")
    err.headers = headers
    return err


TRANSIENT: list[tuple[str, BaseException]] = [
    ("requests ConnectionError", requests.ConnectionError("refused")),
    ("requests Timeout", requests.exceptions.ReadTimeout("read timed out")),
    ("requests ChunkedEncodingError", requests.exceptions.ChunkedEncodingError("broken body")),
    *[(f"requests HTTP {s}", http_error(s)) for s in (408, 429, 500, 502, 503, 504)],
    ("oss2 RequestError", oss2.exceptions.RequestError(ConnectionResetError("reset"))),
    ("oss2 InconsistentError", oss2.exceptions.InconsistentError("crc64 mismatch")),
    ("oss2 503", oss_error(503, "ServiceUnavailable")),
    ("oss2 429", oss_error(429, "TooManyRequests")),
    ("oss2 403 RequestTimeTooSkewed", oss_error(403, "RequestTimeTooSkewed")),
    ("oss2 503 SlowDown", oss_error(503, "SlowDown")),
    ("kubernetes status 0 (no answer)", ApiException(status=0, reason="SSLError")),
    ("kubernetes 503", api_error(503)),
    ("kubernetes 429", api_error(429)),
    ("kubernetes_asyncio 504", AsyncApiException(status=504, reason="Gateway Timeout")),
    ("kubernetes_asyncio 500", AsyncApiException(status=500, reason="Internal")),
    ("urllib3 ProtocolError", urllib3.exceptions.ProtocolError("aborted", ConnectionResetError())),
    ("urllib3 ReadTimeoutError", urllib3.exceptions.ReadTimeoutError(None, "/x", "read timed out")),  # type: ignore[arg-type]
    ("urllib3 NewConnectionError", urllib3.exceptions.NewConnectionError(None, "refused")),  # type: ignore[arg-type]
    ("urllib3 MaxRetryError", urllib3.exceptions.MaxRetryError(None, "/x")),  # type: ignore[arg-type]
    ("aiohttp ClientConnectionError", aiohttp.ClientConnectionError("refused")),
    ("aiohttp ServerDisconnectedError", aiohttp.ServerDisconnectedError()),
    ("aiohttp ServerTimeoutError", aiohttp.ServerTimeoutError("read timeout")),
    ("builtin ConnectionResetError", ConnectionResetError("reset")),
    ("builtin TimeoutError (asyncio's too)", TimeoutError()),
]

PERMANENT: list[tuple[str, BaseException]] = [
    *[(f"requests HTTP {s}", http_error(s)) for s in (400, 401, 403, 404, 409, 422, 501)],
    ("requests SSLError", requests.exceptions.SSLError("certificate verify failed")),
    ("oss2 403 AccessDenied", oss_error(403, "AccessDenied")),
    ("oss2 404 NoSuchBucket", oss2.exceptions.NoSuchBucket(404, {}, b"", {"Code": "NoSuchBucket"})),
    ("oss2 409 FileAlreadyExists", oss_error(409, "FileAlreadyExists")),
    *[(f"kubernetes {s}", api_error(s)) for s in (400, 403, 404, 409, 422)],
    ("kubernetes_asyncio 403", AsyncApiException(status=403, reason="Forbidden")),
    ("urllib3 SSLError", urllib3.exceptions.SSLError("handshake")),
    ("validation", ValueError("bad manifest")),
    ("ConfigError", ConfigError("retry_policy.attempts", 0, "an integer")),
    ("KubernetesRuntimeError", KubernetesRuntimeError("create Job mlpipe/x failed: HTTP 403")),
    ("KeyError", KeyError("metadata")),
]


@pytest.mark.parametrize("exc", [e for _, e in TRANSIENT], ids=[n for n, _ in TRANSIENT])
def test_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [e for _, e in PERMANENT], ids=[n for n, _ in PERMANENT])
def test_permanent_errors(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_transient_statuses() -> None:
    assert [s for s in range(100, 600) if is_transient_status(s)] == [408, 429, 500, 502, 503, 504]
    assert not is_transient_status(None) and is_transient_status("503")


def test_retry_after_is_read_from_each_client_s_headers() -> None:
    assert retry_after(http_error(503, {"Retry-After": "7"})) == 7.0
    assert retry_after(api_error(429, {"Retry-After": "2"})) == 2.0
    assert retry_after(http_error(503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
    assert retry_after(http_error(503)) is None
    # Only a transient answer asks for a wait.
    assert retry_after(api_error(403, {"Retry-After": "5"})) is None


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.append(seconds)


def failing(errors: list[BaseException], result: str = "done") -> tuple[Any, list[int]]:
    """A call that raises `errors` one by one, then returns `result`; counts its calls."""
    calls = [0]

    def fn() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return result

    return fn, calls


def test_backoff_is_exponential_capped_and_jittered() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=8, base_delay=1.0, max_delay=10.0, sleep=sleeps)
    fn, calls = failing([ConnectionResetError()] * 7)
    assert call_with_retry(fn, policy=policy, what="probe") == "done"
    assert calls == [8] and len(sleeps) == 7
    for n, waited in enumerate(sleeps, start=1):
        nominal = min(10.0, 2.0 ** (n - 1))
        assert nominal / 2 <= waited <= nominal, sleeps


def test_a_permanent_error_is_raised_at_once_and_exhaustion_carries_the_last_error() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=3, base_delay=0.1, sleep=sleeps)
    fn, calls = failing([api_error(503), api_error(403)])
    with pytest.raises(ApiException) as info:
        call_with_retry(fn, policy=policy, what="probe")
    assert info.value.status == 403 and calls == [2] and len(sleeps) == 1

    fn, calls = failing([api_error(503), api_error(502), api_error(504), api_error(503)])
    with pytest.raises(RetriesExhausted) as exhausted:
        call_with_retry(fn, policy=policy, what="probe")
    assert exhausted.value.attempts == 3 and exhausted.value.last.status == 504  # type: ignore[attr-defined]
    assert calls == [3]


async def test_the_async_twin_waits_without_blocking_and_gives_up_alike() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=3, base_delay=0.5, max_delay=1.0, async_sleep=sleeps.asleep)
    errors: list[BaseException] = [
        aiohttp.ServerDisconnectedError(),
        AsyncApiException(status=429, reason=""),
    ]

    async def fn() -> str:
        if errors:
            raise errors.pop(0)
        return "done"

    assert await call_with_retry_async(fn, policy=policy, what="probe") == "done"
    assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 <= sleeps[1] <= 1.0

    async def refused() -> str:
        raise AsyncApiException(status=422, reason="Invalid")

    with pytest.raises(AsyncApiException):
        await call_with_retry_async(refused, policy=policy, what="probe")
    assert len(sleeps) == 2
