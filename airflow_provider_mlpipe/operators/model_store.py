"""Model store operators: promote a version to production, and record how a run ended."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_mlpipe.exceptions import ConfigError, MlpipeError
from airflow_provider_mlpipe.operators._hooks import StoreHookMixin
from airflow_provider_mlpipe.runs import run_key

if TYPE_CHECKING:
    from airflow.sdk import Context


def _approver(approval: object) -> str | None:
    if isinstance(approval, dict):
        user = approval.get("responded_by_user")
        if isinstance(user, dict):
            return str(user.get("name") or user.get("id"))
    return None


class ModelPromoteOperator(StoreHookMixin, BaseOperator):
    """Point the store's `production` alias at `version` (compare-and-swap; the old one becomes `previous`).

    XCom: the new alias record (version, run, approver, accuracy, time).

    :param transient_retry: in-task retries of transient object-store errors, as for KubeTrainJobOperator.
    """

    template_fields: Sequence[str] = (
        *BaseOperator.template_fields,
        "model_name",
        "version",
        "model_store",
        "approval",
        "evaluation",
        "training",
        "transient_retry",
    )

    def __init__(
        self,
        *,
        version: int | str | Any,
        model_name: str = "fashion_mnist",
        model_store: str | None = None,
        approval: dict[str, Any] | Any = None,
        evaluation: dict[str, Any] | Any = None,
        training: dict[str, Any] | Any = None,
        transient_retry: dict[str, Any] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.model_name = model_name
        self.model_store = model_store
        self.approval = approval
        self.evaluation = evaluation
        self.training = training
        self.transient_retry = transient_retry

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            version = int(self.version)
        except (TypeError, ValueError):
            raise ConfigError("version", self.version, "an integer model version") from None
        evaluation = self.evaluation if isinstance(self.evaluation, dict) else {}
        training = self.training if isinstance(self.training, dict) else {}
        record = self.store_hook.store.promote(
            self.model_name,
            version,
            run_id=run_key(context),
            approved_by=_approver(self.approval),
            extra={
                "accuracy": evaluation.get("accuracy"),
                "evaluated_samples": evaluation.get("samples"),
                "image": training.get("image"),
                "digest": training.get("digest"),
            },
        )
        self.log.info("%s production -> v%s (generation %s)", self.model_name, version, record["generation"])
        return record


class PipelineOutcomeOperator(StoreHookMixin, BaseOperator):
    """Last task of a run (trigger rule all_done): say and record how the run ended.

    Writes an event under the model in the store (promoted, rejected by the gate, rejected by a person,
    failed) and fails itself when any step failed, so the run's state tells the truth.

    :param transient_retry: in-task retries of transient object-store errors, as for KubeTrainJobOperator.
    """

    template_fields: Sequence[str] = (
        *BaseOperator.template_fields,
        "model_name",
        "model_store",
        "transient_retry",
    )

    def __init__(
        self,
        *,
        model_name: str = "fashion_mnist",
        model_store: str | None = None,
        train_task_id: str = "train",
        gate_task_id: str = "accuracy_gate",
        approval_task_id: str = "approval",
        promote_task_id: str = "promote_model",
        transient_retry: dict[str, Any] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.model_store = model_store
        self.train_task_id = train_task_id
        self.gate_task_id = gate_task_id
        self.approval_task_id = approval_task_id
        self.promote_task_id = promote_task_id
        self.transient_retry = transient_retry

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        states: dict[str, Any] = ti.get_task_states(dag_id=dag_id, run_ids=[run_id]).get(run_id, {})
        # The steps that failed themselves; the ones they took down (upstream_failed) are consequences.
        failed = sorted(t for t, s in states.items() if s == "failed" and t != self.task_id)
        blocked = sorted(t for t, s in states.items() if s == "upstream_failed")
        training = ti.xcom_pull(task_ids=self.train_task_id) or {}
        decision = ti.xcom_pull(task_ids=self.gate_task_id, key="decision") or {}
        approval = ti.xcom_pull(task_ids=self.approval_task_id, key="decision") or {}
        promoted = ti.xcom_pull(task_ids=self.promote_task_id)
        chosen = (approval.get("chosen_options") or [None])[0] if isinstance(approval, dict) else None

        if promoted:
            outcome, reason = "promoted", f"v{promoted['version']} is in production"
        elif failed:
            outcome, reason = (
                "failed",
                f"failed steps: {', '.join(failed)}"
                + (f" (not run because of them: {', '.join(blocked)})" if blocked else ""),
            )
        elif decision and not decision.get("passed"):
            outcome, reason = "rejected_by_gate", str(decision.get("reason"))
        elif chosen == "Reject":
            who = _approver(approval) or "timeout (default Reject)"
            outcome, reason = "rejected_by_approver", f"rejected by {who}"
        else:
            outcome, reason = "incomplete", f"task states: {states}"
        record = {
            "run": run_key(context),
            "outcome": outcome,
            "reason": reason,
            "version": training.get("version"),
            "task_states": states,
        }
        if training.get("version"):
            self.store_hook.store.record_event(self.model_name, int(training["version"]), record)
        self.log.info("Run outcome: %s (%s)", outcome, reason)
        if outcome == "failed":
            raise MlpipeError(f"run {run_key(context)} failed: {reason}")
        return record
