"""Model store operators: point an alias at a version, promote a version to production, roll production
back, and record how a run ended."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_mlpipe.assets import emit_production_event, production_alias
from airflow_provider_mlpipe.exceptions import AliasConflictError, ConfigError, MlpipeError
from airflow_provider_mlpipe.modelstore.store import ALIASES, Expect
from airflow_provider_mlpipe.operators.base import StoreOperator, merged_template_fields
from airflow_provider_mlpipe.runs import run_key

if TYPE_CHECKING:
    from airflow.sdk import Context

# production moves only through an approved promotion or a rollback, which also keep `previous` in step.
SETTABLE_ALIASES = tuple(alias for alias in ALIASES if alias != "production")


def _approver(approval: object) -> str | None:
    if isinstance(approval, dict):
        user = approval.get("responded_by_user")
        if isinstance(user, dict):
            return str(user.get("name") or user.get("id"))
    return None


def _approval_reason(approval: object) -> str | None:
    """The approver's written reason (the approval's `reason` params input), stripped; None if none."""
    if isinstance(approval, dict):
        reason = approval.get("reason")
        if isinstance(reason, str) and reason.strip():
            return reason.strip()
    return None


def _version(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError("version", value, "an integer model version") from None


class ModelAliasOperator(StoreOperator):
    """Point alias `alias` (`staging` or `previous`) of `model_name` at `version`, recording this run and
    `reason` in the alias' history (the DAG does it once a version serves on staging).

    These aliases record what happened, not a decision: when another run moved the alias between our read
    and our write, the alias is read and set again, up to `conflict_attempts` times. A retry of a task that
    already set the alias changes nothing.

    XCom: the alias record (alias, version, generation, run, reason, time).

    :param oss_conn_id: Airflow connection (type `oss`) for an oss:// store.
    :param transient_retry: in-task retries of transient object-store errors, as for KubeTrainJobOperator.
    """

    template_fields: Sequence[str] = merged_template_fields(
        StoreOperator,
        own=(
            "alias",
            "version",
            "reason",
        ),
    )

    def __init__(
        self,
        *,
        alias: str,
        version: int | str | Any,
        reason: str = "",
        conflict_attempts: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if conflict_attempts < 1:
            raise ConfigError("conflict_attempts", conflict_attempts, "an integer >= 1")
        self.alias = alias
        self.version = version
        self.reason = reason
        self.conflict_attempts = conflict_attempts

    def execute(self, context: Context) -> dict[str, Any]:
        if self.alias not in SETTABLE_ALIASES:
            raise ConfigError(
                "alias",
                self.alias,
                f"one of {', '.join(SETTABLE_ALIASES)} (production moves through ModelPromoteOperator)",
            )
        version = _version(self.version)
        run = run_key(context)
        store = self.store_hook.store
        attempt = 1
        while True:
            current = store.get_alias(self.model_name, self.alias)
            if current and current.get("version") == version and current.get("run_id") == run:
                self.log.info(
                    "%s %s already points at v%s for this run", self.model_name, self.alias, version
                )
                return current
            try:
                record = store.set_alias(
                    self.model_name,
                    self.alias,
                    version,
                    expected_generation=current["generation"] if current else None,
                    run_id=run,
                    reason=self.reason,
                )
            except AliasConflictError as err:
                if attempt >= self.conflict_attempts:
                    raise
                attempt += 1
                self.log.info("%s; reading %s again (attempt %d)", err, self.alias, attempt)
                continue
            self.log.info(
                "%s %s -> v%s (generation %s)", self.model_name, self.alias, version, record["generation"]
            )
            return record


def _expected_generation(expected_production: object) -> int | None:
    """The production generation the accuracy gate's decision was taken on (None: no production then)."""
    if not isinstance(expected_production, dict):
        raise ConfigError(
            "expected_production", expected_production, "the accuracy gate's decision XCom (a dict) or None"
        )
    generation = expected_production.get("production_generation")
    if generation is None:
        if expected_production.get("production_version") is not None:
            # A decision from a gate that did not record the generation yet: treating it as "no production"
            # would report a move that never happened.
            raise ConfigError(
                "expected_production",
                expected_production,
                "a decision recording production_generation beside production_version",
            )
        return None
    if isinstance(generation, bool) or not isinstance(generation, int):
        raise ConfigError("expected_production", expected_production, "an integer production_generation")
    return generation


