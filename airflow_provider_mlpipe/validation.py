"""Checks of run inputs, shared by the DAG's first task and the operators (which re-check: they can be
used outside our DAG). Each failure names the field, the value and what was expected."""

from __future__ import annotations

import re
from typing import Any

from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.retries import RetryPolicy

# name -> (type, minimum, maximum); the trainer takes each as --<name with dashes>.
HYPERPARAMETERS: dict[str, tuple[type, float, float]] = {
    "epochs": (int, 1, 1000),
    "batch_size": (int, 1, 65536),
    "learning_rate": (float, 1e-07, 10),
    "train_limit": (int, 0, 10**9),
    "test_limit": (int, 0, 10**9),
    "seed": (int, 0, 2**31 - 1),
    "threads": (int, 0, 1024),
}
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


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
        kind, low, high = HYPERPARAMETERS[key]
        if value is None:
            continue
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            # float(10**400) overflows: test integers as integers.
            ok_type = ok_type and (isinstance(value, int) or float(value).is_integer())
        if not ok_type or not low <= value <= high:
            expected = "an integer" if kind is int else "a number"
            raise ConfigError(f"hyperparameters.{key}", value, f"{expected} in [{low!r}, {high!r}]")
        checked[key] = kind(value)
    return checked


def check_image(image: object) -> str:
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise ConfigError("image", image, "a container image reference such as registry/ns/repo:tag")
    return image


def check_digest(digest: object) -> str:
    if digest in (None, ""):
        return ""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ConfigError("digest", digest, "empty or 'sha256:' followed by 64 lowercase hex digits")
    return digest


def check_fraction(field: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(field, value, "a number in [0, 1]") from None
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise ConfigError(field, value, "a number in [0, 1]")
    return number


def check_retry_policy(value: object) -> dict[str, int | float]:
    """The run's in-task retry policy of transient errors, complete (missing keys take the defaults)."""
    return RetryPolicy.from_conf(value).as_conf()


def check_run_params(params: dict[str, Any]) -> dict[str, Any]:
    """Everything a run needs, checked before any work starts (the DAG's `validate_params` task)."""
    from airflow_provider_mlpipe import config
    from airflow_provider_mlpipe.datasets.fashion_mnist import check_dataset_dir

    checked = {
        "image": check_image(params.get("image")),
        "digest": check_digest(params.get("digest")),
        "runtime": config.check_runtime(params.get("runtime")),
        "min_accuracy": check_fraction("min_accuracy", params.get("min_accuracy")),
        "max_regression": check_fraction("max_regression", params.get("max_regression")),
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
    dataset = params.get("dataset") or ""
    if dataset and not str(dataset).startswith("oss://"):
        check_dataset_dir(str(dataset).removeprefix("file://"))
    checked["dataset"] = dataset
    return checked
