"""The run params of the shipped pipeline (`PIPELINE_DAG_ID`), each defined once.

Every layer that checks a run's input derives from this module: the DAG's Params (the JSON schemas the
REST API, `airflow dags trigger` and the UI's trigger form validate a conf against), `validation` (the
DAG's first task and the operators), the ACR webhook's routes, and the trainer's command line. A range
changed here changes all of them, so they cannot drift apart.

Import-light on purpose: the training image imports it without Airflow, pydantic or jsonschema.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_mlpipe.demo import pipeline as _pipeline
from airflow_provider_mlpipe.exceptions import ConfigError, UnknownParamError
from airflow_provider_mlpipe.retries import MAX_ATTEMPTS, MAX_BASE_DELAY, MAX_MAX_DELAY, RetryPolicy

PIPELINE_DAG_ID = _pipeline.PIPELINE_DAG_ID
RUNTIMES = ("local", "kubernetes")

# Python's `$` also matches before a trailing newline, ECMA-262's (the JSON Schema dialect, and the UI's
# form) does not; `(?![\s\S])` ends the text in both, so a schema and a Python check agree on "x\n".
_END = r"(?![\s\S])"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
# Store paths and TF-Serving model names: also a DNS label once `_` becomes `-`.
MODEL_NAME_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
IMAGE_PATTERN = r"^\S+$"
DIGEST_RE = re.compile(DIGEST_PATTERN)
MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
DIGEST_EXPECTED = "'sha256:' followed by 64 lowercase hex digits"
MODEL_NAME_EXPECTED = "1-63 lowercase letters, digits, '-' or '_', starting and ending alphanumeric"


def schema_pattern(pattern: str) -> str:
    """`pattern` for a JSON schema: anchored at the very end of the text, as `re.fullmatch` is."""
    return pattern[:-1] + _END if pattern.endswith("$") else pattern


@dataclass(frozen=True)
class Bounded:
    """A number in a range: its JSON schema, the check of a JSON value and the parse of a command-line
    string, from one definition."""

    kind: type[int] | type[float]
    minimum: int | float
    maximum: int | float
    exclusive_minimum: bool = False

    @property
    def expected(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        opening = "(" if self.exclusive_minimum else "["
        return f"{what} in {opening}{self.minimum!r}, {self.maximum!r}]"

    def schema(self) -> dict[str, Any]:
        low = "exclusiveMinimum" if self.exclusive_minimum else "minimum"
        return {
            "type": "integer" if self.kind is int else "number",
            low: self.minimum,
            "maximum": self.maximum,
        }

    def check(self, name: str, value: object) -> int | float:
        """`value` (a JSON number) as `kind`; JSON Schema's rules: 6.0 is an integer, true is no number."""
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(name, value, self.expected)
        # Integers are compared as integers: float(10**400) would overflow.
        if self.kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(name, value, self.expected)
        above = value > self.minimum if self.exclusive_minimum else value >= self.minimum
        # NaN fails every comparison, so it is refused here too.
        if not (above and value <= self.maximum):
            raise ConfigError(name, value, self.expected)
        return self.kind(value)

    def parse(self, name: str, text: str) -> int | float:
        """A command-line or environment string, accepted exactly when its JSON number would be."""
        number: int | float
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise ConfigError(name, text, self.expected) from None
        try:
            return self.check(name, number)
        except ConfigError:
            raise ConfigError(name, text, self.expected) from None


# name -> range; the trainer takes each as --<name with dashes>.
HYPERPARAMETERS: dict[str, Bounded] = {
    "epochs": Bounded(int, 1, 1000),
    "batch_size": Bounded(int, 1, 65536),
    # Adam's peak rate, cosine-decayed: above 1 training only diverges.
    "learning_rate": Bounded(float, 0, 1, exclusive_minimum=True),
    "seed": Bounded(int, 0, 2**31 - 1),
    "threads": Bounded(int, 0, 1024),
    "train_limit": Bounded(int, 0, 10**9),
    "test_limit": Bounded(int, 0, 10**9),
}
FRACTION = Bounded(float, 0, 1)
CONFIDENCE = Bounded(float, 0.5, 0.999)
GPUS = Bounded(int, 0, 16)
REPLICAS = Bounded(int, 1, 50)
RETRY_POLICY: dict[str, Bounded] = {
    "attempts": Bounded(int, 1, MAX_ATTEMPTS),
    "base_delay": Bounded(float, 0, MAX_BASE_DELAY),
    "max_delay": Bounded(float, 0, MAX_MAX_DELAY),
}


