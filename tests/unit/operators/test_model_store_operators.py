"""ModelPromoteOperator and ModelAliasOperator on a real file:// store: a lost promotion race, or production
moved since the accuracy gate, fails the task for good (its retries would promote over the winner without a
new approval); staging aliases are recorded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.execution_time.context import OutletEventAccessors

from airflow_provider_mlpipe.assets import PRODUCTION_ALIAS
from airflow_provider_mlpipe.exceptions import AliasConflictError, ConfigError, ModelStoreError
from airflow_provider_mlpipe.modelstore import ModelStore, open_store
from airflow_provider_mlpipe.modelstore.backends import FileBackend
from airflow_provider_mlpipe.operators.gates import AccuracyGateOperator
from airflow_provider_mlpipe.operators.model_store import (
    ModelAliasOperator,
    ModelPromoteOperator,
    ModelRollbackOperator,
)

MODEL = "fashion_mnist"
DAG_ID = "mlpipe_fashion_mnist"
RUN_ID = "manual__2026-01-01T00:00:00+00:00"
RUN = f"{DAG_ID}/{RUN_ID}"
APPROVAL = {"chosen_options": ["Approve"], "responded_by_user": {"id": "1", "name": "alice"}}


class RivalBackend(FileBackend):
    """The real file backend, except that right before this store's first write of an `alias` record
    another writer (`rival`, on its own store) moves that alias: the rival wins the race."""

    def __init__(self, root: Path, alias: str, rival: Callable[[], object], times: int = 1) -> None:
        super().__init__(root)
        self.alias = alias
        self.rival = rival
        self.times = times

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if self.times and f"/_aliases/{self.alias}/" in key:
            self.times -= 1
            self.rival()
        return super().put_if_absent(key, data)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    src = tmp_path / "export"
    src.mkdir()
    (src / "saved_model.pb").write_bytes(b"graph")
    store = open_store(root.as_uri())
    for version in (1, 2, 3):
        store.publish(MODEL, version, src, {"run_id": f"run-{version}"})
    return root


def context() -> Any:
    # outlet_events: the Task SDK's own accessors, as a task's context carries them.
    return {"dag": SimpleNamespace(dag_id=DAG_ID), "run_id": RUN_ID, "outlet_events": OutletEventAccessors()}


def seeded(root: Path) -> ModelStore:
    """The store with v1 in production (run "seed", approved by carol)."""
    store = open_store(root.as_uri())
    store.promote(MODEL, 1, run_id="seed", approved_by="carol", extra=None)
    return store


def rival_promotes_v3(root: Path) -> Callable[[], object]:
    """A RivalBackend rival: run 'dag/rival' promotes v3, approved by dave."""

    def rival() -> object:
        return open_store(root.as_uri()).promote(MODEL, 3, run_id="dag/rival", approved_by="dave", extra=None)

    return rival


def rival_sets_staging_v3(root: Path, run_id: str) -> Callable[[], object]:
    """A RivalBackend rival: run `run_id` moves staging to v3 (a compare-and-swap on its generation)."""

    def rival() -> object:
        other = open_store(root.as_uri())
        current = other.get_alias(MODEL, "staging")
        return other.set_alias(
            MODEL, "staging", 3, expected_generation=current["generation"] if current else None, run_id=run_id
        )

    return rival


def with_store(operator: Any, store: ModelStore) -> Any:
    # The operator's own hook, opened on a store whose backend lets a rival write first.
    operator.store_hook.__dict__["store"] = store
    return operator


def promote_operator(root: Path, version: int = 2) -> ModelPromoteOperator:
    return ModelPromoteOperator(
        task_id="promote_model",
        version=version,
        model_store=root.as_uri(),
        approval=APPROVAL,
        evaluation={"accuracy": 0.9, "samples": 1000},
        training={"image": "reg/ns/train:2", "digest": "sha256:" + "b" * 64},
    )


def test_promote_records_production_with_approver_and_evidence(root: Path) -> None:
    record = promote_operator(root).execute(context())
    assert (record["version"], record["run_id"], record["approved_by"]) == (2, RUN, "alice")
    assert (record["accuracy"], record["image"]) == (0.9, "reg/ns/train:2")
    assert open_store(root.as_uri()).get_alias(MODEL, "production") == record


def test_a_lost_promotion_race_fails_without_retry_naming_the_winner(root: Path) -> None:
    store = seeded(root)
    operator = with_store(
        promote_operator(root), ModelStore(RivalBackend(root, "production", rival_promotes_v3(root)))
    )
    with pytest.raises(AirflowFailException) as info:
        operator.execute(context())
    message = str(info.value)
    assert "alias production of fashion_mnist" in message
    assert "'dag/rival' to v3" in message and "approved by dave" in message
    assert f"run {RUN!r} promoted v2" in message and "needs a new approval" in message
    assert isinstance(info.value.__cause__, AliasConflictError)
    # The winner stays in production: nothing was written over it.
    current = store.get_alias(MODEL, "production")
    assert current is not None and (current["version"], current["run_id"]) == (3, "dag/rival")
    assert [h["version"] for h in store.alias_history(MODEL, "production")] == [1, 3]


def test_a_lost_race_for_previous_keeps_the_won_production(root: Path) -> None:
    store = seeded(root)

    def rival() -> object:
        return open_store(root.as_uri()).set_alias(
            MODEL, "previous", 3, expected_generation=None, run_id="dag/other", reason="by hand"
        )

    operator = with_store(promote_operator(root), ModelStore(RivalBackend(root, "previous", rival)))
    record = operator.execute(context())
    assert (record["version"], record["run_id"]) == (2, RUN)
    current = store.get_alias(MODEL, "production")
    assert current is not None and current["version"] == 2


def alias_operator(root: Path, **kwargs: Any) -> ModelAliasOperator:
    return ModelAliasOperator(
        task_id="set_staging_alias",
        alias=kwargs.pop("alias", "staging"),
        version=kwargs.pop("version", "2"),
        model_store=root.as_uri(),
        reason="deployed to staging",
        **kwargs,
    )


def test_alias_operator_records_staging_once_per_run(root: Path) -> None:
    record = alias_operator(root).execute(context())
    assert (record["alias"], record["version"], record["generation"]) == ("staging", 2, 1)
    assert (record["run_id"], record["reason"]) == (RUN, "deployed to staging")
    # A retry of the task finds its own record and writes nothing.
    assert alias_operator(root).execute(context()) == record
    assert len(open_store(root.as_uri()).alias_history(MODEL, "staging")) == 1


def test_alias_operator_sets_again_after_another_run_moved_the_alias(root: Path) -> None:
    rival = rival_sets_staging_v3(root, "dag/other")
    operator = with_store(alias_operator(root), ModelStore(RivalBackend(root, "staging", rival)))
    record = operator.execute(context())
    assert (record["version"], record["generation"], record["run_id"]) == (2, 2, RUN)
    history = open_store(root.as_uri()).alias_history(MODEL, "staging")
    assert [(h["version"], h["run_id"]) for h in history] == [(3, "dag/other"), (2, RUN)]


def test_alias_operator_gives_up_after_conflict_attempts(root: Path) -> None:
    backend = RivalBackend(root, "staging", rival_sets_staging_v3(root, "x"), times=2)
    operator = with_store(alias_operator(root, conflict_attempts=2), ModelStore(backend))
    with pytest.raises(AliasConflictError, match="alias staging of fashion_mnist"):
        operator.execute(context())


def test_alias_operator_leaves_production_to_promotion(root: Path) -> None:
    with pytest.raises(ConfigError) as info:
        alias_operator(root, alias="production").execute(context())
    assert info.value.field == "alias" and "ModelPromoteOperator" in str(info.value)
    assert open_store(root.as_uri()).get_alias(MODEL, "production") is None
    with pytest.raises(ConfigError, match="conflict_attempts"):
        alias_operator(root, conflict_attempts=0)


def test_alias_operator_can_set_previous_by_hand(root: Path) -> None:
    alias_operator(root, alias="previous", version=1).execute(context())
    current = open_store(root.as_uri()).get_alias(MODEL, "previous")
    assert current is not None and (current["version"], current["run_id"]) == (1, RUN)


# --- ModelRollbackOperator -------------------------------------------------------------------------------

ROLLBACK_DAG_ID = "mlpipe_rollback_production"
ROLLBACK_RUN_ID = "manual__2026-01-02T00:00:00+00:00"


class FakeTI:
    """The task instance's XCom push, as the Task SDK gives it to execute()."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def rollback_context(ti: FakeTI) -> Any:
    return {
        "dag": SimpleNamespace(dag_id=ROLLBACK_DAG_ID),
        "run_id": ROLLBACK_RUN_ID,
        "dag_run": SimpleNamespace(triggering_user_name="bob"),
        "ti": ti,
        "outlet_events": OutletEventAccessors(),
    }


