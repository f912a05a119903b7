"""Deployment settings from Airflow's configuration (`[mlpipe]` section or `AIRFLOW__MLPIPE__*` env vars).

Read at task run time, never at DAG parse time.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow_provider_mlpipe.exceptions import ConfigError

RUNTIMES = ("local",)
ENDPOINTS = ("staging", "production")


def _get(key: str, fallback: str) -> str:
    from airflow.configuration import conf

    value: str = conf.get("mlpipe", key, fallback=fallback)
    return value


def airflow_home() -> Path:
    from airflow.configuration import conf

    return Path(conf.get("core", "airflow_home", fallback=os.environ.get("AIRFLOW_HOME", "~/airflow")))


def model_store_uri() -> str:
    """Where models live unless a run says otherwise (`[mlpipe] model_store`)."""
    return _get("model_store", (airflow_home() / "mlpipe" / "models").expanduser().resolve().as_uri())


def local_host() -> str:
    """Interface the local runtime's serving processes bind to and are reached at."""
    return _get("local_host", "127.0.0.1")


def production_port() -> int:
    raw = _get("production_port", "8501")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError("[mlpipe] production_port", raw, "an integer TCP port") from None


def check_runtime(runtime: object) -> str:
    if runtime not in RUNTIMES:
        raise ConfigError("runtime", runtime, f"one of {', '.join(RUNTIMES)}")
    return str(runtime)
