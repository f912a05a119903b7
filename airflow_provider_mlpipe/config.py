"""Deployment settings from Airflow's configuration (`[mlpipe]` section or `AIRFLOW__MLPIPE__*` env vars).

Read at task run time, never at DAG parse time.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.params import RUNTIMES

__all__ = ["RUNTIMES"]

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


def _port(name: str, raw: str) -> int:
    if not raw.strip().isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(name, raw, "an integer TCP port (1-65535)")
    return int(raw)


def production_port(model_name: str | None = None) -> int:
    """The local runtime's production port for `model_name`: its entry in `[mlpipe] production_ports`
    (`digits=8502, churn=8503`), else `[mlpipe] production_port` (8501)."""
    mapping = _get("production_ports", "")
    for item in filter(None, (part.strip() for part in mapping.split(","))):
        name, eq, raw = item.partition("=")
        if not eq or not name.strip():
            raise ConfigError("[mlpipe] production_ports", mapping, "comma-separated model=port pairs")
        if name.strip() == model_name:
            return _port(f"[mlpipe] production_ports[{model_name}]", raw.strip())
    return _port("[mlpipe] production_port", _get("production_port", "8501"))


def kubernetes_conn_id() -> str:
    """Airflow connection of the cluster (`kubernetes` type: in-cluster or a kubeconfig)."""
    return _get("kubernetes_conn_id", "kubernetes_default")


def kubernetes_namespace() -> str:
    """Namespace of the Jobs, Deployments and Services; empty: the connection's, else `mlpipe`."""
    return _get("kubernetes_namespace", "")


def kubernetes_oss_secret() -> str:
    """Secret with keys `access_key_id` and `access_key_secret` (exactly these), handed to pods by
    secretKeyRef only."""
    return _get("kubernetes_oss_secret", "mlpipe-oss")


def kubernetes_oss_location() -> dict[str, str]:
    """`[mlpipe] kubernetes_oss_region` / `kubernetes_oss_endpoint`: where the pods reach the bucket when it
    differs from the store's settings (e.g. the VPC endpoint `oss-cn-hangzhou-internal.aliyuncs.com` for pods,
    the public one for an Airflow outside the cluster). Empty values are left out."""
    location = {
        "OSS_REGION": _get("kubernetes_oss_region", "").strip(),
        "OSS_ENDPOINT": _get("kubernetes_oss_endpoint", "").strip(),
    }
    return {key: value for key, value in location.items() if value}


def kubernetes_serving_image() -> str:
    return _get("kubernetes_serving_image", "tensorflow/serving:2.19.0")


def kubernetes_fetch_image() -> str:
    """Image of the serving Deployment's init container (serving_image/Dockerfile.fetch); required."""
    image = _get("kubernetes_fetch_image", "")
    if not image.strip():
        raise ConfigError(
            "[mlpipe] kubernetes_fetch_image",
            image,
            "the pushed fetch image (serving_image/Dockerfile.fetch)",
        )
    return image.strip()


def kubernetes_image_pull_secrets() -> list[str]:
    """`[mlpipe] kubernetes_image_pull_secrets`: comma-separated Secret names (type
    kubernetes.io/dockerconfigjson) for pulling the training, fetch and serving images; empty: none."""
    raw = _get("kubernetes_image_pull_secrets", "")
    return [name.strip() for name in raw.split(",") if name.strip()]


def kubernetes_service_account() -> str:
    """Service account of the training and serving pods; empty: the namespace's default."""
    return _get("kubernetes_service_account", "")


def kubernetes_url_template() -> str:
    """Endpoint URL template with {service}, {namespace}, {host}, {port}; empty: in-cluster DNS for
    ClusterIP services, the load balancer's address for LoadBalancer ones."""
    return _get("kubernetes_url_template", "")


def kubernetes_service_type(endpoint: str) -> str:
    """Service type per endpoint: `[mlpipe] kubernetes_staging_service_type` (ClusterIP) and
    `kubernetes_production_service_type` (LoadBalancer)."""
    default = "LoadBalancer" if endpoint == "production" else "ClusterIP"
    value = _get(f"kubernetes_{endpoint}_service_type", default)
    if value not in ("ClusterIP", "LoadBalancer", "NodePort"):
        raise ConfigError(
            f"[mlpipe] kubernetes_{endpoint}_service_type", value, "ClusterIP, NodePort or LoadBalancer"
        )
    return value


def kubernetes_load_balancer_address_type() -> str:
    """`intranet` (default) or `internet` (ACK's address-type annotation on LoadBalancer Services)."""
    value = _get("kubernetes_load_balancer_address_type", "intranet").strip()
    if value not in ("intranet", "internet"):
        raise ConfigError("[mlpipe] kubernetes_load_balancer_address_type", value, "intranet or internet")
    return value


def kubernetes_load_balancer_source_ranges() -> list[str]:
    """Comma-separated CIDRs allowed to reach a LoadBalancer Service; required with `internet`."""
    raw = _get("kubernetes_load_balancer_source_ranges", "")
    return [part.strip() for part in raw.split(",") if part.strip()]


def kubernetes_expose_grpc() -> bool:
    """Whether the serving Service also exposes TF Serving's gRPC port (8500); default: REST only."""
    raw = _get("kubernetes_expose_grpc", "false").strip().lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError("[mlpipe] kubernetes_expose_grpc", raw, "true or false")
    return raw in ("true", "1", "yes")


def kubernetes_stuck_timeout() -> float | None:
    """`[mlpipe] kubernetes_stuck_timeout`: seconds a training Job may stay unable to start (unschedulable,
    image pull failing, no pod created) before the task fails with the reason; 0: wait until its deadline.
    Default 900: long enough for a cluster autoscaler to add a node."""
    raw = _get("kubernetes_stuck_timeout", "900").strip()
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError("[mlpipe] kubernetes_stuck_timeout", raw, "seconds >= 0 (0: never)") from None
    if value < 0:
        raise ConfigError("[mlpipe] kubernetes_stuck_timeout", raw, "seconds >= 0 (0: never)")
    return value or None


def check_runtime(runtime: object) -> str:
    if runtime not in RUNTIMES:
        raise ConfigError("runtime", runtime, f"one of {', '.join(RUNTIMES)}")
    return str(runtime)
