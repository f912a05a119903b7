"""The pipeline factories: a team's whole pipeline from a few arguments, checked when the DAG file is
parsed, with the same tasks and wiring as the shipped Fashion-MNIST pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_mlpipe.exceptions import ConfigError, UnknownParamError
from airflow_provider_mlpipe.pipeline import build_pipeline, build_rollback_pipeline

REPO = Path(__file__).resolve().parents[2]


def _edges(dag) -> set[tuple[str, str]]:
    return {(up, down) for up, task in dag.task_dict.items() for down in task.downstream_task_ids}


def test_a_team_pipeline_has_the_shipped_pipelines_tasks_and_wiring() -> None:
    import sys

    sys.path.insert(0, str(REPO / "dags"))
    try:
        import mlpipe_fashion_mnist
    finally:
        sys.path.remove(str(REPO / "dags"))
    team = build_pipeline(
        dag_id="mlpipe_churn",
        model_name="churn",
        evaluation_data="oss://ml-data/churn/eval.npz",
        local_training_command=["python", "churn/train.py"],
        param_defaults={"min_accuracy": 0.7, "verify_sample": 50},
    )
    shipped = mlpipe_fashion_mnist.dag
    assert set(team.task_dict) == set(shipped.task_dict)
    assert _edges(team) == _edges(shipped)
    assert team.params["model_name"] == "churn"
    assert team.params["min_accuracy"] == 0.7 and team.params["verify_sample"] == 50
    # The other params keep the shared defaults.
    assert team.params["max_regression"] == shipped.params["max_regression"]
    for task_id in ("evaluate_staging", "verify_production"):
        assert team.task_dict[task_id].evaluation_data == "oss://ml-data/churn/eval.npz"
    assert team.task_dict["train"].local_command == ("python", "churn/train.py")
    assert shipped.task_dict["train"].local_command == ()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"model_name": "Churn"}, ConfigError, "model_name='Churn' is invalid"),
        (
            {"evaluation_data": " "},
            ConfigError,
            "evaluation_data=' ' is invalid: expected an evaluation data",
        ),
        ({"param_defaults": {"min_acuracy": 0.7}}, UnknownParamError, "did you mean 'min_accuracy'?"),
        (
            {"param_defaults": {"min_accuracy": 1.5}},
            ConfigError,
            "param_defaults['min_accuracy']=1.5 is invalid: expected a value the param accepts",
        ),
        ({"local_training_command": "python train.py"}, ConfigError, "local_command='python train.py'"),
    ],
)
def test_a_bad_argument_fails_when_the_dag_file_is_parsed(kwargs: dict, error: type, message: str) -> None:
    arguments = {
        "dag_id": "mlpipe_churn",
        "model_name": "churn",
        "evaluation_data": "/data/eval.npz",
        **kwargs,
    }
    with pytest.raises(error) as err:
        build_pipeline(**arguments)
    assert message in str(err.value)


def test_the_rollback_pipeline_serves_and_verifies_the_models_previous_version() -> None:
    dag = build_rollback_pipeline(
        dag_id="churn_rollback", model_name="churn", evaluation_data="/data/eval.npz"
    )
    # (rollback_alias -> verify_production too: verify reads the version from the rollback's XCom.)
    assert {("rollback_alias", "deploy_production"), ("deploy_production", "verify_production")} <= _edges(
        dag
    )
    assert dag.params["model_name"] == "churn" and dag.max_active_runs == 1
    assert dag.task_dict["verify_production"].evaluation_data == "/data/eval.npz"


def test_the_second_example_dag_file_is_a_few_lines() -> None:
    lines = (REPO / "dags" / "mlpipe_digits.py").read_text().splitlines()
    assert len(lines) < 40


def _events(callbacks: object) -> list[str]:
    return [getattr(n, "event", type(n).__name__) for n in (callbacks or [])]  # type: ignore[attr-defined]


def test_notifications_are_wired_to_their_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("DINGTALK_CONN_ID", "SMTP_CONN_ID", "EMAIL_TO", "EMAIL_FROM"):
        monkeypatch.delenv(f"AIRFLOW__MLPIPE__NOTIFY_{key}", raising=False)
    dag = build_pipeline(
        dag_id="mlpipe_churn",
        model_name="churn",
        evaluation_data="oss://ml-data/churn/eval.npz",
        dingtalk_conn_id="robot",
        smtp_conn_id="smtp_default",
        email_to=["ml@example.com"],
        models_page="/airflow/mlpipe-models",
    )
    tasks = dag.task_dict
    assert _events(tasks["approval"].notifiers) == ["approval_requested"]
    assert tasks["approval"].models_page == "/airflow/mlpipe-models"
    assert _events(tasks["promote_model"].on_success_callback) == ["promoted"]
    assert _events(tasks["rollback_production"].on_success_callback) == ["rolled_back"]
    # Every step tells of its own failure, except the last, which fails because another step did.
    for task_id, task in tasks.items():
        expected = [] if task_id == "record_outcome" else ["run_failed"]
        assert _events(task.on_failure_callback) == expected, task_id
    (notifier,) = tasks["promote_model"].on_success_callback
    assert (notifier.dingtalk_conn_id, notifier.smtp_conn_id, notifier.email_to) == (
        "robot",
        "smtp_default",
        ["ml@example.com"],
    )
    # The staging evaluation is kept in the store, for the approval's pictures and the Models page.
    assert tasks["evaluate_staging"].record_as == "staging"
    assert tasks["verify_production"].record_as is None

    rollback = build_rollback_pipeline(
        dag_id="mlpipe_churn_rollback",
        model_name="churn",
        evaluation_data="oss://ml-data/churn/eval.npz",
        dingtalk_conn_id="robot",
    )
    assert _events(rollback.task_dict["rollback_alias"].on_success_callback) == ["rolled_back"]
    assert _events(rollback.task_dict["deploy_production"].on_failure_callback) == ["run_failed"]


def test_notification_channels_from_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__MLPIPE__NOTIFY_SMTP_CONN_ID", "smtp_team")
    monkeypatch.setenv("AIRFLOW__MLPIPE__NOTIFY_EMAIL_TO", "a@example.com, b@example.com")
    monkeypatch.delenv("AIRFLOW__MLPIPE__NOTIFY_DINGTALK_CONN_ID", raising=False)
    dag = build_pipeline(dag_id="mlpipe_churn", model_name="churn", evaluation_data="x.npz")
    (notifier,) = dag.task_dict["promote_model"].on_success_callback
    assert (notifier.dingtalk_conn_id, notifier.smtp_conn_id, notifier.email_to) == (
        None,
        "smtp_team",
        ["a@example.com", "b@example.com"],
    )
    # No channel at all: no notifiers.
    monkeypatch.delenv("AIRFLOW__MLPIPE__NOTIFY_SMTP_CONN_ID")
    quiet = build_pipeline(dag_id="mlpipe_churn", model_name="churn", evaluation_data="x.npz")
    assert quiet.task_dict["approval"].notifiers == []
    assert quiet.task_dict["train"].on_failure_callback in (None, [])


PRODUCTION_TASKS = {"deploy_production", "verify_production", "rollback_production", "promote_model"}


def test_a_production_pool_serializes_every_task_that_changes_or_checks_production() -> None:
    arguments = {
        "model_name": "churn",
        "evaluation_data": "/data/eval.npz",
        "production_pool": "mlpipe_production",
    }
    dag = build_pipeline(dag_id="mlpipe_churn", **arguments)
    pooled = {task_id for task_id, task in dag.task_dict.items() if task.pool == "mlpipe_production"}
    assert pooled == PRODUCTION_TASKS
    rollback = build_rollback_pipeline(dag_id="churn_rollback", **arguments)
    assert {task.pool for task in rollback.tasks} == {"mlpipe_production"}
    # Without the argument nothing waits for a pool that may not exist.
    default = build_pipeline(dag_id="mlpipe_churn2", model_name="churn", evaluation_data="/data/eval.npz")
    assert {task.pool for task in default.tasks} == {"default_pool"}
    with pytest.raises(ConfigError, match="production_pool=' ' is invalid"):
        build_pipeline(
            dag_id="mlpipe_churn3", model_name="churn", evaluation_data="/e.npz", production_pool=" "
        )
