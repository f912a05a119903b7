"""TF Serving's REST request and response encoding: the request document, its row (`instances`) and
columnar (`inputs`) formats into tensors of the signature's dtypes and shapes, and output tensors back into
`predictions` / `outputs` JSON written the way TF Serving writes them."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from .errors import ApiError, echo, invalid
from .models import Signature, TensorSpecInfo

DEFAULT_SIGNATURE = "serving_default"

try:  # msgspec ships with Airflow and decodes big numeric payloads ~2x faster than the stdlib.
    import msgspec

    _json_decode: Any = msgspec.json.decode
    _JSON_DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, ValueError)
except ImportError:  # pragma: no cover - depends on the environment
    _json_decode = json.loads
    _JSON_DECODE_ERRORS = (ValueError,)


def parse_request(body: bytes) -> dict[str, Any]:
    """The request's JSON object."""
    if not body.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = _json_decode(body)
    except _JSON_DECODE_ERRORS as exc:
        raise invalid(f"JSON Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {echo(doc)} Is not object")
    return doc


def signature_name(doc: dict[str, Any]) -> str:
    """The request's `signature_name`, `serving_default` when absent or empty."""
    sig = doc.get("signature_name", "")
    if not isinstance(sig, str):
        raise invalid(
            f"JSON Value: signature_name={echo(sig)} not formatted correctly. 'signature_name' key must "
            "be a string value."
        )
    return sig or DEFAULT_SIGNATURE


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
        raise invalid(
            f"{where}: input {info.name!r} must be a dense (non-ragged) list of {info.dtype_name} values, "
            f"got {echo(value)} ({exc})"
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
            raise invalid(
                f"{where}: input {info.name!r} has shape [{','.join(map(str, got))}] {prefix}but the "
                f"signature expects {shown} (-1 = any size)"
            )
    return arr


def feeds_from_instances(instances: object, sig: Signature) -> dict[str, np.ndarray]:
    """Row format: `instances` is a list, one element per example (plain values, or objects by input name)."""
    if not isinstance(instances, list):
        raise invalid(f"JSON Value: {echo(instances)} Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid("JSON Value: [] No values in 'instances' array")
    first = instances[0]
    if isinstance(first, dict) and not _is_b64(first):
        names = set(sig.inputs)
        columns: dict[str, list[Any]] = {name: [] for name in sig.inputs}
        for i, elem in enumerate(instances):
            if not isinstance(elem, dict) or _is_b64(elem):
                raise invalid(f"Expecting object but got list at item {i} of input list")
            if set(elem) != names:
                raise invalid(
                    f"Failed to process element: {i} of 'instances' list. JSON object: {echo(elem)} keys "
                    f"must be equal to: {','.join(sorted(names))}"
                )
            for name, value in elem.items():
                columns[name].append(value)
        return {
            name: _to_array(columns[name], sig.inputs[name], "'instances'", batched=True)
            for name in sig.inputs
        }
    if len(sig.inputs) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as "
            f"per tensorinfo_map (inputs: {','.join(sorted(sig.inputs))})"
        )
    (info,) = sig.inputs.values()
    if any(isinstance(elem, dict) and not _is_b64(elem) for elem in instances):
        raise invalid("Expecting value/list but got object in 'instances' list")
    return {info.name: _to_array(instances, info, "'instances'", batched=True)}


def feeds_from_inputs(inputs: object, sig: Signature) -> dict[str, np.ndarray]:
    """Columnar format: `inputs` is the one input's tensor, or an object keyed by input name."""
    if isinstance(inputs, dict) and not _is_b64(inputs):
        feeds: dict[str, np.ndarray] = {}
        for name, info in sig.inputs.items():
            if name not in inputs:
                raise invalid(f"Missing named input: {name} in 'inputs' object.")
            feeds[name] = _to_array(inputs[name], info, "'inputs'", batched=False)
        return feeds
    if len(sig.inputs) > 1:
        raise invalid(
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
            raise invalid(
                f"Tensor name: {name} has no shape information (a scalar cannot be split per instance)"
            )
        if batch is None:
            batch = arr.shape[0]
        elif arr.shape[0] != batch:
            raise invalid(
                f"Tensor name: {name} has inconsistent batch size: {arr.shape[0]} expecting: {batch}"
            )
    if len(names) == 1:
        return ('{"predictions":' + tensor_json(outputs[names[0]]) + "}").encode()
    per_name = {n: [tensor_json(row) for row in outputs[n]] for n in names}
    rows = [
        "{" + ",".join(json.dumps(n) + ":" + per_name[n][i] for n in names) + "}" for i in range(batch or 0)
    ]
    return ('{"predictions":[' + ",".join(rows) + "]}").encode()
