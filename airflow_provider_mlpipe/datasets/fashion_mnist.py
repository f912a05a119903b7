"""Fashion-MNIST loader: IDX gzip parsing and validation with numpy only.

TensorFlow is imported lazily (only for the online Keras download fallback) so that Airflow workers and
the trainer's argument validation can use this module without paying TensorFlow's import cost.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlparse

import numpy as np
import numpy.typing as npt

from airflow_provider_mlpipe.exceptions import DatasetError

if TYPE_CHECKING:
    from airflow_provider_mlpipe.evaluation import EvaluationData

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

# The order matters: dataset_checksum() hashes the files in exactly this order.
FILES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

OFFICIAL_MD5: dict[str, str] = {
    TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
    TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
    TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
}

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE: tuple[int, int] = (28, 28)

TRAIN_SIZE = 60000
TEST_SIZE = 10000

DATASET_DIR_ENV = "MLPIPE_DATASET_DIR"
# Where oss:// datasets are downloaded to (default: <tmp>/mlpipe-datasets).
DATASET_CACHE_ENV = "MLPIPE_DATASET_CACHE"
KERAS_DOWNLOAD = "keras-download"

Split = Literal["train", "test"]

_SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": (TRAIN_IMAGES, TRAIN_LABELS),
    "test": (TEST_IMAGES, TEST_LABELS),
}

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), then the number of dimensions.
_IDX_UBYTE = 0x08
_EXPECTED_NDIM: dict[str, int] = {
    TRAIN_IMAGES: 3,
    TRAIN_LABELS: 1,
    TEST_IMAGES: 3,
    TEST_LABELS: 1,
}

U8Array = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class FashionMnist:
    """The four arrays plus provenance, so a trained model can record exactly which data it saw."""

    x_train: U8Array
    y_train: U8Array
    x_test: U8Array
    y_test: U8Array
    checksum: str
    source: str


def default_dataset_dir() -> str | None:
    """Where to look for the dataset when the caller gave no location.

    The shared copy lives next to the checkout (``<repo>/../shared``) in development and CI, which keeps
    tests and local runs offline.
    """
    env = os.environ.get(DATASET_DIR_ENV, "").strip()
    if env:
        return env
    repo_root = Path(__file__).resolve().parent.parent.parent
    candidate = repo_root.parent / "shared" / "datasets" / "fashion-mnist"
    if candidate.is_dir():
        return str(candidate)
    return None


def resolve_location(location: str) -> Path:
    """Turn a directory path, ``file://`` URI or ``oss://bucket/prefix`` (downloaded) into a local directory."""
    if "://" not in location:
        return Path(location).expanduser()
    parsed = urlparse(location)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DatasetError(
                f"dataset location {location!r} has host {parsed.netloc!r}: expected file:///absolute/path"
            )
        return Path(unquote(parsed.path))
    if parsed.scheme == "oss":
        return fetch_oss_dataset(location)
    raise DatasetError(
        f"dataset location {location!r} has unsupported scheme {parsed.scheme!r}: "
        "expected a local directory, file:// or oss:// URI"
    )


def fetch_oss_dataset(location: str, cache_root: Path | None = None) -> Path:
    """Download the four files under ``oss://bucket/prefix/`` into a local cache directory and return it.

    Uses the model store's OSS backend (same credentials: OSS_* environment variables, same retries and
    CRC64 checks). Files are downloaded on every call, so the data trained on is what the bucket holds now
    (the checksum recorded in the manifest then describes it truthfully).
    """
    from airflow_provider_mlpipe.exceptions import (
        ConfigError,
        ModelStoreError,
        StoreBucketNotFound,
        StoreNotFound,
    )
    from airflow_provider_mlpipe.modelstore.oss import OssBackend, OssCredentials, parse_oss_uri

    try:
        bucket, prefix = parse_oss_uri(location, field="dataset")
        backend = OssBackend(bucket, prefix, OssCredentials.from_env())
    except ConfigError as exc:
        raise DatasetError(f"dataset location {location!r} cannot be opened: {exc}") from exc
    root = cache_root or Path(
        os.environ.get(DATASET_CACHE_ENV) or Path(tempfile.gettempdir()) / "mlpipe-datasets"
    )
    directory = root / bucket / (prefix or "_root")
    directory.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        # Download aside, then rename: a concurrent reader never sees half a file.
        part = directory / f".{name}.{os.getpid()}.part"
        try:
            backend.get_file(name, part)
        except StoreBucketNotFound as exc:
            part.unlink(missing_ok=True)
            raise DatasetError(f"dataset location {location!r}: {exc}") from exc
        except StoreNotFound as exc:
            part.unlink(missing_ok=True)
            raise DatasetError(
                f"dataset location {location!r} is missing {name}: expected all of {', '.join(FILES)}"
            ) from exc
        except ModelStoreError as exc:
            part.unlink(missing_ok=True)
            raise DatasetError(f"dataset location {location!r}: downloading {name} failed: {exc}") from exc
        os.replace(part, directory / name)
    return directory