class ModelPromoteOperator(StoreOperator):
    """Point the store's `production` alias at `version` (compare-and-swap; the old one becomes `previous`).

    XCom: the new alias record (version, run, approver, accuracy, time).

    When another run moves `production` first, the task fails at once, without its retries: a retry would
    read the new alias and replace the other run's model on an approval given against the old one.

    :param expected_production: the accuracy gate's `decision` XCom. Given, production must still be the
        generation the gate compared against (none, when there was no production), else the task fails
        without retries: the approval was given against that evidence. None: production as read here.
        Its verdict and interval are recorded with the promotion; after an inconclusive verdict the
        approver's written reason (the approval's `reason`) is required and becomes the alias record's
        reason, so `history production` shows why the version went through.
    :param production_endpoint: the production endpoint's URL (or the deploy task's XCom), recorded as
        `endpoint_url`: the next run's gate scores the champion there.
    :param emit_asset_event: declare the asset alias `assets.PRODUCTION_ALIAS` as outlet and emit an event on
        `assets.production_asset(model_name)` (version and accuracy in its extra) once production moved.
    :param oss_conn_id: Airflow connection (type `oss`) for an oss:// store.
    :param transient_retry: in-task retries of transient object-store errors, as for KubeTrainJobOperator.
    """

    template_fields: Sequence[str] = merged_template_fields(
        StoreOperator,
        own=(
            "version",
            "approval",
            "evaluation",
            "training",
            "expected_production",
            "production_endpoint",
        ),
    )

    def __init__(
        self,
        *,
        version: int | str | Any,
        approval: dict[str, Any] | Any = None,
        evaluation: dict[str, Any] | Any = None,
        training: dict[str, Any] | Any = None,
        expected_production: dict[str, Any] | Any = None,
        emit_asset_event: bool = True,
        production_endpoint: str | dict[str, Any] | Any = None,
        **kwargs: Any,
    ) -> None:
        if emit_asset_event:
            kwargs["outlets"] = [*(kwargs.get("outlets") or []), production_alias()]
        super().__init__(**kwargs)
        self.emit_asset_event = emit_asset_event
        self.version = version
        self.approval = approval
        self.evaluation = evaluation
        self.training = training
        self.expected_production = expected_production
        self.production_endpoint = production_endpoint

    def execute(self, context: Context) -> dict[str, Any]:
        version = _version(self.version)
        evaluation = self.evaluation if isinstance(self.evaluation, dict) else {}
        training = self.training if isinstance(self.training, dict) else {}
        run = run_key(context)
        checked = self.expected_production is not None
        expected = _expected_generation(self.expected_production) if checked else Expect.CURRENT
        gate = self.expected_production if isinstance(self.expected_production, dict) else {}
        verdict = gate.get("verdict")
        approval_reason = _approval_reason(self.approval)
        if verdict == "inconclusive" and not approval_reason:
            raise AirflowFailException(
                f"{self.model_name} v{version}: the accuracy gate was inconclusive and the approval carries no "
                "written reason: expected the approver's reason (the approval's `reason` field); not promoted"
            )
        endpoint = self.production_endpoint
        endpoint_url = endpoint.get("url") if isinstance(endpoint, dict) else endpoint
        reason = "promoted"
        if verdict:
            reason = f"promoted (gate {verdict}"
            if gate.get("difference_interval"):
                low, high = gate["difference_interval"]
                reason += f", difference to production [{low:+.4f}, {high:+.4f}]"
            reason += ")"
        if approval_reason:
            reason += f"; approver's reason: {approval_reason}"
        store = self.store_hook.store
        try:
            record = store.promote(
                self.model_name,
                version,
                run_id=run,
                approved_by=_approver(self.approval),
                extra={
                    "accuracy": evaluation.get("accuracy"),
                    "evaluated_samples": evaluation.get("samples"),
                    "image": training.get("image"),
                    "digest": training.get("digest"),
                    "endpoint_url": endpoint_url if isinstance(endpoint_url, str) and endpoint_url else None,
                    "gate_verdict": verdict,
                    "gate_difference_interval": gate.get("difference_interval"),
                    "gate_accuracy_interval": gate.get("accuracy_interval"),
                    "approval_reason": approval_reason,
                },
                expected_generation=expected,
                reason=reason,
            )
        except AliasConflictError as err:
            winner = store.get_alias(self.model_name, "production") or {}
            if winner.get("run_id") == run and winner.get("version") == version:
                # Production is ours and only the `previous` bookkeeping lost a race; a retry would not
                # redo it either (promote() finds production at this version already).
                self.log.warning(
                    "%s production -> v%s, but alias previous was not updated: %s",
                    self.model_name,
                    version,
                    err,
                )
                self._emit(context, winner)
                return winner
            if checked:
                seen = (
                    f"generation {expected} (v{self.expected_production.get('production_version')})"
                    if expected is not None
                    else "no production (none existed yet)"
                )
                raise AirflowFailException(
                    f"alias production of {self.model_name} in {store.uri} moved since the accuracy gate "
                    f"compared v{version} against {seen}: it is now v{winner.get('version')} (generation "
                    f"{winner.get('generation')}, run {winner.get('run_id')!r}, approved by "
                    f"{winner.get('approved_by')}). Run {run!r} did not promote v{version} and is not retried: "
                    f"it was approved against what the gate saw, so promoting over the new production needs a "
                    f"new approval (a new pipeline run, or `python -m airflow_provider_mlpipe.modelstore "
                    f"promote {version} --approved-by WHO`)"
                ) from err
            raise AirflowFailException(
                f"alias production of {self.model_name} in {store.uri} was moved by run "
                f"{winner.get('run_id')!r} to v{winner.get('version')} (generation {winner.get('generation')}, "
                f"approved by {winner.get('approved_by')}) while run {run!r} promoted v{version}: not retried, "
                f"because promoting v{version} over it needs a new approval (a new pipeline run, or "
                f"`python -m airflow_provider_mlpipe.modelstore promote {version} --approved-by WHO`)"
            ) from err
        self.log.info("%s production -> v%s (generation %s)", self.model_name, version, record["generation"])
        self._emit(context, record)
        return record

    def _emit(self, context: Context, record: dict[str, Any]) -> None:
        if self.emit_asset_event:
            extra = emit_production_event(context, self.model_name, record, "promoted")
            self.log.info("Asset event for %s production: %s", self.model_name, extra)


