"""DingTalkHook: how it reads the dingding-type connection, and what it refuses.

Real Airflow connections (AIRFLOW_CONN_* variables); nothing is sent here (tests/unit/test_notifications.py
sends to a local endpoint that checks the signature).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.hooks.dingtalk import DEFAULT_API, DingTalkHook, sign
from tests.notification_receivers import expected_sign


def set_conn(monkeypatch: pytest.MonkeyPatch, **conn: object) -> DingTalkHook:
    monkeypatch.setenv("AIRFLOW_CONN_ROBOT", json.dumps({"conn_type": "dingding", **conn}))
    return DingTalkHook("robot")


def test_empty_host_is_dingtalks_api_and_unsigned_without_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    url = urlsplit(set_conn(monkeypatch, password="tok").url())
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{DEFAULT_API}/robot/send"
    assert parse_qs(url.query) == {"access_token": ["tok"]}


def test_bare_host_gets_https_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    url = urlsplit(set_conn(monkeypatch, host="robot.internal", port=8443, password="tok").url())
    assert (url.scheme, url.netloc) == ("https", "robot.internal:8443")


def test_signed_url_carries_timestamp_and_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = set_conn(monkeypatch, password="tok", extra={"secret": "SECabc"})
    query = {k: v[0] for k, v in parse_qs(urlsplit(hook.url()).query).items()}
    assert query["sign"] == expected_sign(query["timestamp"], "SECabc")
    assert sign(int(query["timestamp"]), "SECabc") == query["sign"]


def test_missing_token_is_refused_naming_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"connection robot\.password"):
        set_conn(monkeypatch, host="oapi.dingtalk.com").url()


def test_non_http_host_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"connection robot\.host"):
        set_conn(monkeypatch, host="ftp://robot", password="tok").url()