def _object(properties: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": dict(properties)}


@dataclass(frozen=True)
class RunParam:
    """One run param: its JSON schema, its default (none: the param is required) and its description."""

    schema: Mapping[str, Any]
    description: str
    default: Any = None
    required: bool = False

    def param_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of Airflow's `Param`: a fresh default each time, never a shared dict."""
        kwargs: dict[str, Any] = {"description": self.description, **copy.deepcopy(dict(self.schema))}
        if not self.required:
            kwargs["default"] = copy.deepcopy(self.default)
        return kwargs


RUN_PARAMS: dict[str, RunParam] = {
    "image": RunParam(
        {"type": "string", "minLength": 1, "pattern": schema_pattern(IMAGE_PATTERN)},
        "Training image reference, e.g. registry.cn-hangzhou.aliyuncs.com/ns/repo@sha256:...",
        required=True,
    ),
    "digest": RunParam(
        {"type": "string", "pattern": schema_pattern(r"^(|sha256:[0-9a-f]{64})$")},
        "Image digest (sha256:...); must be the one a pinned image reference carries",
        default="",
    ),
    "tag": RunParam({"type": "string"}, "Pushed tag, for display only", default=""),
    "runtime": RunParam(
        {"enum": list(RUNTIMES)},
        "Where training and serving run: this machine, or Jobs/Deployments on Kubernetes",
        default="local",
    ),
    "kubernetes": RunParam(
        _object(
            {
                "gpus": GPUS.schema(),
                "cpu": {"type": "string", "pattern": schema_pattern(r"^[0-9]+(\.[0-9]+)?m?$")},
                "memory": {"type": "string", "pattern": schema_pattern(r"^[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?$")},
                "node_selector": {"type": "object", "additionalProperties": {"type": "string"}},
                "tolerations": {"type": "array", "items": {"type": "object"}},
                "replicas": REPLICAS.schema(),
            }
        ),
        "runtime=kubernetes only: training pod gpus/cpu/memory/node_selector/tolerations, serving "
        "replicas; empty: 0 GPUs, 2 CPUs, 4Gi, anywhere, 1 replica",
        default={},
    ),
    "model_name": RunParam(
        {"type": "string", "pattern": schema_pattern(MODEL_NAME_PATTERN)},
        "Model name in the store",
        default=_pipeline.MODEL_NAME,
    ),
    "model_store": RunParam({"type": "string"}, "Model store URI; empty: [mlpipe] model_store", default=""),
    "dataset": RunParam(
        {"type": "string"},
        "What the trainer reads (MLPIPE_DATASET): dir / file:// / oss://; empty: the trainer's default",
        default="",
    ),
    "min_accuracy": RunParam(FRACTION.schema(), "Accuracy gate floor", default=0.85),
    "max_regression": RunParam(
        FRACTION.schema(),
        "Allowed accuracy drop vs production: fail if worse by more with confidence, inconclusive if the "
        "interval straddles it",
        default=0.01,
    ),
    "confidence_level": RunParam(
        CONFIDENCE.schema(), "Confidence level of the accuracy gate's intervals", default=0.95
    ),
    "min_class_accuracy": RunParam(
        FRACTION.schema(), "Per-class accuracy floor of the gate (0: none)", default=0.0
    ),
    "max_class_drop": RunParam(
        FRACTION.schema(),
        "Largest per-class accuracy drop vs production the gate allows (1: none)",
        default=1.0,
    ),
    "evaluation_sample": RunParam(
        {"type": "integer", "minimum": 0}, "Test images scored on staging (0 = all)", default=0
    ),
    "verify_sample": RunParam({"type": "integer", "minimum": 1}, "Images scored on production", default=1000),
    "approvers": RunParam(
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        "Airflow users who may approve",
        default=["admin"],
    ),
    "approval_timeout_minutes": RunParam(
        {"type": "integer", "minimum": 1}, "Then the answer is Reject", default=1440
    ),
    "hyperparameters": RunParam(
        _object({name: bounded.schema() for name, bounded in HYPERPARAMETERS.items()}),
        "Trainer hyperparameters; empty: the trainer's defaults",
        default={},
    ),
    "retry_policy": RunParam(
        _object({name: bounded.schema() for name, bounded in RETRY_POLICY.items()}),
        "In-task retries of transient errors (Kubernetes API, object store, serving REST API): calls in "
        "all, first backoff and its cap in seconds; missing keys take these defaults. Task retries are "
        "the DAG's default_args.",
        default=RetryPolicy().as_conf(),
    ),
}


def defaults() -> dict[str, Any]:
    """The value of every param that has a default (a run's params before its conf is merged in)."""
    return {name: copy.deepcopy(p.default) for name, p in RUN_PARAMS.items() if not p.required}


def check_known(keys: Iterable[str], values: Mapping[str, Any] | None = None) -> None:
    """Refuse the first key no param defines, with the known key it most resembles: Airflow keeps such a
    key as an untyped param, so a misspelt `min_acuracy` would otherwise leave the gate at its default."""
    for key in keys:
        if key not in RUN_PARAMS:
            suggestion = difflib.get_close_matches(key, RUN_PARAMS, n=1)
            value = values.get(key) if values is not None else None
            raise UnknownParamError(key, value, list(RUN_PARAMS), suggestion[0] if suggestion else None)


def image_digest(image: object) -> str | None:
    """The digest an image reference is pinned by (`repo@sha256:...`), whether well-formed or not."""
    if not isinstance(image, str):
        return None
    _, at, pinned = image.partition("@")
    return pinned if at else None


def check_combination(params: Mapping[str, Any]) -> None:
    """Refuse params each valid alone that one run cannot honour together. `params` are a run's params
    with the defaults filled in."""
    runtime = params.get("runtime", RUN_PARAMS["runtime"].default)
    kubernetes = params.get("kubernetes")
    if runtime != "kubernetes" and kubernetes:
        # The local runtime has no GPUs, requests or replicas to give: it would silently ignore them.
        raise ConfigError(
            "kubernetes",
            kubernetes,
            f"empty with runtime={runtime!r}: these settings apply to runtime 'kubernetes' only",
        )
    digest = params.get("digest")
    pinned = image_digest(params.get("image"))
    if pinned is not None and digest and digest != pinned:
        # Which image was trained? The manifest would record one digest and the run pull the other.
        raise ConfigError("digest", digest, f"empty or the digest the image reference carries ({pinned})")
