"""An in-process EMULATOR of the Alibaba Cloud OSS REST protocol, for tests only.

It is not OSS: it implements just what oss2 2.19 sends for airflow_provider_mlpipe's OSS backend, over plain
HTTP on 127.0.0.1 (path-style URLs, which oss2 uses for IP endpoints):

- PutObject (with `x-oss-forbid-overwrite` -> 409 FileAlreadyExists), CopyObject (`x-oss-copy-source`),
  GetObject (with `Range`, `If-Match`), HeadObject, DeleteObject, ListObjects (v1: prefix, delimiter,
  marker, max-keys, encoding-type=url),
- InitiateMultipartUpload, UploadPart, CompleteMultipartUpload, ListParts, AbortMultipartUpload,
- `x-oss-hash-crc64ecma` on every object response (the CRC64 oss2 checks), ETag, Last-Modified,
- the OSS signature V1 (`Authorization: OSS <id>:<base64 hmac-sha1>`), recomputed from the request and the
  configured secret: a wrong key id gets 403 InvalidAccessKeyId, a wrong secret 403 SignatureDoesNotMatch,
- error bodies in OSS' XML format (and, for HEAD, the base64 `x-oss-err` header oss2 reads).

Tests can inject faults (`fail_next`: N answers with a status, or N connection resets; `delay_next`: N
answers held back longer than the client's read timeout), corrupt stored bytes, and count requests per
operation.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import crcmod

# CRC-64/XZ (ECMA-182 polynomial, reflected, all-ones init and xor-out): what OSS reports.
_crc64 = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)

# Query parameters that are part of the signed resource (a subset of oss2's list: those used here).
_SUBRESOURCES = frozenset(
    {"acl", "uploads", "uploadId", "partNumber", "objectMeta", "delete", "continuation-token"}
)


@dataclass
class StoredObject:
    data: bytes
    mtime: float
    multipart: bool = False

    @property
    def etag(self) -> str:
        return hashlib.md5(self.data, usedforsecurity=False).hexdigest().upper()

    @property
    def crc(self) -> str:
        return str(_crc64(self.data))


@dataclass
class Upload:
    bucket: str
    key: str
    parts: dict[int, bytes] = field(default_factory=dict)


@dataclass
class Fault:
    remaining: int
    status: int  # 0: reset the connection instead of answering
    code: str
    match: Callable[[str, str, dict[str, str]], bool]
    delay: float = 0.0  # > 0: answer normally, this many seconds late (status and code unused)

    @property
    def label(self) -> str:
        if self.delay:
            return "delay"
        return str(self.status) if self.status else "reset"


class OssEmulator:
    """Start with `with OssEmulator(...) as oss:`; `oss.endpoint` is the URL to give oss2."""

    def __init__(
        self,
        access_key_id: str = "emulator-key-id",
        access_key_secret: str = "emulator-key-secret",
        buckets: tuple[str, ...] = ("models",),
    ) -> None:
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.buckets: dict[str, dict[str, StoredObject]] = {name: {} for name in buckets}
        self.uploads: dict[str, Upload] = {}
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.operations: Counter[str] = Counter()
        self.faults_served: Counter[str] = Counter()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> OssEmulator:
        emulator = self

        class Handler(_Handler):
            oss = emulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="oss-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> OssEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the emulator first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- test controls --------------------------------------------------------------------------------

    def fail_next(
        self,
        times: int,
        *,
        status: int = 503,
        code: str = "ServiceUnavailable",
        match: Callable[[str, str, dict[str, str]], bool] | None = None,
    ) -> None:
        """The next `times` matching requests (method, key, query) get `status`, or a reset if status is 0."""
        self.faults.append(Fault(times, status, code, match or (lambda method, key, query: True)))

    def delay_next(
        self,
        times: int,
        seconds: float,
        *,
        match: Callable[[str, str, dict[str, str]], bool] | None = None,
    ) -> None:
        """The next `times` matching requests are served normally, but their answers wait `seconds`."""
        self.faults.append(Fault(times, 0, "", match or (lambda method, key, query: True), delay=seconds))

    def corrupt(self, bucket: str, key: str, offset: int = 0) -> None:
        """Flip one stored byte, as silent corruption at rest would (the CRC OSS reports follows the data)."""
        with self.lock:
            obj = self.buckets[bucket][key]
            data = bytearray(obj.data)
            data[offset] ^= 0xFF
            obj.data = bytes(data)

    def keys(self, bucket: str) -> list[str]:
        with self.lock:
            return sorted(self.buckets[bucket])

    # -- protocol -------------------------------------------------------------------------------------

    def string_to_sign(
        self, method: str, bucket: str, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> bytes:
        oss_headers = sorted((k, v) for k, v in headers.items() if k.startswith("x-oss-"))
        canonical_headers = "".join(f"{k}:{v}\n" for k, v in oss_headers)
        sub = sorted((k, v) for k, v in query.items() if k in _SUBRESOURCES)
        resource = f"/{bucket}/{key}" if bucket else "/"
        if sub:
            resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in sub)
        return "\n".join(
            [
                method,
                headers.get("content-md5", ""),
                headers.get("content-type", ""),
                headers.get("x-oss-date", "") or headers.get("date", ""),
                canonical_headers + resource,
            ]
        ).encode()

    def check_signature(
        self, method: str, bucket: str, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[str, str] | None:
        """None when the request is signed with our key, else (code, message) of the 403."""
        auth = headers.get("authorization", "")
        if not auth.startswith("OSS ") or ":" not in auth:
            return "AccessDenied", "The request is not signed with OSS signature V1."
        key_id, _, signature = auth[4:].partition(":")
        if key_id != self.access_key_id:
            return "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records."
        expected = base64.b64encode(
            hmac.new(
                self.access_key_secret.encode(),
                self.string_to_sign(method, bucket, key, query, headers),
                hashlib.sha1,
            ).digest()
        ).decode()
        if not hmac.compare_digest(expected, signature):
            return (
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        return None

    def take_fault(self, method: str, key: str, query: dict[str, str]) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.remaining > 0 and fault.match(method, key, query):
                    fault.remaining -= 1
                    self.faults_served[f"{method} {fault.label}"] += 1
                    return fault
        return None


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _Handler(BaseHTTPRequestHandler):
    oss: OssEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes: without NODELAY, Nagle + delayed ACK add ~40 ms each.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- plumbing -------------------------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("x-oss-request-id", uuid.uuid4().hex[:24].upper())
        self.send_header("Date", _http_date(time.time()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.command == "HEAD":
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, **extra: str) -> None:
        items = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in extra.items())
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{code}</Code><Message>{escape(message)}</Message>"
            f"<RequestId>emulator</RequestId><HostId>127.0.0.1</HostId>{items}</Error>"
        ).encode()
        headers = {"Content-Type": "application/xml"}
        if self.command == "HEAD":
            headers["x-oss-err"] = base64.b64encode(body).decode()
        self._send(status, body, headers)

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send RST: the client sees "connection reset by peer".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _object_headers(self, obj: StoredObject) -> dict[str, str]:
        return {
            "ETag": f'"{obj.etag}"',
            "Last-Modified": _http_date(obj.mtime),
            "x-oss-hash-crc64ecma": obj.crc,
            "x-oss-object-type": "Multipart" if obj.multipart else "Normal",
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }

    def _handle(self) -> None:
        oss = self.oss
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        path = parts.path.lstrip("/")
        bucket, _, raw_key = path.partition("/")
        key = unquote(raw_key)
        headers = {k.lower(): v.strip() for k, v in self.headers.items()}
        body = self._body()

        fault = oss.take_fault(self.command, key, query)
        if fault is not None and fault.delay:
            # The client gives up first; the request still takes effect below, as on a slow server.
            time.sleep(fault.delay)
        elif fault is not None:
            if fault.status == 0:
                self._reset()
                return
            self._error(fault.status, fault.code, "injected by the test")
            return
        denied = oss.check_signature(self.command, bucket, key, query, headers)
        if denied is not None:
            self._error(403, denied[0], denied[1], BucketName=bucket, Key=key)
            return
        if bucket not in oss.buckets:
            self._error(404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=bucket)
            return
        objects = oss.buckets[bucket]
        method = self.command

        if method == "GET" and not key:
            oss.operations["ListObjects"] += 1
            self._list(bucket, objects, query)
        elif method == "POST" and "uploads" in query:
            oss.operations["InitiateMultipartUpload"] += 1
            upload_id = uuid.uuid4().hex
            with oss.lock:
                oss.uploads[upload_id] = Upload(bucket, key)
            xml = (
                "<InitiateMultipartUploadResult>"
                f"<Bucket>{bucket}</Bucket><Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
                "</InitiateMultipartUploadResult>"
            )
            self._send(200, xml.encode(), {"Content-Type": "application/xml"})
        elif method == "PUT" and "uploadId" in query:
            oss.operations["UploadPart"] += 1
            upload = oss.uploads.get(query["uploadId"])
            if upload is None:
                self._error(404, "NoSuchUpload", "The specified upload does not exist.")
                return
            with oss.lock:
                upload.parts[int(query["partNumber"])] = body
            part = StoredObject(body, time.time())
            self._send(200, b"", {"ETag": f'"{part.etag}"', "x-oss-hash-crc64ecma": part.crc})
        elif method == "POST" and "uploadId" in query:
            oss.operations["CompleteMultipartUpload"] += 1
            self._complete(bucket, key, query["uploadId"], body, headers)
        elif method == "GET" and "uploadId" in query:
            oss.operations["ListParts"] += 1
            upload = oss.uploads.get(query["uploadId"])
            if upload is None:
                self._error(404, "NoSuchUpload", "The specified upload does not exist.")
                return
            items = "".join(
                f"<Part><PartNumber>{n}</PartNumber><LastModified>{_iso(time.time())}</LastModified>"
                f'<ETag>"{StoredObject(data, 0).etag}"</ETag><Size>{len(data)}</Size></Part>'
                for n, data in sorted(upload.parts.items())
            )
            xml = (
                f"<ListPartsResult><Bucket>{bucket}</Bucket><Key>{escape(key)}</Key>"
                f"<UploadId>{query['uploadId']}</UploadId><NextPartNumberMarker>0</NextPartNumberMarker>"
                f"<IsTruncated>false</IsTruncated>{items}</ListPartsResult>"
            )
            self._send(200, xml.encode(), {"Content-Type": "application/xml"})
        elif method == "DELETE" and "uploadId" in query:
            oss.operations["AbortMultipartUpload"] += 1
            with oss.lock:
                oss.uploads.pop(query["uploadId"], None)
            self._send(204)
        elif method == "PUT":
            self._put(bucket, objects, key, body, headers)
        elif method in ("GET", "HEAD"):
            oss.operations["HeadObject" if method == "HEAD" else "GetObject"] += 1
            with oss.lock:
                obj = objects.get(key)
            if obj is None:
                self._error(404, "NoSuchKey", "The specified key does not exist.", Key=key)
                return
            self._get(obj, headers)
        elif method == "DELETE":
            oss.operations["DeleteObject"] += 1
            with oss.lock:
                objects.pop(key, None)
            self._send(204)
        else:
            self._error(405, "MethodNotAllowed", f"{method} is not emulated")

    def _put(
        self, bucket: str, objects: dict[str, StoredObject], key: str, body: bytes, headers: dict[str, str]
    ) -> None:
        oss = self.oss
        source = headers.get("x-oss-copy-source")
        if source:
            oss.operations["CopyObject"] += 1
            src_bucket, _, src_key = unquote(source).lstrip("/").partition("/")
            with oss.lock:
                src = oss.buckets.get(src_bucket, {}).get(src_key)
            if src is None:
                self._error(404, "NoSuchKey", "The specified key does not exist.", Key=src_key)
                return
            body = src.data
        else:
            oss.operations["PutObject"] += 1
        if "content-md5" in headers and (
            base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
            != headers["content-md5"]
        ):
            self._error(400, "InvalidDigest", "The Content-MD5 you specified is not valid.")
            return
        obj = StoredObject(body, time.time())
        with oss.lock:
            # Check and write under one lock: this is what makes forbid-overwrite a compare-and-swap.
            if headers.get("x-oss-forbid-overwrite", "").lower() == "true" and key in objects:
                conflict = True
            else:
                conflict = False
                objects[key] = obj
        if conflict:
            self._error(409, "FileAlreadyExists", "The object you specified already exists.", Key=key)
            return
        if source:
            xml = (
                f'<CopyObjectResult><ETag>"{obj.etag}"</ETag>'
                f"<LastModified>{_iso(obj.mtime)}</LastModified></CopyObjectResult>"
            )
            self._send(
                200, xml.encode(), {"Content-Type": "application/xml", "x-oss-hash-crc64ecma": obj.crc}
            )
        else:
            self._send(200, b"", {"ETag": f'"{obj.etag}"', "x-oss-hash-crc64ecma": obj.crc})

    def _complete(self, bucket: str, key: str, upload_id: str, body: bytes, headers: dict[str, str]) -> None:
        oss = self.oss
        upload = oss.uploads.get(upload_id)
        if upload is None or upload.bucket != bucket or upload.key != key:
            self._error(404, "NoSuchUpload", "The specified upload does not exist.")
            return
        numbers = [int(node.text or 0) for node in ElementTree.fromstring(body).iter("PartNumber")]
        if not numbers or any(n not in upload.parts for n in numbers):
            self._error(400, "InvalidPart", "One or more of the specified parts could not be found.")
            return
        obj = StoredObject(b"".join(upload.parts[n] for n in numbers), time.time(), multipart=True)
        objects = oss.buckets[bucket]
        with oss.lock:
            if headers.get("x-oss-forbid-overwrite", "").lower() == "true" and key in objects:
                self._error(409, "FileAlreadyExists", "The object you specified already exists.", Key=key)
                return
            objects[key] = obj
            oss.uploads.pop(upload_id, None)
        xml = (
            "<CompleteMultipartUploadResult>"
            f'<Bucket>{bucket}</Bucket><Key>{escape(key)}</Key><ETag>"{obj.etag}"</ETag>'
            "</CompleteMultipartUploadResult>"
        )
        self._send(
            200,
            xml.encode(),
            {"Content-Type": "application/xml", "ETag": f'"{obj.etag}"', "x-oss-hash-crc64ecma": obj.crc},
        )

    def _get(self, obj: StoredObject, headers: dict[str, str]) -> None:
        if "if-match" in headers and headers["if-match"].strip('"') != obj.etag:
            self._error(
                412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold."
            )
            return
        base = self._object_headers(obj)
        size = len(obj.data)
        spec = headers.get("range", "")
        if spec.startswith("bytes=") and self.command == "GET":
            first_raw, _, last_raw = spec[len("bytes=") :].partition("-")
            first = int(first_raw) if first_raw else max(0, size - int(last_raw))
            last = min(int(last_raw), size - 1) if first_raw and last_raw else size - 1
            if first >= size or first > last:
                self._error(416, "InvalidRange", "The requested range cannot be satisfied.")
                return
            base["Content-Range"] = f"bytes {first}-{last}/{size}"
            self._send(206, obj.data[first : last + 1], base)
            return
        if self.command == "HEAD":
            base["Content-Length"] = str(size)
        self._send(200, obj.data, base)

    def _list(self, bucket: str, objects: dict[str, StoredObject], query: dict[str, str]) -> None:
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        marker, max_keys = query.get("marker", ""), int(query.get("max-keys") or 100)
        url = query.get("encoding-type") == "url"

        def enc(value: str) -> str:
            return escape(quote(value, safe="/") if url else value)

        with self.oss.lock:
            snapshot = sorted((k, v) for k, v in objects.items() if k.startswith(prefix) and k > marker)
        entries: list[tuple[str, StoredObject | None]] = []
        seen_prefixes: set[str] = set()
        for k, obj in snapshot:
            rest = k[len(prefix) :]
            if delimiter and delimiter in rest:
                common = prefix + rest.split(delimiter, 1)[0] + delimiter
                # A common prefix already returned on an earlier page (NextMarker == that prefix).
                if common in seen_prefixes or common <= marker:
                    continue
                seen_prefixes.add(common)
                entries.append((common, None))
            else:
                entries.append((k, obj))
            if len(entries) == max_keys:
                break
        truncated = len(entries) == max_keys and bool(snapshot) and entries[-1][0] < snapshot[-1][0]
        next_marker = entries[-1][0] if truncated else ""
        items = []
        for k, entry in entries:
            if entry is None:
                items.append(f"<CommonPrefixes><Prefix>{enc(k)}</Prefix></CommonPrefixes>")
            else:
                items.append(
                    f"<Contents><Key>{enc(k)}</Key><LastModified>{_iso(entry.mtime)}</LastModified>"
                    f'<ETag>"{entry.etag}"</ETag><Type>{"Multipart" if entry.multipart else "Normal"}</Type>'
                    f"<Size>{len(entry.data)}</Size><StorageClass>Standard</StorageClass></Contents>"
                )
        xml = (
            f"<ListBucketResult><Name>{bucket}</Name><Prefix>{enc(prefix)}</Prefix><Marker>{enc(marker)}</Marker>"
            f"<MaxKeys>{max_keys}</MaxKeys><Delimiter>{enc(delimiter)}</Delimiter>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
            + (f"<NextMarker>{enc(next_marker)}</NextMarker>" if truncated else "")
            + ("<EncodingType>url</EncodingType>" if url else "")
            + "".join(items)
            + "</ListBucketResult>"
        )
        self._send(200, xml.encode(), {"Content-Type": "application/xml"})

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()
