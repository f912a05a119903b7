"""The accuracy gate's decision: the floor first, then the allowed regression against production."""

from __future__ import annotations

import pytest

from airflow_provider_mlpipe.operators.gates import decide

PRODUCTION = {"version": 4, "accuracy": 0.90, "generation": 2}


def test_below_the_floor_fails_even_without_production() -> None:
    passed, reason, prod_acc = decide(0.79, 0.80, 0.0, None)
    assert passed is False
    assert reason == "accuracy 0.7900 is below min_accuracy 0.8000"
    assert prod_acc is None


def test_below_the_floor_reports_the_production_figure() -> None:
    passed, reason, prod_acc = decide(0.70, 0.80, 0.5, PRODUCTION)
    assert passed is False
    assert "below min_accuracy 0.8000" in reason
    assert prod_acc == 0.90


def test_regression_against_production_fails() -> None:
    passed, reason, prod_acc = decide(0.86, 0.80, 0.02, PRODUCTION)
    assert passed is False
    assert reason == (
        "accuracy 0.8600 is worse than production v4 (0.9000) by more than max_regression 0.0200"
    )
    assert prod_acc == 0.90


def test_within_the_allowed_regression_passes() -> None:
    passed, reason, prod_acc = decide(0.89, 0.80, 0.02, PRODUCTION)
    assert passed is True
    assert "0.8900 >= 0.8000" in reason
    assert prod_acc == 0.90


def test_better_than_production_passes_with_zero_tolerance() -> None:
    assert decide(0.91, 0.80, 0.0, PRODUCTION)[0] is True
    assert decide(0.90, 0.80, 0.0, PRODUCTION)[0] is True  # equal is not a regression
    assert decide(0.8999, 0.80, 0.0, PRODUCTION)[0] is False


def test_exactly_at_the_floor_passes() -> None:
    assert decide(0.80, 0.80, 0.0, None)[0] is True


@pytest.mark.parametrize("production", [None, {}, {"version": 1}, {"version": 1, "accuracy": None}])
def test_no_production_accuracy_only_the_floor_counts(production: dict[str, object] | None) -> None:
    passed, reason, prod_acc = decide(0.81, 0.80, 0.0, production)
    assert passed is True
    assert prod_acc is None
    assert "0.8100 >= 0.8000" in reason


def test_a_regression_of_exactly_max_regression_passes() -> None:
    passed, reason, _ = decide(0.82, 0.80, 0.1, {"version": 4, "accuracy": 0.92})
    assert passed is True, reason
