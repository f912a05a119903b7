"""The hooks the provider's operators use, created on first use (never at DAG parse time)."""

from __future__ import annotations

from functools import cached_property

from airflow_provider_mlpipe.hooks.kubernetes import KubernetesResourceHook
from airflow_provider_mlpipe.hooks.local_process import LocalProcessHook
from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook


class StoreHookMixin:
    """`store_hook` for operators with a `model_store` URI attribute (None: `[mlpipe] model_store`)."""

    model_store: str | None

    @cached_property
    def store_hook(self) -> ModelStoreHook:
        return ModelStoreHook(self.model_store)


class RuntimeHooksMixin:
    """The two runtimes' hooks: supervised local processes, and the Kubernetes API (attributes
    `kubernetes_conn_id` and `namespace`, None for the configured defaults)."""

    kubernetes_conn_id: str | None
    namespace: str | None

    @cached_property
    def process_hook(self) -> LocalProcessHook:
        return LocalProcessHook()

    @cached_property
    def kube_hook(self) -> KubernetesResourceHook:
        return KubernetesResourceHook(self.kubernetes_conn_id, self.namespace)
