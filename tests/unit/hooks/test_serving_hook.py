"""ServingHook against a small real HTTP server running in a thread."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from airflow_provider_mlpipe.exceptions import ServingError
from airflow_provider_mlpipe.hooks.serving import ServingHook
from airflow_provider_mlpipe.retries import RetryPolicy

MODEL = "fashion_mnist"
PREDICT = f"/v1/models/{MODEL}:predict"

# (status, body bytes, content type)
Reply = tuple[int, bytes, str]
Responder = Callable[[str, str, Any], Reply]


def json_reply(status: int, body: Any) -> Reply:
    return status, json.dumps(body).encode(), "application/json"


class FakeServing:
    """A real HTTP server; `responder(method, path, json_body)` decides each answer. Records requests."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.requests: list[tuple[str, str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                server.requests.append((method, self.path, body))
                status, data, ctype = server.responder(method, self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Responder], FakeServing]]:
    servers: list[FakeServing] = []

    def start(responder: Responder) -> FakeServing:
        servers.append(FakeServing(responder))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def make_hook(url: str, attempts: int = 4, **kwargs: Any) -> ServingHook:
    retry = RetryPolicy(attempts=attempts, base_delay=0.01, max_delay=0.04)
    return ServingHook(url, MODEL, **{"timeout": 5.0, "retry": retry, **kwargs})


def one_hot(cls: int, n: int = 10, high: float = 0.91) -> list[float]:
    rest = (1.0 - high) / (n - 1)
    return [high if i == cls else rest for i in range(n)]


# ---------------------------------------------------------------------------------------------- predict


def test_predict_happy_path(serve: Callable[[Responder], FakeServing]) -> None:
    server = serve(
        lambda m, p, body: json_reply(
            200, {"predictions": [one_hot(i) for i in range(len(body["instances"]))]}
        )
    )
    hook = make_hook(server.url + "/")
    instances = [[[0] * 28] * 28, [[255] * 28] * 28]
    predictions = hook.predict(instances)
    assert predictions == [one_hot(0), one_hot(1)]
    assert server.requests == [
        ("POST", PREDICT, {"signature_name": "serving_default", "instances": instances}),
    ]


def test_predict_with_version_uses_the_versioned_path(serve: Callable[[Responder], FakeServing]) -> None:
    server = serve(lambda m, p, body: json_reply(200, {"predictions": [one_hot(2)]}))
    make_hook(server.url).predict([[1]], version=4)
    assert server.requests[0][1] == f"/v1/models/{MODEL}/versions/4:predict"


def test_non_2xx_raises_with_status_and_server_error(serve: Callable[[Responder], FakeServing]) -> None:
    server = serve(lambda m, p, b: json_reply(400, {"error": "Input to reshape is a tensor with 10 values"}))
    with pytest.raises(ServingError) as info:
        make_hook(server.url).predict([[1, 2]])
    message = str(info.value)
    assert "HTTP 400" in message
    assert "Input to reshape is a tensor with 10 values" in message
    assert PREDICT in message
    assert len(server.requests) == 1  # a client error is not retried


def test_non_2xx_with_a_plain_text_body(serve: Callable[[Responder], FakeServing]) -> None:
    server = serve(lambda m, p, b: (404, b"no such model here", "text/plain"))
    with pytest.raises(ServingError, match="HTTP 404: no such model here"):
        make_hook(server.url).predict([[1]])


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ((200, b"<html>proxy login</html>", "text/html"), "not JSON"),
        (json_reply(200, [[0.1, 0.9]]), "expected a JSON object"),
        (json_reply(200, {"outputs": [[0.1, 0.9]]}), "expected 'predictions' with 1 rows, got NoneType"),
        (
            json_reply(200, {"predictions": [[0.1], [0.9]]}),
            "expected 'predictions' with 1 rows, got list of length 2",
        ),
        (json_reply(200, {"predictions": "0.9"}), "expected 'predictions' with 1 rows, got str"),
    ],
)
def test_malformed_bodies_raise(
    serve: Callable[[Responder], FakeServing], reply: Reply, expected: str
) -> None:
    server = serve(lambda m, p, b: reply)
    with pytest.raises(ServingError) as info:
        make_hook(server.url).predict([[1]])
    assert expected in str(info.value)
    assert len(server.requests) == 1


def test_transient_503_is_retried_then_succeeds(serve: Callable[[Responder], FakeServing]) -> None:
    calls = {"n": 0}

    def flaky(method: str, path: str, body: Any) -> Reply:
        calls["n"] += 1
        if calls["n"] <= 2:
            return json_reply(503, {"error": "model is reloading"})
        return json_reply(200, {"predictions": [one_hot(7)]})

    server = serve(flaky)
    assert make_hook(server.url, attempts=4).predict([[1]]) == [one_hot(7)]
    assert len(server.requests) == 3


