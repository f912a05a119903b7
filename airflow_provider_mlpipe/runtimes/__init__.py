"""Runtimes: where training and serving run, chosen by name (`get_runtime`); see `runtimes.base`.

Import-light on purpose: the triggers import `runtimes.base`, and a runtime's module (with its hooks and
triggers) is imported only when a task asks for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from airflow_provider_mlpipe.exceptions import ConfigError

if TYPE_CHECKING:
    from airflow_provider_mlpipe.runtimes.base import Runtime

# name -> "module:class". The names are the `runtime` param's choices (params.RUNTIMES; a test checks).
REGISTRY: dict[str, str] = {
    "local": "airflow_provider_mlpipe.runtimes.local:LocalRuntime",
    "kubernetes": "airflow_provider_mlpipe.runtimes.kubernetes:KubernetesRuntime",
}


def get_runtime(name: object, **settings: Any) -> Runtime:
    """The runtime called `name`, constructed with `settings` (see `Runtime`; no I/O happens here)."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ConfigError("runtime", name, f"one of {', '.join(REGISTRY)}")
    module, _, cls = REGISTRY[name].partition(":")
    runtime: Runtime = getattr(importlib.import_module(module), cls)(**settings)
    return runtime
