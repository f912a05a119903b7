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