def test_transient_errors_give_up_after_the_retries(serve: Callable[[Responder], FakeServing]) -> None:
    server = serve(lambda m, p, b: json_reply(503, {"error": "overloaded"}))
    with pytest.raises(ServingError) as info:
        make_hook(server.url, attempts=3).predict([[1]])
    assert len(server.requests) == 3
    assert "after 3 attempts" in str(info.value)
    assert "HTTP 503: overloaded" in str(info.value)


def test_connection_refused_is_retried_then_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ServingError) as info:
        make_hook(f"http://127.0.0.1:{port}", attempts=2).predict([[1]])
    assert "after 2 attempts" in str(info.value)
    assert "ConnectionError" in str(info.value)


# ------------------------------------------------------------------------------------------ model status


def test_model_status_and_available_versions(serve: Callable[[Responder], FakeServing]) -> None:
    status = {
        "model_version_status": [
            {"version": "3", "state": "AVAILABLE"},
            {"version": "4", "state": "LOADING"},
            {"version": "1", "state": "AVAILABLE"},
        ]
    }
    server = serve(
        lambda m, p, b: json_reply(200, status) if p == f"/v1/models/{MODEL}" else json_reply(404, {})
    )
    hook = make_hook(server.url)
    assert hook.model_status() == status["model_version_status"]
    assert hook.available_versions() == [1, 3]


def test_available_versions_is_empty_when_the_endpoint_errors(
    serve: Callable[[Responder], FakeServing],
) -> None:
    server = serve(lambda m, p, b: json_reply(404, {"error": "Servable not found"}))
    hook = make_hook(server.url)
    with pytest.raises(ServingError, match="Servable not found"):
        hook.model_status(version=9)
    assert server.requests[0][1] == f"/v1/models/{MODEL}/versions/9"
    assert hook.available_versions() == []


def test_model_status_without_the_status_list_raises(serve: Callable[[Responder], FakeServing]) -> None:
    server = serve(lambda m, p, b: json_reply(200, {"status": "ok"}))
    with pytest.raises(ServingError, match="no model_version_status list"):
        make_hook(server.url).model_status()


# ---------------------------------------------------------------------------------------------- evaluate


def classifier_by_first_pixel(method: str, path: str, body: Any) -> Reply:
    """Predicts class = the image's top-left pixel value (mod 10), with known probabilities."""
    rows = [one_hot(int(image[0][0]) % 10) for image in body["instances"]]
    return json_reply(200, {"predictions": rows})


def slow(responder: Responder, seconds: float) -> Responder:
    """`responder`, each answer taking at least `seconds`."""

    def answer(method: str, path: str, body: Any) -> Reply:
        time.sleep(seconds)
        return responder(method, path, body)

    return answer


def test_evaluate_accuracy_per_class_and_confusion(serve: Callable[[Responder], FakeServing]) -> None:
    predicted = np.array([0, 0, 1, 1, 2, 3, 3, 3, 9, 5])
    labels = np.array([0, 1, 1, 1, 2, 3, 3, 2, 9, 9], dtype=np.uint8)
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    images[:, 0, 0] = predicted
    server = serve(slow(classifier_by_first_pixel, 0.05))
    result = make_hook(server.url).evaluate(images, labels, batch_size=4, num_classes=10)

    assert len(server.requests) == 3  # 4 + 4 + 2
    assert [len(r[2]["instances"]) for r in server.requests] == [4, 4, 2]
    assert result["samples"] == 10
    assert result["accuracy"] == pytest.approx(7 / 10)
    expected = np.zeros((10, 10), dtype=int)
    for truth, pred in zip(labels, predicted, strict=True):
        expected[truth, pred] += 1
    assert result["confusion_matrix"] == expected.tolist()
    assert result["confusion_matrix"][1] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 0]
    per_class = result["per_class_accuracy"]
    assert per_class["0"] == 1.0
    assert per_class["1"] == pytest.approx(2 / 3)
    assert per_class["2"] == pytest.approx(1 / 2)
    assert per_class["3"] == 1.0
    assert per_class["9"] == pytest.approx(1 / 2)
    assert per_class["4"] is None  # no test image of class 4
    assert set(per_class) == {str(c) for c in range(10)}
    # The evaluation's own duration: at most two requests are in flight, so three 50 ms answers take at
    # least two rounds (a lower bound cannot race the clock).
    assert result["seconds"] >= 0.1
    json.dumps(result)  # goes to XCom as is


