"""The evaluation data contract: write -> load round trips, and every way a file can break it."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from airflow_provider_mlpipe.evaluation import (
    EvaluationData,
    load_evaluation_data,
    validate,
    write_evaluation_data,
)
from airflow_provider_mlpipe.exceptions import ConfigError, DatasetError

NAMES = ("setosa", "versicolor", "virginica")


def tabular(n: int = 30, features: int = 13, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(np.float64), np.arange(n) % 3


def raw_npz(path: Path, **arrays: Any) -> Path:
    """An .npz written without the contract's checks (what a careless producer might write)."""
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("inputs", "labels", "names"),
    [
        (*tabular(), NAMES),
        (*tabular(7, 4), None),
        (
            np.arange(5 * 8 * 8, dtype=np.uint8).reshape(5, 8, 8),
            np.array([0, 1, 2, 3, 4], dtype=np.uint8),
            None,
        ),
        (np.array([[True, False], [False, True]]), np.array([1, 0], dtype=np.int32), ("no", "yes")),
    ],
)
def test_round_trip_keeps_every_array_and_dtype(
    tmp_path: Path, inputs: np.ndarray, labels: np.ndarray, names: tuple[str, ...] | None
) -> None:
    path = write_evaluation_data(tmp_path / "sub" / "eval.npz", inputs, labels, names)
    assert path == tmp_path / "sub" / "eval.npz"
    for location in (str(path), path, path.as_uri()):
        data = load_evaluation_data(location)
        assert isinstance(data, EvaluationData)
        np.testing.assert_array_equal(data.inputs, inputs)
        assert data.inputs.dtype == inputs.dtype
        np.testing.assert_array_equal(data.labels, labels)
        assert data.labels.dtype == np.int64
        assert data.class_names == names
        assert len(data) == len(labels)
    assert not [p for p in path.parent.iterdir() if p.name != "eval.npz"]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644


def test_num_classes_from_names_else_from_labels() -> None:
    x, y = tabular(6)
    assert validate(x, y, np.asarray(("a", "b", "c", "d"))).num_classes == 4
    assert validate(x, y).num_classes == 3


