"""AccuracySensor: score a serving endpoint on the held-out test set through its REST API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_mlpipe.exceptions import ConfigError, ServingError
from airflow_provider_mlpipe.hooks.serving import ServingHook
from airflow_provider_mlpipe.operators.base import MlpipeOperator, merged_template_fields
from airflow_provider_mlpipe.validation import check_fraction

if TYPE_CHECKING:
    import numpy as np
    from airflow.sdk import Context, XComArg


def _endpoint_url(endpoint: object) -> str:
    # Accept the deploy task's whole XCom dict as well as a bare URL.
    url = endpoint.get("url") if isinstance(endpoint, dict) else endpoint
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError("endpoint_url", endpoint, "an http(s) URL of a TF-Serving REST endpoint")
    return url


class AccuracySensor(MlpipeOperator, BaseSensorOperator):
    """Wait until `endpoint_url` serves `version`, then measure accuracy on the test set.

    While the server loads the model the sensor keeps poking; an endpoint that does not answer at all
    (after the client's own retries) fails the attempt, so task retries with backoff apply and a dead
    staging server ends in a clean failure instead of a sensor timeout.

    XCom: accuracy, per-class accuracy, confusion matrix, number of samples, version and endpoint.

    :param endpoint_url: URL (or the ServingDeployOperator's XCom) of the endpoint.
    :param version: version expected to be AVAILABLE (None: any).
    :param dataset: test data location; empty: the trainer's default dataset.
    :param sample_size: 0 scores all 10,000 test images; N scores a fixed-seed sample of N.
    :param min_accuracy: if set, fail when accuracy is below it.
    :param baseline_accuracy: if set, fail when accuracy is below `baseline_accuracy - tolerance`
        (production verification against the staging score).
    :param transient_retry: how the REST client retries transient failures before this poke fails, e.g.
        {"attempts": 8, "base_delay": 0.5, "max_delay": 60}; None: `RetryPolicy()`.
    """

    template_fields: Sequence[str] = merged_template_fields(
        MlpipeOperator,
        BaseSensorOperator,
        own=(
            "endpoint_url",
            "version",
            "dataset",
            "sample_size",
            "min_accuracy",
            "baseline_accuracy",
        ),
    )
    ui_color = "#fcf3cf"

    def __init__(
        self,
        *,
        endpoint_url: str | dict[str, Any] | XComArg,
        version: int | str | XComArg | None = None,
        dataset: str | None = None,
        sample_size: int | str = 0,
        batch_size: int = 500,
        min_accuracy: float | str | None = None,
        baseline_accuracy: float | str | XComArg | None = None,
        tolerance: float = 0.05,
        poke_interval: float = 5.0,
        timeout: float = timedelta(minutes=15).total_seconds(),
        mode: str = "reschedule",
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, mode=mode, **kwargs)
        self.endpoint_url = endpoint_url
        self.version = version
        self.dataset = dataset
        self.sample_size = sample_size
        if batch_size < 1:
            raise ConfigError("batch_size", batch_size, "an integer >= 1")
        self.batch_size = batch_size
        self.min_accuracy = min_accuracy
        self.baseline_accuracy = baseline_accuracy
        self.tolerance = tolerance

    def _test_set(self) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        from airflow_provider_mlpipe.datasets import fashion_mnist

        try:
            sample = int(self.sample_size or 0)
        except (TypeError, ValueError):
            raise ConfigError("sample_size", self.sample_size, "an integer >= 0 (0 = all)") from None
        if sample < 0:
            raise ConfigError("sample_size", self.sample_size, "an integer >= 0 (0 = all)")
        location = self.dataset or fashion_mnist.default_dataset_dir()
        if location:
            images, labels = fashion_mnist.load_split(location, "test")
        else:
            data = fashion_mnist.load_fashion_mnist(None)
            images, labels = data.x_test, data.y_test
        if sample and sample < len(labels):
            # Fixed seed: the same sample on every retry, so a retried gate cannot flip its verdict.
            idx = np.random.default_rng(0).choice(len(labels), size=sample, replace=False)
            images, labels = images[idx], labels[idx]
        return images, labels

    def poke(self, context: Context) -> PokeReturnValue | bool:
        url = _endpoint_url(self.endpoint_url)
        version = int(self.version) if self.version not in (None, "") else None  # type: ignore[arg-type]
        hook = ServingHook(url, self.model_name, retry=self.transient_retry_policy)
        available = hook.available_versions()
        if not available or (version is not None and version not in available):
            self.log.info(
                "%s does not serve %s v%s yet (available: %s)", url, self.model_name, version, available
            )
            return False
        images, labels = self._test_set()
        self.log.info("Scoring %s v%s at %s on %d test images", self.model_name, version, url, len(labels))
        metrics = hook.evaluate(images, labels, version=version, batch_size=self.batch_size)
        metrics.update({"version": version, "endpoint_url": url, "model_name": self.model_name})
        self.log.info(
            "Accuracy %.4f on %d images in %.2f s; per class: %s",
            metrics["accuracy"],
            metrics["samples"],
            metrics["seconds"],
            metrics["per_class_accuracy"],
        )
        self._check(metrics["accuracy"])
        context["ti"].xcom_push(key="accuracy", value=metrics["accuracy"])
        return PokeReturnValue(is_done=True, xcom_value=metrics)

    def _check(self, accuracy: float) -> None:
        if self.min_accuracy not in (None, ""):
            floor = check_fraction("min_accuracy", self.min_accuracy)
            if accuracy < floor:
                raise ServingError(
                    f"{self.model_name} v{self.version}: accuracy {accuracy:.4f} < {floor:.4f}"
                )
        if self.baseline_accuracy not in (None, ""):
            floor = check_fraction("baseline_accuracy", self.baseline_accuracy) - self.tolerance
            if accuracy < floor:
                raise ServingError(
                    f"{self.model_name} v{self.version}: accuracy {accuracy:.4f} is more than {self.tolerance} "
                    f"below the baseline {self.baseline_accuracy}"
                )
