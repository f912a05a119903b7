"""Run-input checks: each failure names the field, the value and what was expected."""

from __future__ import annotations

import gzip
import math
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_mlpipe.datasets.fashion_mnist import FILES, TEST_LABELS, check_dataset_dir
from airflow_provider_mlpipe.exceptions import ConfigError, DatasetError, UnknownParamError
from airflow_provider_mlpipe.retries import MAX_ATTEMPTS, MAX_MAX_DELAY, RetryPolicy
from airflow_provider_mlpipe.validation import (
    HYPERPARAMETERS,
    check_digest,
    check_fraction,
    check_hyperparameters,
    check_image,
    check_retry_policy,
    check_route_params,
    check_run_params,
)

if TYPE_CHECKING:
    from pathlib import Path

DIGEST = "sha256:" + "0123456789abcdef" * 4


def assert_config_error(err: ConfigError, field: str, value: object, expected_fragment: str) -> None:
    assert err.field == field
    assert err.value == value or (isinstance(value, float) and math.isnan(value))
    assert expected_fragment in err.expected
    message = str(err)
    assert message.startswith(f"{field}={value!r} is invalid: expected ")
    assert expected_fragment in message


# ------------------------------------------------------------------------------------- hyperparameters


def test_check_hyperparameters_accepts_and_normalises() -> None:
    assert check_hyperparameters(None) == {}
    assert check_hyperparameters({}) == {}
    checked = check_hyperparameters(
        {"epochs": 6.0, "batch_size": 128, "learning_rate": 1, "seed": 0, "threads": None, "train_limit": 0}
    )
    assert checked == {"epochs": 6, "batch_size": 128, "learning_rate": 1.0, "seed": 0, "train_limit": 0}
    assert type(checked["epochs"]) is int
    assert type(checked["learning_rate"]) is float


@pytest.mark.parametrize(
    ("values", "field", "value", "fragment"),
    [
        ([("epochs", 6)], "hyperparameters", [("epochs", 6)], "a JSON object"),
        ("epochs=6", "hyperparameters", "epochs=6", "a JSON object"),
        ({"epoch": 6}, "hyperparameters.epoch", 6, "one of the keys epochs, batch_size"),
        ({"epochs": 0}, "hyperparameters.epochs", 0, "an integer in [1, 1000]"),
        ({"epochs": 1001}, "hyperparameters.epochs", 1001, "an integer in [1, 1000]"),
        ({"epochs": 2.5}, "hyperparameters.epochs", 2.5, "an integer in [1, 1000]"),
        ({"epochs": "6"}, "hyperparameters.epochs", "6", "an integer in [1, 1000]"),
        ({"epochs": True}, "hyperparameters.epochs", True, "an integer in [1, 1000]"),
        ({"batch_size": -1}, "hyperparameters.batch_size", -1, "an integer in [1, 65536]"),
        ({"learning_rate": 0}, "hyperparameters.learning_rate", 0, "a number in (0, 1]"),
        ({"learning_rate": 2}, "hyperparameters.learning_rate", 2, "a number in (0, 1]"),
        ({"learning_rate": 11.0}, "hyperparameters.learning_rate", 11.0, "a number in (0, 1]"),
        ({"learning_rate": float("nan")}, "hyperparameters.learning_rate", float("nan"), "a number in"),
        ({"learning_rate": float("inf")}, "hyperparameters.learning_rate", float("inf"), "a number in"),
        ({"seed": -3}, "hyperparameters.seed", -3, "an integer in [0, "),
        ({"threads": [4]}, "hyperparameters.threads", [4], "an integer in [0, 1024]"),
    ],
)
def test_check_hyperparameters_errors(values: Any, field: str, value: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_hyperparameters(values)
    assert_config_error(info.value, field, value, fragment)


def test_check_hyperparameters_huge_integer_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        check_hyperparameters({"epochs": 10**400})
    assert info.value.field == "hyperparameters.epochs"


# JSON-like values: what a run's params (JSON from the UI / REST API) can hold, huge integers included.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
hyper_dicts = st.dictionaries(
    st.sampled_from(sorted(HYPERPARAMETERS)) | st.text(max_size=12), json_values, max_size=5
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(hyper_dicts, json_values))
def test_check_hyperparameters_only_ever_raises_config_error(values: Any) -> None:
    try:
        checked = check_hyperparameters(values)
    except ConfigError as err:
        assert err.field == "hyperparameters" or err.field.startswith("hyperparameters.")
        return
    # Accepted: every key is known, every value of the declared type and in range.
    assert isinstance(values, dict) or values is None
    for key, value in checked.items():
        bounded = HYPERPARAMETERS[key]
        assert type(value) is bounded.kind
        assert bounded.minimum <= value <= bounded.maximum


# ------------------------------------------------------------------------------------- image and digest


@pytest.mark.parametrize("image", ["registry/ns/repo:tag", "repo", "r.example.com:5000/a/b@" + DIGEST])
def test_check_image_accepts(image: str) -> None:
    assert check_image(image) == image


@pytest.mark.parametrize("image", ["", "   ", "repo :tag", "repo\t", None, 42, ["repo"]])
def test_check_image_rejects(image: object) -> None:
    with pytest.raises(ConfigError) as info:
        check_image(image)
    assert_config_error(info.value, "image", image, "a container image reference")


@pytest.mark.parametrize("digest", [None, ""])
def test_check_digest_empty_is_allowed(digest: object) -> None:
    assert check_digest(digest) == ""


def test_check_digest_accepts_sha256() -> None:
    assert check_digest(DIGEST) == DIGEST


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "0" * 63,
        "sha256:" + "0" * 65,
        "sha256:" + "A" * 64,
        "sha512:" + "0" * 64,
        "0" * 64,
        " " + DIGEST,
        123,
    ],
)
def test_check_digest_rejects(digest: object) -> None:
    with pytest.raises(ConfigError) as info:
        check_digest(digest)
    assert_config_error(info.value, "digest", digest, "'sha256:' followed by 64 lowercase hex digits")


