"""The accuracy gate: its verdict from the staging evaluation's XCom, with and without a champion scored on
the same examples, and the branch it takes. The store is a real file store in a temporary directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.gate_statistics import Thresholds
from airflow_provider_mlpipe.modelstore import open_store
from airflow_provider_mlpipe.operators.gates import AccuracyGateOperator, gate_decision

MODEL = "fashion_mnist"
NAMES = ["t-shirt", "trouser", "shirt"]


class TI:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def metrics(
    paired: list[list[int]] | None, *, champion: bool = True, **champion_fields: Any
) -> dict[str, Any]:
    """An AccuracySensor XCom: the confusion matrix's diagonal/row sums are what the gate reads alone."""
    rows = paired or [[80, 10, 5, 5], [85, 5, 5, 5], [60, 10, 10, 20]]
    confusion = []
    for i, (both, mine, _theirs, _neither) in enumerate(rows):
        n = sum(rows[i])
        row = [0] * len(rows)
        row[i] = both + mine
        row[(i + 1) % len(rows)] = n - both - mine
        confusion.append(row)
    result: dict[str, Any] = {
        "accuracy": sum(r[0] + r[1] for r in rows) / sum(sum(r) for r in rows),
        "confusion_matrix": confusion,
        "class_names": NAMES,
    }
    if champion:
        result["champion"] = (
            {"version": 3, "generation": 4, "paired_counts": rows if paired else None, **champion_fields}
            if paired is not None or champion_fields
            else None
        )
    return result


def test_first_model_uses_the_lower_bound_of_its_accuracy() -> None:
    alone = metrics(None)  # no production: champion None
    assert alone["champion"] is None
    passed = gate_decision(alone, Thresholds(min_accuracy=0.7), None)
    assert passed["verdict"] == "pass" and passed["passed"] is True
    assert passed["production_version"] is None and passed["difference_interval"] is None
    assert passed["reasons"][0].startswith("no champion to compare with: first model")
    # 250 of 300: the point estimate is above 0.82, the interval's lower bound (0.787) is not.
    failed = gate_decision(alone, Thresholds(min_accuracy=0.82), None)
    assert alone["accuracy"] == pytest.approx(250 / 300)
    assert failed["verdict"] == "fail" and failed["passed"] is False
    assert "lower bound is below min_accuracy 0.8200" in failed["reason"]


def test_paired_verdicts_and_the_production_they_compared_with() -> None:
    better = [[80, 15, 1, 4], [85, 10, 1, 4], [60, 20, 2, 18]]
    decision = gate_decision(metrics(better), Thresholds(min_accuracy=0.5, max_regression=0.01), None)
    assert decision["verdict"] == "pass"
    assert (decision["production_version"], decision["production_generation"]) == (3, 4)
    assert decision["difference_interval"][0] > 0
    assert decision["production_accuracy"] == pytest.approx(decision["champion_accuracy"])

    level = [[80, 6, 6, 8], [85, 5, 5, 5], [60, 8, 8, 24]]
    unsure = gate_decision(metrics(level), Thresholds(min_accuracy=0.5, max_regression=0.0), None)
    assert unsure["verdict"] == "inconclusive" and unsure["passed"] is True
    assert "straddles -max_regression" in unsure["reason"]

    worse = [[70, 1, 20, 9], [75, 1, 15, 9], [50, 1, 30, 19]]
    assert gate_decision(metrics(worse), Thresholds(min_accuracy=0.5), None)["verdict"] == "fail"


def test_a_class_below_its_floor_fails_naming_it() -> None:
    rows = [[80, 15, 1, 4], [85, 10, 1, 4], [20, 5, 30, 45]]
    decision = gate_decision(metrics(rows), Thresholds(min_accuracy=0.5, min_class_accuracy=0.5), None)
    assert decision["verdict"] == "fail"
    assert [(c["class"], c["name"]) for c in decision["broken_classes"]] == [(2, "shirt")]
    assert "class 2 (shirt)" in decision["reason"]


