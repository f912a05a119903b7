"""DingTalk custom robot webhook: post a markdown message to a group chat, signed with the robot's secret.

Reads an Airflow connection laid out as the `apache-airflow-providers-dingding` provider's (`dingding`
type), so a team that has one reuses it as it is:

- host: the API base, `https://oapi.dingtalk.com` when empty (a bare host name gets `https://`),
- password: the robot's `access_token` (the value after `access_token=` in its webhook URL),
- extra `secret`: the robot's signing secret (`SEC...`), when its security setting is "Additional signature".

The dingding provider itself is not a dependency: it does not sign requests, and the robot refuses unsigned
requests once signing is on. DingTalk's scheme (robot "Additional signature" settings): `timestamp` is the
current time in milliseconds, `sign` = base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}")), both
sent as query parameters; the server accepts a timestamp within one hour of its clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk.bases.hook import BaseHook

from airflow_provider_mlpipe.exceptions import ConfigError, NotificationError
from airflow_provider_mlpipe.retries import RetryPolicy, call_with_retry, is_transient

DEFAULT_API = "https://oapi.dingtalk.com"
# errcode answered with HTTP 200: 130101 "send too fast" (20 messages a minute per robot), -1 "system busy".
TRANSIENT_ERRCODES = frozenset({130101, -1})


def sign(timestamp_ms: int, secret: str) -> str:
    """DingTalk's signature of `timestamp_ms` with the robot's `secret` (base64, not yet URL-encoded)."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class DingTalkError(NotificationError):
    """The robot answered with a non-zero errcode."""

    def __init__(self, url: str, errcode: object, errmsg: object) -> None:
        super().__init__(f"DingTalk robot at {url} refused the message: errcode {errcode} ({errmsg})")
        self.errcode = errcode


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, DingTalkError):
        return exc.errcode in TRANSIENT_ERRCODES
    return is_transient(exc)


class DingTalkHook(BaseHook):
    """Send messages through the DingTalk robot of connection `dingtalk_conn_id`.

    :param retry: how transient failures (connection errors, 429/5xx, "send too fast") are retried.
    :param timeout: seconds per HTTP request.
    """

    conn_name_attr = "dingtalk_conn_id"
    default_conn_name = "dingding_default"
    # The dingding provider's type: we read its connections but do not register the type again.
    conn_type = "dingding"
    hook_name = "MLPipe DingTalk robot"

    def __init__(
        self,
        dingtalk_conn_id: str = default_conn_name,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.dingtalk_conn_id = dingtalk_conn_id
        self.retry = retry or RetryPolicy(attempts=3, base_delay=1.0, max_delay=10.0)
        self.timeout = timeout

    @cached_property
    def _settings(self) -> tuple[str, str, str | None]:
        """(API base URL, access token, signing secret or None) from the connection."""
        conn = self.get_connection(self.dingtalk_conn_id)
        token = conn.password or ""
        if not token:
            raise ConfigError(f"connection {self.dingtalk_conn_id}.password", "", "the robot's access_token")
        host = (conn.host or "").rstrip("/")
        if not host:
            base = DEFAULT_API
        elif "://" in host:
            base = host
        else:
            base = f"{conn.schema or 'https'}://{host}" + (f":{conn.port}" if conn.port else "")
        if urlsplit(base).scheme not in ("http", "https"):
            raise ConfigError(f"connection {self.dingtalk_conn_id}.host", host, "an http(s) URL or host name")
        secret = conn.extra_dejson.get("secret") or None
        if secret is not None:
            self._mask(str(secret))
        self._mask(token)
        return base, token, secret

    @staticmethod
    def _mask(value: str) -> None:
        from airflow.sdk.log import mask_secret

        mask_secret(value)

    def url(self) -> str:
        """The robot's send URL, freshly signed (the timestamp is part of the signature)."""
        from urllib.parse import urlencode

        base, token, secret = self._settings
        query: dict[str, str] = {"access_token": token}
        if secret:
            timestamp = int(time.time() * 1000)
            query.update(timestamp=str(timestamp), sign=sign(timestamp, secret))
        return f"{base}/robot/send?{urlencode(query)}"

    def send_markdown(self, title: str, text: str, *, at_mobiles: list[str] | None = None) -> None:
        """Post a markdown message; retries transient failures, then raises."""
        payload: dict[str, Any] = {
            "msgtype": "markdown",
            "markdown": {"title": title, "text": text},
            "at": {"atMobiles": list(at_mobiles or []), "isAtAll": False},
        }
        call_with_retry(
            lambda: self._post(payload),
            policy=self.retry,
            what=f"DingTalk message via connection {self.dingtalk_conn_id}",
            is_transient=_transient,
        )

    def _post(self, payload: dict[str, Any]) -> None:
        import requests

        # Signed per attempt: a retry after a long backoff must not send a stale timestamp.
        url = self.url()
        response = requests.post(url, json=payload, timeout=self.timeout)
        response.raise_for_status()
        try:
            answer = response.json()
        except ValueError:
            answer = {"errcode": None, "errmsg": response.text[:200]}
        safe_url = url.split("?", 1)[0]
        if not isinstance(answer, dict) or answer.get("errcode") != 0:
            errcode = answer.get("errcode") if isinstance(answer, dict) else None
            errmsg = answer.get("errmsg") if isinstance(answer, dict) else answer
            raise DingTalkError(safe_url, errcode, errmsg)