def test_sample_is_fixed_seed_and_keeps_pairs() -> None:
    x = np.arange(100).reshape(100, 1)
    data = validate(x, np.arange(100) % 3, np.asarray(NAMES))
    first, again = data.sample(10), data.sample(10)
    np.testing.assert_array_equal(first.inputs, again.inputs)
    assert len(first) == 10 and len(set(first.inputs[:, 0].tolist())) == 10
    np.testing.assert_array_equal(first.labels, first.inputs[:, 0] % 3)
    assert first.class_names == NAMES
    assert data.sample(0) is data and data.sample(1000) is data


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"inputs": np.array(["a", "b"]), "labels": np.array([0, 1])},
            "field 'inputs' is of dtype <U1: expected a numeric or boolean array",
        ),
        (
            {"inputs": np.zeros((0, 3)), "labels": np.zeros(0, dtype=int)},
            "field 'inputs' is of shape [0, 3]: expected at least one example on the first axis",
        ),
        (
            {"inputs": np.zeros((2, 3)), "labels": np.array([0.0, 1.0])},
            "field 'labels' is of dtype float64: expected integer class ids",
        ),
        (
            {"inputs": np.zeros((2, 3)), "labels": np.array([[0], [1]])},
            "field 'labels' is of shape [2, 1]: expected [N] (one class id per example, N=2)",
        ),
        (
            {"inputs": np.zeros((3, 3)), "labels": np.array([0, 1])},
            "field 'labels' is 2 labels long: expected 3, one per example of 'inputs'",
        ),
        (
            {"inputs": np.zeros((2, 3)), "labels": np.array([0, -1])},
            "field 'labels' is -1 at index 1: expected class ids >= 0",
        ),
        (
            {"inputs": np.zeros((2, 3)), "labels": np.array([0, 3]), "class_names": np.array(NAMES)},
            "field 'labels' is 3 at index 1: expected class ids 0..2 (one per entry of 'class_names')",
        ),
        (
            {"inputs": np.zeros((2, 3)), "labels": np.array([0, 1]), "class_names": np.array([1, 2])},
            "field 'class_names' is of dtype int64 and shape [2]: expected a non-empty [K] array of strings",
        ),
        (
            {"inputs": np.zeros((2, 3)), "labels": np.array([0, 1]), "class_names": np.array(["a", " "])},
            "field 'class_names' is empty at index 1: expected a non-empty name for every class",
        ),
        (
            {
                "inputs": np.zeros((2, 3)),
                "labels": np.array([0, 1]),
                "class_names": np.array(["a", "b", "a"]),
            },
            "field 'class_names' is repeating ['a']: expected unique names",
        ),
        (
            {"inputs": np.zeros((2, 3)), "labels": np.array([0, 1]), "label_names": np.array(["a", "b"])},
            "unknown field(s) ['label_names']: expected only ['inputs', 'labels', 'class_names']",
        ),
        (
            {"inputs": np.zeros((2, 3)), "label": np.array([0, 1])},
            "field 'labels' is missing: expected ['inputs', 'labels'] (and optionally 'class_names'); "
            "found ['inputs', 'label']",
        ),
        (
            {"inputs": np.array([{"a": 1}, None], dtype=object), "labels": np.array([0, 1])},
            "field 'inputs' is an array of Python objects: expected a plain numeric or string array",
        ),
    ],
)
def test_every_broken_file_is_refused_naming_file_field_value_and_expectation(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = raw_npz(tmp_path / "eval.npz", **arrays)
    with pytest.raises(DatasetError) as err:
        load_evaluation_data(str(path))
    assert str(err.value).startswith(f"evaluation data {str(path)!r}")
    assert message in str(err.value)


def test_the_writer_refuses_what_the_reader_would(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=re.escape("field 'labels' is 1 labels long: expected 2")):
        write_evaluation_data(tmp_path / "eval.npz", np.zeros((2, 3)), np.array([0]))
    assert not list(tmp_path.iterdir())
    with pytest.raises(
        ConfigError, match=re.escape("path='x.npy' is invalid: expected a file name ending in .npz")
    ):
        write_evaluation_data("x.npy", np.zeros((2, 3)), np.array([0, 1]))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a zip at all", "is not a readable .npz file"),
        (b"PK\x03\x04truncated", "is not a readable .npz file"),
    ],
)
def test_a_file_that_is_not_an_npz_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "eval.npz"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=re.escape(f"evaluation data {str(path)!r} {message}")):
        load_evaluation_data(str(path))


def test_a_single_npy_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "eval.npz"
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    path.write_bytes(buf.getvalue())
    with pytest.raises(DatasetError, match=re.escape("holds a single array: expected an .npz with fields")):
        load_evaluation_data(path)


def test_a_corrupt_member_is_named(tmp_path: Path) -> None:
    path = raw_npz(tmp_path / "eval.npz", inputs=np.zeros((2, 3)), labels=np.array([0, 1]))
    # Same names, garbage bytes in one member: the zip opens, that array does not.
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members["labels.npy"] = b"\x93NUMPY garbage"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(DatasetError, match=re.escape(f"evaluation data {str(path)!r}: field 'labels'")):
        load_evaluation_data(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(DatasetError, match=re.escape(f"evaluation data {str(missing)!r} does not exist")):
        load_evaluation_data(str(missing))
    with pytest.raises(DatasetError, match=re.escape(f"evaluation data {missing.as_uri()!r} does not exist")):
        load_evaluation_data(missing.as_uri())


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("", "a path, file:// or oss:// URI of an .npz file"),
        ("file://host/data/eval.npz", "file:///absolute/path.npz (no host part)"),
        ("s3://bucket/eval.npz", "a local path, file:// or oss:// URI of an .npz file"),
        ("oss://Bad_Bucket/eval.npz", "oss://<bucket>/<prefix> with a valid OSS bucket name"),
    ],
)
def test_bad_locations_are_config_errors(location: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_evaluation_data(location)
    assert expected in str(err.value)
    assert err.value.field == "evaluation_data"
