"""The model side: loading one SavedModel version (its signatures, their metadata, a warm-up), and the
ModelManager that owns a model's versions: which one serves, their states as GetModelStatus reports them,
and the poll-and-swap loop (TF Serving's latest-1 policy). Only versions carrying the store's `_PUBLISHED`
marker count. TensorFlow is imported by the loader only, so the server answers (and reports argument
errors) before it is loaded."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from airflow_provider_mlpipe.modelstore import published_versions_in_dir

from .errors import ApiError, invalid

# The same logger name in every module of the server: its log lines read as one component's.
logger = logging.getLogger("airflow_provider_mlpipe.serving")

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
_WARMUP_BATCH = 1000
_WARMUP_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class TensorSpecInfo:
    name: str
    dtype: np.dtype[Any] | None  # None: a dtype this server cannot build from JSON (e.g. string)
    dtype_name: str  # TF's enum name, e.g. DT_FLOAT, used in messages
    shape: tuple[int | None, ...] | None  # None: unknown rank


@dataclass
class Signature:
    name: str
    method_name: str
    inputs: dict[str, TensorSpecInfo]
    outputs: list[str]
    fn: Any  # the ConcreteFunction from tf.saved_model.load(...).signatures


@dataclass
class Servable:
    model_name: str
    version: int
    path: Path
    signatures: dict[str, Signature]
    metadata_signature_def: dict[str, Any]
    keepalive: Any = None  # the loaded SavedModel object: its variables must outlive the functions


@dataclass
class VersionState:
    state: str  # START | LOADING | AVAILABLE | UNLOADING | END, as GetModelStatus reports them
    error_code: str = "OK"
    error_message: str = ""


def _shape_tuple(spec_shape: Any) -> tuple[int | None, ...] | None:
    if spec_shape.rank is None:
        return None
    return tuple(None if d is None else int(d) for d in spec_shape.as_list())


def _signature_def_json(saved_model_dir: Path) -> dict[str, Any] | None:
    """The SavedModel's SignatureDefMap as TF Serving's metadata endpoint prints it (proto field names)."""
    pb_path = saved_model_dir / "saved_model.pb"
    if not pb_path.is_file():
        return None
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pb_path.read_bytes())
    if not proto.meta_graphs:
        return None
    out: dict[str, Any] = {}
    for key, sig_def in proto.meta_graphs[0].signature_def.items():
        try:  # protobuf >= 5.26 renamed the "print defaults" switch
            out[key] = json_format.MessageToDict(
                sig_def, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        except TypeError:  # pragma: no cover - older protobuf
            out[key] = json_format.MessageToDict(
                sig_def, preserving_proto_field_name=True, including_default_value_fields=True
            )
    return out


def _signature_def_from_specs(signatures: dict[str, Signature]) -> dict[str, Any]:
    """Fallback metadata when saved_model.pb cannot be parsed: built from the loaded functions' specs."""

    def tensor(info: TensorSpecInfo) -> dict[str, Any]:
        shape: dict[str, Any] = (
            {"dim": [], "unknown_rank": True}
            if info.shape is None
            else {
                "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in info.shape],
                "unknown_rank": False,
            }
        )
        return {"dtype": info.dtype_name, "tensor_shape": shape, "name": f"{info.name}:0"}

    return {
        name: {
            "inputs": {k: tensor(v) for k, v in sig.inputs.items()},
            "outputs": {k: {"name": k} for k in sig.outputs},
            "method_name": sig.method_name,
            "defaults": {},
        }
        for name, sig in signatures.items()
    }


