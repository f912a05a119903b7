"""`oss://bucket/prefix` backend on Alibaba Cloud OSS through oss2 (imported lazily).

Credentials come from explicit arguments (the Airflow hook reads them from the `oss_default` connection) or
from the environment (`OSS_ACCESS_KEY_ID`, `OSS_ACCESS_KEY_SECRET`, `OSS_REGION`, optional `OSS_ENDPOINT`),
so the training container and the serving fetch step need no Airflow.

- `put_if_absent` sends `x-oss-forbid-overwrite: true`: OSS answers 409 FileAlreadyExists when the key
  exists, which is the compare-and-swap the store's reservations and alias histories rely on.
- Files go through `oss2.resumable_upload` (multipart above a threshold, every part CRC64-checked) and come
  back through `oss2.resumable_download` / GetObject with the CRC64 of the whole object checked.
- Transient failures (5xx, 429, network, timeouts, CRC mismatch in flight; `retries.is_transient` decides)
  are retried under a `retries.RetryPolicy`; 403 and missing buckets fail at once. Every error names the
  bucket and the key.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from airflow_provider_mlpipe.exceptions import (
    ConfigError,
    ModelStoreError,
    RetriesExhausted,
    StoreAccessDenied,
    StoreBucketNotFound,
    StoreNotFound,
    StoreUnavailable,
)
from airflow_provider_mlpipe.retries import RetryPolicy, call_with_retry, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_ACCESS_KEY_ID = "OSS_ACCESS_KEY_ID"
ENV_ACCESS_KEY_SECRET = "OSS_ACCESS_KEY_SECRET"
ENV_REGION = "OSS_REGION"
ENV_ENDPOINT = "OSS_ENDPOINT"
# Tuning knobs, mostly for tests and unusual networks; the defaults suit SavedModels of any size.
ENV_MULTIPART_THRESHOLD = "MLPIPE_OSS_MULTIPART_THRESHOLD"
ENV_PART_SIZE = "MLPIPE_OSS_PART_SIZE"

DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
DEFAULT_PART_SIZE = 16 * 1024 * 1024
MIN_PART_SIZE = 100 * 1024  # OSS refuses smaller parts (except the last one)
_FORBID_OVERWRITE = {"x-oss-forbid-overwrite": "true"}


@dataclass(frozen=True)
class OssCredentials:
    """Access key pair plus where the bucket lives. The secret never appears in repr() or logs."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    region: str | None = None
    endpoint: str | None = None

    def __post_init__(self) -> None:
        if not self.access_key_id:
            raise ConfigError("access_key_id", self.access_key_id, "a non-empty OSS AccessKey ID")
        if not self.access_key_secret:
            raise ConfigError("access_key_secret", "<empty>", "a non-empty OSS AccessKey secret")
        if not self.region and not self.endpoint:
            raise ConfigError("region", self.region, "an OSS region such as cn-hangzhou (or an endpoint)")

    @property
    def endpoint_url(self) -> str:
        endpoint = self.endpoint or f"oss-{self.region}.aliyuncs.com"
        return endpoint if "://" in endpoint else f"https://{endpoint}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OssCredentials:
        env = os.environ if environ is None else environ
        key_id, secret = env.get(ENV_ACCESS_KEY_ID, ""), env.get(ENV_ACCESS_KEY_SECRET, "")
        region, endpoint = env.get(ENV_REGION) or None, env.get(ENV_ENDPOINT) or None
        missing = [
            name
            for name, value in ((ENV_ACCESS_KEY_ID, key_id), (ENV_ACCESS_KEY_SECRET, secret))
            if not value
        ]
        if not region and not endpoint:
            missing.append(f"{ENV_REGION} (or {ENV_ENDPOINT})")
        if missing:
            raise ConfigError(
                "OSS credentials",
                f"missing {', '.join(missing)}",
                f"{ENV_ACCESS_KEY_ID}, {ENV_ACCESS_KEY_SECRET} and {ENV_REGION} or {ENV_ENDPOINT} in the "
                "environment, or an Airflow connection of type oss (oss_default)",
            )
        return cls(key_id, secret, region, endpoint)

    def location_env(self) -> dict[str, str]:
        """Where the bucket lives (`OSS_REGION`, `OSS_ENDPOINT`), as set: not secret, so a pod may get it
        as a plain value."""
        env = {}
        if self.region:
            env[ENV_REGION] = self.region
        if self.endpoint:
            env[ENV_ENDPOINT] = self.endpoint
        return env

    def as_env(self) -> dict[str, str]:
        """The variables a child process (trainer, fetch step) needs to open the same store."""
        return {
            ENV_ACCESS_KEY_ID: self.access_key_id,
            ENV_ACCESS_KEY_SECRET: self.access_key_secret,
            **self.location_env(),
        }