def _read_idx(path: Path) -> U8Array:
    """Parse one gzip-compressed IDX file of unsigned bytes into an array of its declared shape."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError as exc:
        raise DatasetError(f"dataset file {str(path)!r} does not exist") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"dataset file {str(path)!r} is not a valid gzip file: {exc}") from exc

    if len(raw) < 4:
        raise DatasetError(
            f"dataset file {str(path)!r} holds {len(raw)} bytes: expected an IDX header of at least 4"
        )
    zero1, zero2, dtype_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or dtype_code != _IDX_UBYTE:
        raise DatasetError(
            f"dataset file {str(path)!r} has IDX magic 0x{raw[:4].hex()}: "
            f"expected 0x0000{_IDX_UBYTE:02x}NN (unsigned-byte IDX)"
        )
    expected_ndim = _EXPECTED_NDIM.get(path.name)
    if expected_ndim is not None and ndim != expected_ndim:
        raise DatasetError(f"dataset file {str(path)!r} declares {ndim} dimensions: expected {expected_ndim}")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetError(
            f"dataset file {str(path)!r} is truncated in its header ({len(raw)} bytes): "
            f"expected at least {header_len}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected_bytes = int(np.prod(dims, dtype=np.int64)) if dims else 0
    payload = len(raw) - header_len
    if payload != expected_bytes:
        raise DatasetError(
            f"dataset file {str(path)!r} holds {payload} data bytes: "
            f"expected {expected_bytes} for dims {list(dims)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def check_dataset_dir(path: str | Path) -> None:
    """Fail fast, before any training, when the directory lacks a file or holds a non-IDX file.

    Only the gzip stream head and IDX magic are checked here (cheap); full validation happens on load.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise DatasetError(
            f"dataset directory {str(directory)!r} does not exist or is not a directory: "
            f"expected a directory holding {', '.join(FILES)}"
        )
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise DatasetError(
            f"dataset directory {str(directory)!r} is missing {', '.join(missing)}: "
            f"expected all of {', '.join(FILES)}"
        )
    for name in FILES:
        file_path = directory / name
        try:
            with gzip.open(file_path, "rb") as fh:
                head = fh.read(4)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"dataset file {str(file_path)!r} is not a valid gzip file: {exc}") from exc
        if (
            len(head) < 4
            or head[0] != 0
            or head[1] != 0
            or head[2] != _IDX_UBYTE
            or head[3] != _EXPECTED_NDIM[name]
        ):
            raise DatasetError(
                f"dataset file {str(file_path)!r} has IDX magic 0x{head.hex()}: "
                f"expected 0x0000{_IDX_UBYTE:02x}{_EXPECTED_NDIM[name]:02x}"
            )


def load_split(location: str | Path, split: Split, limit: int | None = None) -> tuple[U8Array, U8Array]:
    """Load one split as (images uint8 [N,28,28], labels uint8 [N]); ``limit`` keeps the first N examples."""
    if split not in _SPLIT_FILES:
        raise DatasetError(f"split={split!r} is invalid: expected 'train' or 'test'")
    if limit is not None and limit < 0:
        raise DatasetError(f"limit={limit!r} is invalid: expected None or an integer >= 0")
    directory = resolve_location(location) if isinstance(location, str) else location
    images_name, labels_name = _SPLIT_FILES[split]
    images_path = directory / images_name
    labels_path = directory / labels_name
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)

    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DatasetError(
            f"dataset file {str(images_path)!r} has image shape {list(images.shape[1:])}: "
            f"expected {list(IMAGE_SHAPE)}"
        )
    if labels.ndim != 1:
        raise DatasetError(f"dataset file {str(labels_path)!r} has shape {list(labels.shape)}: expected [N]")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"dataset split {split!r} has {images.shape[0]} images in {images_name} but "
            f"{labels.shape[0]} labels in {labels_name}: expected equal counts"
        )
    if labels.size:
        max_label = int(labels.max())
        if max_label >= NUM_CLASSES:
            bad_index = int(np.argmax(labels >= NUM_CLASSES))
            raise DatasetError(
                f"dataset file {str(labels_path)!r} has label {int(labels[bad_index])} at index {bad_index}: "
                f"expected 0..{NUM_CLASSES - 1}"
            )
    if limit:
        images = images[:limit]
        labels = labels[:limit]
    # Copies detach the arrays from the read-only decompressed buffer so callers may modify them.
    return np.ascontiguousarray(images).copy(), np.ascontiguousarray(labels).copy()


