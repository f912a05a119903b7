"""mlpipe_rollback_production: put the previous production Fashion-MNIST model back, and serve it.

rollback alias (the store's `production` moves back to the version before it; the one rolled away from
becomes `previous`) -> deploy production from that version -> verify production with a sample.

Trigger it from the UI's trigger form, `airflow dags trigger mlpipe_rollback_production --conf
'{"reason": "..."}'` or the REST API. A retried or repeated task of the same run adopts the rollback it
already made instead of rolling back twice. `python -m airflow_provider_mlpipe.modelstore rollback` moves
the alias alone (for a store no endpoint serves from).
"""

from __future__ import annotations

from airflow_provider_mlpipe.demo.pipeline import MODEL_NAME
from airflow_provider_mlpipe.pipeline import build_rollback_pipeline

dag = build_rollback_pipeline(
    dag_id="mlpipe_rollback_production",
    model_name=MODEL_NAME,
    # The Fashion-MNIST test split of the dataset the pipeline trains on (see mlpipe_fashion_mnist).
    evaluation_data="fashion-mnist:{{ params.dataset }}",
    description="Move production back to the previous model version and serve it",
    doc_md=__doc__,
)
