"""The bases of the provider's operators and sensors: the arguments they share, their template fields, and
the hooks, created on first use.

Every operator of the provider follows the same shape, so that parsing a DAG file (often, on every
component) costs no I/O and a retried task rebuilds nothing by hand:

- a keyword-only constructor that calls `super().__init__(**kwargs)` first, then only assigns and validates
  its own arguments; connections, the store and the cluster are reached in `execute` only;
- hooks are `cached_property`s, created on first use with the task's `transient_retry_policy`;
- `template_fields` extends the parents' (`merged_template_fields(Parent, ..., own=(...))`), never replaces them.

The shared arguments are keyword arguments of these bases (and so reach them through `**kwargs`): a DAG's
`default_args` still fills them, since Airflow applies default_args to each class's own `__init__`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_mlpipe.demo.pipeline import MODEL_NAME as DEFAULT_MODEL_NAME
from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook
from airflow_provider_mlpipe.retries import RetryPolicy
from airflow_provider_mlpipe.runtimes import get_runtime
from airflow_provider_mlpipe.runtimes.base import Runtime


def merged_template_fields(*parents: type[BaseOperator], own: Sequence[str] = ()) -> tuple[str, ...]:
    """The parents' template fields, then `own`, each once (in order of first appearance)."""
    fields = [field for parent in parents for field in parent.template_fields]
    return tuple(dict.fromkeys([*fields, *own]))


class MlpipeOperator(BaseOperator):
    """Base of every provider operator and sensor: the model it works on and how its hooks retry.

    :param model_name: model name in the store (lowercase, digits, `-`, `_`).
    :param transient_retry: in-task retries of transient errors (Kubernetes API, object store, serving
        endpoint), e.g. {"attempts": 8, "base_delay": 0.5, "max_delay": 60}; None: `RetryPolicy()`.
        Parsed on first use: a bad value fails the task naming the field. Not called `retry_policy`: since
        Airflow 3.3 every operator has an argument of that name (a policy deciding, per exception, whether
        the whole task is retried).
    """

    template_fields: Sequence[str] = merged_template_fields(
        BaseOperator, own=("model_name", "transient_retry")
    )

    def __init__(
        self,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        transient_retry: RetryPolicy | dict[str, Any] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.transient_retry = transient_retry

    @cached_property
    def transient_retry_policy(self) -> RetryPolicy:
        return RetryPolicy.from_conf(self.transient_retry, "transient_retry")


class StoreOperator(MlpipeOperator):
    """Base of the operators that read or write the model store (`store_hook`).

    :param model_store: store URI; default `[mlpipe] model_store`.
    :param oss_conn_id: Airflow connection (type `oss`) an oss:// store is opened with.
    """

    template_fields: Sequence[str] = merged_template_fields(MlpipeOperator, own=("model_store",))

    def __init__(
        self, *, model_store: str | None = None, oss_conn_id: str = "oss_default", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.model_store = model_store
        self.oss_conn_id = oss_conn_id

    @cached_property
    def store_hook(self) -> ModelStoreHook:
        return ModelStoreHook(
            self.model_store, oss_conn_id=self.oss_conn_id, retry=self.transient_retry_policy
        )


class RuntimeOperator(MlpipeOperator):
    """Base of the operators that run something on a runtime (`runtimes`: `local` supervised processes or
    `kubernetes`), reached through `runtime_backend`, the runtime the rendered `runtime` names.

    :param runtime: `local` (default) or `kubernetes`.
    :param kubernetes_conn_id: / :param namespace: Kubernetes: default `[mlpipe] kubernetes_conn_id`,
        `[mlpipe] kubernetes_namespace` (else the connection's namespace, else `mlpipe`).
    """

    template_fields: Sequence[str] = merged_template_fields(MlpipeOperator, own=("runtime",))

    def __init__(
        self,
        *,
        runtime: str = "local",
        kubernetes_conn_id: str | None = None,
        namespace: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime
        self.kubernetes_conn_id = kubernetes_conn_id
        self.namespace = namespace

    @cached_property
    def runtime_backend(self) -> Runtime:
        """The runtime (an unknown name, or a bad transient_retry, fails here: before any work)."""
        return get_runtime(
            self.runtime,
            retry=self.transient_retry_policy,
            kubernetes_conn_id=self.kubernetes_conn_id,
            namespace=self.namespace,
        )
