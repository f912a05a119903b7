"""The evaluation data contract: what the AccuracySensor scores a served model on, whatever the model.

One `.npz` file (numpy's own zip of arrays, read with ``allow_pickle=False``) with exactly these fields:

- ``inputs``: the examples, any numeric or boolean dtype and any shape the model's input takes; the first
  axis is the example axis (``[N, 28, 28]`` images, ``[N, 13]`` tabular rows, ...). The sensor casts them
  to the dtype the served model declares and checks the rest of the shape against the model's.
- ``labels``: ``[N]`` integer class ids ``0..K-1``, one per example.
- ``class_names`` (optional): ``[K]`` unique, non-empty strings; ``class_names[i]`` names class ``i``.

`write_evaluation_data` produces such a file, `load_evaluation_data` reads and checks one from a local
path, a ``file://`` URI or ``oss://bucket/key.npz`` (through the model store's OSS backend: same
credentials, retries and CRC checks). numpy only: no TensorFlow, no Airflow.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np
import numpy.typing as npt

from airflow_provider_mlpipe.exceptions import ConfigError, DatasetError, ModelStoreError

if TYPE_CHECKING:
    from airflow_provider_mlpipe.modelstore.oss import OssCredentials
    from airflow_provider_mlpipe.retries import RetryPolicy

INPUTS = "inputs"
LABELS = "labels"
CLASS_NAMES = "class_names"
REQUIRED_FIELDS: tuple[str, ...] = (INPUTS, LABELS)
FIELDS: tuple[str, ...] = (INPUTS, LABELS, CLASS_NAMES)
SUFFIX = ".npz"

# Where oss:// evaluation files are downloaded to (default: <tmp>/mlpipe-evaluation).
CACHE_ENV = "MLPIPE_EVALUATION_CACHE"

# Numeric and boolean kinds only: strings would need the server's b64 handling, objects need pickle.
_INPUT_KINDS = "biuf"


@dataclass(frozen=True)
class EvaluationData:
    """Examples and their labels, checked against the contract; `source` names where they came from."""

    inputs: npt.NDArray[Any]
    labels: npt.NDArray[np.int64]
    class_names: tuple[str, ...] | None
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """K: the number of class names when given, else the largest label + 1."""
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1

    def sample(self, size: int, seed: int = 0) -> EvaluationData:
        """A fixed-seed sample of `size` examples (all when `size` is 0 or at least len(self))."""
        if not size or size >= len(self):
            return self
        idx = np.random.default_rng(seed).choice(len(self), size=size, replace=False)
        return EvaluationData(self.inputs[idx], self.labels[idx], self.class_names, self.source)


def _fail(source: str, field: str, value: object, expected: str) -> DatasetError:
    return DatasetError(f"evaluation data {source!r}: field {field!r} is {value}: expected {expected}")


def _shape(arr: np.ndarray) -> str:
    return str(list(arr.shape))


def validate(
    inputs: object,
    labels: object,
    class_names: object = None,
    *,
    source: str = "<arrays>",
) -> EvaluationData:
    """Check arrays against the contract and return them as `EvaluationData` (labels as int64).

    Every error names `source`, the field, the value found and what was expected.
    """
    x = np.asarray(inputs)
    if x.dtype.kind not in _INPUT_KINDS:
        raise _fail(source, INPUTS, f"of dtype {x.dtype}", "a numeric or boolean array")
    if x.ndim < 1 or x.shape[0] == 0:
        raise _fail(source, INPUTS, f"of shape {_shape(x)}", "at least one example on the first axis")
    y = np.asarray(labels)
    if y.dtype.kind not in "iu":
        raise _fail(source, LABELS, f"of dtype {y.dtype}", "integer class ids (int or uint)")
    if y.ndim != 1:
        raise _fail(
            source, LABELS, f"of shape {_shape(y)}", f"[N] (one class id per example, N={x.shape[0]})"
        )
    if y.shape[0] != x.shape[0]:
        raise _fail(
            source, LABELS, f"{y.shape[0]} labels long", f"{x.shape[0]}, one per example of {INPUTS!r}"
        )
    names: tuple[str, ...] | None = None
    if class_names is not None:
        n = np.asarray(class_names)
        if n.dtype.kind != "U" or n.ndim != 1 or n.shape[0] == 0:
            raise _fail(
                source,
                CLASS_NAMES,
                f"of dtype {n.dtype} and shape {_shape(n)}",
                "a non-empty [K] array of strings",
            )
        names = tuple(str(name) for name in n)
        empty = [i for i, name in enumerate(names) if not name.strip()]
        if empty:
            raise _fail(source, CLASS_NAMES, f"empty at index {empty[0]}", "a non-empty name for every class")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise _fail(source, CLASS_NAMES, f"repeating {duplicates}", "unique names")
    if int(y.min()) < 0:
        index = int(np.argmax(y < 0))
        raise _fail(source, LABELS, f"{int(y[index])} at index {index}", "class ids >= 0")
    if names is not None and int(y.max()) >= len(names):
        index = int(np.argmax(y >= len(names)))
        raise _fail(
            source,
            LABELS,
            f"{int(y[index])} at index {index}",
            f"class ids 0..{len(names) - 1} (one per entry of {CLASS_NAMES!r})",
        )
    return EvaluationData(x, y.astype(np.int64), names, source)


def write_evaluation_data(
    path: str | Path,
    inputs: object,
    labels: object,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Check the arrays, then write them as the contract's `.npz` (compressed) at `path`; returns it.

    The file appears whole or not at all (written aside, then renamed), so a reader never sees half of it.
    """
    target = Path(path)
    if target.suffix != SUFFIX:
        raise ConfigError("path", str(path), f"a file name ending in {SUFFIX}")
    data = validate(
        inputs,
        labels,
        None if class_names is None else np.asarray(list(class_names), dtype=str),
        source=str(target),
    )
    arrays: dict[str, np.ndarray] = {INPUTS: data.inputs, LABELS: data.labels}
    if data.class_names is not None:
        arrays[CLASS_NAMES] = np.asarray(data.class_names, dtype=str)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        # mkstemp creates it 0600; the file is meant to be shared (uploaded, read by Airflow's workers).
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_npz(path: Path, source: str | None = None) -> EvaluationData:
    """Read and check one local `.npz` file."""
    where = source or str(path)
    if path.is_dir():
        raise DatasetError(f"evaluation data {where!r} is a directory: expected an {SUFFIX} file")
    if not path.is_file():
        raise DatasetError(f"evaluation data {where!r} does not exist: expected an {SUFFIX} file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(
            f"evaluation data {where!r} is not a readable {SUFFIX} file ({exc}): "
            f"expected a file written by numpy.savez / write_evaluation_data"
        ) from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(
            f"evaluation data {where!r} holds a single array: expected an {SUFFIX} with fields"
        )
    with archive:
        present = list(archive.files)
        missing = [name for name in REQUIRED_FIELDS if name not in present]
        if missing:
            raise DatasetError(
                f"evaluation data {where!r}: field {missing[0]!r} is missing: expected {list(REQUIRED_FIELDS)} "
                f"(and optionally {CLASS_NAMES!r}); found {present}"
            )
        unknown = sorted(set(present) - set(FIELDS))
        if unknown:
            raise DatasetError(
                f"evaluation data {where!r}: unknown field(s) {unknown}: expected only {list(FIELDS)}"
            )
        arrays: dict[str, np.ndarray] = {}
        for name in present:
            try:
                arrays[name] = archive[name]
            except ValueError as exc:  # an object array: loading it would need pickle
                raise _fail(
                    where, name, "an array of Python objects", "a plain numeric or string array"
                ) from exc
            except (OSError, zipfile.BadZipFile, EOFError) as exc:
                raise DatasetError(
                    f"evaluation data {where!r}: field {name!r} cannot be read: {exc}"
                ) from exc
    return validate(arrays[INPUTS], arrays[LABELS], arrays.get(CLASS_NAMES), source=where)


