"""The local TF-Serving-compatible server, run as a real subprocess against real (tiny) SavedModels.

Two servers start in parallel once per module (TensorFlow start-up dominates the cost):
- "latest": base `1/` (published) + `2/` (NOT published, must be ignored), polling every second; the hot-swap
  test publishes `3/` at the end.
- "pinned": base `1/` + `3/` (both published), `--model_version=1`.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import requests

from airflow_provider_mlpipe.modelstore import MARKER

if TYPE_CHECKING:
    from collections.abc import Iterator

MODEL = "fmnist"
REPO_ROOT = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------------------------- helpers


def _weights(version: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(version)
    return rng.normal(0, 0.05, (784, 10)).astype(np.float32), rng.normal(0, 0.1, 10).astype(np.float32)


def expected_probabilities(images: np.ndarray, version: int) -> np.ndarray:
    w, b = _weights(version)
    logits = (images.reshape(len(images), 784).astype(np.float32) / 255.0) @ w + b
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def build_saved_model(dest: Path, version: int) -> None:
    """A linear softmax model with exactly the CONTRACTS.md signature (scaling inside the model)."""
    import tensorflow as tf

    w, b = _weights(version)

    class Tiny(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(w)
            self.b = tf.Variable(b)

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="images")])
        def serve(self, images: Any) -> dict[str, Any]:
            flat = tf.reshape(images / 255.0, [-1, 784])
            return {"probabilities": tf.nn.softmax(tf.matmul(flat, self.w) + self.b)}

    module = Tiny()
    tf.saved_model.save(module, str(dest), signatures={"serving_default": module.serve})


def publish(src: Path, base: Path, version: int) -> Path:
    dest = base / str(version)
    shutil.copytree(src, dest)
    (dest / MARKER).write_text("")  # written last, as the store does
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(*args: str) -> list[str]:
    module = "airflow_provider_mlpipe.images.serving.server"
    if importlib.util.find_spec("airflow_provider_mlpipe.images.serving") is None:
        module = "serving_image.server"  # package not installed: run from the source tree
    return [sys.executable, "-m", module, *args]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    states_seen: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/models/{MODEL}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def wait_available(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = requests.get(self.url, timeout=2)
            except requests.RequestException:
                # Not listening yet, or too busy loading the model to answer within 2 s: not ready yet.
                time.sleep(0.05)
                continue
            if r.status_code == 200:
                state = r.json()["model_version_status"][0]["state"]
                if not self.states_seen or self.states_seen[-1] != state:
                    self.states_seen.append(state)
                if state == "AVAILABLE":
                    return
                if state == "END":
                    raise AssertionError(f"load failed: {r.text}\n{self.log_tail()}")
            time.sleep(0.05)
        raise AssertionError(f"server not AVAILABLE after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(base: Path, log: Path, *extra: str) -> Server:
    port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            server_command(
                f"--model_name={MODEL}",
                f"--model_base_path={base.as_uri()}",
                f"--rest_api_port={port}",
                *extra,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
        )
    return Server(proc, port, log)


# --------------------------------------------------------------------------------------------- fixtures


@dataclass
class Env:
    latest: Server
    pinned: Server
    latest_base: Path
    models: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("serving")
    models = root / "exports"
    for version in (1, 3):
        build_saved_model(models / f"v{version}", version)

    latest_base = root / "latest" / MODEL
    publish(models / "v1", latest_base, 1)
    shutil.copytree(models / "v3", latest_base / "2")  # no marker: an unfinished publish, must be ignored

    pinned_base = root / "pinned" / MODEL
    publish(models / "v1", pinned_base, 1)
    publish(models / "v3", pinned_base, 3)

    latest = start_server(latest_base, root / "latest.log", "--file_system_poll_wait_seconds=1")
    pinned = start_server(pinned_base, root / "pinned.log", "--model_version=1")
    try:
        latest.wait_available()
        pinned.wait_available()
        yield Env(latest, pinned, latest_base, models)
    finally:
        latest.stop()
        pinned.stop()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28))


# ----------------------------------------------------------------------------------------------- status


def test_status_reports_loading_then_available(env: Env) -> None:
    assert env.latest.states_seen[-1] == "AVAILABLE"
    assert "LOADING" in env.latest.states_seen, env.latest.states_seen
    assert set(env.latest.states_seen) <= {"LOADING", "AVAILABLE"}


def test_model_status_lists_only_published_versions(env: Env) -> None:
    r = requests.get(env.latest.url, timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }


def test_version_status_and_unknown_version(env: Env) -> None:
    r = requests.get(f"{env.latest.url}/versions/1", timeout=30)
    assert r.status_code == 200
    assert r.json()["model_version_status"][0]["state"] == "AVAILABLE"
    r = requests.get(f"{env.latest.url}/versions/2", timeout=30)  # unpublished
    assert r.status_code == 404
    assert r.json() == {"error": f"Could not find version 2 of model {MODEL}"}


def test_unknown_model_is_404(env: Env) -> None:
    base = f"http://127.0.0.1:{env.latest.port}/v1/models/nope"
    r = requests.get(base, timeout=30)
    assert r.status_code == 404
    assert r.json() == {"error": "Could not find any versions of model nope"}
    r = requests.post(f"{base}:predict", json={"instances": images(1).tolist()}, timeout=30)
    assert r.status_code == 404
    assert r.json() == {"error": "Servable not found for request: Latest(nope)"}


# --------------------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("suffix", ["/metadata", "/versions/1/metadata"])
def test_metadata_has_contract_signature(env: Env, suffix: str) -> None:
    r = requests.get(env.latest.url + suffix, timeout=30)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    images_info = sig["inputs"]["images"]
    assert images_info["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in images_info["tensor_shape"]["dim"]] == ["-1", "28", "28"]
    probs = sig["outputs"]["probabilities"]
    assert probs["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in probs["tensor_shape"]["dim"]] == ["-1", "10"]


# ---------------------------------------------------------------------------------------------- predict


def test_predict_row_format(env: Env) -> None:
    x = images(3)
    r = requests.post(f"{env.latest.url}:predict", json={"instances": x.tolist()}, timeout=10)
    assert r.status_code == 200, r.text
    preds = np.array(r.json()["predictions"])
    assert preds.shape == (3, 10)
    np.testing.assert_allclose(preds, expected_probabilities(x, 1), rtol=1e-4, atol=1e-6)


def test_predict_row_format_named_instances_and_signature_name(env: Env) -> None:
    x = images(2, seed=1)
    body: dict[str, Any] = {
        "signature_name": "serving_default",
        "instances": [{"images": img} for img in x.tolist()],
    }
    r = requests.post(f"{env.latest.url}:predict", json=body, timeout=10)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], expected_probabilities(x, 1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("named", [False, True])
def test_predict_columnar_format(env: Env, named: bool) -> None:
    x = images(4, seed=2)
    inputs: Any = {"images": x.tolist()} if named else x.tolist()
    r = requests.post(f"{env.latest.url}:predict", json={"inputs": inputs}, timeout=10)
    assert r.status_code == 200, r.text
    outputs = np.array(r.json()["outputs"])  # one output: the tensor itself, not a dict
    np.testing.assert_allclose(outputs, expected_probabilities(x, 1), rtol=1e-4, atol=1e-6)


def test_predict_batch_of_1000(env: Env) -> None:
    x = images(1000, seed=3)
    r = requests.post(f"{env.latest.url}/versions/1:predict", json={"instances": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text[:500]
    preds = np.array(r.json()["predictions"])
    assert preds.shape == (1000, 10)
    np.testing.assert_allclose(preds, expected_probabilities(x, 1), rtol=1e-4, atol=1e-6)


def test_pinned_version_serves_only_that_version(env: Env) -> None:
    r = requests.get(env.pinned.url, timeout=30)
    assert [s["version"] for s in r.json()["model_version_status"]] == ["1"]
    x = images(2, seed=4)
    r = requests.post(f"{env.pinned.url}:predict", json={"instances": x.tolist()}, timeout=10)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], expected_probabilities(x, 1), rtol=1e-4, atol=1e-6)
    r = requests.post(f"{env.pinned.url}/versions/3:predict", json={"instances": x.tolist()}, timeout=10)
    assert r.status_code == 404
    assert r.json() == {"error": f"Servable not found for request: Specific({MODEL}, 3)"}
    r = requests.get(f"{env.pinned.url}/versions/3/metadata", timeout=30)
    assert r.status_code == 404


def test_unpublished_version_cannot_be_predicted(env: Env) -> None:
    r = requests.post(
        f"{env.latest.url}/versions/2:predict", json={"instances": images(1).tolist()}, timeout=5
    )
    assert r.status_code == 404
    assert r.json() == {"error": f"Servable not found for request: Specific({MODEL}, 2)"}


# ----------------------------------------------------------------------------------------------- errors

ONE = images(1).tolist()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "JSON Parse error"),
        (b"", "The document is empty"),
        (b"[1, 2]", "Is not object"),
        (json.dumps({"instances": [[1, 2, 3]]}).encode(), "expects [-1,28,28]"),
        (json.dumps({"inputs": [[[1] * 28] * 27]}).encode(), "expects [-1,28,28]"),
        (json.dumps({"instances": [ONE[0], ONE[0][:5]]}).encode(), "non-ragged"),
        (json.dumps({"instances": [[["a"] * 28] * 28]}).encode(), "DT_FLOAT"),
        (json.dumps({"instances": []}).encode(), "No values in 'instances'"),
        (json.dumps({"instances": "x"}).encode(), "'instances' to be an list/array"),
        (json.dumps({"instances": ONE, "inputs": ONE}).encode(), "only one of 'inputs' or 'instances'"),
        (json.dumps({"signature_name": "serving_default"}).encode(), "Missing 'inputs' or 'instances' key"),
        (
            json.dumps({"signature_name": "nope", "instances": ONE}).encode(),
            'signature name: "nope" not found',
        ),
        (json.dumps({"signature_name": 7, "instances": ONE}).encode(), "must be a string"),
        (json.dumps({"inputs": {"pixels": ONE}}).encode(), "Missing named input: images"),
        (json.dumps({"instances": [{"pixels": ONE[0]}]}).encode(), "keys must be equal to: images"),
    ],
)
def test_bad_predict_requests_are_400_with_json_error(env: Env, body: bytes, fragment: str) -> None:
    r = requests.post(f"{env.latest.url}:predict", data=body, timeout=10)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


def test_classify_and_regress_rejected_like_tf_serving(env: Env) -> None:
    body = {"examples": [{"x": 1.0}]}
    r = requests.post(f"{env.latest.url}:classify", json=body, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"] == (
        "Expected classification signature method_name to be tensorflow/serving/classify. "
        "Was: tensorflow/serving/predict"
    )
    r = requests.post(f"{env.latest.url}:regress", json=body, timeout=30)
    assert r.status_code == 400
    assert "Expected regression signature" in r.json()["error"]
    r = requests.post(f"{env.latest.url}:classify", json={"instances": ONE}, timeout=30)
    assert r.status_code == 400
    assert "'examples' is expected" in r.json()["error"]


def test_unknown_paths_and_methods(env: Env) -> None:
    root = f"http://127.0.0.1:{env.latest.port}"
    r = requests.get(f"{root}/v2/whatever", timeout=30)
    assert r.status_code == 404
    assert "error" in r.json()
    r = requests.get(f"{env.latest.url}:predict", timeout=30)
    assert r.status_code == 405
    assert r.headers["Allow"] == "POST"
    r = requests.delete(env.latest.url, timeout=30)
    assert r.status_code == 405
    assert "error" in r.json()
    r = requests.get(f"{root}/v1/models", timeout=30)
    assert r.status_code == 400
    assert r.json() == {"error": "Missing model name in request."}


def test_keep_alive_survives_errors(env: Env) -> None:
    """Every answer, errors included, is framed by Content-Length, so one connection carries many requests."""
    conn = http.client.HTTPConnection("127.0.0.1", env.latest.port, timeout=10)
    try:
        path = f"/v1/models/{MODEL}:predict"
        for body in (
            b"{bad",
            json.dumps({"instances": ONE}).encode(),
            b"",
            json.dumps({"inputs": ONE}).encode(),
        ):
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = json.loads(resp.read())
            assert resp.version == 11
            assert resp.getheader("Connection") != "close"
            assert resp.status in (200, 400)
            assert ("error" in payload) == (resp.status == 400)
        assert conn.sock is not None  # still the same socket
    finally:
        conn.close()


# ------------------------------------------------------------------------------- hot swap and shutdown


def test_poll_switches_to_newly_published_version(env: Env) -> None:
    publish(env.models / "v3", env.latest_base, 3)
    deadline = time.monotonic() + 30
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        doc = requests.get(env.latest.url, timeout=30).json()
        states = {s["version"]: s["state"] for s in doc["model_version_status"]}
        if states.get("3") == "AVAILABLE":
            break
        time.sleep(0.1)
    assert states == {"3": "AVAILABLE", "1": "END"}, env.latest.log_tail()
    x = images(2, seed=5)
    r = requests.post(f"{env.latest.url}:predict", json={"instances": x.tolist()}, timeout=10)
    np.testing.assert_allclose(r.json()["predictions"], expected_probabilities(x, 3), rtol=1e-4, atol=1e-6)
    r = requests.post(f"{env.latest.url}/versions/1:predict", json={"instances": x.tolist()}, timeout=10)
    assert r.status_code == 404  # retired


def test_sigterm_exits_cleanly(env: Env) -> None:
    env.pinned.proc.send_signal(signal.SIGTERM)
    assert env.pinned.proc.wait(15) == 0, env.pinned.log_tail()
    assert "shutting down" in env.pinned.log_tail()


def test_argument_errors_are_instant() -> None:
    started = time.monotonic()
    result = subprocess.run(
        server_command("--model_name=m", "--model_base_path=oss://bucket/models/m"),
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert "--model_base_path='oss://bucket/models/m' is invalid" in result.stderr
    assert time.monotonic() - started < 10