def rollback_operator(root: Path, reason: str = "complaints about v3") -> ModelRollbackOperator:
    return ModelRollbackOperator(task_id="rollback_alias", model_store=root.as_uri(), reason=reason)


def promoted_twice(root: Path) -> ModelStore:
    store = open_store(root.as_uri())
    store.promote(MODEL, 2, run_id="run-2", approved_by="alice", extra={})
    store.promote(MODEL, 3, run_id="run-3", approved_by="carol", extra={})
    return store


def test_rollback_moves_production_back_and_records_who_and_why(root: Path) -> None:
    store = promoted_twice(root)
    ti = FakeTI()
    result = rollback_operator(root).execute(rollback_context(ti))
    production = store.get_alias(MODEL, "production")
    assert production["version"] == 2 and result["version"] == 2 and result["from_version"] == 3
    assert production["run_id"] == f"{ROLLBACK_DAG_ID}/{ROLLBACK_RUN_ID}"
    assert production["approved_by"] == "bob"
    assert production["reason"] == "rollback from v3: complaints about v3"
    assert store.get_alias(MODEL, "previous")["version"] == 3
    assert ti.pushed == {"version": 2}


def test_a_retried_rollback_adopts_the_first_instead_of_going_back_twice(root: Path) -> None:
    store = promoted_twice(root)
    first = rollback_operator(root).execute(rollback_context(FakeTI()))
    ti = FakeTI()
    again = rollback_operator(root).execute(rollback_context(ti))
    assert again["version"] == first["version"] == 2
    assert again["generation"] == first["generation"]
    assert store.get_alias(MODEL, "production")["generation"] == first["generation"]
    assert ti.pushed == {"version": 2}


