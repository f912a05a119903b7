"""Checks of run inputs, shared by the DAG's first task and the operators (which re-check: they can be
used outside our DAG). Each failure names the field, the value and what was expected.

The params themselves (names, types, ranges, patterns) are defined once, in `params`; this module applies
them where a JSON schema cannot reach: keys no param defines, params that contradict each other, and the
dataset on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from airflow_provider_mlpipe.exceptions import ConfigError, DatasetError
from airflow_provider_mlpipe.params import (
    CONFIDENCE,
    DIGEST_EXPECTED,
    DIGEST_RE,
    HYPERPARAMETERS,
    RUN_PARAMS,
    check_combination,
    check_known,
    defaults,
)
from airflow_provider_mlpipe.retries import RetryPolicy

__all__ = [
    "HYPERPARAMETERS",
    "check_digest",
    "check_fraction",
    "check_hyperparameters",
    "check_image",
    "check_retry_policy",
    "check_route_params",
    "check_run_params",
]


def check_hyperparameters(values: object) -> dict[str, int | float]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError("hyperparameters", values, 'a JSON object such as {"epochs": 6}')
    checked: dict[str, int | float] = {}
    for key, value in values.items():
        if key not in HYPERPARAMETERS:
            raise ConfigError(
                f"hyperparameters.{key}", value, f"one of the keys {', '.join(HYPERPARAMETERS)}"
            )
        if value is None:
            continue
        checked[key] = HYPERPARAMETERS[key].check(f"hyperparameters.{key}", value)
    return checked


def check_image(image: object) -> str:
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise ConfigError("image", image, "a container image reference such as registry/ns/repo:tag")
    return image


def check_digest(digest: object) -> str:
    if digest in (None, ""):
        return ""
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ConfigError("digest", digest, f"empty or {DIGEST_EXPECTED}")
    return digest


def check_fraction(field: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(field, value, "a number in [0, 1]") from None
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise ConfigError(field, value, "a number in [0, 1]")
    return number


def check_confidence(value: object) -> float:
    """The confidence level of the accuracy gate's intervals (a JSON number or its text, as templated)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError("confidence_level", value, CONFIDENCE.expected) from None
    if isinstance(value, bool) or not CONFIDENCE.minimum <= number <= CONFIDENCE.maximum:
        raise ConfigError("confidence_level", value, CONFIDENCE.expected)
    return number


def check_retry_policy(value: object) -> dict[str, int | float]:
    """The run's in-task retry policy of transient errors, complete (missing keys take the defaults)."""
    return RetryPolicy.from_conf(value).as_conf()


def check_param_schemas(values: Mapping[str, Any]) -> None:
    """Each value against its param's JSON schema, exactly as Airflow checks a conf when a run is created
    (`jsonschema.validate` with a format checker), for input that does not pass through Airflow first."""
    from jsonschema import FormatChecker, ValidationError, validate

    for key, value in values.items():
        try:
            validate(value, dict(RUN_PARAMS[key].schema), format_checker=FormatChecker())
        except ValidationError as err:
            where = ".".join([key, *(str(part) for part in err.absolute_path)])
            raise ConfigError(where, err.instance, f"what its schema allows ({err.message})") from None


def check_route_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params an ACR route adds to its runs' conf, checked as the run's would be once the pushed image
    is known: known keys, each value's schema, the combination with the defaults, the retry policy."""
    check_known(params, params)
    check_param_schemas(params)
    merged = {**defaults(), **params}
    check_combination(merged)
    check_retry_policy(merged.get("retry_policy"))
    return dict(params)


def check_dataset_exists(path: str) -> None:
    """The generic check of a local `dataset`: it exists. What it must hold is its trainer's business (a
    pipeline may pass a stricter check of its own format: `build_pipeline(dataset_check=...)`)."""
    if not Path(path).exists():
        raise DatasetError(f"dataset {path!r} does not exist: expected a directory or file the trainer reads")


def check_run_params(
    params: Mapping[str, Any],
    conf: Mapping[str, Any] | None = None,
    *,
    check_dataset: Callable[[str], object] | None = None,
) -> dict[str, Any]:
    """Everything a run needs, checked before any work starts (the DAG's `validate_params` task).

    `params` are the run's params (defaults merged with its conf), `conf` the conf as it was given:
    Airflow accepts a conf key that no param defines, so this is where such a key is refused.
    `check_dataset` checks a local (not oss://) dataset location; default: that it exists.
    """
    from airflow_provider_mlpipe import config
    from airflow_provider_mlpipe.modelstore.store import check_model_name

    given = dict(conf or {})
    check_known([*params, *(key for key in given if key not in params)], {**params, **given})
    checked = {
        "image": check_image(params.get("image")),
        "digest": check_digest(params.get("digest")),
        "runtime": config.check_runtime(params.get("runtime")),
        "model_name": check_model_name(params.get("model_name", RUN_PARAMS["model_name"].default)),
        "min_accuracy": check_fraction("min_accuracy", params.get("min_accuracy")),
        "max_regression": check_fraction("max_regression", params.get("max_regression")),
        "confidence_level": check_confidence(
            params.get("confidence_level", RUN_PARAMS["confidence_level"].default)
        ),
        "min_class_accuracy": check_fraction(
            "min_class_accuracy", params.get("min_class_accuracy", RUN_PARAMS["min_class_accuracy"].default)
        ),
        "max_class_drop": check_fraction(
            "max_class_drop", params.get("max_class_drop", RUN_PARAMS["max_class_drop"].default)
        ),
        "hyperparameters": check_hyperparameters(params.get("hyperparameters")),
        "retry_policy": check_retry_policy(params.get("retry_policy")),
    }
    approvers = params.get("approvers")
    if (
        not isinstance(approvers, list)
        or not approvers
        or not all(isinstance(a, str) and a for a in approvers)
    ):
        raise ConfigError("approvers", approvers, "a non-empty list of Airflow user names")
    checked["approvers"] = approvers
    check_combination(params)
    dataset = params.get("dataset") or ""
    if dataset and not str(dataset).startswith("oss://"):
        (check_dataset or check_dataset_exists)(str(dataset).removeprefix("file://"))
    checked["dataset"] = dataset
    return checked