def dataset_checksum(location: str | Path) -> str:
    """sha256 over the four compressed files, concatenated in FILES order: identifies the exact data used."""
    directory = resolve_location(location) if isinstance(location, str) else location
    digest = hashlib.sha256()
    for name in FILES:
        file_path = directory / name
        try:
            with open(file_path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        except FileNotFoundError as exc:
            raise DatasetError(
                f"dataset file {str(file_path)!r} does not exist: expected one of {', '.join(FILES)}"
            ) from exc
    return f"sha256:{digest.hexdigest()}"


def file_md5(path: str | Path) -> str:
    """md5 of a file, for comparison with OFFICIAL_MD5."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _validate_arrays(name: str, images: U8Array, labels: U8Array) -> None:
    if images.ndim != 3 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise DatasetError(f"{name} images have shape {list(images.shape)}: expected [N, 28, 28]")
    if labels.shape != (images.shape[0],):
        raise DatasetError(f"{name} labels have shape {list(labels.shape)}: expected [{images.shape[0]}]")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DatasetError(f"{name} labels include {int(labels.max())}: expected 0..{NUM_CLASSES - 1}")


def _keras_download(train_limit: int | None, test_limit: int | None) -> FashionMnist:
    import tensorflow as tf  # lazy: only online users without a local copy pay for it

    try:
        (x_train, y_train), (x_test, y_test) = tf.keras.datasets.fashion_mnist.load_data()
    except Exception as exc:  # network errors surface as many types; the caller only needs one
        raise DatasetError(
            f"dataset location was empty, so the Keras download was tried and failed: {exc}; "
            f"expected a reachable download or a local directory (set {DATASET_DIR_ENV})"
        ) from exc
    x_train = np.asarray(x_train, dtype=np.uint8)
    y_train = np.asarray(y_train, dtype=np.uint8)
    x_test = np.asarray(x_test, dtype=np.uint8)
    y_test = np.asarray(y_test, dtype=np.uint8)
    _validate_arrays("train", x_train, y_train)
    _validate_arrays("test", x_test, y_test)
    if train_limit:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    if test_limit:
        x_test, y_test = x_test[:test_limit], y_test[:test_limit]
    return FashionMnist(x_train, y_train, x_test, y_test, checksum=KERAS_DOWNLOAD, source=KERAS_DOWNLOAD)


def load_fashion_mnist(
    location: str | None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> FashionMnist:
    """Load and validate both splits from a directory or ``file://`` URI; use Keras' download if empty."""
    for field, value in (("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise DatasetError(f"{field}={value!r} is invalid: expected None or an integer >= 0 (0 = all)")
    if not location:
        return _keras_download(train_limit, test_limit)
    directory = resolve_location(location)
    check_dataset_dir(directory)
    x_train, y_train = load_split(directory, "train", train_limit)
    x_test, y_test = load_split(directory, "test", test_limit)
    return FashionMnist(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        checksum=dataset_checksum(directory),
        source=location,
    )


def evaluation_data(location: str | None = None) -> EvaluationData:
    """The test split (10,000 images, ``[N, 28, 28]`` uint8) as evaluation data, with the class names.

    ``location`` as for `load_split`; empty: `default_dataset_dir()`, else Keras' download.
    """
    from airflow_provider_mlpipe.evaluation import validate

    location = location or default_dataset_dir()
    if location:
        images, labels = load_split(location, "test")
        source = f"{location} ({TEST_IMAGES}, {TEST_LABELS})"
    else:
        data = load_fashion_mnist(None)
        images, labels, source = data.x_test, data.y_test, KERAS_DOWNLOAD
    return validate(images, labels, np.asarray(CLASS_NAMES), source=source)


def write_test_split_npz(location: str | None, path: str | Path) -> Path:
    """Write the test split as an evaluation-data ``.npz`` (the format any model's evaluation uses)."""
    from airflow_provider_mlpipe.evaluation import write_evaluation_data

    data = evaluation_data(location)
    return write_evaluation_data(path, data.inputs, data.labels, data.class_names)
