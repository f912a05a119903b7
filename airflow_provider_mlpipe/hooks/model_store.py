"""Airflow hook over the model store (`airflow_provider_mlpipe.modelstore`)."""

from __future__ import annotations

from functools import cached_property

from airflow.sdk.bases.hook import BaseHook

from airflow_provider_mlpipe import config
from airflow_provider_mlpipe.modelstore import ModelStore, open_store


class ModelStoreHook(BaseHook):
    """Open the store at `store_uri` (default: `[mlpipe] model_store`, a local directory)."""

    hook_name = "MLPipe model store"

    def __init__(self, store_uri: str | None = None) -> None:
        super().__init__()
        self.store_uri = store_uri or None

    @cached_property
    def store(self) -> ModelStore:
        return open_store(self.store_uri or config.model_store_uri())

    def production_record(self, model_name: str) -> dict[str, object] | None:
        return self.store.get_alias(model_name, "production")
