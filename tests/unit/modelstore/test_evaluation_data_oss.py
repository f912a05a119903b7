"""Evaluation data on OSS: read through the model store's OSS backend (real oss2 against the emulator)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from airflow_provider_mlpipe.evaluation import load_evaluation_data, write_evaluation_data
from airflow_provider_mlpipe.exceptions import DatasetError
from airflow_provider_mlpipe.modelstore.oss import OssBackend, OssCredentials
from airflow_provider_mlpipe.retries import RetryPolicy


def test_oss_round_trip_and_missing_object(oss: Any, oss_env: dict[str, str], tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    inputs, labels = rng.normal(size=(20, 13)).astype(np.float32), np.arange(20) % 3
    local = write_evaluation_data(tmp_path / "eval.npz", inputs, labels, ["a", "b", "c"])
    creds = OssCredentials.from_env()
    OssBackend("mlpipe-data", "evaluation/wine", creds).put_file("eval.npz", local)

    data = load_evaluation_data("oss://mlpipe-data/evaluation/wine/eval.npz", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(data.inputs, inputs)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.class_names == ("a", "b", "c")
    assert data.source == "oss://mlpipe-data/evaluation/wine/eval.npz"
    assert (tmp_path / "cache" / "mlpipe-data" / "evaluation" / "wine" / "eval.npz").is_file()

    missing = "oss://mlpipe-data/evaluation/wine/other.npz"
    with pytest.raises(DatasetError, match=re.escape(f"evaluation data {missing!r} cannot be downloaded")):
        load_evaluation_data(
            missing, credentials=creds, retry=RetryPolicy(attempts=1), cache_dir=tmp_path / "cache"
        )
    assert not list((tmp_path / "cache" / "mlpipe-data" / "evaluation" / "wine").glob(".*part"))
