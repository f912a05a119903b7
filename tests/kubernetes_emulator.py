"""A Kubernetes API server emulated over real HTTP (kmock), for the `kubernetes` runtime's tests.

What is real: the HTTP API paths, verbs, status codes (404, 409), JSON bodies, JSON / merge patches, and
the clients (the cncf-kubernetes provider's KubernetesHook and AsyncKubernetesHook, i.e. the official
`kubernetes` and `kubernetes_asyncio` clients, configured from an Airflow connection with a kubeconfig).

What is emulated (kmock 0.8 plus the shim below), and therefore NOT tested against a real cluster:
- no controllers run: nothing creates pods for a Job or ReplicaSets for a Deployment, nothing sets status.
  Tests and their "actors" write status, pods and pod logs themselves through `EmulatedCluster`. The garbage
  collector's foreground deletion is emulated synchronously: the owner keeps a deletionTimestamp (and the
  `foregroundDeletion` finalizer) while a dependent (a Job's pods) still has finalizers, and goes with
  the last of them;
- server-side metadata (uid, resourceVersion, creationTimestamp, generation bumped on spec changes) is
  added by the shim, not by an apiserver;
- answered as a real apiserver answers them (each has its own test in tests/unit/test_kubernetes_emulator.py):
  409 Conflict on a write whose `metadata.resourceVersion` (a merge patch's, or a JSON patch's
  replace/add of `/metadata/resourceVersion`) is not the object's current one; 422 Invalid on a
  change to an immutable field (a Deployment's `spec.selector`, a Job's `spec.selector`, `spec.template`
  and `spec.completions`) and on a JSON patch whose `test` fails; `status` written only through the
  `/status` subresource (a client's create drops it, a patch of the object itself leaves it as it was);
  the full label selector grammar (`k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`)
  and 400 BadRequest on a malformed selector; field selectors (`a.b=c`, `!=`) on any field, as for Events;
- pod logs: served from `set_log` (each line stamped with the time
  `set_log` first saw it), with `timestamps`, `sinceSeconds` and `tailLines` honoured as the kubelet does;
- validation beyond the schema as the apiserver does it (422: DNS-1123/1035 names, label keys and values, a
  Deployment selector that misses its template's labels, requests above limits, port ranges and names) and
  Pod Security admission of the `restricted` level on Pods (403); workload templates are checked against
  `restricted` after the fact (`check_sent`), since admission refuses their pods, not them; no RBAC
  enforcement (checked after the fact too);
- `watch=True` as the Python clients send it (`True`, not `true`) is normalised, though the runtime polls.

The emulator does not apply the OpenAPI schema itself, so what the runtime SENT is also checked after the fact
(`check_sent`): every object it created, and every object as each of its patches left it, passes
`kubernetes-validate --strict` for Kubernetes 1.30 and 1.35 (server-side metadata and status stripped first),
every pod template meets Pod Security `restricted`, and every request is one the
Role in deploy/rbac.yaml grants (RBAC's verb derived from the HTTP method and path, as the apiserver does).

Faults (`EmulatedCluster.fail_next`, `reset_next`, `delay_next`) are injected at the HTTP layer, in front of
kmock, for the next N requests whose method and path match: an error status with a Kubernetes Status body
(503 with Retry-After, 429, 403, 422, ...), a connection reset (RST, no answer; optionally after the request
took effect, as when an answer is lost on the way back), or an answer held back longer than the client's
read timeout. `requests` lists every HTTP request received, faulted ones included.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import logging
import re
import socket
import struct
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
import requests

logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

NAMESPACE = "mlpipe"
CONN_ID = "kubernetes_emulator"
RESOURCES = {
    "jobs": "batch/v1/jobs",
    "deployments": "apps/v1/deployments",
    "services": "v1/services",
    "pods": "v1/pods",
    "poddisruptionbudgets": "policy/v1/poddisruptionbudgets",
    "events": "v1/events",
}


# The Kubernetes schemas every manifest is validated against (bundled with kubernetes-validate).
SCHEMA_VERSIONS = ("1.30.0", "1.35.0")
# Set by the API server, not by the client: stripped before validating what a client sent.
SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")
RBAC_MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "rbac.yaml"

# Fields a real apiserver refuses to change (422 "field is immutable"), per resource.
IMMUTABLE_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "deployments": (("spec", "selector"),),
    "jobs": (("spec", "selector"), ("spec", "template"), ("spec", "completions")),
}
# Resources whose status is a subresource: a write to the object itself never changes it.
STATUS_SUBRESOURCE = frozenset({"deployments", "jobs", "services", "pods", "poddisruptionbudgets"})

# Label selector grammar (k8s.io/apimachinery/pkg/labels): qualified keys, label values.
_DNS_SUBDOMAIN = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
_LABEL_KEY = rf"(?:{_DNS_SUBDOMAIN}/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?"
_LABEL_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?"
_SELECTOR_TERM = re.compile(
    rf"^\s*(?:(?P<neg>!)\s*(?P<nkey>{_LABEL_KEY})"
    rf"|(?P<key>{_LABEL_KEY})\s*(?:(?P<op>==|!=|=)\s*(?P<value>{_LABEL_VALUE})"
    rf"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?)\s*$"
)


class SelectorError(ValueError):
    pass


def parse_selector(selector: str) -> list[tuple[str, str, frozenset[str]]]:
    """A label selector as (key, operator, values) terms; operator one of =, !=, in, notin, exists, !.
    Raises SelectorError on anything the apiserver's parser refuses."""
    terms: list[tuple[str, str, frozenset[str]]] = []
    if not selector.strip():
        return terms
    # Commas separate terms, except inside the parentheses of a set.
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in {selector!r}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise SelectorError(f"unbalanced '(' in {selector!r}")
    parts.append(current)
    for part in parts:
        match = _SELECTOR_TERM.match(part)
        if match is None:
            raise SelectorError(f"unable to parse requirement {part!r}")
        if match["neg"]:
            terms.append((match["nkey"], "!", frozenset()))
        elif match["op"]:
            terms.append((match["key"], "!=" if match["op"] == "!=" else "=", frozenset({match["value"]})))
        elif match["setop"]:
            values = [v.strip() for v in match["values"].split(",")]
            if not all(re.fullmatch(_LABEL_VALUE, v) for v in values):
                raise SelectorError(f"invalid value in {part!r}")
            terms.append((match["key"], match["setop"], frozenset(values)))
        else:
            terms.append((match["key"], "exists", frozenset()))
    return terms


