"""Client of a TensorFlow Serving REST endpoint: model status, :predict, and accuracy evaluation."""

from __future__ import annotations

import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

import requests
from airflow.sdk.bases.hook import BaseHook

from airflow_provider_mlpipe.exceptions import ServingError

if TYPE_CHECKING:
    import numpy as np

# Worth retrying: the server restarting, overloaded, or a proxy in between hiccuping.
_TRANSIENT_STATUS = {429, 502, 503, 504}


class ServingHook(BaseHook):
    """Talks to one endpoint (`url`, e.g. http://127.0.0.1:8501) serving `model_name`."""

    hook_name = "MLPipe TF-Serving client"

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        super().__init__()
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    @cached_property
    def session(self) -> requests.Session:
        return requests.Session()

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.url}{path}"
        status: int | None = None
        for attempt in range(self.retries + 1):
            try:
                resp = self.session.request(method, url, json=payload, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as err:
                problem, status = f"{type(err).__name__}: {err}", None
            else:
                if resp.status_code < 300:
                    try:
                        body = resp.json()
                    except ValueError:
                        raise ServingError(
                            f"{method} {url}: HTTP {resp.status_code} with a body that is not JSON: "
                            f"{resp.text[:200]!r}"
                        ) from None
                    if not isinstance(body, dict):
                        raise ServingError(f"{method} {url}: expected a JSON object, got {body!r:.200}")
                    return body
                problem = f"HTTP {resp.status_code}: {_error_text(resp)}"
                status = resp.status_code
                if resp.status_code not in _TRANSIENT_STATUS:
                    raise ServingError(f"{method} {url} failed with {problem}", status=resp.status_code)
            if attempt < self.retries:
                delay = self.backoff * 2**attempt
                self.log.warning("%s %s: %s; retrying in %.1f s", method, url, problem, delay)
                time.sleep(delay)
        raise ServingError(
            f"{method} {url} failed after {self.retries + 1} attempts: {problem}", status=status
        )

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
        batch_size: int = 1000,
        num_classes: int = 10,
    ) -> dict[str, Any]:
        """Accuracy, per-class accuracy and confusion matrix of the endpoint on (images, labels)."""
        import numpy as np

        if len(images) == 0:
            raise ServingError("cannot evaluate on an empty test set")
        predicted = []
        started = time.monotonic()
        for start in range(0, len(images), batch_size):
            # Raw integer pixels: the model scales them itself, and integers keep the JSON small.
            batch = images[start : start + batch_size].tolist()
            rows = self.predict(batch, version=version)
            try:
                probs = np.asarray(rows, dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise ServingError(f"{self.url}: predictions are not a numeric matrix: {err}") from None
            if probs.ndim != 2 or probs.shape[1] != num_classes:
                raise ServingError(
                    f"{self.url}: predictions have shape {probs.shape}, expected (batch, {num_classes})"
                )
            predicted.append(probs.argmax(axis=1))
        pred = np.concatenate(predicted)
        truth = np.asarray(labels, dtype=np.int64)
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(confusion, (truth, pred), 1)
        support = confusion.sum(axis=1)
        per_class = {
            str(c): (float(confusion[c, c] / support[c]) if support[c] else None) for c in range(num_classes)
        }
        return {
            "accuracy": float((pred == truth).mean()),
            "samples": len(truth),
            "per_class_accuracy": per_class,
            "confusion_matrix": confusion.tolist(),
            "seconds": round(time.monotonic() - started, 3),
        }


def _error_text(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300] or resp.reason
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)[:300]
