"""Airflow Assets for a model's production alias, so that other DAGs run when production changes.

`production_asset(model)` is the asset a consumer schedules on (`schedule=[production_asset("fashion_mnist")]`).
The model name of a pipeline run is a run param, only known at run time, so the operators that move
production (ModelPromoteOperator, ModelRollbackOperator) declare the asset alias `PRODUCTION_ALIAS` as their
outlet and attach each event to the model's asset when they run (Airflow's AssetAlias mechanism). Each event's
extra says what production is now: `model_name`, `version`, `accuracy`, `event` (promoted / rolled_back),
`generation` of the alias, `run_id`, `approved_by`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import Asset, AssetAlias

from airflow_provider_mlpipe.modelstore.store import check_model_name

if TYPE_CHECKING:
    from airflow.sdk import Context

PRODUCTION_ALIAS = "mlpipe-production-models"
ASSET_GROUP = "mlpipe-model"
# The fields of an alias record that describe what now serves; other keys stay in the store.
EXTRA_FIELDS = ("model_name", "version", "accuracy", "generation", "run_id", "approved_by", "reason")


def production_asset(model_name: str) -> Asset:
    """The asset "production model of `model_name`" (one per model name across stores of a deployment)."""
    name = check_model_name(model_name)
    return Asset(
        name=f"mlpipe/{name}/production", uri=f"mlpipe://models/{name}/production", group=ASSET_GROUP
    )


def production_alias() -> AssetAlias:
    return AssetAlias(name=PRODUCTION_ALIAS, group=ASSET_GROUP)


def production_event_extra(
    record: dict[str, Any], event: Literal["promoted", "rolled_back"]
) -> dict[str, Any]:
    """The event's extra from the alias record the store wrote (JSON values only)."""
    extra: dict[str, Any] = {key: record.get(key) for key in EXTRA_FIELDS if key in record}
    extra["event"] = event
    return extra


def emit_production_event(
    context: Context,
    model_name: str,
    record: dict[str, Any],
    event: Literal["promoted", "rolled_back"],
) -> dict[str, Any]:
    """Attach an event on `production_asset(model_name)` to this task's production alias outlet."""
    extra = production_event_extra(record, event)
    context["outlet_events"][production_alias()].add(production_asset(model_name), extra=extra)
    return extra
