"""Status interpretation of the Kubernetes runtime (pure functions; no API involved)."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_mlpipe.hooks.kubernetes_status import (
    AVAILABLE,
    FAILED,
    PROGRESSING,
    RUNNING,
    SUCCEEDED,
    job_state,
    pod_problems,
    rollout_state,
    service_address,
)


def dep(generation: int = 2, wanted: int = 2, **status: Any) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "spec": {"replicas": wanted}, "status": status}


@pytest.mark.parametrize(
    ("deployment", "state"),
    [
        (dep(observedGeneration=1, updatedReplicas=2, replicas=2, availableReplicas=2), PROGRESSING),
        (dep(observedGeneration=2, updatedReplicas=1, replicas=3, availableReplicas=2), PROGRESSING),
        (dep(observedGeneration=2, updatedReplicas=2, replicas=3, availableReplicas=3), PROGRESSING),
        (dep(observedGeneration=2, updatedReplicas=2, replicas=2, availableReplicas=1), PROGRESSING),
        (dep(observedGeneration=2, updatedReplicas=2, replicas=2, availableReplicas=2), AVAILABLE),
        (
            dep(
                observedGeneration=2,
                conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
            ),
            FAILED,
        ),
    ],
)
def test_rollout_state(deployment: dict[str, Any], state: str) -> None:
    assert rollout_state(deployment)[0] == state


def test_rollout_waits_for_the_generation_the_patch_returned() -> None:
    # The operator saw generation 3 in its PATCH answer; a stale read of generation 2 is not enough.
    stale = dep(generation=2, observedGeneration=2, updatedReplicas=2, replicas=2, availableReplicas=2)
    assert rollout_state(stale, min_generation=3)[0] == PROGRESSING


def test_job_state() -> None:
    assert job_state({"status": {"active": 1}})[0] == RUNNING
    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert job_state(done)[0] == SUCCEEDED
    target = {
        "status": {"conditions": [{"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded"}]}
    }
    assert job_state(target) == (FAILED, "DeadlineExceeded")
    not_yet = {"status": {"conditions": [{"type": "Failed", "status": "False", "reason": "x"}]}}
    assert job_state(not_yet)[0] == RUNNING


def test_pod_problems_and_addresses() -> None:
    pods = [
        {
            "metadata": {"name": "p1"},
            "status": {
                "initContainerStatuses": [
                    {"name": "fetch-model", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
                ],
                "containerStatuses": [
                    {"name": "tf-serving", "state": {"waiting": {"reason": "PodInitializing"}}},
                ],
            },
        },
        {
            "metadata": {"name": "p2"},
            "status": {
                "containerStatuses": [
                    {
                        "name": "tf-serving",
                        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
                    }
                ]
            },
        },
    ]
    assert pod_problems(pods) == [
        "p1/fetch-model: Error (exit code 1)",
        "p2/tf-serving: ImagePullBackOff: not found",
    ]
    assert service_address({"status": {"loadBalancer": {}}}) is None
    assert (
        service_address({"status": {"loadBalancer": {"ingress": [{"hostname": "a.example"}]}}}) == "a.example"
    )
    assert service_address({"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}) == "1.2.3.4"