def test_rollback_losing_a_race_fails_without_retry(root: Path) -> None:
    promoted_twice(root)
    rival = open_store(root.as_uri())
    store = ModelStore(
        RivalBackend(
            root, "production", lambda: rival.promote(MODEL, 1, run_id="run-1", approved_by="dave", extra={})
        )
    )
    operator = with_store(rollback_operator(root), store)
    with pytest.raises(AirflowFailException, match=r"moved while run .*rolled it back: not retried"):
        operator.execute(rollback_context(FakeTI()))
    assert rival.get_alias(MODEL, "production")["version"] == 1


def test_rollback_without_an_earlier_version_or_reason_fails_naming_it(root: Path) -> None:
    open_store(root.as_uri()).promote(MODEL, 2, run_id="run-2", approved_by="alice", extra={})
    with pytest.raises(ModelStoreError, match="no earlier version to roll back to"):
        rollback_operator(root).execute(rollback_context(FakeTI()))
    with pytest.raises(ConfigError, match="reason"):
        rollback_operator(root, reason=" ").execute(rollback_context(FakeTI()))


# --- ModelPromoteOperator against the production the accuracy gate compared with --------------------------


def gate_decision(root: Path) -> dict[str, Any]:
    """The real accuracy gate's `decision` XCom, taken on the store as it is now: the evaluation scored
    the production model (if any) beside the candidate, which is clearly better (verdict pass)."""
    ti = FakeTI()
    production = open_store(root.as_uri()).get_alias(MODEL, "production")
    champion = (
        {
            "version": production["version"],
            "generation": production["generation"],
            "paired_counts": [[400, 50, 10, 40], [400, 50, 10, 40]],
        }
        if production
        else None
    )
    gate = AccuracyGateOperator(
        task_id="accuracy_gate",
        metrics={"accuracy": 0.9, "confusion_matrix": [[450, 50], [50, 450]], "champion": champion},
        min_accuracy=0.5,
        pass_task_id="approval",
        fail_task_id="accuracy_rejected",
        model_store=root.as_uri(),
    )
    assert gate.choose_branch({**context(), "ti": ti}) == "approval"
    decision: dict[str, Any] = ti.pushed["decision"]
    return decision


