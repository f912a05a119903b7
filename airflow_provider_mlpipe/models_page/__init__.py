"""The Models page: an Airflow UI view of every model in the store (versions, accuracy, aliases,
promotions and rollbacks, evaluation pictures), served by the `mlpipe_models` plugin's FastAPI app."""
