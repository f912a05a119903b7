"""Runtimes by name, and the one event shape their triggers fire."""

from __future__ import annotations

import pytest

from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.params import RUNTIMES
from airflow_provider_mlpipe.retries import RetryPolicy
from airflow_provider_mlpipe.runtimes import REGISTRY, get_runtime
from airflow_provider_mlpipe.runtimes.base import Outcome, Runtime, outcome_event
from airflow_provider_mlpipe.runtimes.kubernetes import KubernetesRuntime
from airflow_provider_mlpipe.runtimes.local import LocalRuntime


def test_the_registry_offers_exactly_the_runtime_params_choices() -> None:
    assert tuple(REGISTRY) == RUNTIMES


def test_get_runtime_builds_the_named_runtime_with_its_settings() -> None:
    policy = RetryPolicy(attempts=2)
    local = get_runtime("local", retry=policy, state_dir="/nonexistent")
    assert isinstance(local, LocalRuntime) and local.retry is policy and local.name == "local"
    kube = get_runtime("kubernetes", kubernetes_conn_id="k", namespace="ns")
    assert isinstance(kube, KubernetesRuntime) and (kube.kubernetes_conn_id, kube.namespace) == ("k", "ns")
    assert isinstance(kube, Runtime)


@pytest.mark.parametrize("name", ["docker", "", None, "Local"])
def test_an_unknown_runtime_is_refused_naming_the_choices(name: object) -> None:
    with pytest.raises(ConfigError, match=r"runtime.*one of local, kubernetes"):
        get_runtime(name)


def test_outcome_event_round_trips_and_refuses_unknown_statuses() -> None:
    event = outcome_event("failed", "exited with code 3", tail=[str(i) for i in range(30)], exit_code=3)
    assert event == {
        "status": "failed",
        "message": "exited with code 3",
        "tail": [str(i) for i in range(10, 30)],
        "details": {"exit_code": 3},
    }
    outcome = Outcome.from_event(event)
    assert not outcome.succeeded and outcome.details == {"exit_code": 3} and len(outcome.tail) == 20
    with pytest.raises(ValueError, match="available"):
        outcome_event("available", "ok")


@pytest.mark.parametrize(
    ("old", "status"),
    [("available", "success"), ("lost", "failed"), ("absent", "gone"), ("timeout", "timeout")],
)
def test_events_of_0_1_0_triggers_are_read_too(old: str, status: str) -> None:
    outcome = Outcome.from_event({"status": old, "message": "m", "url": "http://x", "tail": ["t"]})
    assert (outcome.status, outcome.message, outcome.tail, outcome.details) == (
        status,
        "m",
        ["t"],
        {"url": "http://x"},
    )
