"""Where evaluation data can come from: the `.npz` contract (`airflow_provider_mlpipe.evaluation`), or a
dataset this package knows how to read and turn into it.

- ``fashion-mnist:`` or ``fashion-mnist:<location>``: the Fashion-MNIST test split from the IDX files at
  ``<location>`` (a directory, ``file://`` or ``oss://`` prefix); empty: ``MLPIPE_DATASET_DIR``, the shared
  copy, else Keras' download.
- a local directory holding the Fashion-MNIST test IDX files: the same (what the sensor's ``dataset``
  argument meant before the contract existed).
- anything else: an ``.npz`` at a local path, ``file://`` or ``oss://`` URI.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from airflow_provider_mlpipe.datasets import fashion_mnist
from airflow_provider_mlpipe.evaluation import SUFFIX, EvaluationData, load_evaluation_data

if TYPE_CHECKING:
    from airflow_provider_mlpipe.modelstore.oss import OssCredentials
    from airflow_provider_mlpipe.retries import RetryPolicy

FASHION_MNIST_SOURCE = "fashion-mnist:"


def _local_dir(location: str) -> Path | None:
    if location.endswith(SUFFIX):
        return None
    if "://" not in location:
        path = Path(location).expanduser()
    elif location.startswith("file://"):
        path = Path(unquote(urlparse(location).path))
    else:
        return None
    return path if path.is_dir() else None


def load_evaluation_source(
    location: str,
    *,
    credentials: OssCredentials | None = None,
    retry: RetryPolicy | None = None,
) -> EvaluationData:
    """Evaluation data from `location` (see the module docstring for the forms it takes)."""
    if isinstance(location, str) and location.startswith(FASHION_MNIST_SOURCE):
        return fashion_mnist.evaluation_data(location[len(FASHION_MNIST_SOURCE) :] or None)
    if isinstance(location, str):
        directory = _local_dir(location)
        if directory is not None and (directory / fashion_mnist.TEST_IMAGES).is_file():
            return fashion_mnist.evaluation_data(str(directory))
    return load_evaluation_data(location, credentials=credentials, retry=retry)
