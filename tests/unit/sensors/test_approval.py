"""ApprovalSensor: the evidence a person sees, and the fixed Approve/Reject setup (Reject by default)."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_mlpipe.datasets.fashion_mnist import CLASS_NAMES as FASHION_CLASS_NAMES
from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.sensors.approval import ApprovalSensor, render_evidence

DIGEST = "sha256:" + "ab" * 32
CLASS_NAMES = list(FASHION_CLASS_NAMES)

EVIDENCE: dict[str, Any] = {
    "training": {
        "model_name": "fashion_mnist",
        "version": 7,
        "image": "registry.example.com/mlpipe/trainer:2024-06-01",
        "digest": DIGEST,
        "test_accuracy": 0.8812,
    },
    "staging": {
        "endpoint_url": "http://127.0.0.1:41231",
        "accuracy": 0.87654,
        "samples": 10000,
        "per_class_accuracy": {str(i): 0.5 + i / 100 for i in range(10) if i != 6} | {"6": None},
        "class_names": CLASS_NAMES,
    },
    "gate": {
        "passed": True,
        "min_accuracy": 0.85,
        "max_regression": 0.02,
        "production_version": 5,
        "production_accuracy": 0.8701,
    },
}


def row(body: str, label: str) -> str:
    matches = [line for line in body.splitlines() if line.startswith(f"| {label}")]
    assert len(matches) == 1, (label, body)
    return matches[0]


def test_render_evidence_shows_what_a_reviewer_needs() -> None:
    body = render_evidence(EVIDENCE)
    assert body.splitlines()[0] == "### fashion_mnist version 7"
    assert row(body, "Image") == "| Image | `registry.example.com/mlpipe/trainer:2024-06-01` |"
    assert row(body, "Digest") == f"| Digest | `{DIGEST}` |"
    assert row(body, "Staging endpoint") == "| Staging endpoint | http://127.0.0.1:41231 |"
    assert row(body, "Accuracy (staging") == "| Accuracy (staging, 10000 test examples) | **0.8765** |"
    assert row(body, "Threshold") == "| Threshold (min_accuracy) | 0.8500 |"
    assert row(body, "Production now") == "| Production now | 5 at accuracy 0.8701 |"
    assert row(body, "Allowed regression") == "| Allowed regression | 0.0200 |"
    assert row(body, "Training test accuracy") == "| Training test accuracy | 0.8812 |"


def test_render_evidence_per_class_rows() -> None:
    body = render_evidence(EVIDENCE)
    for index, name in enumerate(CLASS_NAMES):
        expected = "-" if index == 6 else f"{0.5 + index / 100:.4f}"
        assert row(body, f"{index} {name}") == f"| {index} {name} | {expected} |"
    lines = body.splitlines()
    start = lines.index("| class | accuracy |")
    assert len(lines[start + 2 :]) == len(CLASS_NAMES)


def test_render_evidence_with_nothing_known_does_not_fail() -> None:
    body = render_evidence({})
    assert body.splitlines()[0] == "### ? version ?"
    assert row(body, "Image") == "| Image | `-` |"
    assert row(body, "Production now") == "| Production now | - at accuracy - |"
    lines = body.splitlines()
    assert lines[lines.index("| class | accuracy |") + 2 :] == []


def test_render_evidence_any_number_of_classes_in_numeric_order_with_or_without_names() -> None:
    per_class = {str(i): i / 20 for i in range(12)}
    for names, label in ((None, ""), ([f"c{i}" for i in range(12)], " c{}")):
        staging = {"per_class_accuracy": per_class, "class_names": names}
        lines = render_evidence({"staging": staging}).splitlines()
        rows = lines[lines.index("| class | accuracy |") + 2 :]
        assert rows == [f"| {i}{label.format(i)} | {i / 20:.4f} |" for i in range(12)]


def test_constructor_defaults_to_reject() -> None:
    sensor = ApprovalSensor(task_id="approval", evidence=EVIDENCE)
    assert sensor.defaults == ["Reject"]
    assert sensor.options == ["Approve", "Reject"]
    assert sensor.multiple is False
    assert sensor.evidence is EVIDENCE
    assert sensor.approvers is None
    assert sensor.subject == "Approve model for production?"


def test_template_fields() -> None:
    fields = set(ApprovalSensor.template_fields)
    assert {"evidence", "approvers", "response_timeout_minutes", "subject", "body"} <= fields


@pytest.mark.parametrize(
    ("sensor_kwargs", "params", "field"),
    [
        ({}, {}, "approvers"),
        ({"approvers": []}, {"approvers": ["alice"]}, "approvers"),
        ({}, {"approvers": "alice"}, "approvers"),
        ({"approvers": ["alice"], "response_timeout_minutes": "soon"}, {}, "approval_timeout_minutes"),
        ({"approvers": ["alice"]}, {"approval_timeout_minutes": -5}, "approval_timeout_minutes"),
    ],
)
def test_execute_checks_approvers_and_timeout_first(
    sensor_kwargs: dict[str, Any], params: dict[str, Any], field: str
) -> None:
    sensor = ApprovalSensor(task_id="approval", evidence=EVIDENCE, **sensor_kwargs)
    with pytest.raises(ConfigError) as info:
        sensor.execute({"params": params})  # type: ignore[arg-type]
    assert info.value.field == field


def test_execute_rejects_a_zero_minute_timeout() -> None:
    sensor = ApprovalSensor(
        task_id="approval", evidence=EVIDENCE, approvers=["alice"], response_timeout_minutes=0
    )
    with pytest.raises(ConfigError) as info:
        sensor.execute({"params": {}})  # type: ignore[arg-type]
    assert info.value.field == "approval_timeout_minutes"