def checked_promote(root: Path, decision: dict[str, Any]) -> ModelPromoteOperator:
    operator = promote_operator(root)
    operator.expected_production = decision
    return operator


def test_the_gate_records_the_production_alias_it_compared_against(root: Path) -> None:
    before = gate_decision(root)
    assert (before["production_version"], before["production_generation"]) == (None, None)
    open_store(root.as_uri()).promote(MODEL, 1, run_id="seed", approved_by="carol", extra={"accuracy": 0.8})
    decision = gate_decision(root)
    assert (decision["production_version"], decision["production_generation"]) == (1, 1)
    # The accuracy of production on the same examples, not the one recorded when it was promoted.
    assert (decision["verdict"], decision["production_accuracy"]) == ("pass", 0.82)


def test_promotion_after_production_moved_since_the_gate_fails_without_retry(root: Path) -> None:
    store = seeded(root)
    decision = gate_decision(root)
    # Another run, parked at approval beside this one, is approved and promoted first.
    store.promote(MODEL, 3, run_id="dag/other", approved_by="dave", extra=None)
    with pytest.raises(AirflowFailException) as info:
        checked_promote(root, decision).execute(context())
    message = str(info.value)
    assert "alias production of fashion_mnist" in message
    assert "accuracy gate compared v2 against generation 1 (v1)" in message
    assert "now v3 (generation 2, run 'dag/other', approved by dave)" in message
    assert f"Run {RUN!r} did not promote v2" in message and "needs a new approval" in message
    assert isinstance(info.value.__cause__, AliasConflictError)
    assert [h["run_id"] for h in store.alias_history(MODEL, "production")] == ["seed", "dag/other"]
    previous = store.get_alias(MODEL, "previous")
    assert previous is not None and (previous["version"], previous["run_id"]) == (1, "dag/other")


def test_promotion_over_the_production_the_gate_saw_succeeds(root: Path) -> None:
    store = seeded(root)
    record = checked_promote(root, gate_decision(root)).execute(context())
    assert (record["version"], record["generation"], record["run_id"], record["approved_by"]) == (
        2,
        2,
        RUN,
        "alice",
    )
    assert store.get_alias(MODEL, "production") == record
    previous = store.get_alias(MODEL, "previous")
    assert previous is not None and (previous["version"], previous["run_id"]) == (1, RUN)


def test_first_promotion_loses_to_a_rival_when_the_gate_saw_no_production(root: Path) -> None:
    decision = gate_decision(root)

    # The rival writes the first production record right before ours.
    operator = with_store(
        checked_promote(root, decision), ModelStore(RivalBackend(root, "production", rival_promotes_v3(root)))
    )
    with pytest.raises(AirflowFailException) as info:
        operator.execute(context())
    message = str(info.value)
    assert "compared v2 against no production (none existed yet)" in message
    assert "now v3 (generation 1, run 'dag/rival', approved by dave)" in message
    history = open_store(root.as_uri()).alias_history(MODEL, "production")
    assert [(h["version"], h["run_id"]) for h in history] == [(3, "dag/rival")]


def test_a_retry_after_its_own_checked_promotion_returns_it_and_writes_nothing(root: Path) -> None:
    store = seeded(root)
    decision = gate_decision(root)
    first = checked_promote(root, decision).execute(context())
    histories = {alias: store.alias_history(MODEL, alias) for alias in ("production", "previous")}
    # The retry carries the same decision, taken before its own promotion moved production.
    again = checked_promote(root, decision).execute(context())
    assert again == first
    assert {alias: store.alias_history(MODEL, alias) for alias in histories} == histories


def test_a_decision_without_the_generation_it_saw_is_refused(root: Path) -> None:
    store = seeded(root)
    legacy = {"passed": True, "production_version": 1, "production_accuracy": None}
    with pytest.raises(ConfigError) as info:
        checked_promote(root, legacy).execute(context())
    assert info.value.field == "expected_production"
    assert [h["version"] for h in store.alias_history(MODEL, "production")] == [1]


