"""ACR payload models, routing, image reference and run id: pure logic."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from airflow_provider_mlpipe.exceptions import RoutesConfigError
from airflow_provider_mlpipe.webhooks.acr import (
    DEFAULT_DAG_ID,
    AcrPushEvent,
    Route,
    image_reference,
    match_route,
    parse_routes,
    run_conf,
    run_id_for,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4


def payload(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "push_data": {"digest": DIGEST, "pushed_at": "2016-11-29 12:25:46", "tag": "latest"},
        "repository": {
            "date_created": "2016-10-28 21:31:42",
            "name": "fashion-trainer",
            "namespace": "mlpipe",
            "region": "cn-hangzhou",
            "repo_authentication_type": "NO_CERTIFIED",
            "repo_full_name": "mlpipe/fashion-trainer",
            "repo_origin_type": "NO_CERTIFIED",
            "repo_type": "PUBLIC",
        },
    }
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        body[section][key] = value
    return body


def fields_of(err: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in err.errors()}


def test_acr_documented_payload_parses() -> None:
    event = AcrPushEvent.model_validate_json(json.dumps(payload()))
    assert event.repo_full_name == "mlpipe/fashion-trainer"
    assert event.digest == DIGEST
    assert event.tag == "latest"
    assert event.push_data.pushed_at == "2016-11-29 12:25:46"


def test_unknown_fields_are_ignored_and_optional_ones_may_be_missing() -> None:
    body = payload()
    body["push_data"]["extra"] = {"anything": 1}
    body["new_top_level"] = True
    for key in (
        "date_created",
        "name",
        "namespace",
        "repo_authentication_type",
        "repo_origin_type",
        "repo_type",
    ):
        del body["repository"][key]
    assert AcrPushEvent.model_validate(body).repo_full_name == "mlpipe/fashion-trainer"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("push_data", "digest"), "push_data.digest"),
        (("push_data", "tag"), "push_data.tag"),
        (("push_data", "pushed_at"), "push_data.pushed_at"),
        (("repository", "repo_full_name"), "repository.repo_full_name"),
        (("repository", "region"), "repository.region"),
        (("push_data",), "push_data"),
        (("repository",), "repository"),
    ],
)
def test_missing_field_is_named(path: tuple[str, ...], field: str) -> None:
    body = payload()
    target = body
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    with pytest.raises(ValidationError) as err:
        AcrPushEvent.model_validate_json(json.dumps(body))
    assert field in fields_of(err.value)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"push_data__digest": "sha256:abc"}, "push_data.digest"),
        ({"push_data__digest": "md5:" + "0" * 32}, "push_data.digest"),
        ({"push_data__digest": DIGEST.upper()}, "push_data.digest"),
        ({"push_data__tag": 1}, "push_data.tag"),
        ({"push_data__tag": "-bad"}, "push_data.tag"),
        ({"push_data__tag": "a" * 129}, "push_data.tag"),
        ({"push_data__pushed_at": "2016-11-29T12:25:46Z"}, "push_data.pushed_at"),
        ({"push_data__pushed_at": 1480422346}, "push_data.pushed_at"),
        ({"repository__repo_full_name": "no-namespace"}, "repository.repo_full_name"),
        ({"repository__repo_full_name": "UPPER/case"}, "repository.repo_full_name"),
        ({"repository__repo_full_name": "ns/../etc"}, "repository.repo_full_name"),
        ({"repository__region": "cn hangzhou"}, "repository.region"),
        ({"repository__region": None}, "repository.region"),
        ({"repository__name": "other"}, "repository"),
    ],
)
def test_wrong_value_is_named(override: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        AcrPushEvent.model_validate_json(json.dumps(payload(**override)))
    assert field in fields_of(err.value)


def test_image_reference_pins_the_digest() -> None:
    ref = image_reference("cn-hangzhou", "mlpipe/fashion-trainer", DIGEST)
    assert ref == f"registry.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer@{DIGEST}"
    vpc = image_reference("cn-beijing", "ns/r", DIGEST, "registry-vpc.{region}.aliyuncs.com")
    assert vpc == f"registry-vpc.cn-beijing.aliyuncs.com/ns/r@{DIGEST}"
    # The template is not str.format: other braces stay as they are and cannot raise.
    assert image_reference("r", "ns/r", DIGEST, "host-{0}/").startswith("host-{0}/ns/r@")


def test_run_id_is_deterministic_per_repository_and_digest() -> None:
    a = run_id_for("ns/repo", DIGEST)
    assert a == run_id_for("ns/repo", DIGEST)
    assert a.startswith("acr__") and len(a) == len("acr__") + 16
    assert a != run_id_for("ns/other", DIGEST)
    assert a != run_id_for("ns/repo", "sha256:" + "f" * 64)


def test_run_conf_takes_route_params_but_the_push_decides_the_image() -> None:
    event = AcrPushEvent.model_validate(payload())
    route = Route(repository="mlpipe/*", dag_id="d", params={"min_accuracy": 0.9})
    conf = run_conf(event, route)
    assert conf == {
        "min_accuracy": 0.9,
        "image": f"registry.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer@{DIGEST}",
        "digest": DIGEST,
        "tag": "latest",
    }
    with pytest.raises(ValidationError, match="params must not set image"):
        Route(repository="*", dag_id="d", params={"image": "evil"})


def test_routes_default_and_first_match_wins() -> None:
    default = parse_routes(None)
    assert match_route(default, "any/repo", "any-tag") is not None
    assert default[0].dag_id == DEFAULT_DAG_ID
    routes = parse_routes(
        json.dumps(
            [
                {"repository": "mlpipe/fashion-*", "tag": "v*", "dag_id": "release"},
                {"repository": "mlpipe/*", "dag_id": "everything", "params": {"min_accuracy": 0.5}},
            ]
        )
    )
    assert match_route(routes, "mlpipe/fashion-trainer", "v1.2").dag_id == "release"  # type: ignore[union-attr]
    assert match_route(routes, "mlpipe/fashion-trainer", "dev").dag_id == "everything"  # type: ignore[union-attr]
    assert match_route(routes, "other/repo", "v1") is None
    # Case-sensitive, like registry names.
    assert match_route(routes, "MLPIPE/x", "v1") is None
    assert parse_routes("[]") == ()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"repository": "*"}', "JSON list"),
        ('[{"repository": "*"}]', "mlpipe_acr_routes[0]: dag_id"),
        ('[{"repository": "*", "dag_id": "d"}, {"repository": "*", "dag_id": "d", "x": 1}]', "[1]: x"),
        ('[{"repository": "*", "dag_id": "bad id"}]', "dag_id"),
        ('[{"repository": "*", "dag_id": "d", "params": []}]', "params"),
    ],
)
def test_bad_routes_name_the_entry_and_field(raw: str, message: str) -> None:
    with pytest.raises(RoutesConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_routes(raw)


PIPELINE_ROUTE = {"repository": "mlpipe/*", "dag_id": DEFAULT_DAG_ID}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_acuracy": 0.95}, "[0].params: unknown param 'min_acuracy'; did you mean 'min_accuracy'?"),
        ({"kubernetes": {"gpus": 2}}, "[0].params: kubernetes={'gpus': 2} is invalid: expected empty"),
        ({"runtime": "local", "kubernetes": {"gpus": 2}}, "runtime 'kubernetes' only"),
        ({"hyperparameters": {"learning_rate": 2}}, "[0].params: hyperparameters.learning_rate=2 is invalid"),
        ({"runtime": "kubernetes", "kubernetes": {"gpu": 2}}, "'gpu' was unexpected"),
        ({"min_accuracy": "high"}, "[0].params: min_accuracy='high' is invalid"),
        ({"retry_policy": {"base_delay": 5, "max_delay": 1}}, "retry_policy.max_delay=1.0 is invalid"),
    ],
)
def test_pipeline_route_params_are_checked_like_a_runs_conf(params: dict[str, Any], message: str) -> None:
    """A route's params that the pipeline would refuse (or, for an unknown key, silently ignore) make the
    routes unusable when they are read, not each run fail once it starts."""
    with pytest.raises(RoutesConfigError) as info:
        parse_routes(json.dumps([{**PIPELINE_ROUTE, "params": params}]))
    assert str(info.value).startswith("mlpipe_acr_routes[0].params: ")
    assert message in str(info.value)


def test_good_pipeline_route_params_and_other_dags_params_pass() -> None:
    good = {
        "runtime": "kubernetes",
        "kubernetes": {"gpus": 1, "replicas": 2},
        "min_accuracy": 0.9,
        "hyperparameters": {"epochs": 3, "learning_rate": 1},
        "retry_policy": {"attempts": 8},
    }
    other = {"repository": "other/*", "dag_id": "someone_elses_dag", "params": {"min_acuracy": 1}}
    routes = parse_routes(json.dumps([{**PIPELINE_ROUTE, "params": good}, other]))
    assert routes[0].params == good
    # Another DAG's params are its own: its Params check them when the run is created.
    assert routes[1].params == {"min_acuracy": 1}
