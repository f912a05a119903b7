"""Client of a TensorFlow Serving REST endpoint: model status, :predict, and accuracy evaluation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import TYPE_CHECKING, Any

import requests
from airflow.sdk.bases.hook import BaseHook

from airflow_provider_mlpipe.exceptions import RetriesExhausted, ServingError
from airflow_provider_mlpipe.retries import RetryPolicy, call_with_retry

if TYPE_CHECKING:
    import numpy as np

    from airflow_provider_mlpipe.serving_signature import SignatureInfo


class ServingHook(BaseHook):
    """Talks to one endpoint (`url`, e.g. http://127.0.0.1:8501) serving `model_name`.

    :param timeout: seconds to wait for each answer.
    :param retry: how transient failures (the server restarting or overloaded, a proxy in between failing,
        a reset connection, a timeout) are retried; default `RetryPolicy()`. Other answers fail at once.
    """

    hook_name = "MLPipe TF-Serving client"

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    @cached_property
    def _local(self) -> threading.local:
        return threading.local()

    @property
    def session(self) -> requests.Session:
        """One keep-alive session per thread: evaluate() keeps two requests in flight."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.url}{path}"
        data = None if payload is None else _json_encode(payload)
        headers = None if payload is None else {"Content-Type": "application/json"}

        def attempt() -> requests.Response:
            resp = self.session.request(method, url, data=data, headers=headers, timeout=self.timeout)
            if resp.status_code >= 300:
                # Raised so that the shared classifier sees the status (transient or not).
                raise requests.HTTPError(f"HTTP {resp.status_code}", response=resp)
            return resp

        try:
            resp = call_with_retry(attempt, policy=self.retry, what=f"{method} {url}")
        except RetriesExhausted as exhausted:
            last = exhausted.last
            raise ServingError(
                f"{method} {url} failed after {exhausted.attempts} attempts: {_problem(last)}",
                status=_status(last),
            ) from None
        except requests.HTTPError as err:
            raise ServingError(f"{method} {url} failed with {_problem(err)}", status=_status(err)) from None
        except requests.RequestException as err:
            raise ServingError(f"{method} {url} failed: {_problem(err)}") from None
        try:
            body = _json_decode(resp.content)
        except _JSON_DECODE_ERRORS:
            raise ServingError(
                f"{method} {url}: HTTP {resp.status_code} with a body that is not JSON: {resp.text[:200]!r}"
            ) from None
        if not isinstance(body, dict):
            raise ServingError(f"{method} {url}: expected a JSON object, got {body!r:.200}")
        return body

    def model_status(self, version: int | None = None) -> list[dict[str, Any]]:
        path = f"/v1/models/{self.model_name}" + (f"/versions/{version}" if version else "")
        status = self._request("GET", path).get("model_version_status")
        if not isinstance(status, list):
            raise ServingError(f"GET {self.url}{path}: no model_version_status list in the answer")
        return status

    def available_versions(self) -> list[int]:
        """Versions in state AVAILABLE; [] while the model is unknown to the server (still loading).

        An endpoint that does not answer at all raises: waiting on a dead server would only burn the
        sensor's timeout, while failing lets the task retry with backoff and then fail cleanly."""
        try:
            status = self.model_status()
        except ServingError as err:
            if err.status == 404:
                return []
            raise
        return sorted(int(s["version"]) for s in status if s.get("state") == "AVAILABLE")

    def metadata(self, version: int | None = None) -> dict[str, Any]:
        """The model's metadata (TF Serving's GetModelMetadataResponse as JSON: signatures, dtypes, shapes)."""
        path = f"/v1/models/{self.model_name}" + (f"/versions/{version}" if version else "") + "/metadata"
        return self._request("GET", path)

    def signature(self, version: int | None = None, key: str = "serving_default") -> SignatureInfo:
        """Signature `key` of the served model: its inputs and outputs with their dtypes and shapes."""
        from airflow_provider_mlpipe.serving_signature import parse_metadata

        where = f"{self.model_name} v{version if version else '(latest)'} at {self.url}"
        return parse_metadata(self.metadata(version), signature=key, where=where)

    def predict(self, instances: list[Any], *, version: int | None = None) -> list[Any]:
        path = f"/v1/models/{self.model_name}" + (f"/versions/{version}" if version else "") + ":predict"
        body = self._request("POST", path, {"signature_name": "serving_default", "instances": instances})
        predictions = body.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != len(instances):
            raise ServingError(
                f"POST {self.url}{path}: expected 'predictions' with {len(instances)} rows, got "
                f"{type(predictions).__name__} of length {len(predictions) if isinstance(predictions, list) else '-'}"
            )
        return predictions

    def evaluate(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        version: int | None = None,
        batch_size: int = 500,
        num_classes: int | None = None,
        output: str | None = None,
        keep_predictions: bool = False,
    ) -> dict[str, Any]:
        """Accuracy, per-class accuracy and confusion matrix of the endpoint on (inputs, labels).

        `images` are the model's inputs, examples on the first axis, already in the form the model takes
        (`serving_signature.prepare_instances`). `num_classes` is K, the width of the scores each example
        gets; None: the width the endpoint answers with. `output` names the output that holds the scores
        when the model has several. `keep_predictions` adds `predictions`, the class predicted for each
        example (a numpy array, for the caller to reduce: not for XCom).
        """
        import numpy as np

        if len(images) == 0:
            raise ServingError("cannot evaluate on an empty test set")
        started = time.monotonic()

        def score(start: int) -> np.ndarray:
            rows = self.predict(images[start : start + batch_size].tolist(), version=version)
            if rows and isinstance(rows[0], dict):
                rows = _pick_output(rows, output, self.url)
            try:
                probs = np.asarray(rows, dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise ServingError(f"{self.url}: predictions are not a numeric matrix: {err}") from None
            if probs.ndim != 2 or (num_classes is not None and probs.shape[1] != num_classes):
                raise ServingError(
                    f"{self.url}: predictions have shape {probs.shape}, expected (batch, "
                    f"{num_classes if num_classes is not None else 'K'})"
                )
            return probs

        # Two requests in flight: this process encodes the next batch while the server scores the
        # previous one. With msgspec encoding this took 10,000 images from 3.0 s to about 1.9 s on 2 cores
        # (benchmarks/evaluation.py); a third request in flight gained nothing.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mlpipe-eval") as pool:
            batches = list(pool.map(score, range(0, len(images), batch_size)))
        widths = sorted({int(b.shape[1]) for b in batches})
        if len(widths) != 1:
            raise ServingError(f"{self.url}: predictions changed width between batches: {widths}")
        classes = widths[0]
        pred = np.concatenate([b.argmax(axis=1) for b in batches])
        truth = np.asarray(labels, dtype=np.int64)
        if truth.size and (int(truth.max()) >= classes or int(truth.min()) < 0):
            raise ServingError(
                f"{self.url}: the model scores {classes} classes (0..{classes - 1}) but the labels go from "
                f"{int(truth.min())} to {int(truth.max())}: expected labels of the classes the model scores"
            )
        confusion = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(confusion, (truth, pred), 1)
        support = confusion.sum(axis=1)
        per_class = {
            str(c): (float(confusion[c, c] / support[c]) if support[c] else None) for c in range(classes)
        }
        result = {
            "accuracy": float((pred == truth).mean()),
            "samples": len(truth),
            "num_classes": classes,
            "per_class_accuracy": per_class,
            "confusion_matrix": confusion.tolist(),
            "seconds": round(time.monotonic() - started, 3),
        }
        if keep_predictions:
            result["predictions"] = pred
        return result


def _pick_output(rows: list[Any], output: str | None, url: str) -> list[Any]:
    """Row format with several outputs answers one object per example: keep the scores of `output`."""
    if not all(isinstance(row, dict) for row in rows):
        raise ServingError(
            f"{url}: predictions are not one object per example, cannot pick output {output!r}"
        )
    names = sorted(rows[0]) if rows else []
    if output is None or output not in names:
        raise ServingError(
            f"{url}: predictions hold outputs {names}: expected the output_name of the class scores among them"
        )
    return [row[output] for row in rows]


try:  # msgspec ships with Airflow and encodes/decodes big numeric payloads several times faster.
    import msgspec

    _json_encode: Callable[[Any], bytes] = msgspec.json.encode
    _json_decode: Callable[[bytes], Any] = msgspec.json.decode
    _JSON_DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, ValueError)
except ImportError:  # pragma: no cover - depends on the environment
    import json

    def _json_encode(payload: Any) -> bytes:
        return json.dumps(payload, separators=(",", ":")).encode()

    _json_decode = json.loads
    _JSON_DECODE_ERRORS = (ValueError,)


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return response.status_code if response is not None else None


def _problem(err: BaseException) -> str:
    response = getattr(err, "response", None)
    if response is not None:
        return f"HTTP {response.status_code}: {_error_text(response)}"
    return f"{type(err).__name__}: {err}"


def _error_text(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300] or resp.reason
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)[:300]
