"""Alibaba Container Registry (ACR) push events: payload models, routing, image reference, run id.

Pure logic, no I/O: the app reads configuration and passes it in, so everything here is unit-testable.

ACR sends (timestamps carry no zone; they are kept as the text ACR sent)::

    {"push_data": {"digest": "sha256:...", "pushed_at": "2016-11-29 12:25:46", "tag": "latest"},
     "repository": {"date_created": "...", "name": "repo", "namespace": "ns", "region": "cn-hangzhou",
                    "repo_authentication_type": "NO_CERTIFIED", "repo_full_name": "ns/repo",
                    "repo_origin_type": "NO_CERTIFIED", "repo_type": "PUBLIC"}}
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from airflow_provider_mlpipe.exceptions import ConfigError, RoutesConfigError
from airflow_provider_mlpipe.params import DIGEST_PATTERN, PIPELINE_DAG_ID
from airflow_provider_mlpipe.validation import check_route_params

__all__ = ["DIGEST_PATTERN"]

# Docker's tag grammar.
TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
# Docker's repository path grammar (lower case components joined by separators), at least `ns/name`.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPO_FULL_NAME_PATTERN = rf"^{_COMPONENT}(?:/{_COMPONENT})+$"
REGION_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
PUSHED_AT_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_REGISTRY_HOST = "registry.{region}.aliyuncs.com"
DEFAULT_DAG_ID = PIPELINE_DAG_ID
RUN_ID_PREFIX = "acr__"
# Keys the event itself sets in the run's conf; a route cannot override what was pushed.
EVENT_CONF_KEYS = ("image", "digest", "tag")


class PushData(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    digest: str = Field(pattern=DIGEST_PATTERN, max_length=71)
    pushed_at: str = Field(max_length=32)
    tag: str = Field(pattern=TAG_PATTERN, max_length=128)

    @field_validator("pushed_at")
    @classmethod
    def _pushed_at_format(cls, value: str) -> str:
        try:
            datetime.strptime(value, PUSHED_AT_FORMAT)
        except ValueError:
            raise ValueError("expected 'YYYY-MM-DD HH:MM:SS' (ACR's zone-less timestamp)") from None
        return value


class Repository(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    repo_full_name: str = Field(pattern=REPO_FULL_NAME_PATTERN, max_length=255)
    region: str = Field(pattern=REGION_PATTERN, max_length=64)
    name: str | None = Field(default=None, max_length=255)
    namespace: str | None = Field(default=None, max_length=255)
    date_created: str | None = Field(default=None, max_length=64)
    repo_authentication_type: str | None = Field(default=None, max_length=64)
    repo_origin_type: str | None = Field(default=None, max_length=64)
    repo_type: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _full_name_agrees(self) -> Repository:
        # A payload whose parts disagree is not something to guess about: which image would we train?
        if self.namespace is not None and self.name is not None:
            expected = f"{self.namespace}/{self.name}"
            if expected != self.repo_full_name:
                raise ValueError(
                    f"repo_full_name {self.repo_full_name!r} disagrees with namespace/name {expected!r}"
                )
        return self


class AcrPushEvent(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    push_data: PushData
    repository: Repository

    @property
    def repo_full_name(self) -> str:
        return self.repository.repo_full_name

    @property
    def digest(self) -> str:
        return self.push_data.digest

    @property
    def tag(self) -> str:
        return self.push_data.tag


class Route(BaseModel):
    """One line of the `mlpipe_acr_routes` Variable: which pushes start which DAG, with which params."""

    model_config = ConfigDict(strict=True, extra="forbid")

    # Shell-style globs (fnmatch, case-sensitive): `ns/*`, `ns/trainer`, tag `v*`.
    repository: str = Field(min_length=1, max_length=255)
    tag: str = Field(default="*", min_length=1, max_length=128)
    dag_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,250}$")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _no_event_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        overlap = sorted(set(value) & set(EVENT_CONF_KEYS))
        if overlap:
            raise ValueError(f"params must not set {', '.join(overlap)}: the pushed image decides them")
        return value

    def matches(self, repo_full_name: str, tag: str) -> bool:
        return fnmatch.fnmatchcase(repo_full_name, self.repository) and fnmatch.fnmatchcase(tag, self.tag)


DEFAULT_ROUTES = (Route(repository="*", tag="*", dag_id=DEFAULT_DAG_ID),)


def parse_routes(raw: str | None) -> tuple[Route, ...]:
    """Routes from the Variable's JSON text (a list of objects); None (unset) gives the default route.

    The params of a route to the pipeline are checked here as its runs' conf would be: Airflow accepts a
    key no param defines and the pipeline refuses it only once the run starts, so without this a typo in
    the Variable would turn every push into a failed run instead of one configuration error.
    """
    if raw is None or not raw.strip():
        return DEFAULT_ROUTES
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise RoutesConfigError(f"mlpipe_acr_routes is not valid JSON: {err}") from None
    if not isinstance(data, list):
        raise RoutesConfigError("mlpipe_acr_routes must be a JSON list of route objects")
    routes = []
    for index, item in enumerate(data):
        try:
            routes.append(Route.model_validate(item))
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'route'}: {e['msg']}" for e in err.errors()
            )
            raise RoutesConfigError(f"mlpipe_acr_routes[{index}]: {problems}") from None
        route = routes[-1]
        if route.dag_id == PIPELINE_DAG_ID:
            try:
                check_route_params(route.params)
            except ConfigError as err:
                raise RoutesConfigError(f"mlpipe_acr_routes[{index}].params: {err}") from None
    return tuple(routes)


def match_route(routes: tuple[Route, ...], repo_full_name: str, tag: str) -> Route | None:
    """The first route matching the push, in configuration order."""
    return next((route for route in routes if route.matches(repo_full_name, tag)), None)


def image_reference(
    region: str, repo_full_name: str, digest: str, host_template: str = DEFAULT_REGISTRY_HOST
) -> str:
    """`registry.<region>.aliyuncs.com/<repo_full_name>@<digest>`, or the configured (e.g. VPC) host.

    Pinned by digest, never by tag: a tag can move to another image before the run pulls it.
    """
    # str.replace, not str.format: the template comes from configuration and must not expand anything else.
    host = host_template.replace("{region}", region).strip().rstrip("/")
    return f"{host}/{repo_full_name}@{digest}"


def run_id_for(repo_full_name: str, digest: str) -> str:
    """The deterministic run id of a pushed image: one run per (repository, digest).

    The region is left out on purpose: ACR Enterprise replicates an image to other regions and each
    region may deliver its own webhook for the same content.
    """
    key = f"{repo_full_name}@{digest}".encode()
    return RUN_ID_PREFIX + hashlib.sha256(key).hexdigest()[:16]


def run_conf(event: AcrPushEvent, route: Route, host_template: str = DEFAULT_REGISTRY_HOST) -> dict[str, Any]:
    """The DAG run's conf: the route's params, then the pushed image (which a route cannot override)."""
    return {
        **route.params,
        "image": image_reference(event.repository.region, event.repo_full_name, event.digest, host_template),
        "digest": event.digest,
        "tag": event.tag,
    }