def selector_matches(terms: list[tuple[str, str, frozenset[str]]], labels: dict[str, str]) -> bool:
    for key, op, values in terms:
        present, value = key in labels, labels.get(key)
        ok = {
            "=": present and value in values,
            "!=": not present or value not in values,
            "in": present and value in values,
            "notin": not present or value not in values,
            "exists": present,
            "!": not present,
        }[op]
        if not ok:
            return False
    return True


_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS_SUBDOMAIN}$")
_IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
# Name rules per resource (k8s.io/kubernetes/pkg/apis/*/validation): Services are DNS-1035 labels, Jobs
# DNS-1123 labels (their name becomes a label value), the others DNS-1123 subdomains.
_NAME_RULES: dict[str, tuple[re.Pattern[str], int, str]] = {
    "services": (_DNS1035_LABEL, 63, "a DNS-1035 label"),
    "jobs": (_DNS1123_LABEL, 63, "a DNS-1123 label"),
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def quantity(value: object) -> float:
    match = _QUANTITY.match(str(value))
    if match is None:
        raise ValueError(f"quantities must match the regular expression {_QUANTITY.pattern}")
    return float(match[1]) * _SUFFIX[match[2] or ""]


def _pod_specs(plural: str, obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(field path, pod spec) of an object: a Pod's own spec, a workload's template."""
    if plural == "pods":
        return [("spec", obj.get("spec") or {})]
    template = _dig(obj, ("spec", "template"))
    if plural in ("jobs", "deployments") and isinstance(template, dict):
        return [("spec.template.spec", template.get("spec") or {})]
    return []


def _label_errors(path: str, labels: object) -> list[str]:
    errors = []
    for key, value in (labels or {}).items() if isinstance(labels, dict) else []:
        if not re.fullmatch(_LABEL_KEY, str(key)):
            errors.append(
                f"{path}: Invalid value: {key!r}: name part must consist of alphanumeric characters"
            )
        if len(str(value)) > 63 or not re.fullmatch(_LABEL_VALUE, str(value)):
            errors.append(
                f"{path}: Invalid value: {value!r}: a valid label must be an empty string or 63 chars"
            )
    return errors


def _port_errors(path: str, port: object, *, names_allowed: bool) -> list[str]:
    if isinstance(port, int):
        return [] if 1 <= port <= 65535 else [f"{path}: Invalid value: {port}: must be between 1 and 65535"]
    if names_allowed and isinstance(port, str) and len(port) <= 15 and _IANA_SVC_NAME.match(port):
        return []
    return [f"{path}: Invalid value: {port!r}: must be a port number or an IANA_SVC_NAME"]


def object_errors(plural: str, obj: dict[str, Any]) -> list[str]:
    """What the apiserver's validation refuses beyond the OpenAPI schema (422 Invalid): names, labels,
    a Deployment selector that misses its template's labels, requests above limits, port ranges."""
    errors: list[str] = []
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    pattern, max_len, what = _NAME_RULES.get(plural, (_DNS1123_SUBDOMAIN, 253, "a DNS-1123 subdomain"))
    if len(name) > max_len or not pattern.match(name):
        errors.append(
            f"metadata.name: Invalid value: {name!r}: must be {what} of at most {max_len} characters"
        )
    errors += _label_errors("metadata.labels", meta.get("labels"))
    template_labels = _dig(obj, ("spec", "template", "metadata", "labels"))
    errors += _label_errors("spec.template.metadata.labels", template_labels)
    if plural == "deployments":
        wanted = _dig(obj, ("spec", "selector", "matchLabels")) or {}
        if not wanted or any((template_labels or {}).get(k) != v for k, v in wanted.items()):
            errors.append(
                "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`"
            )
    for path, spec in _pod_specs(plural, obj):
        for kind in ("initContainers", "containers"):
            for i, container in enumerate(spec.get(kind) or []):
                where = f"{path}.{kind}[{i}]"
                if not _DNS1123_LABEL.match(str(container.get("name") or "")):
                    errors.append(f"{where}.name: Invalid value: {container.get('name')!r}: a DNS-1123 label")
                resources = container.get("resources") or {}
                requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
                for resource, limit in limits.items():
                    try:
                        above = resource in requests and quantity(requests[resource]) > quantity(limit)
                    except ValueError as err:
                        errors.append(f"{where}.resources: Invalid value: {err}")
                        continue
                    if above:
                        errors.append(
                            f"{where}.resources.requests: Invalid value: {requests[resource]!r}: must be less "
                            f"than or equal to {resource} limit of {limit}"
                        )
                for j, port in enumerate(container.get("ports") or []):
                    errors += _port_errors(
                        f"{where}.ports[{j}].containerPort", port.get("containerPort"), names_allowed=False
                    )
                    if "name" in port and not (
                        len(port["name"]) <= 15 and _IANA_SVC_NAME.match(port["name"])
                    ):
                        errors.append(
                            f"{where}.ports[{j}].name: Invalid value: {port['name']!r}: an IANA_SVC_NAME"
                        )
    if plural == "services":
        for j, port in enumerate(_dig(obj, ("spec", "ports")) or []):
            errors += _port_errors(f"spec.ports[{j}].port", port.get("port"), names_allowed=False)
            if "targetPort" in port:
                errors += _port_errors(f"spec.ports[{j}].targetPort", port["targetPort"], names_allowed=True)
    return errors


_RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What the Pod Security `restricted` profile (latest) refuses in a pod spec
    (https://kubernetes.io/docs/concepts/security/pod-security-standards/)."""
    violations: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            violations.append(f"host namespaces ({flag}=true)")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            violations.append(f"restricted volume types (volume {volume.get('name')!r} uses {sorted(kinds)})")
    if pod_sc.get("runAsUser") == 0:
        violations.append("runAsUser=0 (pod)")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for container in containers:
        name = container.get("name")
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            violations.append(f"privileged (container {name!r})")
        if sc.get("allowPrivilegeEscalation") is not False:
            violations.append(f"allowPrivilegeEscalation != false (container {name!r})")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            violations.append(f"unrestricted capabilities (container {name!r} must drop ALL)")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            violations.append(f"unrestricted capabilities (container {name!r} adds {caps.get('add')})")
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            violations.append(f"runAsNonRoot != true (container {name!r})")
        if sc.get("runAsUser") == 0:
            violations.append(f"runAsUser=0 (container {name!r})")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            violations.append(f"seccompProfile (container {name!r} must use RuntimeDefault or Localhost)")
        if any(p.get("hostPort") for p in container.get("ports") or []):
            violations.append(f"hostPort (container {name!r})")
    return violations


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


# Status reasons of the API server, for the Status bodies of injected errors.
_REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    409: "AlreadyExists",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class Fault:
    """The next `remaining` requests matching `method` (None: any) and the regular expression `path`
    (searched in the URL path) get: `kind` "status" (an error `status`, with `Retry-After: retry_after`
    when set), "reset" (the connection is reset without an answer; with `handled` the request takes effect
    first), or "delay" (the request takes effect and its answer waits `delay` seconds)."""

    kind: str
    remaining: int
    method: str | None
    path: str
    status: int = 503
    retry_after: int | None = None
    message: str = ""
    delay: float = 0.0
    handled: bool = False

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method == method)
            and re.search(self.path, path) is not None
        )

    def label(self) -> str:
        return str(self.status) if self.kind == "status" else self.kind


class Gone(LookupError):
    """The object was deleted since the caller listed or read it: the 404 a controller gets and skips."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind}/{name} is gone (deleted since it was listed)")
        self.kind, self.name = kind, name


class ClusterEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's stateful emulator plus what the runtime relies on (see the module docstring)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.calls: list[tuple[str, str, str]] = []
        # (namespace, pod) -> [(when the line was written, line)]
        self.pod_logs: dict[tuple[str, str], list[tuple[datetime.datetime, str]]] = {}
        # The query of every pod log request and how many lines it was sent, in order.
        self.log_queries: list[dict[str, str]] = []
        self.log_lines_sent: list[int] = []
        self._rv = itertools.count(1000)
        # Every HTTP request as (method, path), faulted ones included; the faults still to serve, and
        # how many of each kind were served ("GET 503", "POST reset", ...).
        self.requests_seen: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        self.faults_served: Counter[str] = Counter()
        self._faults_lock = threading.Lock()
        # Every HTTP request as (method, path, query string), for the RBAC check; and every object a
        # client sent on create, or left behind with a patch, as ("create" | "patch", object).
        self.requests_with_query: list[tuple[str, str, str]] = []
        self.received: list[tuple[str, dict[str, Any]]] = []

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._faults_lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    self.faults_served[f"{method} {fault.label()}"] += 1
                    return fault
        return None

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        self.requests_seen.append((raw_request.method, raw_request.path))
        self.requests_with_query.append((raw_request.method, raw_request.path, raw_request.query_string))
        fault = self._take_fault(raw_request.method, raw_request.path)
        if fault is None:
            return await super().__call__(raw_request)
        if fault.kind == "status":
            await raw_request.read()
            reason = _REASONS.get(fault.status, "InternalError")
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": fault.message or f"{reason} (injected by the test) for {raw_request.path}",
                "reason": reason,
                "code": fault.status,
            }
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            return aiohttp.web.json_response(body, status=fault.status, headers=headers)
        if fault.kind == "reset":
            if fault.handled:
                await super().__call__(raw_request)
            else:
                await raw_request.read()
            _reset(raw_request)
            # Nothing can be answered on a reset connection; aiohttp drops what the handler returns.
            return aiohttp.web.Response(status=500)
        response = await super().__call__(raw_request)
        await asyncio.sleep(fault.delay)
        return response

    async def _handle(self, request: Any) -> Any:
        if request.params.get("watch") == "True":
            # The Python clients send watch=True; kmock only recognises watch=true.
            request = kmock.Request(**{**_fields(request), "action": kmock.action.WATCH})
        if request.resource is not None and request.action is not None:
            name = request.name or ((request.data or {}).get("metadata") or {}).get("name", "")
            verb = str(request.action.value).lower()
            if request.subresource:
                verb = f"{verb}/{request.subresource}"
            if verb == "delete" and isinstance(request.data, dict) and request.data.get("propagationPolicy"):
                verb = f"delete({request.data['propagationPolicy']})"
            self.calls.append((verb, str(request.resource.plural), name))
            if request.action == kmock.action.UPDATE and request.name:
                await self._check_update(request)
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                self._admit(str(request.resource.plural), request.data)
                if str(request.resource.plural) in STATUS_SUBRESOURCE:
                    # The apiserver resets the status of a created object: only controllers set it.
                    request.data.pop("status", None)
                self.received.append(("create", json.loads(json.dumps(request.data))))
                meta = request.data.setdefault("metadata", {})
                meta.setdefault("namespace", request.namespace)
                meta.update(
                    uid=str(uuid.uuid4()),
                    resourceVersion=str(next(self._rv)),
                    creationTimestamp=_now(),
                    generation=1,
                )
            if verb == "delete(Foreground)" and request.name:
                await self._foreground(request)
        try:
            return await super()._handle(request)
        finally:
            if request.resource is not None:
                await self._collect_garbage()

    def _dependents(self, resource: Any, namespace: str, name: str) -> list[Any]:
        """Keys of the objects `name` owns: by ownerReferences, and a Job's pods by their job-name label
        (the emulated pods carry no ownerReferences)."""
        plural, kind = str(resource.plural), None
        kind = {"jobs": "Job", "deployments": "Deployment"}.get(plural)
        found = []
        for key in list(self._objects):
            if key[1] != namespace or self._objects[key].deleted:
                continue
            meta = self._objects[key].get("metadata", {}) or {}
            owned = any(
                ref.get("name") == name and ref.get("kind") == kind
                for ref in meta.get("ownerReferences") or []
            )
            if plural == "jobs" and str(key[0]) == str(kmock.resource(RESOURCES["pods"])):
                owned = owned or (meta.get("labels") or {}).get("job-name") == name
            if owned:
                found.append(key)
        return found

    async def _foreground(self, request: Any) -> None:
        """Foreground deletion: the owner stays, with a deletionTimestamp and the `foregroundDeletion`
        finalizer, until its dependents are gone; dependents without finalizers go at once, those with
        finalizers wait for them to be removed (as the garbage collector does, synchronously here)."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                return
            dependents = self._dependents(request.resource, request.namespace, request.name)
            if not dependents:
                return  # nothing to wait for: deleted at once
            owner = self._objects[key]
            finalizers = list((owner.get("metadata", {}) or {}).get("finalizers") or [])
            if "foregroundDeletion" not in finalizers:
                owner.patch({"metadata": {"finalizers": [*finalizers, "foregroundDeletion"]}})
            for dependent_key in dependents:
                dependent = self._objects[dependent_key]
                meta = dependent.get("metadata", {}) or {}
                if not meta.get("finalizers"):
                    dependent.delete()
                elif not meta.get("deletionTimestamp"):
                    dependent.patch({"metadata": {"deletionTimestamp": _now()}})

    async def _collect_garbage(self) -> None:
        """Finish the foreground deletions whose dependents are gone."""
        async with self._lock:
            for key in list(self._objects):
                obj = self._objects[key]
                if obj.deleted:
                    continue
                meta = obj.get("metadata", {}) or {}
                if not meta.get("deletionTimestamp") or "foregroundDeletion" not in (
                    meta.get("finalizers") or []
                ):
                    continue
                if not self._dependents(key[0], key[1], key[2]):
                    rest = [f for f in meta.get("finalizers") or [] if f != "foregroundDeletion"]
                    obj.patch({"metadata": {"finalizers": rest or None}})
                    if not rest:
                        obj.delete()

    @staticmethod
    def _admit(plural: str, obj: dict[str, Any]) -> None:
        """Validation (422 Invalid) and, for a Pod, Pod Security admission of the namespace's `restricted`
        level (403 Forbidden), as the apiserver does before storing an object."""
        errors = object_errors(plural, obj)
        if errors:
            name = (obj.get("metadata") or {}).get("name")
            raise kmock.KubernetesError(
                status=422, reason="Invalid", message=f'{plural} "{name}" is invalid: ' + "; ".join(errors)
            )
        if plural == "pods":
            violations = restricted_violations(obj.get("spec") or {})
            if violations:
                name = (obj.get("metadata") or {}).get("name")
                raise kmock.KubernetesError(
                    status=403,
                    reason="Forbidden",
                    message=f'pods "{name}" is forbidden: violates PodSecurity "restricted:latest": '
                    + ", ".join(violations),
                )

    async def _check_update(self, request: Any) -> None:
        """Refuse a patch as the apiserver would: a stale resourceVersion (409), a change to an immutable
        field or a failed JSON patch test (422)."""
        plural = str(request.resource.plural)
        async with self._lock:
            key = (request.resource, request.namespace, request.name)
            if key not in self._objects or self._objects[key].deleted:
                return  # kmock answers 404
            obj = self._objects[key]
            current = json.loads(json.dumps(obj.raw))
        data = request.data
        wanted_rv: str | None = None
        if isinstance(data, dict):
            wanted_rv = (data.get("metadata") or {}).get("resourceVersion")
            patched = _merge(current, data)
        else:
            # A replace/add of the resourceVersion is a precondition (409 when stale); a `test` of it is
            # an ordinary JSON patch test (422 when it fails), as the apiserver applies them.
            for op in data or []:
                if op.get("path") == "/metadata/resourceVersion" and op.get("op") in ("replace", "add"):
                    wanted_rv = op.get("value")
            kept = [
                op for op in data if op.get("path") != "/metadata/resourceVersion" or op.get("op") == "test"
            ]
            try:
                patched = jsonpatch.apply_patch(current, kept)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message=f"the JSON patch failed: {err}"
                ) from None
        kind = plural.rstrip("s")
        if wanted_rv is not None and str(wanted_rv) != str(current["metadata"].get("resourceVersion")):
            raise kmock.KubernetesError(
                status=409,
                reason="Conflict",
                message=f'Operation cannot be fulfilled on {plural} "{request.name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        if request.subresource is None:
            for path in IMMUTABLE_FIELDS.get(plural, ()):
                if _dig(patched, path) != _dig(current, path):
                    raise kmock.KubernetesError(
                        status=422,
                        reason="Invalid",
                        message=f'{kind} "{request.name}" is invalid: {".".join(path)}: Invalid value: '
                        f"{json.dumps(_dig(patched, path))}: field is immutable",
                    )
            self._admit(plural, patched)

    async def _serve_update(self, request: Any) -> Any:
        async with self._lock:
            obj = self._objects[request.resource, request.namespace, request.name]
            history = [v for v in obj.history if v is not None]
            before = history[-2].raw if len(history) > 1 else {}
            if (
                request.subresource is None
                and str(request.resource.plural) in STATUS_SUBRESOURCE
                and before.get("status") != obj.last.raw.get("status")
            ):
                # A write to the object itself never changes its status (only /status does).
                obj.patch({"status": None})
                if before.get("status") is not None:
                    obj.patch({"status": json.loads(json.dumps(before["status"]))})
            meta = dict(obj.last.raw.get("metadata") or {})
            changes: dict[str, Any] = {"resourceVersion": str(next(self._rv))}
            if request.subresource != "status" and before.get("spec") != obj.last.raw.get("spec"):
                changes["generation"] = int(meta.get("generation") or 1) + 1
            obj.patch({"metadata": changes})
        result = await super()._serve_update(request)
        if request.subresource is None and isinstance(result, dict):
            self.received.append(("patch", json.loads(json.dumps(result))))
        return result

    async def _serve_list(self, request: Any) -> Any:
        selector = request.params.get("labelSelector") or ""
        try:
            terms = parse_selector(str(selector))
        except SelectorError as err:
            raise kmock.KubernetesError(
                status=400, reason="BadRequest", message=f"unable to parse requirement: {err}"
            ) from None
        fields = []
        for term in filter(None, str(request.params.get("fieldSelector") or "").split(",")):
            match = re.fullmatch(r"\s*([A-Za-z0-9.]+)\s*(==|!=|=)\s*([^,=!]*)\s*", term)
            if match is None:
                raise kmock.KubernetesError(
                    status=400, reason="BadRequest", message=f"invalid field selector: {term!r}"
                )
            fields.append((tuple(match[1].split(".")), match[2] == "!=", match[3]))
        body = await super()._serve_list(request)
        body["items"] = [
            item
            for item in body["items"]
            if selector_matches(terms, (item.get("metadata") or {}).get("labels") or {})
            and all((str(_dig(item, path) or "") == value) != negated for path, negated, value in fields)
        ]
        return body

    async def _serve_fetch(self, request: Any) -> Any:
        if request.subresource == "log":
            if (request.namespace, request.name) not in self.pod_logs:
                raise kmock.KubernetesObjectNotFoundError()
            params = {key: str(value) for key, value in request.params.items()}
            lines = self.pod_logs[request.namespace, request.name]
            since = int(params.get("sinceSeconds") or 0)
            if since:
                start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=since)
                lines = [(when, line) for when, line in lines if when >= start]
            tail = int(params.get("tailLines") or 0)
            shown = lines[-tail:] if tail else lines
            # Recorded once the lines are chosen: a test that waits for a read knows what it was sent.
            self.log_queries.append(params)
            self.log_lines_sent.append(len(shown))
            stamped = params.get("timestamps", "").lower() == "true"
            return "".join(
                f"{_rfc3339nano(when)} {line}\n" if stamped else f"{line}\n" for when, line in shown
            ).encode()
        return await super()._serve_fetch(request)


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what `application/merge-patch+json` does)."""
    if not isinstance(patch, dict):
        return json.loads(json.dumps(patch))
    result = json.loads(json.dumps(target)) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _rfc3339nano(when: datetime.datetime) -> str:
    """Go's time.RFC3339Nano, as the kubelet stamps log lines: trailing zeros of the fraction dropped."""
    fraction = f"{when.microsecond:06d}000".rstrip("0")
    return when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def _rbac(method: str, path: str, query: str) -> tuple[str, str, str]:
    """(apiGroup, resource, verb) of a namespaced request, the way the apiserver's RequestInfo derives them:
    /api/v1/namespaces/<ns>/<resource>[/<name>[/<subresource>]] (core group, "") or
    /apis/<group>/<version>/namespaces/<ns>/..."""
    parts = [part for part in path.split("/") if part]
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    if len(rest) < 3 or rest[0] != "namespaces":
        raise AssertionError(f"{method} {path}: not a namespaced request: the runtime makes no other")
    resource, named = rest[2], len(rest) > 3
    if len(rest) > 4:
        resource = f"{resource}/{rest[4]}"
    watch = "watch=true" in query.lower()
    verb = {
        "GET": ("watch" if watch else "get") if named else ("watch" if watch else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if named else "deletecollection",
    }[method]
    return group, resource, verb


def role_grants(path: Path = RBAC_MANIFEST) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the Role in deploy/rbac.yaml grants."""
    import yaml

    role = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Role")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def check_sent(cluster: EmulatedCluster) -> int:
    """What a real apiserver would have refused and this emulator accepted: every object sent passes
    `kubernetes-validate --strict` for SCHEMA_VERSIONS, and every request is granted by deploy/rbac.yaml.
    Returns how many objects were validated."""
    import kubernetes_validate

    sent = cluster.sent_objects()
    for how, obj in sent:
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                kind, name = obj.get("kind"), (obj.get("metadata") or {}).get("name")
                raise AssertionError(
                    f"{how} {kind} {name} is invalid for Kubernetes {version}: {err}"
                ) from err
    # Pod Security admission checks Pods, not the workloads that make them: a template that violates the
    # namespace's `restricted` level (deploy/namespace.yaml) is stored, and every pod made from it refused.
    for how, obj in sent:
        plural = {"Job": "jobs", "Deployment": "deployments"}.get(str(obj.get("kind")), "")
        for path, spec in _pod_specs(plural, obj):
            violations = restricted_violations(spec)
            name = (obj.get("metadata") or {}).get("name")
            assert not violations, f"{how} {obj.get('kind')} {name}: {path} violates restricted: {violations}"
    denied = cluster.rbac_requests() - role_grants()
    assert not denied, f"requests the Role in {RBAC_MANIFEST.name} does not grant: {sorted(denied)}"
    return len(sent)


def _reset(raw_request: aiohttp.web.BaseRequest) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0): the client sees "connection reset by peer"."""
    transport = raw_request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _fields(request: Any) -> dict[str, Any]:
    import attrs

    return {
        (f.alias or f.name.lstrip("_")): getattr(request, f.name)
        for f in attrs.fields(type(request))
        if f.init
    }


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EmulatedCluster:
    """The emulator on its own thread and event loop, so that both the synchronous operators and the
    asynchronous triggers (on the test's loop) reach it over HTTP, and tests can play the controllers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="k8s-emulator", daemon=True)
        self._thread.start()
        self.api: ClusterEmulator = self._run(self._start())

    async def _start(self) -> ClusterEmulator:
        api = ClusterEmulator()
        await api.__aenter__()
        for resource in RESOURCES.values():
            api.resources[resource] = {"namespaced": True}
        self._server = kmock.Server(api)
        await self._server.__aenter__()
        self._api = api
        return api

    def _run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def url(self) -> str:
        return str(self._server.url).rstrip("/")

    def close(self) -> None:
        async def _stop() -> None:
            await self._server.__aexit__(None, None, None)
            await self._api.__aexit__(None, None, None)

        try:
            self._run(_stop(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)

    def kubeconfig(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator-token-not-a-secret"}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": NAMESPACE},
                }
            ],
            "current-context": "emulator",
        }

    def connection_json(self) -> str:
        return json.dumps({"conn_type": "kubernetes", "extra": {"kube_config": self.kubeconfig()}})

    # --- faults ----------------------------------------------------------------------------------------

    def _add_fault(self, fault: Fault) -> Fault:
        with self.api._faults_lock:
            self.api.faults.append(fault)
        return fault

    def fail_next(
        self,
        times: int,
        status: int = 503,
        *,
        method: str | None = None,
        path: str = "",
        retry_after: int | None = None,
        message: str = "",
    ) -> Fault:
        """The next `times` matching requests are answered `status` (a Status body; the request has no
        effect), with `Retry-After: retry_after` when given."""
        return self._add_fault(Fault("status", times, method, path, status, retry_after, message))

    def reset_next(
        self, times: int, *, method: str | None = None, path: str = "", handled: bool = False
    ) -> Fault:
        """The next `times` matching requests get their connection reset instead of an answer; with
        `handled` each takes effect first (the answer is lost on the way back)."""
        return self._add_fault(Fault("reset", times, method, path, handled=handled))

    def delay_next(self, times: int, seconds: float, *, method: str | None = None, path: str = "") -> Fault:
        """The next `times` matching requests take effect, and their answers wait `seconds` (longer than
        the client's read timeout, the client gives up first)."""
        return self._add_fault(Fault("delay", times, method, path, delay=seconds, handled=True))

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every HTTP request received, as (method, path), faulted ones included."""
        return list(self.api.requests_seen)

    @property
    def faults_served(self) -> Counter[str]:
        return Counter(self.api.faults_served)

    # --- what the runtime sent -------------------------------------------------------------------------

    def sent_objects(self) -> list[tuple[str, dict[str, Any]]]:
        """("create" | "patch", object) for every object created, and every object as a patch left it,
        with the metadata the server sets and the status removed: what the client asked for."""
        result = []
        for how, obj in self.api.received:
            clean = json.loads(json.dumps(obj))
            clean.pop("status", None)
            meta = clean.get("metadata") or {}
            for key in SERVER_METADATA:
                meta.pop(key, None)
            result.append((how, clean))
        return result

    def rbac_requests(self) -> set[tuple[str, str, str]]:
        """Every request as RBAC sees it: (apiGroup, resource[/subresource], verb)."""
        return {_rbac(method, path, query) for method, path, query in self.api.requests_with_query}

    # --- the test plays the controllers ---------------------------------------------------------------

    @property
    def calls(self) -> list[tuple[str, str, str]]:
        return list(self.api.calls)

    def writes(self) -> list[tuple[str, str, str]]:
        """The state-changing calls, in order: what the runtime did to the cluster."""
        return [c for c in self.calls if not c[0].startswith(("fetch", "list", "watch"))]

    def get(self, kind: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        async def _get() -> dict[str, Any] | None:
            async with self.api._lock:
                key = (RESOURCES[kind], namespace, name)
                try:
                    obj = self.api.objects[key]
                except KeyError:
                    return None
                return None if obj.deleted else json.loads(json.dumps(obj.raw))

        result: dict[str, Any] | None = self._run(_get())
        return result

    def names(self, kind: str, namespace: str = NAMESPACE) -> list[str]:
        async def _names() -> list[str]:
            async with self.api._lock:
                return sorted(
                    key[2]
                    for key in self.api.objects
                    if str(key[0]) == str(kmock.resource(RESOURCES[kind]))
                    and key[1] == namespace
                    and not self.api.objects[key].deleted
                )

        result: list[str] = self._run(_names())
        return result

    def patch(self, kind: str, name: str, changes: dict[str, Any], namespace: str = NAMESPACE) -> None:
        """What a controller does: merge `changes` (typically into status) and bump resourceVersion.
        Raises `Gone` if the object was deleted meanwhile (a controller's write gets 404 then)."""

        async def _patch() -> None:
            async with self.api._lock:
                try:
                    obj = self.api.objects[RESOURCES[kind], namespace, name]
                except KeyError:
                    raise Gone(kind, name) from None
                if obj.deleted:
                    raise Gone(kind, name)
                obj.patch(changes)
                obj.patch({"metadata": {"resourceVersion": str(next(self.api._rv))}})

        self._run(_patch())

    def add(self, kind: str, obj: dict[str, Any], namespace: str = NAMESPACE) -> None:
        async def _add() -> None:
            async with self.api._lock:
                meta = obj.setdefault("metadata", {})
                meta.setdefault("namespace", namespace)
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                meta["resourceVersion"] = str(next(self.api._rv))
                self.api.objects[RESOURCES[kind], namespace, meta["name"]] = obj

        self._run(_add())

    def delete(self, kind: str, name: str, namespace: str = NAMESPACE) -> None:
        """Delete through the HTTP API, as a client does."""
        group = RESOURCES[kind].rsplit("/", 1)[0]
        prefix = "api" if group == "v1" else "apis"
        resp = requests.delete(
            f"{self.url}/{prefix}/{group}/namespaces/{namespace}/{kind}/{name}", timeout=10
        )
        assert resp.ok, (resp.status_code, resp.text)

    def set_log(
        self, pod: str, lines: list[str], namespace: str = NAMESPACE, at: datetime.datetime | None = None
    ) -> None:
        """The pod's whole log so far: lines beyond the ones already there are written now (or `at`)."""
        when = at or datetime.datetime.now(datetime.UTC)
        old = self.api.pod_logs.get((namespace, pod), [])
        if [line for _, line in old] != list(lines[: len(old)]):
            old = []
        self.api.pod_logs[namespace, pod] = [*old, *((when, line) for line in lines[len(old) :])]

    # --- controller shortcuts --------------------------------------------------------------------------

    def add_job_pod(
        self, job: str, pod: str, *, phase: str = "Running", terminated: dict[str, Any] | None = None
    ) -> None:
        status: dict[str, Any] = {"phase": phase}
        if terminated is not None:
            status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
        self.add(
            "pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "labels": {"job-name": job, "batch.kubernetes.io/job-name": job}},
                "status": status,
            },
        )

    def finish_job(self, job: str, *, succeeded: bool, reason: str = "", message: str = "") -> None:
        now = _now()
        if succeeded:
            conditions = [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "lastTransitionTime": now},
            ]
            status = {"succeeded": 1, "active": 0, "conditions": conditions, "completionTime": now}
        else:
            conditions = [
                {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
                {"type": "Failed", "status": "True", "reason": reason, "message": message},
            ]
            status = {"failed": 1, "active": 0, "conditions": conditions}
        self.patch("jobs", job, {"status": status})

    def roll_out(self, name: str, *, available: bool = True, deadline_exceeded: bool = False) -> None:
        """The Deployment controller: observe the current generation and report its replicas."""
        dep = self.get("deployments", name)
        if dep is None:
            raise Gone("deployments", name)
        replicas = int(dep["spec"].get("replicas", 1))
        generation = int(dep["metadata"].get("generation", 1))
        progressing = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
        if deadline_exceeded:
            progressing = {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": f'ReplicaSet "{name}-7d4b9c" has timed out progressing.',
            }
        ready = replicas if available else 0
        self.patch(
            "deployments",
            name,
            {
                "status": {
                    "observedGeneration": generation,
                    "replicas": replicas if available else replicas + 1,
                    "updatedReplicas": replicas if available else 1,
                    "readyReplicas": ready,
                    "availableReplicas": ready,
                    "conditions": [progressing],
                }
            },
        )


@contextmanager
def emulated_cluster() -> Iterator[EmulatedCluster]:
    cluster = EmulatedCluster()
    try:
        yield cluster
    finally:
        cluster.close()


FETCH_IMAGE = "registry.example.com/mlpipe/fetch@sha256:" + "c" * 64


def mlpipe_settings() -> dict[str, str]:
    """The `[mlpipe]` settings that point the Kubernetes runtime at the emulator."""
    return {
        "kubernetes_conn_id": CONN_ID,
        "kubernetes_namespace": NAMESPACE,
        "kubernetes_fetch_image": FETCH_IMAGE,
        "kubernetes_oss_secret": "mlpipe-oss",
    }


def configure(monkeypatch: Any, cluster: EmulatedCluster) -> None:
    """Point Airflow's `kubernetes` connection and the `[mlpipe]` settings at the emulator."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", cluster.connection_json())
    for key, value in mlpipe_settings().items():
        monkeypatch.setenv(f"AIRFLOW__MLPIPE__{key.upper()}", value)


# --- running operators and triggers without a scheduler -----------------------------------------------


class FakeTaskInstance:
    """The parts of a task instance the operators use: XCom push/pull and the run's task states."""

    def __init__(self, states: dict[str, str] | None = None) -> None:
        self.xcoms: dict[tuple[str, str], Any] = {}
        self.task_id = "task"
        self.states = states or {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[self.task_id, key] = value

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcoms.get((task_ids or self.task_id, key))

    def get_task_states(self, dag_id: str, run_ids: list[str]) -> dict[str, dict[str, str]]:
        return {run_ids[0]: dict(self.states)}


def make_context(
    run_id: str = "manual__2026-01-01T00:00:00+00:00", ti: FakeTaskInstance | None = None
) -> Any:
    from types import SimpleNamespace

    return {
        "dag": SimpleNamespace(dag_id="mlpipe_fashion_mnist"),
        "run_id": run_id,
        "ti": ti or FakeTaskInstance(),
    }


def execute_until_deferred(operator: Any, context: Any) -> Any:
    """Run `execute`; return the TaskDeferred it raises (or the result, if it finished at once)."""
    from airflow.sdk.exceptions import TaskDeferred

    try:
        return operator.execute(context)
    except TaskDeferred as deferred:
        return deferred


async def first_event(trigger: Any, timeout: float = 30) -> dict[str, Any]:
    async def _first() -> dict[str, Any]:
        async for event in trigger.run():
            payload: dict[str, Any] = event.payload
            return payload
        raise AssertionError("the trigger ended without an event")

    return await asyncio.wait_for(_first(), timeout)


def resume(operator: Any, context: Any, deferred: Any, event: dict[str, Any]) -> Any:
    return getattr(operator, deferred.method_name)(context, event, **(deferred.kwargs or {}))
