"""Fashion-MNIST loader: IDX parsing and validation on tiny generated files, plus the real shared copy."""

from __future__ import annotations

import gzip
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from airflow_provider_mlpipe.datasets import (
    CLASS_NAMES,
    FILES,
    OFFICIAL_MD5,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    check_dataset_dir,
    dataset_checksum,
    default_dataset_dir,
    file_md5,
    load_fashion_mnist,
    load_split,
)
from airflow_provider_mlpipe.exceptions import DatasetError, MlpipeError

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED_DATASET = REPO_ROOT.parent / "shared" / "datasets" / "fashion-mnist"


def _idx_bytes(array: np.ndarray, magic: bytes | None = None) -> bytes:
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _write_gz(path: Path, payload: bytes) -> None:
    with gzip.open(path, "wb") as fh:
        fh.write(payload)


def make_dataset(
    directory: Path,
    n_train: int = 30,
    n_test: int = 12,
    *,
    image_shape: tuple[int, int] = (28, 28),
    labels_override: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write four valid (unless overridden) IDX gzip files with deterministic content."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for images_name, labels_name, n in (
        (TRAIN_IMAGES, TRAIN_LABELS, n_train),
        (TEST_IMAGES, TEST_LABELS, n_test),
    ):
        images = rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8)
        labels = (labels_override or {}).get(labels_name, np.arange(n, dtype=np.uint8) % 10)
        _write_gz(directory / images_name, _idx_bytes(images))
        _write_gz(directory / labels_name, _idx_bytes(np.asarray(labels, dtype=np.uint8)))
    return directory


