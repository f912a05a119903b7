"""TF Serving's error model: a canonical status code, its HTTP status, and a message that quotes (a bounded
part of) the offending request, as `http_rest_api_handler` answers `{"error": "..."}`."""

from __future__ import annotations

import json

# TF Serving's mapping of canonical status codes to HTTP codes (model_servers/http_server.cc).
HTTP_STATUS: dict[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
_MAX_ECHO = 200  # error messages quote the offending JSON, but a 3 MB batch must not come back in one


class ApiError(Exception):
    """A request failed with one of TF Serving's canonical status codes."""

    def __init__(
        self, code: str, message: str, http_status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status if http_status is not None else HTTP_STATUS.get(code, 500)
        self.headers = headers or {}


def invalid(message: str) -> ApiError:
    return ApiError("INVALID_ARGUMENT", message)


def echo(value: object) -> str:
    """Compact JSON of a request fragment for an error message, truncated so errors stay small."""
    try:
        text = json.dumps(value, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "...(truncated)"