def test_check_digest_rejects_a_trailing_newline() -> None:
    with pytest.raises(ConfigError) as info:
        check_digest(DIGEST + "\n")
    assert info.value.field == "digest"


# ----------------------------------------------------------------------------------------------- fraction


@pytest.mark.parametrize(("value", "number"), [(0, 0.0), (1, 1.0), (0.85, 0.85), ("0.9", 0.9), ("1", 1.0)])
def test_check_fraction_accepts(value: object, number: float) -> None:
    assert check_fraction("min_accuracy", value) == number


@pytest.mark.parametrize("value", [-0.01, 1.01, "high", None, True, False, float("nan"), "inf", [0.5]])
def test_check_fraction_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        check_fraction("max_regression", value)
    assert_config_error(info.value, "max_regression", value, "a number in [0, 1]")


# -------------------------------------------------------------------------------------- retry policy

DEFAULT_POLICY = {"attempts": 5, "base_delay": 0.5, "max_delay": 30.0}


def test_check_retry_policy_fills_in_the_defaults() -> None:
    assert check_retry_policy(None) == DEFAULT_POLICY == RetryPolicy().as_conf()
    assert check_retry_policy({}) == DEFAULT_POLICY
    assert check_retry_policy({"attempts": 8, "max_delay": 60}) == {
        "attempts": 8,
        "base_delay": 0.5,
        "max_delay": 60.0,
    }
    # JSON text: what an operator gets from a template outside a natively rendering DAG.
    assert check_retry_policy('{"attempts": 2.0, "base_delay": 0, "max_delay": 0}') == {
        "attempts": 2,
        "base_delay": 0.0,
        "max_delay": 0.0,
    }
    policy = RetryPolicy.from_conf({"attempts": 8, "max_delay": 60})
    assert (policy.attempts, policy.base_delay, policy.max_delay) == (8, 0.5, 60.0)
    assert RetryPolicy.from_conf(policy) is policy