# --- asset events ------------------------------------------------------------------------------------------


def alias_events(ctx: Any) -> list[dict[str, Any]]:
    """What the Task SDK sends the API server for the production alias outlet, as it serialises it."""
    from airflow.sdk.execution_time.task_runner import _serialize_outlet_events

    return list(_serialize_outlet_events(ctx["outlet_events"]))


def test_promotion_emits_the_production_asset_event_with_version_and_accuracy(root: Path) -> None:
    operator = promote_operator(root)
    assert [outlet.name for outlet in operator.outlets] == [PRODUCTION_ALIAS]
    ctx = context()
    record = operator.execute(ctx)
    (event,) = alias_events(ctx)
    assert event["source_alias_name"] == PRODUCTION_ALIAS
    assert event["dest_asset_key"] == {
        "name": "mlpipe/fashion_mnist/production",
        "uri": "mlpipe://models/fashion_mnist/production",
    }
    assert event["extra"] == {
        "event": "promoted",
        "model_name": MODEL,
        "version": 2,
        "accuracy": 0.9,
        "generation": record["generation"],
        "run_id": RUN,
        "approved_by": "alice",
        "reason": "promoted",
    }


def test_rollback_emits_the_production_asset_event_with_the_version_back_in_production(root: Path) -> None:
    promoted_twice(root)
    ctx = rollback_context(FakeTI())
    rollback_operator(root).execute(ctx)
    (event,) = alias_events(ctx)
    assert event["dest_asset_key"]["name"] == "mlpipe/fashion_mnist/production"
    assert event["extra"]["event"] == "rolled_back"
    assert event["extra"]["version"] == 2
    assert event["extra"]["reason"] == "rollback from v3: complaints about v3"


def test_no_asset_outlet_or_event_when_turned_off(root: Path) -> None:
    operator = ModelPromoteOperator(
        task_id="promote_model", version=2, model_store=root.as_uri(), emit_asset_event=False
    )
    assert operator.outlets == []
    ctx = context()
    operator.execute(ctx)
    assert alias_events(ctx) == []


# --- what the promotion records of the gate, the approver's reason and the production endpoint -------------

INCONCLUSIVE = {
    "verdict": "inconclusive",
    "passed": True,
    "difference_interval": [-0.0041, 0.0061],
    "accuracy_interval": [0.87, 0.89],
    "production_version": 1,
    "production_generation": 1,
}


def test_an_inconclusive_promotion_records_the_approvers_reason_in_the_history(root: Path) -> None:
    store = seeded(root)
    operator = checked_promote(root, INCONCLUSIVE)
    operator.approval = {**APPROVAL, "reason": "  same accuracy, smaller model  "}
    operator.production_endpoint = {"url": "http://127.0.0.1:8501", "version": 2}
    record = operator.execute(context())
    assert record["reason"] == (
        "promoted (gate inconclusive, difference to production [-0.0041, +0.0061]); "
        "approver's reason: same accuracy, smaller model"
    )
    assert (record["approval_reason"], record["gate_verdict"], record["endpoint_url"]) == (
        "same accuracy, smaller model",
        "inconclusive",
        "http://127.0.0.1:8501",
    )
    assert record["gate_difference_interval"] == [-0.0041, 0.0061]
    assert store.alias_history(MODEL, "production")[-1] == record


def test_an_inconclusive_promotion_without_a_reason_is_refused(root: Path) -> None:
    store = seeded(root)
    with pytest.raises(AirflowFailException, match="inconclusive and the approval carries no written reason"):
        checked_promote(root, INCONCLUSIVE).execute(context())
    assert store.get_alias(MODEL, "production")["version"] == 1


def test_a_rollback_keeps_the_endpoint_the_restored_version_was_promoted_with(root: Path) -> None:
    store = open_store(root.as_uri())
    store.promote(MODEL, 1, run_id="r1", approved_by="a", extra={"endpoint_url": "http://prod:8501"})
    store.promote(MODEL, 2, run_id="r2", approved_by="a", extra={"endpoint_url": "http://prod:8501"})
    record = store.rollback(MODEL, run_id="r3", requested_by="b", reason="bad")
    assert (record["version"], record["endpoint_url"]) == (1, "http://prod:8501")
