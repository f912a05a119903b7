"""mlpipe_rollback_production: put the previous production model back, and serve it.

rollback alias (the store's `production` moves back to the version before it; the one rolled away from
becomes `previous`) -> deploy production from that version -> verify production with a sample.

Trigger it from the UI's trigger form, `airflow dags trigger mlpipe_rollback_production --conf
'{"reason": "..."}'` or the REST API. A retried or repeated task of the same run adopts the rollback it
already made instead of rolling back twice. `python -m airflow_provider_mlpipe.modelstore rollback` moves
the alias alone (for a store no endpoint serves from).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, XComArg
from airflow.sdk.definitions.param import ParamsDict

from airflow_provider_mlpipe.operators.model_store import ModelRollbackOperator
from airflow_provider_mlpipe.operators.serving import ServingDeployOperator
from airflow_provider_mlpipe.params import REPLICAS, RUN_PARAMS
from airflow_provider_mlpipe.sensors.accuracy import AccuracySensor

MODEL = "{{ params.model_name }}"
RUNTIME = "{{ params.runtime }}"
STORE = "{{ params.model_store or None }}"


def _shared(name: str, description: str | None = None) -> Param:
    """A param the pipeline defines too, with the pipeline's schema and default."""
    kwargs = RUN_PARAMS[name].param_kwargs()
    if description:
        kwargs["description"] = description
    return Param(**kwargs)


PARAMS = ParamsDict(
    {
        "reason": Param(
            type="string",
            minLength=1,
            description="Why production goes back (kept in the alias history)",
        ),
        "runtime": _shared(
            "runtime", "Where production is served: this machine, or a Deployment on Kubernetes"
        ),
        "model_name": _shared("model_name"),
        "model_store": _shared("model_store"),
        "dataset": _shared("dataset"),
        "verify_sample": _shared("verify_sample"),
        "replicas": Param(1, description="runtime=kubernetes", **REPLICAS.schema()),
    }
)

with DAG(
    dag_id="mlpipe_rollback_production",
    description="Move production back to the previous model version and serve it",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # Two rollbacks at once would each move the alias one step: one at a time.
    max_active_runs=1,
    params=PARAMS,
    render_template_as_native_obj=True,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=15)},
    tags=["mlpipe", "mlops"],
    doc_md=__doc__,
) as dag:
    rollback = ModelRollbackOperator(
        task_id="rollback_alias",
        model_name=MODEL,
        model_store=STORE,
        reason="{{ params.reason }}",
    )
    deploy_production = ServingDeployOperator(
        task_id="deploy_production",
        endpoint="production",
        model_name=MODEL,
        version=XComArg(rollback, key="version"),
        runtime=RUNTIME,
        model_store=STORE,
        replicas="{{ params.replicas }}",
    )
    verify_production = AccuracySensor(
        task_id="verify_production",
        endpoint_url=XComArg(deploy_production, key="url"),
        model_name=MODEL,
        version=XComArg(rollback, key="version"),
        # The Fashion-MNIST test split of the dataset the pipeline trains on (see mlpipe_fashion_mnist).
        evaluation_data="fashion-mnist:{{ params.dataset }}",
        model_store=STORE,
        sample_size="{{ params.verify_sample }}",
        retries=1,
    )

    rollback >> deploy_production >> verify_production
