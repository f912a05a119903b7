"""AccuracySensor against the real serving server holding a real Keras model that is not Fashion-MNIST:
13 tabular features, 3 classes. The model's input comes from the server's metadata, the class names from the
version's manifest in the store, the evaluation data from the .npz contract."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import requests
from airflow.sdk import PokeReturnValue

from airflow_provider_mlpipe.evaluation import write_evaluation_data
from airflow_provider_mlpipe.exceptions import ConfigError, DatasetError
from airflow_provider_mlpipe.modelstore import open_store
from airflow_provider_mlpipe.sensors.accuracy import AccuracySensor

if TYPE_CHECKING:
    from collections.abc import Iterator

MODEL = "wine"
NAMES = ["barolo", "grignolino", "barbera"]
REPO_ROOT = Path(__file__).resolve().parents[3]
RECORDED = REPO_ROOT / "tests" / "unit" / "data" / "tf_serving_metadata_keras3_tabular.json"


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three overlapping Gaussian classes in 13 dimensions: a model gets most, not all, right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.random.default_rng(42).normal(0, 1.0, (3, 13))
    return centres[labels] + rng.normal(0, 1.2, (n, 13)), labels


@dataclass
class Served:
    url: str
    store_uri: str
    x_test: np.ndarray
    y_test: np.ndarray
    expected_pred: np.ndarray  # the model's own predictions, in process
    root: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int) -> Any:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((13,), name="input_layer"),
            tf.keras.layers.Dense(8, activation="relu"),
            tf.keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=epochs, verbose=0)
    return model


@contextlib.contextmanager
def _serving(root: Path) -> Iterator[str]:
    """The provider's serving server (a real process) on the store under `root`, until the block ends."""
    port = _free_port()
    module = "airflow_provider_mlpipe.images.serving.server"
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", module, f"--model_name={MODEL}", f"--model_base_path={root / 'models' / MODEL}",
         f"--rest_api_port={port}"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), cwd=REPO_ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                r = requests.get(f"{url}/v1/models/{MODEL}", timeout=2)
                if r.ok and r.json()["model_version_status"][0]["state"] == "AVAILABLE":
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("server not AVAILABLE:\n" + (root / "server.log").read_text()[-3000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("wine")
    x_train, y_train = blobs(600, 1)
    x_test, y_test = blobs(150, 2)
    model = _train(x_train, y_train, epochs=5, seed=0)
    expected_pred = model.predict(x_test.astype("float32"), verbose=0).argmax(axis=1)
    model.export(str(root / "export"), verbose=False)

    store_uri = (root / "models").as_uri()
    open_store(store_uri).publish(MODEL, 1, root / "export", {"class_names": NAMES})
    with _serving(root) as url:
        yield Served(url, store_uri, x_test, y_test, expected_pred, root)


class Ti:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def sensor(served: Served, evaluation_data: str, **kwargs: Any) -> AccuracySensor:
    return AccuracySensor(
        task_id="evaluate",
        endpoint_url={"url": served.url},
        model_name=MODEL,
        version=1,
        evaluation_data=evaluation_data,
        model_store=served.store_uri,
        batch_size=40,
        transient_retry={"attempts": 1},
        **kwargs,
    )


def _skeleton(node: Any) -> Any:
    """The JSON's structure: keys and types, with the signatures' own names and values left out."""
    if isinstance(node, dict):
        return {k: _skeleton(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_skeleton(v) for v in node[:1]]
    return type(node).__name__


def test_the_server_answers_metadata_in_real_tf_servings_json_shape(served: Served) -> None:
    ours = requests.get(f"{served.url}/v1/models/{MODEL}/versions/1/metadata", timeout=10).json()
    recorded = json.loads(RECORDED.read_text())
    assert list(ours) == list(recorded) == ["model_spec", "metadata"]
    assert _skeleton(ours["model_spec"]) == _skeleton(recorded["model_spec"])
    ours_sigs = ours["metadata"]["signature_def"]["signature_def"]
    real_sigs = recorded["metadata"]["signature_def"]["signature_def"]
    assert set(ours_sigs) == set(real_sigs)  # the same Keras 3 export: serve, serving_default, init op
    for key in real_sigs:
        assert _skeleton(ours_sigs[key]).keys() == _skeleton(real_sigs[key]).keys(), key
        for side in ("inputs", "outputs"):
            for name, tensor in real_sigs[key][side].items():
                assert _skeleton(ours_sigs[key][side][name]) == _skeleton(tensor), (key, side, name)
    default = ours_sigs["serving_default"]
    assert default["inputs"] == {
        "input_layer": {
            "dtype": "DT_FLOAT",
            "tensor_shape": {
                "dim": [{"size": "-1", "name": ""}, {"size": "13", "name": ""}],
                "unknown_rank": False,
            },
            "name": "serving_default_input_layer:0",
        }
    }
    assert [d["size"] for d in default["outputs"]["output_0"]["tensor_shape"]["dim"]] == ["-1", "3"]


def test_scores_a_13_feature_3_class_model_with_names_from_the_manifest(
    served: Served, tmp_path: Path
) -> None:
    # float64 examples: the sensor casts them to the model's DT_FLOAT.
    npz = write_evaluation_data(tmp_path / "wine.npz", served.x_test, served.y_test)
    ti = Ti()
    result = sensor(served, npz.as_uri()).poke({"ti": ti})  # type: ignore[arg-type]

    assert isinstance(result, PokeReturnValue) and result.is_done
    metrics = result.xcom_value
    expected_accuracy = float((served.expected_pred == served.y_test).mean())
    assert 0.5 < expected_accuracy < 1.0  # a real, imperfect model: the comparison below means something
    assert metrics["accuracy"] == pytest.approx(expected_accuracy)
    assert metrics["samples"] == 150
    assert metrics["num_classes"] == 3
    assert metrics["class_names"] == NAMES
    expected = np.zeros((3, 3), dtype=int)
    np.add.at(expected, (served.y_test, served.expected_pred), 1)
    assert metrics["confusion_matrix"] == expected.tolist()
    assert set(metrics["per_class_accuracy"]) == {"0", "1", "2"}
    assert metrics["input"] == {"name": "input_layer", "dtype": "DT_FLOAT", "shape": [-1, 13]}
    assert ti.pushed == {"accuracy": metrics["accuracy"]}
    json.dumps(metrics)  # small JSON for XCom


def test_record_as_keeps_the_evaluation_in_the_store(served: Served, tmp_path: Path) -> None:
    npz = write_evaluation_data(tmp_path / "wine.npz", served.x_test, served.y_test)
    store = open_store(served.store_uri)
    assert store.evaluations(MODEL, 1) == {}  # the plain sensor of the other tests records nothing
    result = sensor(served, npz.as_uri(), record_as="staging").poke({"ti": Ti()})  # type: ignore[arg-type]
    assert isinstance(result, PokeReturnValue)
    recorded = store.evaluations(MODEL, 1)
    assert list(recorded) == ["staging"]
    assert recorded["staging"]["confusion_matrix"] == result.xcom_value["confusion_matrix"]
    assert recorded["staging"]["per_class_accuracy"] == result.xcom_value["per_class_accuracy"]
    assert recorded["staging"]["accuracy"] == result.xcom_value["accuracy"]


def test_a_sample_is_scored_and_names_may_come_from_the_npz(served: Served, tmp_path: Path) -> None:
    npz = write_evaluation_data(tmp_path / "wine.npz", served.x_test, served.y_test, NAMES)
    result = sensor(served, str(npz), sample_size=40).poke({"ti": Ti()})  # type: ignore[arg-type]
    assert isinstance(result, PokeReturnValue)
    assert result.xcom_value["samples"] == 40
    assert result.xcom_value["class_names"] == NAMES


def test_inputs_of_the_wrong_shape_are_refused_naming_input_expected_and_actual(
    served: Served, tmp_path: Path
) -> None:
    npz = write_evaluation_data(
        tmp_path / "digits.npz", np.zeros((10, 8, 8), dtype=np.uint8), np.arange(10) % 3
    )
    with pytest.raises(DatasetError) as err:
        sensor(served, str(npz)).poke({"ti": Ti()})  # type: ignore[arg-type]
    assert str(err.value) == (
        f"evaluation data {str(npz)!r}: field 'inputs' holds examples of shape [8, 8], but input 'input_layer' of "
        f"{MODEL} v1 at {served.url} takes [13] per example (its shape is [-1, 13], -1 = any size)"
    )


def test_class_names_that_contradict_the_manifest_are_refused(served: Served, tmp_path: Path) -> None:
    npz = write_evaluation_data(tmp_path / "wine.npz", served.x_test, served.y_test, ["red", "white", "rose"])
    with pytest.raises(DatasetError, match="but the manifest of wine v1 names the model's classes"):
        sensor(served, str(npz)).poke({"ti": Ti()})  # type: ignore[arg-type]


def test_waits_while_the_version_is_not_served(served: Served, tmp_path: Path) -> None:
    npz = write_evaluation_data(tmp_path / "wine.npz", served.x_test, served.y_test)
    waiting = AccuracySensor(
        task_id="evaluate", endpoint_url=served.url, model_name=MODEL, version=2, evaluation_data=str(npz)
    )
    assert waiting.poke({"ti": Ti()}) is False  # type: ignore[arg-type]


def test_evaluation_data_is_required_and_named_once() -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape("dataset='a.npz' is invalid: expected None when evaluation_data is given"),
    ):
        AccuracySensor(task_id="e", endpoint_url="http://x", dataset="a.npz", evaluation_data="b.npz")
    nothing = AccuracySensor(task_id="e", endpoint_url="http://x")
    with pytest.raises(
        ConfigError, match=re.escape("evaluation_data=None is invalid: expected the evaluation data")
    ):
        nothing._evaluation_data()


# --- the champion: production scored beside the candidate, on the same examples ------------------------------


@pytest.fixture(scope="module")
def champion(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, np.ndarray]]:
    """A second, weaker model (one epoch, another seed) on its own server: the model in production. Its
    version number is 1 in its own store, as production v1 of the store the test promotes it in."""
    root = tmp_path_factory.mktemp("wine-champion")
    x_train, y_train = blobs(600, 1)
    model = _train(x_train, y_train, epochs=1, seed=7)
    pred = model.predict(served.x_test.astype("float32"), verbose=0).argmax(axis=1)
    model.export(str(root / "export"), verbose=False)
    open_store((root / "models").as_uri()).publish(MODEL, 1, root / "export", {"class_names": NAMES})
    with _serving(root) as url:
        yield url, pred


def _store_with_production(served: Served, tmp_path: Path, record: dict[str, Any]) -> str:
    uri = (tmp_path / "models").as_uri()
    store = open_store(uri)
    store.publish(MODEL, 1, served.root / "export", {"class_names": NAMES})
    store.promote(MODEL, 1, run_id="seed", approved_by="carol", extra=record)
    return uri


def test_the_champion_is_scored_on_the_same_examples_and_paired_per_class(
    served: Served, champion: tuple[str, np.ndarray], tmp_path: Path
) -> None:
    url, champion_pred = champion
    store_uri = _store_with_production(served, tmp_path, {"endpoint_url": url, "accuracy": 0.5})
    npz = write_evaluation_data(tmp_path / "wine.npz", served.x_test, served.y_test)
    compare = sensor(served, str(npz), compare_with_production=True)
    compare.model_store = store_uri
    result = compare.poke({"ti": Ti()})  # type: ignore[arg-type]
    assert isinstance(result, PokeReturnValue)
    scored = result.xcom_value["champion"]
    assert (scored["version"], scored["generation"], scored["endpoint_url"], scored["error"]) == (
        1,
        1,
        url,
        None,
    )
    assert scored["recorded_accuracy"] == 0.5
    assert scored["accuracy"] == pytest.approx(float((champion_pred == served.y_test).mean()))
    # The paired counts, computed here from both models' own in-process predictions.
    expected = np.zeros((3, 4), dtype=int)
    for label, mine, theirs in zip(served.y_test, served.expected_pred, champion_pred, strict=True):
        expected[label, 2 * int(mine != label) + int(theirs != label)] += 1
    assert scored["paired_counts"] == expected.tolist()
    assert expected[:, 1].sum() + expected[:, 2].sum() > 0  # the two models do disagree somewhere
    assert len(json.dumps(result.xcom_value)) < 3000


def test_no_production_means_no_champion_and_an_unscorable_one_is_reported(
    served: Served, tmp_path: Path
) -> None:
    npz = write_evaluation_data(tmp_path / "wine.npz", served.x_test, served.y_test)
    first = sensor(served, str(npz), compare_with_production=True)
    first.model_store = (tmp_path / "first").as_uri()
    open_store(first.model_store).publish(MODEL, 1, served.root / "export", {"class_names": NAMES})
    first_result = first.poke({"ti": Ti()})  # type: ignore[arg-type]
    assert isinstance(first_result, PokeReturnValue) and first_result.xcom_value["champion"] is None

    # A champion whose endpoint refuses connections (port 1): reported, the task does not fail.
    store_uri = _store_with_production(served, tmp_path, {"endpoint_url": "http://127.0.0.1:1"})
    dead = sensor(served, str(npz), compare_with_production=True)
    dead.model_store = store_uri
    dead_result = dead.poke({"ti": Ti()})  # type: ignore[arg-type]
    assert isinstance(dead_result, PokeReturnValue)
    error = dead_result.xcom_value["champion"]["error"]
    assert error.startswith(f"production v1 of {MODEL} at http://127.0.0.1:1 could not be scored")
    assert "paired_counts" not in dead_result.xcom_value["champion"]


def test_a_champion_promoted_without_an_endpoint_is_reported(served: Served, tmp_path: Path) -> None:
    npz = write_evaluation_data(tmp_path / "wine.npz", served.x_test, served.y_test)
    store_uri = _store_with_production(served, tmp_path, {})
    old = sensor(served, str(npz), compare_with_production=True)
    old.model_store = store_uri
    result = old.poke({"ti": Ti()})  # type: ignore[arg-type]
    assert isinstance(result, PokeReturnValue)
    assert "has no endpoint_url in its promotion record" in result.xcom_value["champion"]["error"]