def test_a_champion_that_could_not_be_scored_hands_the_decision_to_a_person() -> None:
    broken = metrics(None, error="production v3 of fashion_mnist at http://x could not be scored: refused")
    decision = gate_decision(broken, Thresholds(min_accuracy=0.5), None)
    assert decision["verdict"] == "inconclusive"
    assert decision["reasons"][0].startswith("production v3 of fashion_mnist at http://x could not be scored")
    assert (decision["production_version"], decision["production_generation"]) == (3, 4)
    # A candidate below the floor still fails: no person is asked about it.
    assert gate_decision(broken, Thresholds(min_accuracy=0.95), None)["verdict"] == "fail"


def test_an_evaluation_that_did_not_compare_is_inconclusive_when_production_exists(tmp_path: Path) -> None:
    uncompared = metrics(None, champion=False)
    production = {"version": 2, "generation": 7, "accuracy": 0.8}
    decision = gate_decision(uncompared, Thresholds(min_accuracy=0.5), production)
    assert decision["verdict"] == "inconclusive"
    assert "was not scored on the same examples" in decision["reasons"][0]
    assert (
        decision["production_version"],
        decision["production_generation"],
        decision["production_accuracy"],
    ) == (
        2,
        7,
        0.8,
    )


def gate(tmp_path: Path, **kwargs: Any) -> AccuracyGateOperator:
    args: dict[str, Any] = {
        "task_id": "accuracy_gate",
        "min_accuracy": "0.5",
        "max_regression": "0.01",
        "pass_task_id": "approval",
        "fail_task_id": "accuracy_rejected",
        "model_name": MODEL,
        "model_store": (tmp_path / "models").as_uri(),
        **kwargs,
    }
    return AccuracyGateOperator(**args)


def test_the_operator_branches_and_pushes_the_decision(tmp_path: Path) -> None:
    ti = TI()
    rows = [[80, 15, 1, 4], [85, 10, 1, 4], [20, 5, 30, 45]]
    floors = gate(tmp_path, metrics=metrics(rows), min_class_accuracy="0.5", confidence_level="0.99")
    assert floors.choose_branch({"ti": ti}) == "accuracy_rejected"  # type: ignore[arg-type]
    assert ti.pushed["decision"]["verdict"] == "fail" and ti.pushed["decision"]["confidence"] == 0.99
    level = [[80, 6, 6, 8], [85, 5, 5, 5], [60, 8, 8, 24]]
    unsure = gate(tmp_path, metrics=metrics(level), max_regression=0)
    assert unsure.choose_branch({"ti": ti}) == "approval"  # type: ignore[arg-type]
    assert ti.pushed["decision"]["verdict"] == "inconclusive"


def test_the_operator_reads_production_when_the_evaluation_did_not_compare(tmp_path: Path) -> None:
    store = open_store((tmp_path / "models").as_uri())
    store.publish(MODEL, 1, _empty_model(tmp_path), {})
    store.promote(MODEL, 1, run_id="seed", approved_by="carol", extra={"accuracy": 0.8})
    ti = TI()
    assert gate(tmp_path, metrics=metrics(None, champion=False)).choose_branch({"ti": ti}) == "approval"  # type: ignore[arg-type]
    assert (ti.pushed["decision"]["verdict"], ti.pushed["decision"]["production_version"]) == (
        "inconclusive",
        1,
    )


def _empty_model(tmp_path: Path) -> Path:
    export = tmp_path / "export"
    export.mkdir(exist_ok=True)
    (export / "saved_model.pb").write_bytes(b"model")
    return export


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("confidence_level", "1", "a number in [0.5, 0.999]"),
        ("confidence_level", "x", "a number in [0.5, 0.999]"),
        ("min_class_accuracy", "2", "a number in [0, 1]"),
        ("max_class_drop", "-1", "a number in [0, 1]"),
    ],
)
def test_bad_thresholds_are_refused_naming_them(
    tmp_path: Path, field: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")) as info:
        gate(tmp_path, metrics=metrics(None), **{field: value}).choose_branch({"ti": TI()})  # type: ignore[arg-type]
    assert info.value.field == field


def test_metrics_without_accuracy_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="numeric 'accuracy'"):
        gate(tmp_path, metrics={"samples": 3}).choose_branch({"ti": TI()})  # type: ignore[arg-type]