def load_servable(model_name: str, version: int, path: Path) -> Servable:
    """Load one version with `tf.saved_model.load(...).signatures` and warm every signature up once."""
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    loaded = tf.saved_model.load(str(path))
    try:
        sig_json = _signature_def_json(path)
    except Exception as exc:  # a .pbtxt model or a proto we cannot parse: metadata from the specs instead
        logger.warning("could not read signature defs of %s for metadata: %s", path, exc)
        sig_json = None
    signatures: dict[str, Signature] = {}
    for sig_name, fn in loaded.signatures.items():
        inputs: dict[str, TensorSpecInfo] = {}
        for in_name, spec in fn.structured_input_signature[1].items():
            np_dtype: np.dtype[Any] | None
            try:
                np_dtype = None if spec.dtype == tf.string else np.dtype(spec.dtype.as_numpy_dtype)
            except TypeError:
                np_dtype = None
            inputs[in_name] = TensorSpecInfo(
                name=in_name,
                dtype=np_dtype,
                dtype_name=types_pb2.DataType.Name(spec.dtype.as_datatype_enum),
                shape=_shape_tuple(spec.shape),
            )
        outputs = sorted(fn.structured_outputs) if isinstance(fn.structured_outputs, dict) else []
        method = PREDICT_METHOD
        if sig_json and sig_name in sig_json:
            method = sig_json[sig_name].get("method_name") or PREDICT_METHOD
        signatures[sig_name] = Signature(sig_name, method, inputs, outputs, fn)
    servable = Servable(
        model_name=model_name,
        version=version,
        path=path,
        signatures=signatures,
        metadata_signature_def=sig_json if sig_json is not None else _signature_def_from_specs(signatures),
        keepalive=loaded,
    )
    _warm_up(servable)
    return servable


