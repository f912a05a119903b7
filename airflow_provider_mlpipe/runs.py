"""Identity of a pipeline run and XCom conventions shared by the operators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context


def push_keys(context: Context, result: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Also push selected fields as XCom keys, so DAGs can wire `task.output["version"]` (an XCom key)."""
    for key in keys:
        context["ti"].xcom_push(key=key, value=result.get(key))
    return result


def run_key(context: Context) -> str:
    """Identity of a pipeline run: the same on every retry and after a scheduler restart."""
    return f"{context['dag'].dag_id}/{context['run_id']}"
