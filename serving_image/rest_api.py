"""TF Serving's REST API without the HTTP plumbing: path routing (the grammar of http_rest_api_util.cc) and
the operations (model status, metadata, predict; classify and regress answer as TF Serving does for a
predict-only model), each answering `(HTTP status, JSON body, extra headers)`."""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import unquote

from airflow_provider_mlpipe.holds import hold

from .codec import feeds_from_inputs, feeds_from_instances, parse_request, predictions_json, signature_name
from .errors import ApiError, echo, invalid
from .models import CLASSIFY_METHOD, REGRESS_METHOD, ModelManager, run_signature

logger = logging.getLogger("airflow_provider_mlpipe.serving")

# Same path grammar as TF Serving (http_rest_api_util.cc), case-insensitive like its RE2 patterns.
_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I
)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I
)
_INT64_MAX = 2**63 - 1


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
                raise invalid("Missing model name in request.")
            if sub:
                return self._metadata(name, version, label)
            return json.dumps(self.manager.status(name, version, label)).encode()
        # TF Serving answers 400 here; 404 tells a client "wrong URL" without implying a bad body.
        raise ApiError("NOT_FOUND", f"Malformed request: {method} {path}")

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> bytes:
        # Fault tests hold a request in flight here until they have killed the server.
        hold("predict", logger)
        doc = parse_request(body)
        sig_name = signature_name(doc)
        servable = self.manager.servable(name, version, label)
        sig = servable.signatures.get(sig_name)
        if sig is None:
            raise invalid(
                f'Serving signature name: "{sig_name}" not found in signature def '
                f"(available: {', '.join(sorted(servable.signatures))})"
            )
        if not sig.inputs:
            raise invalid(f"Failed to get input map for signature: {sig_name}")
        has_instances, has_inputs = "instances" in doc, "inputs" in doc
        if has_instances and has_inputs:
            raise invalid(
                "JSON Value: request not formatted correctly expecting only one of 'inputs' or 'instances' "
                "keys to exist"
            )
        if has_instances:
            feeds = feeds_from_instances(doc["instances"], sig)
        elif has_inputs:
            feeds = feeds_from_inputs(doc["inputs"], sig)
        else:
            raise invalid("Missing 'inputs' or 'instances' key")
        try:
            outputs = run_signature(sig, feeds)
        except Exception as exc:
            kind = type(exc).__name__
            if kind == "InvalidArgumentError" or isinstance(exc, (ValueError, TypeError)):
                raise invalid(f"{kind} running signature {sig_name!r}: {exc}") from None
            raise
        return predictions_json(outputs, row_format=has_instances)

    def _classify_regress(
        self, op: str, name: str, version: int | None, label: str | None, body: bytes
    ) -> bytes:
        doc = parse_request(body)
        sig_name = signature_name(doc)
        examples = doc.get("examples")
        if examples is None:
            raise invalid(
                f"JSON Value: request When method is {op}, key 'examples' is expected and was not found"
            )
        if not isinstance(examples, list):
            raise invalid(
                f"JSON Value: examples={echo(examples)} Expecting 'examples' value to be an list/array"
            )
        if not examples:
            raise invalid("JSON Value: examples=[] 'examples' value is an empty array")
        servable = self.manager.servable(name, version, label)
        sig = servable.signatures.get(sig_name)
        if sig is None:
            raise invalid(f"No signature was found with the name: {sig_name}")
        expected = CLASSIFY_METHOD if op == "classify" else REGRESS_METHOD
        if sig.method_name != expected:
            kind = "classification" if op == "classify" else "regression"
            raise invalid(f"Expected {kind} signature method_name to be {expected}. Was: {sig.method_name}")
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
        raise invalid(f"Failed to convert version: {text} to numeric.")
    return value
