"""The hooks the provider's operators use, created on first use (never at DAG parse time)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow_provider_mlpipe.hooks.kubernetes import KubernetesResourceHook
from airflow_provider_mlpipe.hooks.local_process import LocalProcessHook
from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook
from airflow_provider_mlpipe.retries import RetryPolicy


class RetryPolicyMixin:
    """`transient_retry_policy`: how the task's hooks retry transient errors, from its templated
    `transient_retry` attribute (an object such as {"attempts": 8, "max_delay": 60}; None: the defaults).
    Parsed on first use: a bad value fails the task naming the field.

    Not called `retry_policy`: since Airflow 3.3 every operator has an argument of that name (a policy
    deciding, per exception, whether the whole task is retried).
    """

    transient_retry: RetryPolicy | dict[str, Any] | str | None

    @cached_property
    def transient_retry_policy(self) -> RetryPolicy:
        return RetryPolicy.from_conf(self.transient_retry, "transient_retry")


class StoreHookMixin(RetryPolicyMixin):
    """`store_hook` for operators with a `model_store` URI attribute (None: `[mlpipe] model_store`) and an
    `oss_conn_id` attribute (the Airflow connection an oss:// store is opened with)."""

    model_store: str | None
    oss_conn_id: str

    @cached_property
    def store_hook(self) -> ModelStoreHook:
        return ModelStoreHook(
            self.model_store, oss_conn_id=self.oss_conn_id, retry=self.transient_retry_policy
        )


class RuntimeHooksMixin(RetryPolicyMixin):
    """The two runtimes' hooks: supervised local processes, and the Kubernetes API (attributes
    `kubernetes_conn_id` and `namespace`, None for the configured defaults)."""

    kubernetes_conn_id: str | None
    namespace: str | None

    @cached_property
    def process_hook(self) -> LocalProcessHook:
        return LocalProcessHook()

    @cached_property
    def kube_hook(self) -> KubernetesResourceHook:
        return KubernetesResourceHook(
            self.kubernetes_conn_id, self.namespace, retry=self.transient_retry_policy
        )