class ModelRollbackOperator(StoreOperator):
    """Move the store's `production` alias back to the version it pointed at before its current one (the one
    rolled away from becomes `previous`), recording this run, who triggered it and `reason`.

    A retry, or a second attempt of the same run, finds production already moved by this run and adopts
    that: rolling back twice would go back a second step.

    XCom: the alias record (version, from_version, run, requested_by, reason, time); `version` also as a key.

    :param emit_asset_event: declare the asset alias `assets.PRODUCTION_ALIAS` as outlet and emit an event on
        `assets.production_asset(model_name)` (the version production is back at) once it moved.

    :param oss_conn_id: Airflow connection (type `oss`) for an oss:// store.
    :param transient_retry: in-task retries of transient object-store errors, as for KubeTrainJobOperator.
    """

    template_fields: Sequence[str] = merged_template_fields(
        StoreOperator,
        own=("reason",),
    )

    def __init__(
        self,
        *,
        reason: str,
        emit_asset_event: bool = True,
        **kwargs: Any,
    ) -> None:
        if emit_asset_event:
            kwargs["outlets"] = [*(kwargs.get("outlets") or []), production_alias()]
        super().__init__(**kwargs)
        self.reason = reason
        self.emit_asset_event = emit_asset_event

    def execute(self, context: Context) -> dict[str, Any]:
        if not str(self.reason or "").strip():
            raise ConfigError("reason", self.reason, "a non-empty reason for the rollback")
        run = run_key(context)
        store = self.store_hook.store
        current = store.get_alias(self.model_name, "production")
        from_version: int | None = None
        if current and current.get("run_id") == run:
            self.log.info(
                "%s production already rolled back to v%s by this run", self.model_name, current["version"]
            )
            record = current
        else:
            from_version = current["version"] if current else None
            dag_run = context.get("dag_run")
            requested_by = getattr(dag_run, "triggering_user_name", None) if dag_run else None
            try:
                record = store.rollback(
                    self.model_name, run_id=run, requested_by=requested_by, reason=str(self.reason)
                )
            except AliasConflictError as err:
                # Another run moved production between our read and our write: what "previous" means
                # changed, so a person decides again rather than a retry rolling back from the new state.
                raise AirflowFailException(
                    f"alias production of {self.model_name} in {store.uri} moved while run {run!r} rolled it "
                    f"back: not retried ({err}); trigger the rollback again if it is still wanted"
                ) from err
            self.log.info(
                "%s production rolled back from v%s to v%s (generation %s)",
                self.model_name,
                from_version,
                record["version"],
                record["generation"],
            )
        # from_version is None when an earlier attempt made the rollback: its record's reason names it.
        result = {**record, "from_version": from_version}
        context["ti"].xcom_push(key="version", value=record["version"])
        if self.emit_asset_event:
            extra = emit_production_event(context, self.model_name, record, "rolled_back")
            self.log.info("Asset event for %s production: %s", self.model_name, extra)
        return result


class PipelineOutcomeOperator(StoreOperator):
    """Last task of a run (trigger rule all_done): say and record how the run ended.

    Writes an event under the model in the store (promoted, rejected by the gate, rejected by a person,
    failed) and fails itself when any step failed, so the run's state tells the truth.

    :param oss_conn_id: Airflow connection (type `oss`) for an oss:// store.
    :param transient_retry: in-task retries of transient object-store errors, as for KubeTrainJobOperator.
    """

    template_fields: Sequence[str] = merged_template_fields(
        StoreOperator,
        own=(),
    )

    def __init__(
        self,
        *,
        train_task_id: str = "train",
        gate_task_id: str = "accuracy_gate",
        approval_task_id: str = "approval",
        promote_task_id: str = "promote_model",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.train_task_id = train_task_id
        self.gate_task_id = gate_task_id
        self.approval_task_id = approval_task_id
        self.promote_task_id = promote_task_id

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
            if isinstance(approval, dict) and approval.get("refused"):
                reason += f" ({approval['refused']})"
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
