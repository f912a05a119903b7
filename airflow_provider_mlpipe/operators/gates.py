"""AccuracyGateOperator: pass, fail or inconclusive, from the candidate and the champion scored on the same data."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseBranchOperator

from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.gate_statistics import FAIL, INCONCLUSIVE, PairedCounts, Thresholds, decide
from airflow_provider_mlpipe.operators.base import StoreOperator, merged_template_fields
from airflow_provider_mlpipe.validation import check_confidence, check_fraction

if TYPE_CHECKING:
    from airflow.sdk import Context


def _candidate_counts(metrics: dict[str, Any]) -> dict[int, tuple[int, int]]:
    confusion = metrics.get("confusion_matrix")
    if not isinstance(confusion, list) or not confusion or not all(isinstance(r, list) for r in confusion):
        raise ConfigError(
            "metrics", "(no confusion_matrix)", "the AccuracySensor's XCom with its confusion_matrix"
        )
    return {i: (int(row[i]), int(sum(row))) for i, row in enumerate(confusion)}


def gate_decision(
    metrics: dict[str, Any],
    thresholds: Thresholds,
    production: dict[str, Any] | None,
) -> dict[str, Any]:
    """The gate's decision XCom from the evaluation's XCom (`metrics`, with `champion` when the staging
    evaluation scored production beside the candidate) and the production record read now (`production`,
    for a gate whose evaluation did not compare)."""
    names = metrics.get("class_names")
    names = names if isinstance(names, list) else None
    champion = metrics.get("champion")
    compared = "champion" in metrics
    if compared and isinstance(champion, dict):
        version, generation = champion.get("version"), champion.get("generation")
    elif compared:
        version = generation = None  # the evaluation found no production: the first model
    else:
        version = production.get("version") if production else None
        generation = production.get("generation") if production else None
    label = f"production v{version}"
    counts = champion.get("paired_counts") if isinstance(champion, dict) else None
    if counts is not None:
        paired = {i: PairedCounts.from_list(cells) for i, cells in enumerate(counts)}
        result = decide(None, thresholds, paired=paired, class_names=names, champion_label=label)
    else:
        result = decide(_candidate_counts(metrics), thresholds, class_names=names)
    decision = result.as_dict()
    if version is not None and counts is None:
        # A production model exists but was not scored on these examples: no paired evidence, so a person
        # decides, with the reason in front of them. The floor and class floors still fail on their own.
        why = (
            champion.get("error")
            if isinstance(champion, dict) and champion.get("error")
            else f"{label} was not scored on the same examples (the evaluation did not compare)"
        )
        if decision["verdict"] != FAIL:
            decision["verdict"] = INCONCLUSIVE
        decision["reasons"] = [
            f"{why}: no paired comparison with the model in production",
            *(r for r in decision["reasons"] if not r.startswith("no champion")),
        ]
    if counts is not None:
        production_accuracy = decision["champion_accuracy"]
    elif isinstance(champion, dict):
        production_accuracy = champion.get("recorded_accuracy")
    else:
        production_accuracy = production.get("accuracy") if production and version is not None else None
    decision.update(
        {
            "passed": decision["verdict"] != FAIL,  # goes on to the approval (pass or inconclusive)
            "reason": "; ".join(decision["reasons"]),
            "min_accuracy": thresholds.min_accuracy,
            "max_regression": thresholds.max_regression,
            "min_class_accuracy": thresholds.min_class_accuracy,
            "max_class_drop": thresholds.max_class_drop,
            "production_version": version,
            # The alias generation compared against: promote_model promotes only over this one.
            "production_generation": generation,
            "production_accuracy": production_accuracy,
        }
    )
    return decision


class AccuracyGateOperator(StoreOperator, BaseBranchOperator):
    """Decide pass / fail / inconclusive on the staging evaluation (`airflow_provider_mlpipe.gate_statistics`).

    pass and inconclusive follow `pass_task_id` (the approval, which shows the verdict and, for
    inconclusive, asks the approver for a written reason); fail follows `fail_task_id`.

    - fail: the candidate's accuracy interval has its lower bound below `min_accuracy`; or it is worse than
      the champion by more than `max_regression` with confidence; or a class is below
      `min_class_accuracy`, or dropped more than `max_class_drop` against the champion, with confidence.
    - inconclusive: no fail, but an interval straddles its line, or a champion exists that could not be
      scored on the same examples.
    - pass: everything on the right side with confidence.

    The decision (verdict, reasons, intervals, McNemar's p, the classes that broke a floor, and the
    production version and alias generation it was compared with) is pushed as XCom key `decision`.

    :param metrics: the AccuracySensor's XCom (with `compare_with_production=True` for a paired gate).
    :param confidence_level: level of every interval, e.g. 0.95.
    :param oss_conn_id: Airflow connection (type `oss`) for an oss:// store.
    :param transient_retry: in-task retries of transient object-store errors, as for KubeTrainJobOperator.
    """

    template_fields: Sequence[str] = merged_template_fields(
        StoreOperator,
        BaseBranchOperator,
        own=(
            "metrics",
            "min_accuracy",
            "max_regression",
            "confidence_level",
            "min_class_accuracy",
            "max_class_drop",
        ),
    )

    def __init__(
        self,
        *,
        metrics: dict[str, Any] | Any,
        min_accuracy: float | str,
        max_regression: float | str = 0.0,
        confidence_level: float | str = 0.95,
        min_class_accuracy: float | str = 0.0,
        max_class_drop: float | str = 1.0,
        pass_task_id: str,
        fail_task_id: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics
        self.min_accuracy = min_accuracy
        self.max_regression = max_regression
        self.confidence_level = confidence_level
        self.min_class_accuracy = min_class_accuracy
        self.max_class_drop = max_class_drop
        self.pass_task_id = pass_task_id
        self.fail_task_id = fail_task_id

    def thresholds(self) -> Thresholds:
        return Thresholds(
            min_accuracy=check_fraction("min_accuracy", self.min_accuracy),
            max_regression=check_fraction("max_regression", self.max_regression),
            confidence=check_confidence(self.confidence_level),
            min_class_accuracy=check_fraction("min_class_accuracy", self.min_class_accuracy),
            max_class_drop=check_fraction("max_class_drop", self.max_class_drop),
        )

    def choose_branch(self, context: Context) -> str | Iterable[str]:
        if not isinstance(self.metrics, dict) or not isinstance(self.metrics.get("accuracy"), (int, float)):
            raise ConfigError("metrics", self.metrics, "the AccuracySensor's XCom with a numeric 'accuracy'")
        thresholds = self.thresholds()
        production = (
            None if "champion" in self.metrics else self.store_hook.production_record(self.model_name)
        )
        decision = gate_decision(self.metrics, thresholds, production)
        context["ti"].xcom_push(key="decision", value=decision)
        self.log.info("Accuracy gate verdict: %s", decision["verdict"].upper())
        for reason in decision["reasons"]:
            self.log.info("  %s", reason)
        return self.pass_task_id if decision["passed"] else self.fail_task_id