def test_evaluate_sends_raw_integer_pixels(serve: Callable[[Responder], FakeServing]) -> None:
    images = np.full((2, 28, 28), 200, dtype=np.uint8)
    server = serve(classifier_by_first_pixel)
    make_hook(server.url).evaluate(images, np.array([0, 0]), version=2)
    _method, path, body = server.requests[0]
    assert path == f"/v1/models/{MODEL}/versions/2:predict"
    assert body["instances"][0][0][0] == 200
    assert np.asarray(body["instances"]).shape == (2, 28, 28)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [([[0.5, 0.5]], "shape (1, 2), expected (batch, 10)"), ([["x"] * 10], "not a numeric matrix")],
)
def test_evaluate_rejects_predictions_of_the_wrong_shape(
    serve: Callable[[Responder], FakeServing], rows: list[Any], expected: str
) -> None:
    server = serve(lambda m, p, b: json_reply(200, {"predictions": rows}))
    with pytest.raises(ServingError, match=re.escape(expected)):
        make_hook(server.url).evaluate(np.zeros((1, 28, 28), dtype=np.uint8), np.array([0]), num_classes=10)


def test_evaluate_any_number_of_classes_from_the_answer_width(
    serve: Callable[[Responder], FakeServing],
) -> None:
    # Three classes scored by the first feature; 13 features per example.
    def answer(method: str, path: str, body: Any) -> Reply:
        return json_reply(
            200, {"predictions": [np.eye(3)[int(row[0])].tolist() for row in body["instances"]]}
        )

    predicted = np.array([0, 1, 2, 2, 1])
    labels = np.array([0, 1, 2, 1, 0])
    inputs = np.zeros((5, 13), dtype=np.float32)
    inputs[:, 0] = predicted
    result = make_hook(serve(answer).url).evaluate(inputs, labels, batch_size=2)
    assert result["num_classes"] == 3
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert result["per_class_accuracy"] == {"0": 0.5, "1": 0.5, "2": 1.0}


def test_evaluate_picks_the_named_output_of_a_multi_output_model(
    serve: Callable[[Responder], FakeServing],
) -> None:
    rows = [
        {"scores": [0.1, 0.9], "embedding": [1.0, 2.0, 3.0]},
        {"scores": [0.8, 0.2], "embedding": [0, 0, 0]},
    ]
    server = serve(lambda m, p, b: json_reply(200, {"predictions": rows}))
    result = make_hook(server.url).evaluate(np.zeros((2, 4)), np.array([1, 0]), output="scores")
    assert (result["accuracy"], result["num_classes"]) == (1.0, 2)
    with pytest.raises(
        ServingError, match=re.escape("predictions hold outputs ['embedding', 'scores']: expected")
    ):
        make_hook(server.url).evaluate(np.zeros((2, 4)), np.array([1, 0]))


def test_evaluate_refuses_labels_the_model_does_not_score(serve: Callable[[Responder], FakeServing]) -> None:
    server = serve(lambda m, p, b: json_reply(200, {"predictions": [[0.5, 0.5]] * len(b["instances"])}))
    with pytest.raises(
        ServingError, match=re.escape("the model scores 2 classes (0..1) but the labels go from 0 to 4")
    ):
        make_hook(server.url).evaluate(np.zeros((3, 4)), np.array([0, 1, 4]))


def test_signature_reads_the_versioned_metadata(serve: Callable[[Responder], FakeServing]) -> None:
    doc = {"model_spec": {"name": MODEL, "signature_name": "", "version": "3"}, "metadata": {"signature_def": {
        "signature_def": {"serving_default": {
            "inputs": {"x": {"dtype": "DT_DOUBLE", "tensor_shape": {"dim": [{"size": "-1", "name": ""},
                                                                            {"size": "13", "name": ""}],
                                                                    "unknown_rank": False}, "name": "x:0"}},
            "outputs": {"y": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1", "name": ""},
                                                                            {"size": "3", "name": ""}],
                                                                    "unknown_rank": False}, "name": "y:0"}},
            "method_name": "tensorflow/serving/predict"}}}}}  # fmt: skip
    server = serve(lambda m, p, b: json_reply(200, doc))
    sig = make_hook(server.url).signature(3)
    assert server.requests == [("GET", f"/v1/models/{MODEL}/versions/3/metadata", None)]
    assert (sig.single_input().key, sig.single_input().shape, sig.output_width()) == ("x", (-1, 13), 3)
    assert sig.where == f"{MODEL} v3 at {server.url}"


def test_evaluate_rejects_an_empty_test_set() -> None:
    with pytest.raises(ServingError, match="empty test set"):
        make_hook("http://127.0.0.1:1").evaluate(np.zeros((0, 28, 28), dtype=np.uint8), np.array([]))


def test_available_versions_raises_when_nothing_answers() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on that port any more: connection refused on every attempt.
    hook = make_hook(f"http://127.0.0.1:{port}", attempts=2)
    with pytest.raises(ServingError, match="failed after 2 attempts") as err:
        hook.available_versions()
    assert err.value.status is None