@pytest.mark.parametrize(
    ("value", "field", "bad", "fragment"),
    [
        ({"attempts": 0}, "retry_policy.attempts", 0, "an integer in [1, 100]"),
        ({"attempts": 101}, "retry_policy.attempts", 101, "an integer in [1, 100]"),
        ({"attempts": 2.5}, "retry_policy.attempts", 2.5, "an integer in [1, 100]"),
        ({"attempts": True}, "retry_policy.attempts", True, "an integer in [1, 100]"),
        ({"attempts": "5"}, "retry_policy.attempts", "5", "an integer in [1, 100]"),
        ({"base_delay": -1}, "retry_policy.base_delay", -1, "a number of seconds >= 0"),
        ({"base_delay": 601}, "retry_policy.base_delay", 601.0, "a number of seconds in [0, 600]"),
        ({"max_delay": "60"}, "retry_policy.max_delay", "60", "a number of seconds >= 0"),
        ({"max_delay": float("nan")}, "retry_policy.max_delay", float("nan"), "a number of seconds >= 0"),
        ({"base_delay": 2, "max_delay": 1}, "retry_policy.max_delay", 1.0, "[base_delay (2), 3600]"),
        ({"max_delay": 3601}, "retry_policy.max_delay", 3601.0, "[base_delay (0.5), 3600]"),
        ({"tries": 3}, "retry_policy.tries", 3, "one of the keys attempts, base_delay, max_delay"),
        ("attempts=3", "retry_policy", "attempts=3", 'an object such as {"attempts": 5'),
        ([5, 0.5, 30], "retry_policy", [5, 0.5, 30], 'an object such as {"attempts": 5'),
    ],
)
def test_check_retry_policy_errors_name_the_field(value: Any, field: str, bad: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_retry_policy(value)
    assert_config_error(info.value, field, bad, fragment)


retry_dicts = st.dictionaries(
    st.sampled_from(["attempts", "base_delay", "max_delay"]) | st.text(max_size=10), json_values, max_size=4
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(retry_dicts, json_values))
def test_check_retry_policy_only_ever_raises_config_error(value: Any) -> None:
    try:
        checked = check_retry_policy(value)
    except ConfigError as err:
        assert err.field == "retry_policy" or err.field.startswith("retry_policy.")
        return
    assert type(checked["attempts"]) is int and 1 <= checked["attempts"] <= MAX_ATTEMPTS
    assert 0 <= checked["base_delay"] <= checked["max_delay"] <= MAX_MAX_DELAY


# ---------------------------------------------------------------------------------------- run params


def valid_params(**overrides: Any) -> dict[str, Any]:
    params = {
        "image": "registry/ns/trainer:1",
        "digest": DIGEST,
        "runtime": "local",
        "min_accuracy": 0.8,
        "max_regression": "0.02",
        "hyperparameters": {"epochs": 2},
        "approvers": ["alice"],
        "dataset": "",
    }
    params.update(overrides)
    return params


def write_idx_gz(path: Path, ndim: int) -> None:
    with gzip.open(path, "wb") as handle:
        handle.write(bytes([0, 0, 0x08, ndim]) + b"\x00\x00\x00\x00" * ndim)


def test_check_run_params_returns_checked_values() -> None:
    checked = check_run_params(valid_params())
    assert checked == {
        "image": "registry/ns/trainer:1",
        "digest": DIGEST,
        "runtime": "local",
        "model_name": "fashion_mnist",
        "min_accuracy": 0.8,
        "max_regression": 0.02,
        "confidence_level": 0.95,
        "min_class_accuracy": 0.0,
        "max_class_drop": 1.0,
        "hyperparameters": {"epochs": 2},
        "approvers": ["alice"],
        "dataset": "",
        "retry_policy": DEFAULT_POLICY,
    }
    flaky_cluster = check_run_params(valid_params(retry_policy={"attempts": 8, "max_delay": 60}))
    assert flaky_cluster["retry_policy"] == {"attempts": 8, "base_delay": 0.5, "max_delay": 60.0}


def test_check_run_params_leaves_remote_datasets_for_later() -> None:
    assert check_run_params(valid_params(dataset="oss://bucket/fashion"))["dataset"] == "oss://bucket/fashion"


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"image": "bad image"}, "image", "container image reference"),
        ({"digest": "sha256:xyz"}, "digest", "64 lowercase hex digits"),
        ({"runtime": "kubernetes-typo"}, "runtime", "one of local"),
        ({"min_accuracy": 2}, "min_accuracy", "a number in [0, 1]"),
        ({"max_regression": None}, "max_regression", "a number in [0, 1]"),
        ({"confidence_level": 0.9999}, "confidence_level", "a number in [0.5, 0.999]"),
        ({"confidence_level": "high"}, "confidence_level", "a number in [0.5, 0.999]"),
        ({"min_class_accuracy": 1.5}, "min_class_accuracy", "a number in [0, 1]"),
        ({"max_class_drop": -0.1}, "max_class_drop", "a number in [0, 1]"),
        ({"hyperparameters": {"epochs": 0}}, "hyperparameters.epochs", "an integer in [1, 1000]"),
        ({"approvers": []}, "approvers", "a non-empty list of Airflow user names"),
        ({"approvers": "alice"}, "approvers", "a non-empty list of Airflow user names"),
        ({"approvers": ["alice", ""]}, "approvers", "a non-empty list of Airflow user names"),
        ({"retry_policy": {"attempts": 0}}, "retry_policy.attempts", "an integer in [1, 100]"),
        ({"model_name": "Fashion MNIST"}, "model_name", "1-63 lowercase letters"),
        ({"kubernetes": {"gpus": 2}}, "kubernetes", "runtime 'kubernetes' only"),
        (
            {"image": f"registry/ns/trainer@{DIGEST}", "digest": "sha256:" + "f" * 64},
            "digest",
            f"the digest the image reference carries ({DIGEST})",
        ),
        (
            {
                "runtime": "kubernetes",
                "image": f"registry/ns/trainer@{DIGEST}",
                "digest": "sha256:" + "f" * 64,
            },
            "digest",
            f"the digest the image reference carries ({DIGEST})",
        ),
    ],
)
def test_check_run_params_errors(overrides: dict[str, Any], field: str, fragment: str) -> None:
    params = valid_params(**overrides)
    with pytest.raises(ConfigError) as info:
        check_run_params(params)
    assert info.value.field == field
    assert fragment in str(info.value)
    assert f"{field}=" in str(info.value)