def _fetch_oss(
    location: str, credentials: OssCredentials | None, retry: RetryPolicy | None, cache_root: Path | None
) -> Path:
    from airflow_provider_mlpipe.modelstore.oss import OssBackend, OssCredentials, parse_oss_uri

    bucket, key = parse_oss_uri(location, field="evaluation_data")
    prefix, _, name = key.rpartition("/")
    if not name:
        raise ConfigError("evaluation_data", location, f"oss://bucket/path/to/file{SUFFIX}")
    backend = OssBackend(bucket, prefix, credentials or OssCredentials.from_env(), retry=retry)
    root = cache_root or Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "mlpipe-evaluation")
    directory = root / bucket / (prefix or "_root")
    directory.mkdir(parents=True, exist_ok=True)
    local = directory / name
    # Downloaded aside, then renamed: a concurrent reader of the cache never sees half a file.
    part = directory / f".{name}.{os.getpid()}.part"
    try:
        backend.get_file(name, part)
    except ModelStoreError as exc:
        part.unlink(missing_ok=True)
        raise DatasetError(f"evaluation data {location!r} cannot be downloaded: {exc}") from exc
    os.replace(part, local)
    return local


def load_evaluation_data(
    location: str | Path,
    *,
    credentials: OssCredentials | None = None,
    retry: RetryPolicy | None = None,
    cache_dir: Path | None = None,
) -> EvaluationData:
    """Read the `.npz` at a local path, `file:///abs/path.npz` or `oss://bucket/key.npz`.

    `credentials` / `retry` are for oss:// (default: the OSS_* environment variables, `RetryPolicy()`);
    the file is downloaded on every call into `cache_dir`, so what is scored is what the bucket holds now.
    """
    if isinstance(location, Path):
        return read_npz(location)
    if not isinstance(location, str) or not location.strip():
        raise ConfigError(
            "evaluation_data", location, f"a path, file:// or oss:// URI of an {SUFFIX} file (inputs, labels)"
        )
    if "://" not in location:
        return read_npz(Path(location).expanduser(), location)
    parsed = urlparse(location)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError("evaluation_data", location, f"file:///absolute/path{SUFFIX} (no host part)")
        return read_npz(Path(unquote(parsed.path)), location)
    if parsed.scheme == "oss":
        return read_npz(_fetch_oss(location, credentials, retry, cache_dir), location)
    raise ConfigError("evaluation_data", location, f"a local path, file:// or oss:// URI of an {SUFFIX} file")