def parse_oss_uri(uri: str, field: str = "model_store") -> tuple[str, str]:
    """`oss://bucket/some/prefix` -> ("bucket", "some/prefix"); errors name `field`."""
    rest = uri[len("oss://") :] if uri.startswith("oss://") else ""
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    # OSS bucket names: 3-63 lowercase letters, digits and hyphens, not starting or ending with a hyphen.
    valid = 3 <= len(bucket) <= 63 and bucket.replace("-", "").isalnum() and bucket == bucket.lower()
    if not valid or bucket.startswith("-") or bucket.endswith("-"):
        raise ConfigError(field, uri, "oss://<bucket>/<prefix> with a valid OSS bucket name")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ConfigError(field, uri, "a prefix without empty, '.' or '..' segments")
    return bucket, prefix


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, raw, f"an integer >= {minimum}") from None
    if value < minimum:
        raise ConfigError(name, raw, f"an integer >= {minimum}")
    return value


class OssBackend:
    """Keys are `<prefix>/<key>` in one bucket. Objects are immutable except the few the store overwrites
    on purpose (manifest and marker of a version being published, event records)."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        credentials: OssCredentials,
        *,
        multipart_threshold: int | None = None,
        part_size: int | None = None,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 30.0,
        checkpoint_dir: Path | None = None,
    ) -> None:
        import oss2

        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"oss://{bucket}/{self.prefix}" if self.prefix else f"oss://{bucket}"
        self.endpoint = credentials.endpoint_url
        # The region / endpoint as configured: what a pod opening the same bucket is given.
        self.location = credentials.location_env()
        self.multipart_threshold = multipart_threshold or _env_int(
            ENV_MULTIPART_THRESHOLD, DEFAULT_MULTIPART_THRESHOLD, 1
        )
        self.part_size = max(MIN_PART_SIZE, part_size or _env_int(ENV_PART_SIZE, DEFAULT_PART_SIZE, 1))
        self.retry = retry or RetryPolicy()
        # Upload/download checkpoints let a retried call resume a large file instead of starting over.
        self._checkpoints = checkpoint_dir or Path(tempfile.gettempdir()) / "mlpipe-oss-checkpoints"
        auth = oss2.Auth(credentials.access_key_id, credentials.access_key_secret)
        self._bucket = oss2.Bucket(
            auth,
            self.endpoint,
            bucket,
            connect_timeout=connect_timeout,
            enable_crc=True,
            region=credentials.region,
        )

    def __repr__(self) -> str:
        return f"OssBackend({self.uri!r}, endpoint={self.endpoint!r})"

    # -- plumbing -------------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        key = key.strip("/")
        if any(part in ("", ".", "..") for part in key.split("/")):
            raise ModelStoreError(f"key {key!r} is not a plain relative key under {self.uri}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _dir(self, prefix: str) -> str:
        return f"{self._key(prefix)}/" if prefix.strip("/") else (f"{self.prefix}/" if self.prefix else "")

    def _where(self, full_key: str) -> str:
        return f"oss://{self.bucket_name}/{full_key}"

    def _call(self, what: str, full_key: str, fn: Callable[[], T]) -> T:
        """Run one oss2 call under the retry policy and turn its failure into a store error."""
        import oss2

        try:
            return call_with_retry(fn, policy=self.retry, what=f"{what} {self._where(full_key)}")
        except RetriesExhausted as exhausted:
            raise StoreUnavailable(
                f"{what} {self._where(full_key)} (bucket {self.bucket_name!r}, key {full_key!r}, endpoint "
                f"{self.endpoint}) kept failing after {exhausted.attempts} attempts: "
                f"{_describe(exhausted.last)}"
            ) from exhausted.last
        except oss2.exceptions.OssError as exc:
            raise self._translate(what, full_key, exc) from exc

    def _translate(self, what: str, full_key: str, exc: Any) -> ModelStoreError:
        import oss2

        where = f"{what} {self._where(full_key)} (bucket {self.bucket_name!r}, key {full_key!r})"
        if isinstance(exc, oss2.exceptions.NoSuchBucket):
            return StoreBucketNotFound(
                f"{where}: bucket {self.bucket_name!r} does not exist at {self.endpoint}; "
                "expected an existing bucket (check the store URI and the region/endpoint)"
            )
        if isinstance(exc, oss2.exceptions.NotFound):
            return StoreNotFound(f"{where}: object does not exist ({exc.code or 'NotFound'})")
        if int(exc.status) == 403:
            return StoreAccessDenied(
                f"{where}: access denied ({exc.code}: {exc.message}); expected an AccessKey allowed to "
                "read and write this bucket (the operator's oss_conn_id connection, oss_default by default, "
                f"or {ENV_ACCESS_KEY_ID}/{ENV_ACCESS_KEY_SECRET})"
            )
        return ModelStoreError(f"{where} failed: {_describe(exc)}")

    # -- Backend protocol -----------------------------------------------------------------------------

    def local_path(self, key: str) -> Path | None:
        return None

    def _get_raw(self, full_key: str) -> bytes:
        import oss2

        result = self._bucket.get_object(full_key)
        data: bytes = result.read()
        server_crc = result.server_crc
        if server_crc is not None and result.client_crc != server_crc:
            raise oss2.exceptions.InconsistentError(
                f"CRC64 of {full_key} is {result.client_crc}, OSS says {server_crc}", result.request_id
            )
        return data

    def get_bytes(self, key: str) -> bytes:
        full = self._key(key)
        return self._call("read", full, lambda: self._get_raw(full))

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        self._call("write", full, lambda: self._bucket.put_object(full, data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        import oss2

        full = self._key(key)
        # After a lost response the write may have landed: a later 409 then means "we won", which we
        # recognise by the stored bytes being exactly ours (records carry run id and time).
        ambiguous = False

        def attempt() -> bool:
            nonlocal ambiguous
            try:
                self._bucket.put_object(full, data, headers=_FORBID_OVERWRITE)
                return True
            except oss2.exceptions.ServerError as exc:
                if int(exc.status) == 409 and exc.code == "FileAlreadyExists":
                    return ambiguous and self._get_raw(full) == data
                ambiguous = ambiguous or is_transient(exc)
                raise
            except oss2.exceptions.OssError as exc:
                ambiguous = ambiguous or is_transient(exc)
                raise

        return self._call("create", full, attempt)

    def put_file(self, key: str, src: Path) -> None:
        import oss2

        full = self._key(key)
        self._checkpoints.mkdir(parents=True, exist_ok=True)
        store = oss2.ResumableStore(root=str(self._checkpoints), dir="upload")

        def upload() -> None:
            try:
                # A multipart object only becomes visible on CompleteMultipartUpload: readers never see
                # half a file. The checkpoint lets a retry upload only the missing parts.
                oss2.resumable_upload(
                    self._bucket,
                    full,
                    str(src),
                    store=store,
                    multipart_threshold=self.multipart_threshold,
                    part_size=self.part_size,
                    num_threads=4,
                )
            except oss2.exceptions.NoSuchUpload as exc:
                # The checkpoint names an upload OSS no longer has (aborted, or expired by a lifecycle
                # rule): forget it and start this file over.
                store.delete(store.make_store_key(self.bucket_name, full, os.path.abspath(src)))
                raise oss2.exceptions.RequestError(
                    f"multipart upload of {full} vanished; starting over"
                ) from exc

        self._call("upload", full, upload)

    def get_file(self, key: str, dest: Path) -> None:
        import oss2

        full = self._key(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._checkpoints.mkdir(parents=True, exist_ok=True)
        store = oss2.ResumableDownloadStore(root=str(self._checkpoints), dir="download")
        self._call(
            "download",
            full,
            lambda: oss2.resumable_download(
                self._bucket,
                full,
                str(dest),
                store=store,
                multiget_threshold=self.multipart_threshold,
                part_size=self.part_size,
                num_threads=4,
            ),
        )

    def exists(self, key: str) -> bool:
        import oss2

        full = self._key(key)

        def head() -> bool:
            try:
                self._bucket.head_object(full)
                return True
            except oss2.exceptions.NoSuchBucket:
                raise
            except oss2.exceptions.NotFound:
                return False

        return self._call("look up", full, head)

    def _iterate(self, prefix: str, delimiter: str) -> Iterator[Any]:
        import oss2

        # max_retries=1: retries happen in _call only, so a failure is retried (and counted) once.
        return iter(oss2.ObjectIterator(self._bucket, prefix=prefix, delimiter=delimiter, max_retries=1))

    def list_children(self, prefix: str) -> list[str]:
        base = self._dir(prefix)
        entries = self._call("list", base, lambda: list(self._iterate(base, "/")))
        names = {entry.key[len(base) :].rstrip("/") for entry in entries}
        return sorted(name for name in names if name and not name.startswith("."))

    def list_files(self, prefix: str) -> list[str]:
        base = self._dir(prefix)
        entries = self._call("list", base, lambda: list(self._iterate(base, "")))
        return sorted(
            rel
            for rel in (entry.key[len(base) :] for entry in entries)
            if rel and not rel.endswith("/") and not rel.rsplit("/", 1)[-1].startswith(".")
        )

    def delete(self, key: str) -> None:
        full = self._key(key)
        # DeleteObject succeeds for a missing key too, as FileBackend.delete does.
        self._call("delete", full, lambda: self._bucket.delete_object(full))

    def delete_prefix(self, prefix: str) -> None:
        base = self._dir(prefix)
        entries = self._call("list", base, lambda: list(self._iterate(base, "")))
        for entry in entries:
            self._delete_full(entry.key)

    def _delete_full(self, full: str) -> None:
        self._call("delete", full, lambda: self._bucket.delete_object(full))


def _describe(exc: BaseException) -> str:
    code, message = getattr(exc, "code", ""), getattr(exc, "message", "")
    status = getattr(exc, "status", None)
    if code or message:
        return f"HTTP {status} {code}: {message}".strip()
    body = getattr(exc, "body", None)
    return str(body if body else exc)