@pytest.mark.parametrize("as_uri", [False, True])
def test_check_run_params_dataset_missing_a_file(tmp_path: Path, as_uri: bool) -> None:
    for name in FILES:
        if name != TEST_LABELS:
            write_idx_gz(tmp_path / name, 3 if "images" in name else 1)
    dataset = tmp_path.as_uri() if as_uri else str(tmp_path)
    # The generic check wants the location to exist; the Fashion-MNIST pipeline's wants its four files.
    assert check_run_params(valid_params(dataset=dataset))["dataset"] == dataset
    with pytest.raises(DatasetError) as info:
        check_run_params(valid_params(dataset=dataset), check_dataset=check_dataset_dir)
    message = str(info.value)
    assert f"missing {TEST_LABELS}" in message
    assert str(tmp_path) in message
    # Once the file is there, the same params pass.
    write_idx_gz(tmp_path / TEST_LABELS, 1)
    assert (
        check_run_params(valid_params(dataset=dataset), check_dataset=check_dataset_dir)["dataset"] == dataset
    )


def test_check_run_params_dataset_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist or is not a directory"):
        check_run_params(valid_params(dataset=str(tmp_path / "nope")), check_dataset=check_dataset_dir)
    with pytest.raises(DatasetError) as info:
        check_run_params(valid_params(dataset=str(tmp_path / "nope")))
    assert str(info.value) == (
        f"dataset {str(tmp_path / 'nope')!r} does not exist: expected a directory or file the trainer reads"
    )


# ----------------------------------------------------------------------- unknown keys, combinations


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("min_acuracy", "min_accuracy"),
        ("hyperparameter", "hyperparameters"),
        ("Image", "image"),
        ("retry_polcy", "retry_policy"),
        ("colour", None),
    ],
)
def test_unknown_conf_key_is_refused_with_the_closest_param(key: str, suggestion: str | None) -> None:
    conf = {"image": "registry/ns/trainer:1", key: 0.95}
    # Airflow's run params carry the unknown key too (as an untyped param); the conf names it either way.
    for params, run_conf in (
        (valid_params(**{key: 0.95}), conf),
        (valid_params(), conf),
        (valid_params(**{key: 1}), None),
    ):
        with pytest.raises(UnknownParamError) as info:
            check_run_params(params, run_conf)
        assert info.value.field == key
        assert info.value.suggestion == suggestion
        message = str(info.value)
        hint = f"; did you mean {suggestion!r}?" if suggestion else " (the params are image, digest"
        assert message.startswith(f"unknown param {key!r}{hint}")
        assert "min_accuracy, max_regression" in message


def test_unknown_key_is_refused_before_bad_values() -> None:
    """The misspelling is the cause of whatever else looks wrong: it is what the error names."""
    with pytest.raises(UnknownParamError, match="did you mean 'min_accuracy'"):
        check_run_params(valid_params(min_acuracy=0.9, image="bad image"), {"min_acuracy": 0.9})


def test_combinations_the_run_can_honour_pass() -> None:
    pinned = f"registry/ns/trainer@{DIGEST}"
    for overrides in (
        {"runtime": "kubernetes", "kubernetes": {"gpus": 2}},
        {"runtime": "local", "kubernetes": {}},
        {"image": pinned, "digest": DIGEST},
        {"image": pinned, "digest": ""},
        {"image": "registry/ns/trainer:1", "digest": DIGEST},
    ):
        checked = check_run_params(valid_params(**overrides), overrides)
        assert checked["digest"] == overrides.get("digest", DIGEST)


def test_check_route_params() -> None:
    assert check_route_params({"min_accuracy": 0.9, "hyperparameters": {"epochs": 3}}) == {
        "min_accuracy": 0.9,
        "hyperparameters": {"epochs": 3},
    }
    with pytest.raises(UnknownParamError, match="did you mean 'min_accuracy'"):
        check_route_params({"min_acuracy": 0.9})
    with pytest.raises(ConfigError) as info:
        check_route_params({"hyperparameters": {"learning_rate": 2}})
    assert (info.value.field, info.value.value) == ("hyperparameters.learning_rate", 2)
    assert "2 is greater than the maximum of 1" in info.value.expected
    with pytest.raises(ConfigError) as info:
        check_route_params({"kubernetes": {"replicas": 2}})
    assert info.value.field == "kubernetes"
