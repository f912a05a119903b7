"""AccuracyGateOperator: branch on the staging accuracy, against a floor and against production."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseBranchOperator

from airflow_provider_mlpipe.demo.pipeline import MODEL_NAME as DEFAULT_MODEL_NAME
from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.operators._hooks import StoreHookMixin
from airflow_provider_mlpipe.validation import check_fraction

if TYPE_CHECKING:
    from airflow.sdk import Context


def decide(
    accuracy: float, min_accuracy: float, max_regression: float, production: dict[str, Any] | None
) -> tuple[bool, str, float | None]:
    """(passed, reason, production accuracy) for a candidate against the floor and the production model."""
    prod_acc = production.get("accuracy") if production else None
    if accuracy < min_accuracy:
        return False, f"accuracy {accuracy:.4f} is below min_accuracy {min_accuracy:.4f}", prod_acc
    # The epsilon keeps a drop of exactly max_regression allowed despite float rounding (0.92 - 0.1).
    if isinstance(prod_acc, (int, float)) and accuracy < prod_acc - max_regression - 1e-9:
        return (
            False,
            f"accuracy {accuracy:.4f} is worse than production v{production and production.get('version')} "
            f"({prod_acc:.4f}) by more than max_regression {max_regression:.4f}",
            float(prod_acc),
        )
    return (
        True,
        f"accuracy {accuracy:.4f} >= {min_accuracy:.4f} and within {max_regression} of production",
        prod_acc,
    )


class AccuracyGateOperator(StoreHookMixin, BaseBranchOperator):
    """Follow `pass_task_id` if the candidate is good enough, else `fail_task_id`.

    The decision (with its reason and the production version, alias generation and accuracy it was compared
    with) is pushed as XCom key `decision`.

    :param oss_conn_id: Airflow connection (type `oss`) for an oss:// store.
    :param transient_retry: in-task retries of transient object-store errors, as for KubeTrainJobOperator.
    """

    template_fields: Sequence[str] = (
        *BaseBranchOperator.template_fields,
        "metrics",
        "min_accuracy",
        "max_regression",
        "model_name",
        "model_store",
        "transient_retry",
    )

    def __init__(
        self,
        *,
        metrics: dict[str, Any] | Any,
        min_accuracy: float | str,
        max_regression: float | str = 0.0,
        pass_task_id: str,
        fail_task_id: str,
        model_name: str = DEFAULT_MODEL_NAME,
        model_store: str | None = None,
        oss_conn_id: str = "oss_default",
        transient_retry: dict[str, Any] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics
        self.min_accuracy = min_accuracy
        self.max_regression = max_regression
        self.pass_task_id = pass_task_id
        self.fail_task_id = fail_task_id
        self.model_name = model_name
        self.model_store = model_store
        self.oss_conn_id = oss_conn_id
        self.transient_retry = transient_retry

    def choose_branch(self, context: Context) -> str | Iterable[str]:
        if not isinstance(self.metrics, dict) or not isinstance(self.metrics.get("accuracy"), (int, float)):
            raise ConfigError("metrics", self.metrics, "the AccuracySensor's XCom with a numeric 'accuracy'")
        accuracy = float(self.metrics["accuracy"])
        floor = check_fraction("min_accuracy", self.min_accuracy)
        regression = check_fraction("max_regression", self.max_regression)
        production = self.store_hook.production_record(self.model_name)
        passed, reason, prod_acc = decide(accuracy, floor, regression, production)
        decision = {
            "passed": passed,
            "reason": reason,
            "accuracy": accuracy,
            "min_accuracy": floor,
            "max_regression": regression,
            "production_version": production.get("version") if production else None,
            # The alias generation compared against: promote_model promotes only over this one.
            "production_generation": production.get("generation") if production else None,
            "production_accuracy": prod_acc,
        }
        context["ti"].xcom_push(key="decision", value=decision)
        self.log.info("Accuracy gate %s: %s", "passed" if passed else "FAILED", reason)
        return self.pass_task_id if passed else self.fail_task_id
