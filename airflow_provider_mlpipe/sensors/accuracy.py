"""AccuracySensor: score a serving endpoint on declared evaluation data through its REST API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_mlpipe.exceptions import (
    ConfigError,
    DatasetError,
    MlpipeError,
    ServingError,
    StoreNotFound,
)
from airflow_provider_mlpipe.hooks.serving import ServingHook
from airflow_provider_mlpipe.operators.base import StoreOperator, merged_template_fields
from airflow_provider_mlpipe.validation import check_fraction

if TYPE_CHECKING:
    import numpy as np
    from airflow.sdk import Context, XComArg

    from airflow_provider_mlpipe.evaluation import EvaluationData


def _endpoint_url(endpoint: object) -> str:
    # Accept the deploy task's whole XCom dict as well as a bare URL.
    url = endpoint.get("url") if isinstance(endpoint, dict) else endpoint
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError("endpoint_url", endpoint, "an http(s) URL of a TF-Serving REST endpoint")
    return url


class AccuracySensor(StoreOperator, BaseSensorOperator):
    """Wait until `endpoint_url` serves `version`, then measure accuracy on the evaluation data.

    The served model's metadata says what its input takes (name, dtype, shape): the examples are cast to
    that dtype and checked against that shape before anything is sent. The number of classes is the width
    of the model's output; class names come from the version's manifest in the model store, else from the
    evaluation data.

    While the server loads the model the sensor keeps poking; an endpoint that does not answer at all
    (after the client's own retries) fails the attempt, so task retries with backoff apply and a dead
    staging server ends in a clean failure instead of a sensor timeout.

    XCom: accuracy, per-class accuracy, confusion matrix, number of samples and classes, class names,
    the model input scored, version and endpoint; with `compare_with_production`, `champion` too.

    **Champion** (`compare_with_production=True`, the staging evaluation): the model the store's
    `production` alias points at is scored in the same poke, on the same examples (the same fixed-seed
    sample), through the endpoint its promotion recorded (`endpoint_url`; `champion_endpoint_url`
    overrides). `champion` then holds its version, alias generation, endpoint, accuracy, per-class
    accuracy and `paired_counts`: per class `[both correct, candidate only, champion only, neither]`, all
    the paired statistics of the gate need (`airflow_provider_mlpipe.gate_statistics`), a few integers
    whatever the number of examples. No production: `champion` is None. A champion that cannot be scored
    (no endpoint recorded, the endpoint does not serve that version, or does not answer after the client's
    retries) is reported in `champion.error` instead of failing the task: the gate then hands the decision
    to a person (inconclusive) rather than blocking every deployment on a broken production endpoint.

    :param endpoint_url: URL (or the ServingDeployOperator's XCom) of the endpoint.
    :param version: version expected to be AVAILABLE (None: any).
    :param evaluation_data: where the evaluation data is: an `.npz` (`airflow_provider_mlpipe.evaluation`) at a
        path, `file://` or `oss://` URI, or a dataset source `airflow_provider_mlpipe.datasets` reads
        (`load_evaluation_source`).
    :param dataset: the same as `evaluation_data` (its former name); give one of the two.
    :param model_store: store URI whose manifest of `version` may name the classes; None: `[mlpipe] model_store`.
    :param oss_conn_id: Airflow connection for an oss:// store or oss:// evaluation data.
    :param output_name: the output holding the class scores, for a model with several outputs.
    :param sample_size: 0 scores every example; N scores a fixed-seed sample of N.
    :param min_accuracy: if set, fail when accuracy is below it.
    :param baseline_accuracy: if set, fail when accuracy is below `baseline_accuracy - tolerance`
        (production verification against the staging score).
    :param compare_with_production: also score the production model on the same examples (see above).
    :param champion_endpoint_url: the champion's endpoint; None: the one its promotion recorded.
    :param transient_retry: how the REST client retries transient failures before this poke fails, e.g.
        {"attempts": 8, "base_delay": 0.5, "max_delay": 60}; None: `RetryPolicy()`.
    :param record_as: if set (e.g. `staging`), also keep the evaluation in the model store under this name
        (`ModelStore.record_evaluation`): the approval's pictures and the Models page read it from there.
    """

    template_fields: Sequence[str] = merged_template_fields(
        StoreOperator,
        BaseSensorOperator,
        own=(
            "endpoint_url",
            "version",
            "evaluation_data",
            "dataset",
            "sample_size",
            "min_accuracy",
            "baseline_accuracy",
            "champion_endpoint_url",
        ),
    )
    ui_color = "#fcf3cf"

    def __init__(
        self,
        *,
        endpoint_url: str | dict[str, Any] | XComArg,
        version: int | str | XComArg | None = None,
        dataset: str | None = None,
        evaluation_data: str | None = None,
        output_name: str | None = None,
        sample_size: int | str = 0,
        batch_size: int = 500,
        min_accuracy: float | str | None = None,
        baseline_accuracy: float | str | XComArg | None = None,
        tolerance: float = 0.05,
        record_as: str | None = None,
        compare_with_production: bool = False,
        champion_endpoint_url: str | None = None,
        poke_interval: float = 5.0,
        timeout: float = timedelta(minutes=15).total_seconds(),
        mode: str = "reschedule",
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, mode=mode, **kwargs)
        self.endpoint_url = endpoint_url
        self.version = version
        if dataset not in (None, "") and evaluation_data not in (None, ""):
            raise ConfigError(
                "dataset", dataset, "None when evaluation_data is given (they name the same thing)"
            )
        self.evaluation_data = evaluation_data
        self.dataset = dataset
        self.output_name = output_name
        self.sample_size = sample_size
        if batch_size < 1:
            raise ConfigError("batch_size", batch_size, "an integer >= 1")
        self.batch_size = batch_size
        self.min_accuracy = min_accuracy
        self.baseline_accuracy = baseline_accuracy
        self.tolerance = tolerance
        self.record_as = record_as
        self.compare_with_production = compare_with_production
        self.champion_endpoint_url = champion_endpoint_url

    def _evaluation_data(self) -> EvaluationData:
        from airflow_provider_mlpipe.datasets import load_evaluation_source

        try:
            sample = int(self.sample_size or 0)
        except (TypeError, ValueError):
            raise ConfigError("sample_size", self.sample_size, "an integer >= 0 (0 = all)") from None
        if sample < 0:
            raise ConfigError("sample_size", self.sample_size, "an integer >= 0 (0 = all)")
        location = self.evaluation_data or self.dataset
        if not location or not isinstance(location, str):
            raise ConfigError(
                "evaluation_data",
                location,
                "the evaluation data: an .npz (inputs, labels, class_names) at a path, file:// or oss:// URI",
            )
        credentials = self.store_hook.oss_credentials() if location.startswith("oss://") else None
        data = load_evaluation_source(location, credentials=credentials, retry=self.transient_retry_policy)
        # Fixed seed: the same sample on every retry, so a retried gate cannot flip its verdict.
        return data.sample(sample)

    def _manifest_class_names(self, version: int) -> tuple[str, ...] | None:
        try:
            manifest = self.store_hook.store.read_manifest(self.model_name, version)
        except StoreNotFound as err:
            # An endpoint may serve a version this store does not hold: the evaluation data's names then.
            self.log.warning(
                "No manifest of %s v%s in %s: %s", self.model_name, version, self.store_hook.uri, err
            )
            return None
        names = manifest.get("class_names")
        if names is None:
            return None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(
                f"manifest of {self.model_name} v{version}: class_names", names, "a non-empty list of strings"
            )
        return tuple(names)

    def _class_names(self, version: int, data: EvaluationData, num_classes: int) -> list[str] | None:
        from_manifest = self._manifest_class_names(version)
        if from_manifest is not None and data.class_names is not None and from_manifest != data.class_names:
            raise DatasetError(
                f"evaluation data {data.source!r}: field 'class_names' is {list(data.class_names)}, but the "
                f"manifest of {self.model_name} v{version} names the model's classes {list(from_manifest)}: "
                "expected the same classes in the same order"
            )
        names = from_manifest or data.class_names
        if names is not None and len(names) != num_classes:
            raise DatasetError(
                f"{self.model_name} v{version} scores {num_classes} classes, but "
                f"{'its manifest' if from_manifest else repr(data.source)} names {len(names)}: {list(names)}"
            )
        return list(names) if names is not None else None

    def poke(self, context: Context) -> PokeReturnValue | bool:
        from airflow_provider_mlpipe.serving_signature import prepare_instances

        url = _endpoint_url(self.endpoint_url)
        version = int(self.version) if self.version not in (None, "") else None  # type: ignore[arg-type]
        hook = ServingHook(url, self.model_name, retry=self.transient_retry_policy)
        available = hook.available_versions()
        if not available or (version is not None and version not in available):
            self.log.info(
                "%s does not serve %s v%s yet (available: %s)", url, self.model_name, version, available
            )
            return False
        served = version if version is not None else max(available)
        data = self._evaluation_data()
        signature = hook.signature(served)
        model_input = signature.single_input()
        instances = prepare_instances(data.inputs, model_input, source=data.source, where=signature.where)
        width = signature.output_width(self.output_name)
        self.log.info(
            "Scoring %s v%s at %s on %d examples of %s: input %r %s %s, %s classes",
            self.model_name,
            served,
            url,
            len(data),
            data.source,
            model_input.key,
            model_input.dtype,
            model_input.shown_shape(),
            width if width is not None else "(width from the answers)",
        )
        metrics = hook.evaluate(
            instances,
            data.labels,
            version=version,
            batch_size=self.batch_size,
            num_classes=width,
            output=self.output_name,
            keep_predictions=self.compare_with_production,
        )
        predictions = metrics.pop("predictions", None)
        metrics.update(
            {
                "version": version,
                "endpoint_url": url,
                "model_name": self.model_name,
                "class_names": self._class_names(served, data, metrics["num_classes"]),
                "input": {
                    "name": model_input.key,
                    "dtype": model_input.dtype,
                    "shape": None if model_input.shape is None else list(model_input.shape),
                },
                "evaluation_data": data.source,
            }
        )
        self.log.info(
            "Accuracy %.4f on %d examples in %.2f s; per class: %s",
            metrics["accuracy"],
            metrics["samples"],
            metrics["seconds"],
            metrics["per_class_accuracy"],
        )
        if self.compare_with_production and predictions is not None:
            metrics["champion"] = self._score_champion(data, predictions, metrics["num_classes"])
        self._check(metrics["accuracy"])
        if self.record_as:
            # Before the XCom: a retry after a failed write measures and records again.
            self.store_hook.store.record_evaluation(self.model_name, served, self.record_as, metrics)
        context["ti"].xcom_push(key="accuracy", value=metrics["accuracy"])
        return PokeReturnValue(is_done=True, xcom_value=metrics)

    def _score_champion(
        self, data: EvaluationData, candidate_pred: np.ndarray, num_classes: int
    ) -> dict[str, Any] | None:
        """The production model scored on `data`, paired with the candidate's predictions (see the class)."""
        import numpy as np

        from airflow_provider_mlpipe.serving_signature import prepare_instances

        record = self.store_hook.production_record(self.model_name)
        if not record:
            self.log.info("No production model of %s: the candidate is the first", self.model_name)
            return None
        version = int(record["version"])  # type: ignore[call-overload]
        url = self.champion_endpoint_url or record.get("endpoint_url")
        champion: dict[str, Any] = {
            "version": version,
            "generation": record.get("generation"),
            "endpoint_url": url,
            "recorded_accuracy": record.get("accuracy"),
            "error": None,
        }
        if not url or not isinstance(url, str):
            champion["error"] = (
                f"production v{version} of {self.model_name} has no endpoint_url in its promotion record "
                "(promoted before champions were recorded with their endpoint): set champion_endpoint_url"
            )
            self.log.warning("Champion not scored: %s", champion["error"])
            return champion
        try:
            hook = ServingHook(_endpoint_url(url), self.model_name, retry=self.transient_retry_policy)
            available = hook.available_versions()
            if version not in available:
                raise ServingError(
                    f"{url} serves versions {available} of {self.model_name}, not production v{version}"
                )
            signature = hook.signature(version)
            instances = prepare_instances(
                data.inputs, signature.single_input(), source=data.source, where=signature.where
            )
            scored = hook.evaluate(
                instances,
                data.labels,
                version=version,
                batch_size=self.batch_size,
                num_classes=signature.output_width(self.output_name),
                output=self.output_name,
                keep_predictions=True,
            )
            if scored["num_classes"] != num_classes:
                raise ServingError(
                    f"production v{version} at {url} scores {scored['num_classes']} classes, the candidate "
                    f"{num_classes}: expected the same classes"
                )
        except MlpipeError as err:
            champion["error"] = (
                f"production v{version} of {self.model_name} at {url} could not be scored: {err}"
            )
            self.log.warning("Champion not scored: %s", champion["error"])
            return champion
        truth = np.asarray(data.labels, dtype=np.int64)
        candidate_wrong = (candidate_pred != truth).astype(np.int64)
        champion_wrong = (scored["predictions"] != truth).astype(np.int64)
        # Cell per example: 0 both correct, 1 candidate only, 2 champion only, 3 neither.
        counts = np.zeros((num_classes, 4), dtype=np.int64)
        np.add.at(counts, (truth, 2 * candidate_wrong + champion_wrong), 1)
        champion.update(
            {
                "accuracy": scored["accuracy"],
                "per_class_accuracy": scored["per_class_accuracy"],
                "samples": scored["samples"],
                "paired_counts": counts.tolist(),
            }
        )
        self.log.info(
            "Champion %s v%s at %s: accuracy %.4f on the same %d examples; paired counts %s",
            self.model_name,
            version,
            url,
            scored["accuracy"],
            scored["samples"],
            counts.sum(axis=0).tolist(),
        )
        return champion

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
