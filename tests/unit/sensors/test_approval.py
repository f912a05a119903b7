"""ApprovalSensor: the evidence a person sees, and the fixed Approve/Reject setup (Reject by default)."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import TaskAwaitingInput

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
    assert row(body, "Production now") == "| Production now | v5 at accuracy 0.8701 |"
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
    assert row(body, "Production now") == "| Production now | unknown (no accuracy gate decision) |"
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


def test_no_production_model_is_said_in_words() -> None:
    evidence = {
        **EVIDENCE,
        "gate": {**EVIDENCE["gate"], "production_version": None, "production_accuracy": None},
    }
    body = render_evidence(evidence, models_page="/mlpipe-models")
    assert row(body, "Production now") == (
        "| Production now | none: no model is in production yet, this version would be the first |"
    )
    assert "at accuracy -" not in body
    assert "(no model in production to compare with)" in body
    # No `against`: the per-class picture compares with nothing.
    assert "](/mlpipe-models/api/models/fashion_mnist/versions/7/per_class.svg)" in body


def test_pictures_and_link_point_at_the_models_page() -> None:
    body = render_evidence(EVIDENCE, models_page="/airflow/mlpipe-models")
    lines = body.splitlines()
    assert (
        "![Per-class accuracy of v7 against production v5]"
        "(/airflow/mlpipe-models/api/models/fashion_mnist/versions/7/per_class.svg?against=5)"
    ) in lines
    assert (
        "![Confusion matrix of v7 on staging](/airflow/mlpipe-models/api/models/fashion_mnist/versions/7/confusion.svg)"
        in lines
    )
    (link,) = [line for line in lines if "on the Models page" in line]
    assert link.endswith("](/airflow/mlpipe-models/?model=fashion_mnist&version=7)")
    # Markdown images, not data: URIs or HTML: the Airflow UI drops both (react-markdown's default URL filter,
    # skipHtml).
    assert "data:" not in body and "<img" not in body
    # The per-class table stays last.
    assert lines[-1].startswith("| 9 ")


def test_no_pictures_without_a_models_page() -> None:
    assert "![" not in render_evidence(EVIDENCE, models_page="")


def test_models_page_prefix_follows_the_api_base_url_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_mlpipe.sensors.approval import models_page_prefix

    monkeypatch.delenv("AIRFLOW__MLPIPE__MODELS_PAGE_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/team-a/")
    assert models_page_prefix() == "/team-a/mlpipe-models"
    monkeypatch.setenv("AIRFLOW__MLPIPE__MODELS_PAGE_URL", "")
    assert models_page_prefix() == ""


# --- the accuracy gate's verdict in the request, and the reason an inconclusive verdict needs ------------

INCONCLUSIVE_GATE: dict[str, Any] = {
    "verdict": "inconclusive",
    "passed": True,
    "confidence": 0.95,
    "reasons": ["accuracy 0.8800 vs 0.8790 of production v5 on the same 10000 examples: straddles"],
    "accuracy_interval": [0.8735, 0.8862],
    "champion_accuracy": 0.879,
    "difference": 0.001,
    "difference_interval": [-0.0041, 0.0061],
    "mcnemar_p": 0.71,
    "discordant": [120, 110],
    "broken_classes": [],
    "uncertain_classes": [{"class": 6, "name": "Shirt", "floor": "min_class_accuracy"}],
    "min_accuracy": 0.85,
    "max_regression": 0.0,
    "production_version": 5,
    "production_accuracy": 0.879,
}
INCONCLUSIVE = {**EVIDENCE, "gate": INCONCLUSIVE_GATE}


class FakeTI:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def test_render_evidence_shows_the_verdict_the_interval_and_asks_for_a_reason() -> None:
    body = render_evidence(INCONCLUSIVE)
    assert "**Accuracy gate: INCONCLUSIVE** (95% intervals)" in body
    assert "write your reason in the `reason` field" in body
    assert (
        row(body, "Difference")
        == "| Difference (candidate - production) | +0.0010, interval [-0.0041, +0.0061] |"
    )
    assert row(body, "Production v5 on the same") == "| Production v5 on the same examples | 0.8790 |"
    assert row(body, "Accuracy interval") == "| Accuracy interval (staging) | [0.8735, 0.8862] |"
    assert row(body, "May break a floor") == "| May break a floor | 6 Shirt (min_class_accuracy) |"
    assert f"- {INCONCLUSIVE_GATE['reasons'][0]}" in body
    passed = render_evidence({**EVIDENCE, "gate": {**INCONCLUSIVE_GATE, "verdict": "pass"}})
    assert "**Accuracy gate: PASS**" in passed and "reason` field" not in passed


def test_an_inconclusive_request_carries_a_reason_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HITL detail Airflow stores is captured instead of written to a metadata database (none here)."""
    import airflow.providers.standard.operators.hitl as hitl

    written: dict[str, Any] = {}
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kwargs: written.update(kwargs))
    for evidence, expect_reason in ((INCONCLUSIVE, True), (EVIDENCE, False)):
        written.clear()
        sensor = ApprovalSensor(task_id="approval", evidence=evidence, approvers=["alice"])
        # Airflow 3.3 parks the task by raising TaskAwaitingInput once the request is written.
        with pytest.raises(TaskAwaitingInput):
            sensor.execute({"params": {}, "task_instance": type("TI", (), {"id": "ti-1"})()})  # type: ignore[arg-type]
        assert ("reason" in (written["params"] or {})) is expect_reason, written["params"]
        assert ("written reason is required" in written["subject"]) is expect_reason


def _answer(sensor: ApprovalSensor, option: str, params_input: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from datetime import UTC, datetime

    ti = FakeTI()
    event = {
        "chosen_options": [option],
        "params_input": params_input,
        "responded_at": datetime(2026, 12, 1, tzinfo=UTC),
        "responded_by_user": {"id": "alice", "name": "alice"},
        "timedout": False,
    }
    result = sensor.execute_complete({"ti": ti, "task": sensor}, event)  # type: ignore[arg-type]
    return result, ti.pushed["decision"]


def test_approving_an_inconclusive_gate_needs_a_written_reason() -> None:
    sensor = ApprovalSensor(task_id="approval", evidence=INCONCLUSIVE)
    result, decision = _answer(sensor, "Approve", {"reason": "  "})
    assert result["chosen_options"] == ["Reject"] and decision["chosen_options"] == ["Reject"]
    assert "counted as Reject" in decision["refused"] and decision["reason"] is None

    result, decision = _answer(sensor, "Approve", {"reason": " seasonal data shift, verified by hand "})
    assert result["chosen_options"] == ["Approve"]
    assert decision["reason"] == "seasonal data shift, verified by hand"
    assert (decision["gate_verdict"], decision["refused"]) == ("inconclusive", None)


def test_a_passed_gate_needs_no_reason() -> None:
    result, decision = _answer(ApprovalSensor(task_id="approval", evidence=EVIDENCE), "Approve", {})
    assert result["chosen_options"] == ["Approve"] and decision["refused"] is None
