"""The shipped DAG folder parses cleanly, cheaply, and wires the pipeline as documented."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DAG_ID = "mlpipe_fashion_mnist"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("airflow-home")
    os.environ["AIRFLOW_HOME"] = str(home)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(REPO / "dags"))
    # Parsing must do no I/O of ours: no state or model directories appear in AIRFLOW_HOME.
    assert not (home / "mlpipe").exists()
    return bag


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert DAG_ID in dagbag.dags


def test_pipeline_shape(dagbag) -> None:
    dag = dagbag.dags[DAG_ID]
    # XCom wiring adds edges of its own (train -> approval, ...); these are the documented flow's edges.
    edges = {(up, down) for up, task in dag.task_dict.items() for down in task.downstream_task_ids}
    flow = [
        ("validate_params", "train"),
        ("train", "deploy_staging"),
        ("deploy_staging", "evaluate_staging"),
        ("deploy_staging", "set_staging_alias"),
        ("evaluate_staging", "accuracy_gate"),
        ("set_staging_alias", "accuracy_gate"),
        ("accuracy_gate", "approval"),
        ("accuracy_gate", "accuracy_rejected"),
        ("approval", "deploy_production"),
        ("approval", "teardown_staging"),
        ("accuracy_rejected", "teardown_staging"),
        ("deploy_production", "verify_production"),
        ("verify_production", "promote_model"),
        ("deploy_production", "rollback_production"),
        ("verify_production", "rollback_production"),
        ("promote_model", "record_outcome"),
        ("rollback_production", "record_outcome"),
    ]
    assert [edge for edge in flow if edge not in edges] == []
    assert dag.task_dict["validate_params"].upstream_task_ids == set()
    assert dag.task_dict["record_outcome"].downstream_task_ids == set()
    assert dag.task_dict["teardown_staging"].is_teardown
    assert dag.task_dict["rollback_production"].trigger_rule == "one_failed"
    assert dag.task_dict["record_outcome"].trigger_rule == "all_done"
    assert dag.task_dict["set_staging_alias"].alias == "staging"
    # Promotion is checked against the production the gate compared with (and the approver saw).
    expected = dag.task_dict["promote_model"].expected_production
    assert (expected.operator.task_id, expected.key) == ("accuracy_gate", "decision")
    assert "expected_production" in dag.task_dict["promote_model"].template_fields
    # Waiting for a person must not be retried into a second request.
    assert dag.task_dict["approval"].retries == 0
    assert dag.task_dict["train"].retries == 2


def _fields_dropped(cls: type) -> set[str]:
    """Template fields some ancestor operator of `cls` declares that `cls` no longer templates."""
    from airflow.sdk import BaseOperator

    inherited: set[str] = set()
    for parent in cls.__mro__[1:]:
        if isinstance(parent, type) and issubclass(parent, BaseOperator):
            inherited |= set(parent.__dict__.get("template_fields", ()))
    return inherited - set(cls.template_fields)


def test_templated_fields_extend_the_parents(dagbag) -> None:
    from airflow.providers.standard.operators.hitl import HITLOperator

    classes = {type(task) for task in dagbag.dags[DAG_ID].tasks}
    assert {cls.__name__: _fields_dropped(cls) for cls in classes} == {cls.__name__: set() for cls in classes}
    # The check has something to compare: the approval extends HITLOperator's templated subject and body.
    approval = type(dagbag.dags[DAG_ID].task_dict["approval"])
    assert issubclass(approval, HITLOperator) and {"subject", "body"} <= set(HITLOperator.template_fields)

    class ReplacesInsteadOfExtending(approval):  # type: ignore[misc, valid-type]
        template_fields = ("evidence",)

    assert _fields_dropped(ReplacesInsteadOfExtending) >= {"subject", "body", "approvers"}


def _params(dagbag, conf: dict):
    params = copy.deepcopy(dagbag.dags[DAG_ID].params)
    params.update(conf)
    return params


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"min_accuracy": 1.5}, "min_accuracy"),
        ({"min_accuracy": -0.1}, "min_accuracy"),
        ({"runtime": "mainframe"}, "runtime"),
        ({"image": ""}, "image"),
        ({"digest": "md5:abc"}, "digest"),
        ({"approvers": []}, "approvers"),
        ({"hyperparameters": {"epochs": 0}}, "hyperparameters"),
        ({"hyperparameters": {"dropout": 0.5}}, "hyperparameters"),
        ({"approval_timeout_minutes": 0}, "approval_timeout_minutes"),
        ({"retry_policy": {"attempts": 0}}, "retry_policy"),
        ({"retry_policy": {"tries": 3}}, "retry_policy"),
        ({"retry_policy": {"max_delay": "60"}}, "retry_policy"),
    ],
)
def test_params_reject_bad_conf(dagbag, override: dict, field: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    # Updating a ParamsDict validates the new value already; validate() checks the rest.
    with pytest.raises(ParamValidationError, match=field):
        _params(dagbag, {"image": "r/x:y", **override}).validate()


def test_params_accept_a_minimal_conf(dagbag) -> None:
    params = _params(dagbag, {"image": "registry.cn-hangzhou.aliyuncs.com/ns/repo:1"})
    values = params.validate()
    assert values["runtime"] == "local"
    assert values["min_accuracy"] == 0.85
    assert values["approvers"] == ["admin"]


def test_missing_image_is_refused(dagbag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="image"):
        _params(dagbag, {}).validate()


def test_retry_policy_param_reaches_every_provider_operator(dagbag) -> None:
    """The run's retry_policy Param is a templated field of every task that talks to the cluster, the store
    or an endpoint; the task retries stay DAG defaults."""
    from airflow_provider_mlpipe.retries import RetryPolicy

    dag = dagbag.dags[DAG_ID]
    takes_policy = {t.task_id for t in dag.tasks if "transient_retry" in getattr(t, "template_fields", ())}
    assert takes_policy == {
        "train",
        "deploy_staging",
        "set_staging_alias",
        "evaluate_staging",
        "accuracy_gate",
        "teardown_staging",
        "deploy_production",
        "verify_production",
        "rollback_production",
        "promote_model",
        "record_outcome",
    }
    assert {dag.task_dict[t].transient_retry for t in takes_policy} == {"{{ params.retry_policy }}"}
    # Airflow's own per-task retry_policy (3.3+) stays unset: it is a different thing.
    assert all(task.retry_policy is None for task in dag.tasks)
    params = _params(dagbag, {"image": "r/x:y", "retry_policy": {"attempts": 8, "max_delay": 60}})
    assert params.validate()["retry_policy"] == {"attempts": 8, "max_delay": 60}
    assert _params(dagbag, {"image": "r/x:y"}).validate()["retry_policy"] == RetryPolicy().as_conf()


ROLLBACK_DAG_ID = "mlpipe_rollback_production"


def test_rollback_dag_moves_the_alias_then_serves_and_verifies(dagbag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags[ROLLBACK_DAG_ID]
    edges = {(up, down) for up, task in dag.task_dict.items() for down in task.downstream_task_ids}
    # verify_production also reads rollback_alias' version (an XCom edge).
    assert edges == {
        ("rollback_alias", "deploy_production"),
        ("deploy_production", "verify_production"),
        ("rollback_alias", "verify_production"),
    }
    assert dag.task_dict["deploy_production"].endpoint == "production"
    # One rollback at a time: two at once would each go back one step.
    assert dag.max_active_runs == 1
    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match="reason"):
        params.validate()
    params.update({"reason": "bad predictions on boots"})
    assert params.validate()["runtime"] == "local"
