"""A TensorFlow-Serving-compatible REST model server for local runs (the containers run the real one).

Run as::

    python -m airflow_provider_mlpipe.images.serving.server --model_name=mnist \\
        --model_base_path=file:///var/mlpipe/models/mnist [--rest_api_port=8501] [--model_version=N] \\
        [--host=127.0.0.1] [--file_system_poll_wait_seconds=0] [--verbose]

Flags keep the names of `tensorflow_model_server`, and the REST surface (paths, JSON shapes, error bodies and
status codes) follows TF Serving's `http_rest_api_handler`, so the operators, sensors and clients that talk to
the production TF Serving pods work unchanged against this process. Only versions carrying the store's
`_PUBLISHED` marker count (docs/CONTRACTS.md).

The port is bound first and the model loads in a background thread, so a readiness probe sees the version
as LOADING, then AVAILABLE (or END with the load error). TensorFlow is imported lazily by the loader so that
argument errors are reported instantly.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np

from airflow_provider_mlpipe.holds import hold
from airflow_provider_mlpipe.modelstore import published_versions_in_dir

logger = logging.getLogger("airflow_provider_mlpipe.serving")

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

try:  # msgspec ships with Airflow and decodes big numeric payloads ~2x faster than the stdlib.
    import msgspec

    _json_decode: Any = msgspec.json.decode
    _JSON_DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, ValueError)
except ImportError:  # pragma: no cover - depends on the environment
    _json_decode = json.loads
    _JSON_DECODE_ERRORS = (ValueError,)

# TF Serving's mapping of canonical status codes to HTTP codes (model_servers/http_server.cc).
_HTTP_STATUS: dict[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

# Same path grammar as TF Serving (http_rest_api_util.cc), case-insensitive like its RE2 patterns.
_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I
)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I
)
_INT64_MAX = 2**63 - 1
_WARMUP_BATCH = 1000
_WARMUP_ELEMENTS = 4_000_000
_MAX_ECHO = 200  # error messages quote the offending JSON, but a 3 MB batch must not come back in one


class ApiError(Exception):
    """A request failed with one of TF Serving's canonical status codes."""

    def __init__(
        self, code: str, message: str, http_status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status if http_status is not None else _HTTP_STATUS.get(code, 500)
        self.headers = headers or {}


def _invalid(message: str) -> ApiError:
    return ApiError("INVALID_ARGUMENT", message)


def _echo(value: object) -> str:
    """Compact JSON of a request fragment for an error message, truncated so errors stay small."""
    try:
        text = json.dumps(value, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "...(truncated)"


# --------------------------------------------------------------------------------------------- model side


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


# ---------------------------------------------------------------------------------------- JSON <-> tensor


def _is_b64(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _to_array(value: object, info: TensorSpecInfo, where: str, batched: bool) -> np.ndarray:
    """JSON value -> ndarray of the signature's dtype; checks the shape against the signature's."""
    if info.dtype is None:
        raise ApiError(
            "UNIMPLEMENTED",
            f"{where}: input {info.name!r} has dtype {info.dtype_name}; this server converts only numeric "
            "and boolean JSON values",
        )
    try:
        arr = np.asarray(value, dtype=info.dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _invalid(
            f"{where}: input {info.name!r} must be a dense (non-ragged) list of {info.dtype_name} values, "
            f"got {_echo(value)} ({exc})"
        ) from None
    if info.shape is not None:
        expected = info.shape
        got = arr.shape
        ok = len(got) == len(expected) and all(
            e is None or e == g for e, g in zip(expected, got, strict=False)
        )
        if not ok:
            shown = "[" + ",".join("-1" if d is None else str(d) for d in expected) + "]"
            prefix = "with the batch dimension " if batched else ""
            raise _invalid(
                f"{where}: input {info.name!r} has shape [{','.join(map(str, got))}] {prefix}but the "
                f"signature expects {shown} (-1 = any size)"
            )
    return arr


def feeds_from_instances(instances: object, sig: Signature) -> dict[str, np.ndarray]:
    """Row format: `instances` is a list, one element per example (plain values, or objects by input name)."""
    if not isinstance(instances, list):
        raise _invalid(f"JSON Value: {_echo(instances)} Excepting 'instances' to be an list/array")
    if not instances:
        raise _invalid("JSON Value: [] No values in 'instances' array")
    first = instances[0]
    if isinstance(first, dict) and not _is_b64(first):
        names = set(sig.inputs)
        columns: dict[str, list[Any]] = {name: [] for name in sig.inputs}
        for i, elem in enumerate(instances):
            if not isinstance(elem, dict) or _is_b64(elem):
                raise _invalid(f"Expecting object but got list at item {i} of input list")
            if set(elem) != names:
                raise _invalid(
                    f"Failed to process element: {i} of 'instances' list. JSON object: {_echo(elem)} keys "
                    f"must be equal to: {','.join(sorted(names))}"
                )
            for name, value in elem.items():
                columns[name].append(value)
        return {
            name: _to_array(columns[name], sig.inputs[name], "'instances'", batched=True)
            for name in sig.inputs
        }
    if len(sig.inputs) > 1:
        raise _invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as "
            f"per tensorinfo_map (inputs: {','.join(sorted(sig.inputs))})"
        )
    (info,) = sig.inputs.values()
    if any(isinstance(elem, dict) and not _is_b64(elem) for elem in instances):
        raise _invalid("Expecting value/list but got object in 'instances' list")
    return {info.name: _to_array(instances, info, "'instances'", batched=True)}


def feeds_from_inputs(inputs: object, sig: Signature) -> dict[str, np.ndarray]:
    """Columnar format: `inputs` is the one input's tensor, or an object keyed by input name."""
    if isinstance(inputs, dict) and not _is_b64(inputs):
        feeds: dict[str, np.ndarray] = {}
        for name, info in sig.inputs.items():
            if name not in inputs:
                raise _invalid(f"Missing named input: {name} in 'inputs' object.")
            feeds[name] = _to_array(inputs[name], info, "'inputs'", batched=False)
        return feeds
    if len(sig.inputs) > 1:
        raise _invalid(
            "inputs is a plain value/list, but expecting an object as multiple input tensors required as "
            f"per tensorinfo_map (inputs: {','.join(sorted(sig.inputs))})"
        )
    (info,) = sig.inputs.values()
    return {info.name: _to_array(inputs, info, "'inputs'", batched=False)}


def _join_strings(arr: np.ndarray) -> str:
    if arr.ndim == 0:
        return str(arr.item())
    if arr.ndim == 1:
        return "[" + ",".join(arr.tolist()) + "]"
    return "[" + ",".join(_join_strings(sub) for sub in arr) + "]"


def tensor_json(arr: np.ndarray) -> str:
    """A tensor as JSON text, floats in their shortest round-trip float32 form like TF Serving writes them."""
    if arr.dtype.kind == "f":
        text = arr.astype(str)
        if not np.isfinite(arr).all():  # TF Serving writes the (non-standard) NaN/Infinity tokens
            text = np.where(np.isnan(arr), "NaN", text)
            text = np.where(np.isposinf(arr), "Infinity", text)
            text = np.where(np.isneginf(arr), "-Infinity", text)
        return _join_strings(text)
    if arr.dtype.kind in "biu":
        return json.dumps(arr.tolist(), separators=(",", ":"))
    if arr.dtype.kind in "SO":

        def conv(v: object) -> object:
            if isinstance(v, bytes):
                try:
                    return v.decode("utf-8")
                except UnicodeDecodeError:
                    return {"b64": base64.b64encode(v).decode("ascii")}
            return v

        return json.dumps(np.vectorize(conv, otypes=[object])(arr).tolist() if arr.ndim else conv(arr.item()))
    return json.dumps(arr.tolist())


def predictions_json(outputs: dict[str, np.ndarray], row_format: bool) -> bytes:
    names = sorted(outputs)
    if not row_format:
        if len(names) == 1:
            return ('{"outputs":' + tensor_json(outputs[names[0]]) + "}").encode()
        body = ",".join(json.dumps(n) + ":" + tensor_json(outputs[n]) for n in names)
        return ('{"outputs":{' + body + "}}").encode()
    batch: int | None = None
    for name in names:
        arr = outputs[name]
        if arr.ndim == 0:
            raise _invalid(
                f"Tensor name: {name} has no shape information (a scalar cannot be split per instance)"
            )
        if batch is None:
            batch = arr.shape[0]
        elif arr.shape[0] != batch:
            raise _invalid(
                f"Tensor name: {name} has inconsistent batch size: {arr.shape[0]} expecting: {batch}"
            )
    if len(names) == 1:
        return ('{"predictions":' + tensor_json(outputs[names[0]]) + "}").encode()
    per_name = {n: [tensor_json(row) for row in outputs[n]] for n in names}
    rows = [
        "{" + ",".join(json.dumps(n) + ":" + per_name[n][i] for n in names) + "}" for i in range(batch or 0)
    ]
    return ('{"predictions":[' + ",".join(rows) + "]}").encode()


# ------------------------------------------------------------------------------------------- the model


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
            raise _invalid(f"Unrecognized servable version label: {label}")
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
            raise _invalid(f"Unrecognized servable version label: {label}")
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


# --------------------------------------------------------------------------------------------- REST API


class RestApi:
    """Path routing and the four TF Serving REST operations, independent of the HTTP plumbing."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        path = unquote(raw_path.split("?", 1)[0])
        try:
            return 200, self._dispatch(method, path, body), {}
        except ApiError as err:
            return err.http_status, json.dumps({"error": err.message}).encode(), err.headers

    def _dispatch(self, method: str, path: str, body: bytes) -> bytes:
        m = _PREDICT_RE.fullmatch(path)
        if m:
            if method != "POST":
                raise _method_not_allowed(method, path, "POST")
            name, version, label, op = m.group(1), _version(m.group(2)), m.group(3), m.group(4).lower()
            if op == "predict":
                return self._predict(name, version, label, body)
            return self._classify_regress(op, name, version, label, body)
        m = _STATUS_RE.fullmatch(path)
        if m:
            if method != "GET":
                raise _method_not_allowed(method, path, "GET")
            name, version, label, sub = m.group(1), _version(m.group(2)), m.group(3), m.group(4)
            if not name:
                raise _invalid("Missing model name in request.")
            if sub:
                return self._metadata(name, version, label)
            return json.dumps(self.manager.status(name, version, label)).encode()
        # TF Serving answers 400 here; 404 tells a client "wrong URL" without implying a bad body.
        raise ApiError("NOT_FOUND", f"Malformed request: {method} {path}")

    def _parse_body(self, body: bytes) -> dict[str, Any]:
        if not body.strip():
            raise _invalid("JSON Parse error: The document is empty")
        try:
            doc = _json_decode(body)
        except _JSON_DECODE_ERRORS as exc:
            raise _invalid(f"JSON Parse error: {exc}") from None
        if not isinstance(doc, dict):
            raise _invalid(f"JSON Value: {_echo(doc)} Is not object")
        return doc

    @staticmethod
    def _signature_name(doc: dict[str, Any]) -> str:
        sig = doc.get("signature_name", "")
        if not isinstance(sig, str):
            raise _invalid(
                f"JSON Value: signature_name={_echo(sig)} not formatted correctly. 'signature_name' key must "
                "be a string value."
            )
        return sig or DEFAULT_SIGNATURE

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> bytes:
        # Fault tests hold a request in flight here until they have killed the server.
        hold("predict", logger)
        doc = self._parse_body(body)
        sig_name = self._signature_name(doc)
        servable = self.manager.servable(name, version, label)
        sig = servable.signatures.get(sig_name)
        if sig is None:
            raise _invalid(
                f'Serving signature name: "{sig_name}" not found in signature def '
                f"(available: {', '.join(sorted(servable.signatures))})"
            )
        if not sig.inputs:
            raise _invalid(f"Failed to get input map for signature: {sig_name}")
        has_instances, has_inputs = "instances" in doc, "inputs" in doc
        if has_instances and has_inputs:
            raise _invalid(
                "JSON Value: request not formatted correctly expecting only one of 'inputs' or 'instances' "
                "keys to exist"
            )
        if has_instances:
            feeds = feeds_from_instances(doc["instances"], sig)
        elif has_inputs:
            feeds = feeds_from_inputs(doc["inputs"], sig)
        else:
            raise _invalid("Missing 'inputs' or 'instances' key")
        try:
            outputs = run_signature(sig, feeds)
        except Exception as exc:
            kind = type(exc).__name__
            if kind == "InvalidArgumentError" or isinstance(exc, (ValueError, TypeError)):
                raise _invalid(f"{kind} running signature {sig_name!r}: {exc}") from None
            raise
        return predictions_json(outputs, row_format=has_instances)

    def _classify_regress(
        self, op: str, name: str, version: int | None, label: str | None, body: bytes
    ) -> bytes:
        doc = self._parse_body(body)
        sig_name = self._signature_name(doc)
        examples = doc.get("examples")
        if examples is None:
            raise _invalid(
                f"JSON Value: request When method is {op}, key 'examples' is expected and was not found"
            )
        if not isinstance(examples, list):
            raise _invalid(
                f"JSON Value: examples={_echo(examples)} Expecting 'examples' value to be an list/array"
            )
        if not examples:
            raise _invalid("JSON Value: examples=[] 'examples' value is an empty array")
        servable = self.manager.servable(name, version, label)
        sig = servable.signatures.get(sig_name)
        if sig is None:
            raise _invalid(f"No signature was found with the name: {sig_name}")
        expected = CLASSIFY_METHOD if op == "classify" else REGRESS_METHOD
        if sig.method_name != expected:
            kind = "classification" if op == "classify" else "regression"
            raise _invalid(f"Expected {kind} signature method_name to be {expected}. Was: {sig.method_name}")
        # tf.Example-based signatures are outside the contract (docs/CONTRACTS.md: predict only).
        raise ApiError("UNIMPLEMENTED", f"{op} on tf.Example signatures is not supported by this server")

    def _metadata(self, name: str, version: int | None, label: str | None) -> bytes:
        servable = self.manager.servable(name, version, label)
        doc = {
            "model_spec": {
                "name": servable.model_name,
                "signature_name": "",
                "version": str(servable.version),
            },
            "metadata": {"signature_def": {"signature_def": servable.metadata_signature_def}},
        }
        return json.dumps(doc).encode()


def _method_not_allowed(method: str, path: str, allow: str) -> ApiError:
    # TF Serving answers 400 "Malformed request"; 405 + Allow is what HTTP clients and proxies understand.
    return ApiError(
        "INVALID_ARGUMENT", f"Malformed request: {method} {path} (expected {allow})", 405, {"Allow": allow}
    )


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    value = int(text)
    if value > _INT64_MAX:
        raise _invalid(f"Failed to convert version: {text} to numeric.")
    return value


# ------------------------------------------------------------------------------------------ HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive needs HTTP/1.1 plus a Content-Length on every response; Nagle would add ~40 ms per reply.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "mlpipe-tf-serving-compatible"
    server: _Server

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        n = int(length)
        if n < 0:
            raise ValueError(f"Content-Length={length!r}: expected a non-negative integer")
        return self.rfile.read(n)

    def _handle(self) -> None:
        method = self.command
        try:
            try:
                body = self._read_body()
            except ValueError as exc:
                self.close_connection = True  # we cannot tell where the next request starts
                self._send(400, json.dumps({"error": f"Malformed request body framing: {exc}"}).encode(), {})
                return
            status, payload, headers = self.server.api.handle(method, self.path, body)
        except Exception as exc:  # never leave a client without an answer
            logger.exception("internal error handling %s %s", method, self.path)
            status, payload, headers = 500, json.dumps({"error": f"Internal error: {exc!r}"}).encode(), {}
        self._send(status, payload, headers)

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
        ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            # One write: header and body leave in one segment (wfile is unbuffered).
            self.wfile.write(head if self.command == "HEAD" else head + payload)
        except OSError:
            self.close_connection = True
        if self.server.verbose:
            logger.info(
                '%s "%s %s" %d %d', self.client_address[0], self.command, self.path, status, len(payload)
            )

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server calls this for unparsable request lines/headers; answer JSON like every other error.
        self.close_connection = True
        self._send(code, json.dumps({"error": message or HTTPStatus(code).phrase}).encode(), {})

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            logger.info("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: RestApi, verbose: bool) -> None:
        self.api = api
        self.verbose = verbose
        super().__init__(address, _Handler)


# ------------------------------------------------------------------------------------------------- CLI


def _base_path(value: str) -> Path:
    parsed = urlparse(value)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise argparse.ArgumentTypeError(
                f"--model_base_path={value!r} is invalid: expected file:///absolute/path (no host part)"
            )
        return Path(url2pathname(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise argparse.ArgumentTypeError(
            f"--model_base_path={value!r} is invalid: expected a local path or file:// URI; fetch remote "
            "versions into a local directory first (the serving image's fetch init container does this)"
        )
    return Path(value).expanduser()


def _model_name(value: str) -> str:
    if not value or "/" in value or ":" in value:
        raise argparse.ArgumentTypeError(
            f"--model_name={value!r} is invalid: expected a non-empty name without '/' or ':'"
        )
    return value


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"--rest_api_port={value!r} is invalid: expected an integer 1..65535 (0 = any free port)"
        )
    return port


def _positive_version(value: str) -> int:
    try:
        version = int(value)
    except ValueError:
        version = 0
    if version <= 0:
        raise argparse.ArgumentTypeError(f"--model_version={value!r} is invalid: expected a positive integer")
    return version


def _poll_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(
            f"--file_system_poll_wait_seconds={value!r} is invalid: expected a number >= 0 (0 = load once)"
        )
    return seconds


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m airflow_provider_mlpipe.images.serving.server",
        description="TensorFlow-Serving-compatible REST server for one model (TF Serving's flag names).",
    )
    p.add_argument(
        "--model_name", required=True, type=_model_name, help="name in the /v1/models/{name} paths"
    )
    p.add_argument(
        "--model_base_path",
        required=True,
        type=_base_path,
        help="directory (or file:// URI) holding integer version directories; only published ones count",
    )
    p.add_argument("--rest_api_port", type=_port, default=8501, help="REST port (default 8501)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--model_version",
        type=_positive_version,
        default=None,
        help="serve exactly this version (others answer 404); default: the newest published version",
    )
    p.add_argument(
        "--file_system_poll_wait_seconds",
        type=_poll_seconds,
        default=0.0,
        help="seconds between polls of the base path for a newer published version (0 = look once)",
    )
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    manager = ModelManager(
        model_name=args.model_name,
        base_path=args.model_base_path,
        pinned_version=args.model_version,
        poll_wait_seconds=args.file_system_poll_wait_seconds,
    )
    try:
        server = _Server((args.host, args.rest_api_port), RestApi(manager), verbose=args.verbose)
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", args.host, args.rest_api_port, exc)
        return 1
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    host, port = server.server_address[:2]
    logger.info(
        "Exporting HTTP/REST API at %s:%s for model %s (base path %s)",
        host,
        port,
        args.model_name,
        args.model_base_path,
    )
    # The socket is bound already, so early probes queue in the backlog; starting the manager before serving
    # makes the first answered status request report LOADING rather than "no versions".
    manager.start()
    serve_thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True
    )
    serve_thread.start()
    while not stop.wait(0.5):
        pass
    manager.stop()
    server.shutdown()
    server.server_close()
    logger.info("server stopped")
    if manager.busy:
        # A load in progress holds TensorFlow's native threads; interpreter teardown under them can hang or
        # abort, so leave without it: nothing is left to flush but the log handlers.
        logging.shutdown()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