def test_constants() -> None:
    assert FILES == (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
    assert TRAIN_IMAGES == "train-images-idx3-ubyte.gz"
    assert OFFICIAL_MD5[TEST_LABELS] == "bb300cfdad3c16e7a12a480ee83cd310"
    assert len(CLASS_NAMES) == 10
    assert CLASS_NAMES[0] == "T-shirt/top"
    assert CLASS_NAMES[9] == "Ankle boot"
    assert issubclass(DatasetError, MlpipeError)
    assert issubclass(DatasetError, ValueError)


def test_dataset_module_does_not_import_tensorflow() -> None:
    # Airflow workers import the dataset helpers; a TensorFlow import there would cost seconds and GBs.
    import subprocess

    code = (
        "import sys, airflow_provider_mlpipe.datasets as d; "
        "sys.exit(1 if 'tensorflow' in sys.modules or 'airflow' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_load_valid(tmp_path: Path) -> None:
    directory = make_dataset(tmp_path / "fm")
    check_dataset_dir(directory)
    data = load_fashion_mnist(str(directory))
    assert data.x_train.shape == (30, 28, 28)
    assert data.x_train.dtype == np.uint8
    assert data.y_train.shape == (30,)
    assert data.y_train.dtype == np.uint8
    assert data.x_test.shape == (12, 28, 28)
    assert data.y_test.tolist() == [i % 10 for i in range(12)]
    assert data.checksum.startswith("sha256:")
    assert data.source == str(directory)
    # Frozen: provenance must not change after loading.
    with pytest.raises(AttributeError):
        data.checksum = "x"  # type: ignore[misc]


def test_file_uri(tmp_path: Path) -> None:
    directory = make_dataset(tmp_path / "fm")
    data = load_fashion_mnist(directory.as_uri())
    assert data.x_train.shape[0] == 30
    assert data.checksum == dataset_checksum(directory)


def test_limit(tmp_path: Path) -> None:
    directory = make_dataset(tmp_path / "fm")
    images, labels = load_split(directory, "train", limit=7)
    assert images.shape == (7, 28, 28)
    assert labels.shape == (7,)
    full_images, _ = load_split(directory, "train", limit=None)
    np.testing.assert_array_equal(images, full_images[:7])
    data = load_fashion_mnist(str(directory), train_limit=5, test_limit=3)
    assert (data.x_train.shape[0], data.x_test.shape[0]) == (5, 3)
    # A limit above the size keeps everything.
    assert load_split(directory, "test", limit=1000)[0].shape[0] == 12
    # 0 means "all", matching the trainer's --train-limit 0.
    assert load_split(directory, "test", limit=0)[0].shape[0] == 12


def test_negative_limit_rejected(tmp_path: Path) -> None:
    directory = make_dataset(tmp_path / "fm")
    with pytest.raises(DatasetError, match="train_limit=-1"):
        load_fashion_mnist(str(directory), train_limit=-1)


def test_missing_file_names_file_and_directory(tmp_path: Path) -> None:
    directory = make_dataset(tmp_path / "fm")
    (directory / TEST_LABELS).unlink()
    (directory / TRAIN_IMAGES).unlink()
    with pytest.raises(DatasetError) as info:
        check_dataset_dir(directory)
    message = str(info.value)
    assert TEST_LABELS in message
    assert TRAIN_IMAGES in message
    assert str(directory) in message
    assert "expected" in message
    with pytest.raises(DatasetError, match=TEST_LABELS):
        load_fashion_mnist(str(directory))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset_dir(tmp_path / "nope")


def test_bad_magic(tmp_path: Path) -> None:
    directory = make_dataset(tmp_path / "fm")
    labels = np.zeros(30, dtype=np.uint8)
    _write_gz(directory / TRAIN_LABELS, _idx_bytes(labels, magic=b"\x00\x00\x0d\x01"))
    with pytest.raises(DatasetError) as info:
        check_dataset_dir(directory)
    assert TRAIN_LABELS in str(info.value)
    assert "0x00000d01" in str(info.value)
    with pytest.raises(DatasetError, match="IDX magic 0x00000d01"):
        load_split(directory, "train")


def test_not_gzip(tmp_path: Path) -> None:
    directory = make_dataset(tmp_path / "fm")
    (directory / TEST_IMAGES).write_bytes(b"this is not gzip at all")
    with pytest.raises(DatasetError, match=f"{TEST_IMAGES}.*not a valid gzip"):
        check_dataset_dir(directory)
    with pytest.raises(DatasetError, match="not a valid gzip"):
        load_split(directory, "test")


def test_truncated_payload(tmp_path: Path) -> None:
    directory = make_dataset(tmp_path / "fm")
    good = _idx_bytes(np.zeros((12, 28, 28), dtype=np.uint8))
    _write_gz(directory / TEST_IMAGES, good[:-100])
    with pytest.raises(DatasetError, match="data bytes: expected 9408"):
        load_split(directory, "test")


def test_label_out_of_range(tmp_path: Path) -> None:
    bad = np.arange(30, dtype=np.uint8) % 10
    bad[4] = 12
    directory = make_dataset(tmp_path / "fm", labels_override={TRAIN_LABELS: bad})
    with pytest.raises(DatasetError) as info:
        load_fashion_mnist(str(directory))
    message = str(info.value)
    assert TRAIN_LABELS in message
    assert "label 12 at index 4" in message
    assert "expected 0..9" in message


def test_image_shape_mismatch(tmp_path: Path) -> None:
    directory = make_dataset(tmp_path / "fm", image_shape=(32, 32))
    with pytest.raises(DatasetError) as info:
        load_split(directory, "train")
    message = str(info.value)
    assert TRAIN_IMAGES in message
    assert "[32, 32]" in message
    assert "expected [28, 28]" in message


def test_count_mismatch(tmp_path: Path) -> None:
    directory = make_dataset(tmp_path / "fm")
    _write_gz(directory / TEST_LABELS, _idx_bytes(np.zeros(11, dtype=np.uint8)))
    with pytest.raises(DatasetError, match=r"12 images .* 11 labels .*expected equal counts"):
        load_split(directory, "test")


def test_checksum_stable_and_content_sensitive(tmp_path: Path) -> None:
    first = make_dataset(tmp_path / "a")
    second = make_dataset(tmp_path / "b")
    checksum = dataset_checksum(first)
    assert checksum.startswith("sha256:")
    assert len(checksum) == len("sha256:") + 64
    assert dataset_checksum(first) == checksum
    # gzip embeds an mtime, so compare against an identical byte copy rather than a regenerated file.
    for name in FILES:
        (second / name).write_bytes((first / name).read_bytes())
    assert dataset_checksum(second) == checksum
    assert dataset_checksum(first.as_uri()) == checksum
    _write_gz(second / TEST_LABELS, _idx_bytes(np.ones(12, dtype=np.uint8)))
    assert dataset_checksum(second) != checksum


def test_oss_location_without_credentials_names_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_REGION", "OSS_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(DatasetError) as info:
        load_fashion_mnist("oss://bucket/datasets/fashion-mnist")
    assert "oss://bucket/datasets/fashion-mnist" in str(info.value)
    assert "OSS_ACCESS_KEY_ID" in str(info.value)


def test_unknown_scheme() -> None:
    with pytest.raises(DatasetError, match="unsupported scheme 'http'"):
        load_fashion_mnist("http://example.com/fm")


def test_bad_split(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="split='validation'"):
        load_split(tmp_path, "validation")  # type: ignore[arg-type]


def test_default_dataset_dir_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLPIPE_DATASET_DIR", str(tmp_path))
    assert default_dataset_dir() == str(tmp_path)


def test_default_dataset_dir_shared_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLPIPE_DATASET_DIR", raising=False)
    expected = str(SHARED_DATASET) if SHARED_DATASET.is_dir() else None
    assert default_dataset_dir() == expected


@pytest.mark.skipif(not SHARED_DATASET.is_dir(), reason=f"shared dataset copy absent at {SHARED_DATASET}")
def test_real_shared_copy() -> None:
    for name in FILES:
        assert file_md5(SHARED_DATASET / name) == OFFICIAL_MD5[name], name
    check_dataset_dir(SHARED_DATASET)
    data = load_fashion_mnist(str(SHARED_DATASET))
    assert data.x_train.shape == (60000, 28, 28)
    assert data.y_train.shape == (60000,)
    assert data.x_test.shape == (10000, 28, 28)
    assert data.y_test.shape == (10000,)
    # The official splits are balanced: 6000 / 1000 examples per class.
    assert np.bincount(data.y_train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(data.y_test, minlength=10).tolist() == [1000] * 10
    assert data.checksum == dataset_checksum(SHARED_DATASET)


def test_test_split_as_evaluation_data_from_every_source_form(tmp_path: Path) -> None:
    from airflow_provider_mlpipe.datasets import load_evaluation_source
    from airflow_provider_mlpipe.datasets.fashion_mnist import evaluation_data, write_test_split_npz
    from airflow_provider_mlpipe.evaluation import load_evaluation_data

    directory = make_dataset(tmp_path / "fm", n_test=12)
    images, labels = load_split(directory, "test")
    for location in (f"fashion-mnist:{directory}", f"fashion-mnist:{directory.as_uri()}", str(directory)):
        data = load_evaluation_source(location)
        np.testing.assert_array_equal(data.inputs, images)
        np.testing.assert_array_equal(data.labels, labels)
        assert data.class_names == CLASS_NAMES
    npz = write_test_split_npz(str(directory), tmp_path / "fm-test.npz")
    for data in (load_evaluation_data(npz), load_evaluation_source(str(npz))):
        assert data.inputs.dtype == np.uint8 and data.inputs.shape == (12, 28, 28)
        np.testing.assert_array_equal(data.labels, labels)
        assert data.class_names == CLASS_NAMES
    assert evaluation_data(str(directory)).num_classes == 10


def test_empty_fashion_source_uses_the_default_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow_provider_mlpipe.datasets import load_evaluation_source

    directory = make_dataset(tmp_path / "fm", n_test=5)
    monkeypatch.setenv("MLPIPE_DATASET_DIR", str(directory))
    assert len(load_evaluation_source("fashion-mnist:")) == 5


def test_a_directory_without_the_idx_files_is_refused(tmp_path: Path) -> None:
    from airflow_provider_mlpipe.datasets import load_evaluation_source

    expected = f"evaluation data {str(tmp_path)!r} is a directory: expected an .npz file"
    with pytest.raises(DatasetError, match=re.escape(expected)):
        load_evaluation_source(str(tmp_path))
