"""The shipped DAG folder parses cleanly, cheaply, and wires the pipeline as documented."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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


# ------------------------------------------------------------------ one schema, three layers that agree
IMAGE = "registry.cn-hangzhou.aliyuncs.com/ns/repo:1"
DIGEST = "sha256:" + "ab" * 32


# (DAG object, its serialized params): the last DAG serialized.
_SERIALIZED_PARAMS: list[tuple[object, Any]] = []


def _dag_accepts(dagbag, conf: dict) -> bool:
    """The REST API's and `airflow dags trigger`'s verdict: what `create_dagrun` runs on the serialized
    DAG (airflow/serialization/definitions/dag.py: `self.params.deep_merge(conf)` then `.validate()`)."""
    from airflow.exceptions import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags[DAG_ID]
    # Serialized once per DAG object (deep_merge copies): a round trip per value made this file's slowest
    # test spend 40 s serializing the same DAG.
    if not _SERIALIZED_PARAMS or _SERIALIZED_PARAMS[0][0] is not dag:
        _SERIALIZED_PARAMS[:] = [(dag, DagSerialization.from_dict(DagSerialization.to_dict(dag)).params)]
    params = _SERIALIZED_PARAMS[0][1]
    try:
        params.deep_merge({"image": IMAGE, **conf}).validate()
    except ParamValidationError:
        return False
    return True


def _validate_params_accepts(dagbag, conf: dict) -> bool:
    """The first task's verdict, called as the task runner calls it (params: defaults merged with conf)."""
    from airflow_provider_mlpipe.exceptions import ConfigError
    from airflow_provider_mlpipe.params import defaults

    run_conf = {"image": IMAGE, **conf}
    task = dagbag.dags[DAG_ID].task_dict["validate_params"]
    try:
        task.python_callable(params={**defaults(), **run_conf}, dag_run=SimpleNamespace(conf=run_conf))
    except ConfigError:
        return False
    return True


def _trainer_accepts(args: list[str]) -> bool:
    from airflow_provider_mlpipe.images.training import train

    from airflow_provider_mlpipe.exceptions import ConfigError

    try:
        train.validate_args(
            train.build_parser().parse_args(["--model-store", "/tmp/s", "--version", "1", *args])
        )
    except ConfigError:
        return False
    return True


def _boundaries(bounded) -> list[object]:
    low, high = bounded.minimum, bounded.maximum
    values: list[object] = [low, high, True, str(high), [high], math.inf]
    if bounded.kind is int:
        values += [low - 1, high + 1, float(high), low + 0.5, 10**400]
    else:
        values += [math.nextafter(low, -math.inf), math.nextafter(low, math.inf)]
        values += [math.nextafter(high, math.inf), math.nextafter(high, -math.inf), high * 2]
    return values


def test_hyperparameter_boundaries_agree_across_dag_params_validate_params_and_trainer(dagbag) -> None:
    """Every hyperparameter's range comes from airflow_provider_mlpipe.params: the REST API / CLI (DAG
    Params), `validate_params` and the trainer's command line accept and refuse exactly the same values.
    The trainer gets each value as its JSON text, which is how a value reaches a command line."""
    from airflow_provider_mlpipe.params import HYPERPARAMETERS

    verdicts: dict[tuple[str, str], tuple[bool, bool, bool]] = {}
    for name, bounded in HYPERPARAMETERS.items():
        for value in _boundaries(bounded):
            conf = {"hyperparameters": {name: value}}
            flag = f"--{name.replace('_', '-')}={json.dumps(value)}"
            verdicts[(name, repr(value))] = (
                _dag_accepts(dagbag, conf),
                _validate_params_accepts(dagbag, conf),
                _trainer_accepts([flag]),
            )
    disagree = {key: v for key, v in verdicts.items() if len(set(v)) != 1}
    assert disagree == {}
    # Both ends of every range are inside it and just past them is outside: the boundaries were hit.
    for name, bounded in HYPERPARAMETERS.items():
        assert verdicts[(name, repr(bounded.maximum))] == (True, True, True)
        low_verdict = verdicts[(name, repr(bounded.minimum))]
        assert low_verdict == ((False,) * 3 if bounded.exclusive_minimum else (True,) * 3)
    # The case: refused when the run is created, not by the trainer after a version is reserved.
    assert not _dag_accepts(dagbag, {"hyperparameters": {"learning_rate": 2}})
    assert not _trainer_accepts(["--learning-rate=2"])


