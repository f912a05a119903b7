"""Which namespace KubernetesResourceHook works in: the operator's, else `[mlpipe] kubernetes_namespace`,
else the `kubernetes` connection's extra `namespace`, else `mlpipe` (the README's settings table).

The connections are real Airflow connections (AIRFLOW_CONN_* environment variables) read by the
cncf-kubernetes provider's KubernetesHook; nothing is emulated and no API call is made (resolving the
namespace builds no client).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_mlpipe.hooks.kubernetes import DEFAULT_NAMESPACE, KubernetesResourceHook

CONN_ID = "kubernetes_ml_prod"


@pytest.fixture(autouse=True)
def no_namespace_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__MLPIPE__KUBERNETES_NAMESPACE", raising=False)


def connection(monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], conn_id: str = CONN_ID) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "kubernetes", "extra": extra})
    )


@pytest.mark.parametrize("key", ["namespace", "extra__kubernetes__namespace"])
def test_the_connection_namespace_is_used(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    connection(monkeypatch, {"in_cluster": True, key: "ml-prod"})
    assert KubernetesResourceHook(CONN_ID).namespace == "ml-prod"


def test_the_configured_default_connection_is_read_too(monkeypatch: pytest.MonkeyPatch) -> None:
    connection(monkeypatch, {"namespace": "ml-prod"}, conn_id="kubernetes_default")
    monkeypatch.delenv("AIRFLOW__MLPIPE__KUBERNETES_CONN_ID", raising=False)
    assert KubernetesResourceHook().namespace == "ml-prod"


def test_the_setting_overrides_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    connection(monkeypatch, {"namespace": "ml-prod"})
    monkeypatch.setenv("AIRFLOW__MLPIPE__KUBERNETES_NAMESPACE", "ml-staging")
    assert KubernetesResourceHook(CONN_ID).namespace == "ml-staging"


def test_the_operator_namespace_overrides_both_without_loading_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__MLPIPE__KUBERNETES_NAMESPACE", "ml-staging")
    # No such connection: reading it would raise.
    assert KubernetesResourceHook("kubernetes_undefined", "team-a").namespace == "team-a"


@pytest.mark.parametrize("extra", [{}, {"namespace": ""}])
def test_without_any_namespace_it_is_mlpipe(monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any]) -> None:
    connection(monkeypatch, extra)
    assert KubernetesResourceHook(CONN_ID).namespace == DEFAULT_NAMESPACE == "mlpipe"
