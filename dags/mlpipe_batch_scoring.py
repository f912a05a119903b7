"""mlpipe_batch_scoring: score a file with the production model each time production changes.

An example consumer of the model's production asset: `mlpipe_fashion_mnist`'s promote_model and
`mlpipe_rollback_production`'s rollback_alias emit an event on `mlpipe/fashion_mnist/production` (version
and accuracy in its extra), Airflow starts this DAG, and it predicts every example of `input` with exactly
that version through the production endpoint, writing `<AIRFLOW_HOME>/mlpipe/scores/<model>-v<version>-<run>.csv`.

Triggered by hand it scores with the version the store's production alias names.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from airflow_provider_mlpipe.assets import production_asset
from airflow_provider_mlpipe.operators.base import DEFAULT_MODEL_NAME
from airflow_provider_mlpipe.operators.scoring import BatchScoringOperator

with DAG(
    dag_id="mlpipe_batch_scoring",
    description="Score a file with the production model whenever production changes",
    schedule=[production_asset(DEFAULT_MODEL_NAME)],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "input": Param(
            "fashion-mnist:",
            type="string",
            minLength=1,
            description="Examples to score: .npz path, file://, oss://, or fashion-mnist:<dataset dir>",
        ),
        "limit": Param(1000, type="integer", minimum=0, description="Score the first N examples (0: all)"),
        "endpoint_url": Param("", type="string", description="Production endpoint; empty: the local one"),
        "model_store": Param("", type="string", description="Store URI; empty: [mlpipe] model_store"),
    },
    render_template_as_native_obj=True,
    # The promotion's event can reach this DAG a moment before the new version is loaded: retry.
    default_args={"retries": 3, "retry_delay": timedelta(seconds=20)},
    tags=["mlpipe", "mlops", "example"],
    doc_md=__doc__,
) as dag:
    BatchScoringOperator(
        task_id="score",
        model_name=DEFAULT_MODEL_NAME,
        input="{{ params.input }}",
        limit="{{ params.limit }}",
        endpoint_url="{{ params.endpoint_url or None }}",
        model_store="{{ params.model_store or None }}",
    )