def _warm_up(servable: Servable) -> None:
    """Run each signature on dummy batches before reporting AVAILABLE.

    The first call of a shape builds oneDNN primitives and grows the allocator: 10-100x a normal call
    (~0.8 s for a 1000-image batch of the contract CNN). Batch 1 covers single-image latency; a large batch
    (capped at ~4M elements so big inputs cannot exhaust memory) covers the bulk-scoring path.
    """
    for sig in servable.signatures.values():
        specs: list[tuple[str, np.dtype[Any], tuple[int | None, ...]]] = []
        for info in sig.inputs.values():
            if info.dtype is None or info.shape is None:
                break
            specs.append((info.name, info.dtype, info.shape))
        else:
            per_example = max((math.prod(d or 1 for d in shape[1:]) for _, _, shape in specs), default=1)
            big = max(1, min(_WARMUP_BATCH, _WARMUP_ELEMENTS // max(per_example, 1)))
            for batch in (1, 1, big, big, big):
                feeds = {
                    name: np.zeros(
                        [batch if i == 0 and d is None else (d or 1) for i, d in enumerate(shape)],
                        dtype=dtype,
                    )
                    for name, dtype, shape in specs
                }
                try:
                    run_signature(sig, feeds)
                except Exception as exc:  # only an optimisation; a real request will report the error
                    logger.warning("warm-up of signature %r with batch %d failed: %s", sig.name, batch, exc)
                    break


def run_signature(sig: Signature, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    result = sig.fn(**feeds)
    if not isinstance(result, dict):
        result = {"output_0": result}
    return {name: value.numpy() for name, value in result.items()}


@dataclass
class ModelManager:
    """Owns the versions of one model: which are loaded, their states, and the poll-and-swap loop."""

    model_name: str
    base_path: Path
    pinned_version: int | None = None
    poll_wait_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Replaced wholesale (never mutated) so request threads read a consistent snapshot without locking.
    _servables: dict[int, Servable] = field(default_factory=dict)
    _states: dict[int, VersionState] = field(default_factory=dict)
    _failed: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _warned_empty: bool = False
    _loading: bool = False

    # -- lifecycle
    def start(self) -> None:
        # Scan synchronously (cheap, no TensorFlow) so the very first status request already reports LOADING.
        target = self._pick_target()
        if target is not None:
            self._set_state(target, VersionState("LOADING"))
        self._thread = threading.Thread(target=self._run, args=(target,), name="model-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._loading

    def _run(self, first_target: int | None) -> None:
        try:
            self._sync(first_target)
            while self.poll_wait_seconds > 0 and not self._stop.wait(self.poll_wait_seconds):
                self._sync(self._pick_target())
        except Exception:  # the loader must never die silently: the server would serve stale state forever
            logger.exception("model loader thread failed")

    def _pick_target(self) -> int | None:
        versions = published_versions_in_dir(self.base_path)
        if self.pinned_version is not None:
            if self.pinned_version in versions:
                return self.pinned_version
            if not self._warned_empty:
                logger.warning(
                    "model_version=%d of servable %s is not published under base path %s (published: %s)",
                    self.pinned_version,
                    self.model_name,
                    self.base_path,
                    versions,
                )
                self._warned_empty = True
            return None
        if not versions:
            if not self._warned_empty:
                logger.warning(
                    "No versions of servable %s found under base path %s (a version needs the store's "
                    "completion marker)",
                    self.model_name,
                    self.base_path,
                )
                self._warned_empty = True
            return None
        self._warned_empty = False
        return versions[-1]

    def _sync(self, target: int | None) -> None:
        """Load `target` if it is not what we serve, then retire the others (TF Serving's latest-1 policy)."""
        current = self._servables
        if target is None or self._stop.is_set() or target in self._failed:
            return
        if set(current) == {target}:
            return
        self._loading = True
        try:
            self._set_state(target, VersionState("LOADING"))
            path = self.base_path / str(target)
            logger.info(
                "Loading servable version {name: %s version: %d} from %s", self.model_name, target, path
            )
            started = time.monotonic()
            try:
                servable = load_servable(self.model_name, target, path)
            except Exception as exc:
                self._failed.add(target)
                self._set_state(target, VersionState("END", "UNKNOWN", f"Failed to load {path}: {exc}"))
                logger.exception(
                    "Loading servable version {name: %s version: %d} failed", self.model_name, target
                )
                return
            with self._lock:
                retired = [v for v in self._servables if v != target]
                self._servables = {target: servable}  # the atomic switch: one reference assignment
                states = dict(self._states)
                states[target] = VersionState("AVAILABLE")
                for v in retired:
                    states[v] = VersionState("END")
                self._states = states
            logger.info(
                "Successfully loaded servable version {name: %s version: %d} in %.2fs%s",
                self.model_name,
                target,
                time.monotonic() - started,
                f"; unloaded versions {retired}" if retired else "",
            )
        finally:
            self._loading = False

    def _set_state(self, version: int, state: VersionState) -> None:
        with self._lock:
            states = dict(self._states)
            states[version] = state
            self._states = states

    # -- request side
    def _check_name(self, name: str, label: str | None, version: int | None) -> None:
        if label is not None:
            raise invalid(f"Unrecognized servable version label: {label}")
        if name != self.model_name:
            raise ApiError("NOT_FOUND", f"Servable not found for request: {_request_str(name, version)}")

    def servable(self, name: str, version: int | None, label: str | None) -> Servable:
        self._check_name(name, label, version)
        servables = self._servables
        if version is None:
            if servables:
                return servables[max(servables)]
        elif version in servables:
            return servables[version]
        raise ApiError("NOT_FOUND", f"Servable not found for request: {_request_str(name, version)}")

    def status(self, name: str, version: int | None, label: str | None) -> dict[str, Any]:
        if label is not None:
            raise invalid(f"Unrecognized servable version label: {label}")
        states = self._states if name == self.model_name else {}
        if version is not None:
            if version not in states:
                raise ApiError("NOT_FOUND", f"Could not find version {version} of model {name}")
            selected = [(version, states[version])]
        else:
            if not states:
                raise ApiError("NOT_FOUND", f"Could not find any versions of model {name}")
            selected = sorted(states.items(), reverse=True)
        return {
            "model_version_status": [
                {
                    "version": str(v),
                    "state": s.state,
                    "status": {"error_code": s.error_code, "error_message": s.error_message},
                }
                for v, s in selected
            ]
        }


def _request_str(name: str, version: int | None) -> str:
    # ServableRequest::DebugString() wording, which clients match on.
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"