@pytest.mark.parametrize(
    ("field", "flag", "values"),
    [
        ("model_name", "--model-name", ["a", "a" * 63, "a" * 64, "a-", "-a", "A", "a_b-c", "a\n", "a b", ""]),
        (
            "digest",
            "--digest",
            ["", DIGEST, DIGEST + "\n", "sha256:" + "AB" * 32, "sha256:ab", "md5:" + "ab" * 16],
        ),
    ],
)
def test_string_params_agree_across_dag_params_validate_params_and_trainer(
    dagbag, field: str, flag: str, values: list[str]
) -> None:
    for value in values:
        verdicts = (
            _dag_accepts(dagbag, {field: value}),
            _validate_params_accepts(dagbag, {field: value}),
            _trainer_accepts([f"{flag}={value}"]),
        )
        assert len(set(verdicts)) == 1, (value, verdicts)


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("image", [IMAGE, "x", "", "a b", "x\n", "\tx"]),
        ("min_accuracy", [0, 1, 0.5, -0.01, 1.01, True, None]),
        ("max_regression", [0, 1, -1e-9, 1 + 1e-9]),
        ("confidence_level", [0.5, 0.95, 0.999, 0.4999, 0.9991, 1, True]),
        ("min_class_accuracy", [0, 1, 0.7, -0.01, 1.01]),
        ("max_class_drop", [0, 1, 0.05, -0.01, 1.01]),
        (
            "retry_policy",
            [{"attempts": 1}, {"attempts": 100}, {"attempts": 0}, {"attempts": 101}, {"tries": 3}],
        ),
        ("retry_policy", [{"base_delay": 600, "max_delay": 600}, {"base_delay": 601, "max_delay": 3600}]),
        ("retry_policy", [{"max_delay": 3600}, {"max_delay": 3601}, {"max_delay": -1}, {"attempts": 2.0}]),
        ("approvers", [["a"], [], [""], "a"]),
    ],
)
def test_other_params_agree_across_dag_params_and_validate_params(dagbag, field: str, values: list) -> None:
    for value in values:
        verdicts = (_dag_accepts(dagbag, {field: value}), _validate_params_accepts(dagbag, {field: value}))
        assert len(set(verdicts)) == 1, (value, verdicts)


def test_dag_params_are_generated_from_the_one_definition(dagbag) -> None:
    from airflow_provider_mlpipe.params import RUN_PARAMS

    params = dagbag.dags[DAG_ID].params
    assert list(params) == list(RUN_PARAMS)
    for name, spec in RUN_PARAMS.items():
        assert params.get_param(name).schema == dict(spec.schema), name
    hyper = params.get_param("hyperparameters").schema
    assert hyper["additionalProperties"] is False
    assert hyper["properties"]["learning_rate"] == {"type": "number", "exclusiveMinimum": 0, "maximum": 1}


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"min_acuracy": 0.95}, "unknown param 'min_acuracy'; did you mean 'min_accuracy'?"),
        ({"runtime": "local", "kubernetes": {"gpus": 2}}, "kubernetes={'gpus': 2} is invalid"),
        (
            {"image": f"r/ns/x@{DIGEST}", "digest": "sha256:" + "cd" * 32},
            f"the digest the image reference carries ({DIGEST})",
        ),
    ],
)
def test_what_airflow_accepts_validate_params_refuses(dagbag, conf: dict, message: str) -> None:
    """Airflow creates these runs (an unknown key becomes an untyped param; params are checked one by
    one), so the first task is where they stop, naming the key, before `train` reserves a version."""
    from airflow_provider_mlpipe.exceptions import ConfigError
    from airflow_provider_mlpipe.params import defaults

    assert _dag_accepts(dagbag, conf)
    task = dagbag.dags[DAG_ID].task_dict["validate_params"]
    run_conf = {"image": IMAGE, **conf}
    with pytest.raises(ConfigError) as info:
        task.python_callable(params={**defaults(), **run_conf}, dag_run=SimpleNamespace(conf=run_conf))
    assert message in str(info.value)
    assert dagbag.dags[DAG_ID].task_dict["train"].upstream_task_ids == {"validate_params"}


def test_production_moves_emit_the_asset_the_scoring_dag_schedules_on(dagbag) -> None:
    from airflow_provider_mlpipe.assets import PRODUCTION_ALIAS, production_asset

    promote = dagbag.dags[DAG_ID].task_dict["promote_model"]
    rollback = dagbag.dags["mlpipe_rollback_production"].task_dict["rollback_alias"]
    for task in (promote, rollback):
        assert [outlet.name for outlet in task.outlets] == [PRODUCTION_ALIAS], task.task_id
    consumer = dagbag.dags["mlpipe_batch_scoring"]
    assert list(consumer.timetable.asset_condition.objects) == [production_asset("fashion_mnist")]
