"""The names of the pipeline this repository ships (`dags/mlpipe_fashion_mnist.py`, which trains a
Fashion-MNIST classifier): its DAG id, and the model name its versions are stored under by default.

The provider's operators and the store's CLI take any model; they default to these names so that the
shipped pipeline, its webhook route and its CLI work without extra arguments. Import-light: the training
and fetch images import it.
"""

from __future__ import annotations

PIPELINE_DAG_ID = "mlpipe_fashion_mnist"
MODEL_NAME = "fashion_mnist"
