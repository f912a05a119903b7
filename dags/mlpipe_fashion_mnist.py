"""mlpipe_fashion_mnist: pushed training image -> trained, tested, human-approved model in production.

train -> deploy staging (and point the store's `staging` alias at it) -> accuracy gate -> human approval
-> deploy production -> verify (or roll back) -> promote in the model store. Staging is torn down in every
outcome; the last task records how the run ended and fails the run if any step failed.

Trigger it from the UI's trigger form, `airflow dags trigger mlpipe_fashion_mnist --conf '{...}'`,
the REST API (`POST /api/v2/dags/mlpipe_fashion_mnist/dagRuns` with `conf`), or the ACR webhook.
"""

from __future__ import annotations

from airflow_provider_mlpipe.datasets import check_dataset_dir
from airflow_provider_mlpipe.demo.pipeline import MODEL_NAME, PIPELINE_DAG_ID
from airflow_provider_mlpipe.pipeline import build_pipeline

dag = build_pipeline(
    dag_id=PIPELINE_DAG_ID,
    model_name=MODEL_NAME,
    # The Fashion-MNIST test split of the run's dataset (empty: MLPIPE_DATASET_DIR, the shared copy, or
    # Keras' download), read as evaluation data (airflow_provider_mlpipe.datasets.load_evaluation_source).
    evaluation_data="fashion-mnist:{{ params.dataset }}",
    # A run with a dataset directory lacking one of the four IDX files fails before training, naming it.
    dataset_check=check_dataset_dir,
    description="Train, stage, gate, approve and deploy a Fashion-MNIST model from a pushed image",
    doc_md=__doc__,
)
