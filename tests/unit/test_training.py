"""The training contract (airflow_provider_mlpipe.training): the environment both runtimes give a trainer,
read back by `TrainingRun.from_env`, and `publish` writing a version every pipeline task can read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe import manifests
from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.modelstore import open_store
from airflow_provider_mlpipe.training import TrainingRun, trainer_env

DIGEST = "sha256:" + "c" * 64


def contract(**overrides: Any) -> dict[str, str]:
    kwargs: dict[str, Any] = {
        "model_store": "file:///models",
        "model_name": "digits",
        "version": 7,
        "dataset": "/data/digits",
        "image": "reg.io/team/digits:1",
        "digest": DIGEST,
        "run_key": "mlpipe_digits/run-1",
        "hyperparameters": {"epochs": 3, "learning_rate": 0.01},
        **overrides,
    }
    return trainer_env(**kwargs)


def test_the_environment_round_trips_through_from_env() -> None:
    run = TrainingRun.from_env({**contract(), "MLPIPE_SCRATCH_DIR": "/scratch"})
    assert run == TrainingRun(
        model_store="file:///models",
        model_name="digits",
        version=7,
        dataset="/data/digits",
        image="reg.io/team/digits:1",
        digest=DIGEST,
        run_id="mlpipe_digits/run-1",
        scratch_dir="/scratch",
        hyperparameters={"epochs": 3, "learning_rate": 0.01},
    )
    assert run.hyperparameter("epochs", 30) == 3 and run.hyperparameter("seed", 5) == 5


def test_a_job_pod_gets_the_same_contract_as_a_local_trainer() -> None:
    """manifests.train_job and the local runtime share trainer_env: the Job's plain env values are the
    contract plus only the pod's own scratch and cache locations."""
    job = manifests.train_job(
        name="train-digits-v7",
        namespace="mlpipe",
        image="reg.io/team/digits:1",
        model_name="digits",
        version=7,
        model_store="file:///models",
        dataset="/data/digits",
        hyperparameters={"epochs": 3, "learning_rate": 0.01},
        run_key="mlpipe_digits/run-1",
        dag_id="mlpipe_digits",
        digest=DIGEST,
        oss_secret="mlpipe-oss",
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    pod_only = {"MLPIPE_SCRATCH_DIR", "HOME", "TMPDIR", "PYTHONUNBUFFERED"}
    assert {k: v for k, v in env.items() if k not in pod_only} == contract()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"MLPIPE_MODEL_NAME": ""}, "MLPIPE_MODEL_NAME='' is invalid: expected a model name"),
        ({"MLPIPE_MODEL_NAME": "Digits!"}, "MLPIPE_MODEL_NAME='Digits!' is invalid: expected 1-63 lowercase"),
        ({"MLPIPE_MODEL_VERSION": "0"}, "MLPIPE_MODEL_VERSION='0' is invalid: expected an integer >= 1"),
        ({"MLPIPE_MODEL_VERSION": "v2"}, "MLPIPE_MODEL_VERSION='v2' is invalid: expected an integer >= 1"),
        ({"MLPIPE_IMAGE_DIGEST": "sha256:x"}, "MLPIPE_IMAGE_DIGEST='sha256:x' is invalid: expected empty or"),
        ({"MLPIPE_LEARNING_RATE": "2"}, "MLPIPE_LEARNING_RATE='2' is invalid: expected a number in (0, 1]"),
        ({"MLPIPE_EPOCHS": "many"}, "MLPIPE_EPOCHS='many' is invalid: expected an integer in [1, 1000]"),
    ],
)
def test_a_bad_variable_is_named_with_its_value(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainingRun.from_env({**contract(), **overrides})
    assert str(err.value).startswith(message)


def test_a_missing_store_is_named() -> None:
    env = contract()
    del env["MLPIPE_MODEL_STORE"]
    with pytest.raises(ConfigError, match=r"^MLPIPE_MODEL_STORE=None is invalid: expected a model store URI"):
        TrainingRun.from_env(env)


def _saved_model(path: Path) -> Path:
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"graph")
    (path / "variables").mkdir()
    (path / "variables" / "variables.index").write_bytes(b"index")
    return path


def test_publish_writes_a_version_the_pipeline_reads(tmp_path: Path) -> None:
    store_uri = (tmp_path / "models").as_uri()
    run = TrainingRun.from_env(
        contract(model_store=store_uri, digest="", image=f"reg.io/team/digits@{DIGEST}")
    )
    assert not run.is_published()
    manifest = run.publish(
        _saved_model(tmp_path / "export"),
        test_accuracy=0.97561,
        class_names=[str(d) for d in range(10)],
        metrics={"epochs": 3},
        dataset={"checksum": "abc"},
        trainer="team/train.py",
    )
    assert run.is_published()
    stored = open_store(store_uri).read_manifest("digits", 7)
    assert stored == manifest
    assert stored["metrics"] == {"epochs": 3, "test_accuracy": 0.9756}
    assert stored["class_names"] == [str(d) for d in range(10)]
    # A pinned image reference alone still names the trained digest.
    assert stored["digest"] == DIGEST and stored["run_id"] == "mlpipe_digits/run-1"
    assert stored["dataset"] == {"location": "/data/digits", "checksum": "abc"}
    assert {f["path"] for f in stored["files"]} == {
        "saved_model.pb",
        "variables/variables.index",
        "metrics.json",
    }
    metrics = json.loads((tmp_path / "models" / "digits" / "7" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == 0.9756
    # A retried trainer that publishes again gets the first manifest back, unchanged.
    again = run.publish(_saved_model(tmp_path / "export2"), test_accuracy=0.5, class_names=["a", "b"])
    assert again == manifest


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"test_accuracy": 1.5}, "test_accuracy"),
        ({"test_accuracy": float("nan")}, "test_accuracy"),
        ({"class_names": ["only"]}, "class_names"),
        ({"class_names": ["a", "a"]}, "class_names"),
        ({"class_names": ["a", ""]}, "class_names"),
    ],
)
def test_publish_refuses_what_the_gates_could_not_use(
    tmp_path: Path, kwargs: dict[str, Any], field: str
) -> None:
    run = TrainingRun.from_env(contract(model_store=(tmp_path / "models").as_uri()))
    args: dict[str, Any] = {"test_accuracy": 0.9, "class_names": ["a", "b"], **kwargs}
    with pytest.raises(ConfigError) as err:
        run.publish(_saved_model(tmp_path / "export"), **args)
    assert err.value.field == field
    assert not run.is_published()


def test_publish_refuses_a_directory_without_a_saved_model(tmp_path: Path) -> None:
    run = TrainingRun.from_env(contract(model_store=(tmp_path / "models").as_uri()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="expected a directory holding a SavedModel"):
        run.publish(tmp_path / "empty", test_accuracy=0.9, class_names=["a", "b"])
