"""The model store's rules: layout, reservation, atomic publish, integrity and aliases."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from airflow_provider_mlpipe.exceptions import (
    AliasConflictError,
    ConfigError,
    ModelStoreError,
    StoreBucketNotFound,
    StoreNotFound,
)
from airflow_provider_mlpipe.modelstore.backends import Backend, FileBackend
from airflow_provider_mlpipe.params import MODEL_NAME_EXPECTED, MODEL_NAME_RE

if TYPE_CHECKING:
    from airflow_provider_mlpipe.modelstore.oss import OssCredentials
    from airflow_provider_mlpipe.retries import RetryPolicy

log = logging.getLogger(__name__)

MARKER = "_PUBLISHED"
MANIFEST = "manifest.json"
METRICS = "metrics.json"
ALIASES = ("production", "staging", "previous")
_RESERVATIONS = "_reservations"
_ALIAS_DIR = "_aliases"
_EVENTS = "_events"
_EVALUATIONS = "_evaluations"
EVALUATION_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,39}")
_CHUNK = 1 << 20
# Fields of a production record that describe the version itself; a rollback carries them over.
_ROLLBACK_CARRIED = ("accuracy", "evaluated_samples", "image", "digest", "endpoint_url")


class Expect(Enum):
    """`ModelStore.promote`'s default expectation: production as promote itself reads it."""

    CURRENT = "current"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME_RE.fullmatch(name):
        raise ConfigError("model_name", name, MODEL_NAME_EXPECTED)
    return name


def check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError("version", version, "an integer >= 1")
    return version


def published_versions_in_dir(base: Path) -> list[int]:
    """Versions under a TF-Serving style base path `<root>/<model>` that carry the completion marker."""
    if not base.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in base.iterdir()
        if child.name.isdigit() and int(child.name) > 0 and (child / MARKER).is_file()
    )


def open_store(
    uri: str, *, credentials: OssCredentials | None = None, retry: RetryPolicy | None = None
) -> ModelStore:
    """Open a store from `file:///abs/path`, a plain path, or `oss://bucket/prefix`.

    For oss:// the credentials come from `credentials` (the Airflow hook passes the connection's) or from
    the OSS_* environment variables (containers), and `retry` is how transient OSS errors are retried
    (default: `RetryPolicy()`).
    """
    if not uri or not isinstance(uri, str):
        raise ConfigError("model_store", uri, "a store URI such as file:///var/mlpipe/models or a path")
    if uri.startswith("oss://"):
        # oss2 is imported only here: file:// users and Airflow parse time never pay for it.
        from airflow_provider_mlpipe.modelstore.oss import OssBackend, OssCredentials, parse_oss_uri

        bucket, prefix = parse_oss_uri(uri)
        return ModelStore(OssBackend(bucket, prefix, credentials or OssCredentials.from_env(), retry=retry))
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        # file:// URIs percent-encode (Path.as_uri() writes a space as %20): decode to round-trip them.
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else uri).expanduser()
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise ConfigError("model_store", uri, "file:///absolute/path (no host part)")
        return ModelStore(FileBackend(path))
    raise ConfigError("model_store", uri, "file:///absolute/path, oss://bucket/prefix or a local path")


class ModelStore:
    """Every version is immutable once its marker exists; aliases are append-only histories."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def uri(self) -> str:
        return self.backend.uri

    def version_uri(self, model_name: str, version: int) -> str:
        return f"{self.uri}/{check_model_name(model_name)}/{check_version(version)}"

    def local_version_dir(self, model_name: str, version: int) -> Path:
        path = self.backend.local_path(f"{check_model_name(model_name)}/{check_version(version)}")
        if path is None:
            raise ModelStoreError(f"{self.uri} is not a local store: fetch {model_name} v{version} first")
        return path

    def model_base_dir(self, model_name: str) -> Path:
        path = self.backend.local_path(check_model_name(model_name))
        if path is None:
            raise ModelStoreError(f"{self.uri} is not a local store")
        return path

    # -- versions -------------------------------------------------------------------------------------

    def is_published(self, model_name: str, version: int) -> bool:
        return self.backend.exists(f"{check_model_name(model_name)}/{check_version(version)}/{MARKER}")

    def published_versions(self, model_name: str) -> list[int]:
        name = check_model_name(model_name)
        candidates = [int(c) for c in self.backend.list_children(name) if c.isdigit() and int(c) > 0]
        return sorted(v for v in candidates if self.backend.exists(f"{name}/{v}/{MARKER}"))

    def _reservations(self, model_name: str) -> Iterator[tuple[int, dict[str, Any]]]:
        prefix = f"{model_name}/{_RESERVATIONS}"
        for child in self.backend.list_children(prefix):
            stem = child.removesuffix(".json")
            if stem.isdigit():
                yield int(stem), json.loads(self.backend.get_bytes(f"{prefix}/{child}"))

    def reserve_version(self, model_name: str, run_id: str, *, attempts: int = 20) -> int:
        """The version this run publishes: the same one on every retry, a new highest one otherwise."""
        name = check_model_name(model_name)
        if not run_id:
            raise ConfigError("run_id", run_id, "a non-empty run id")
        for _ in range(attempts):
            taken = set(self.published_versions(name))
            for version, record in self._reservations(name):
                if record.get("run_id") == run_id:
                    return version
                taken.add(version)
            candidate = max(taken, default=0) + 1
            record = {"run_id": run_id, "reserved_at": _now()}
            # Two runs racing for the same number: exactly one create succeeds, the other re-reads.
            if self.backend.put_if_absent(
                f"{name}/{_RESERVATIONS}/{candidate}.json", json.dumps(record).encode()
            ):
                return candidate
        raise ModelStoreError(f"could not reserve a version of {name} in {self.uri} after {attempts} tries")

    def publish(
        self, model_name: str, version: int, src_dir: Path, manifest: dict[str, Any]
    ) -> dict[str, Any]:
        """Copy `src_dir` into the version, write the manifest, then the marker (last, so readers never see
        a half-published version). Idempotent: a published version is returned as it is."""
        name, version = check_model_name(model_name), check_version(version)
        prefix = f"{name}/{version}"
        if self.is_published(name, version):
            return self.read_manifest(name, version)
        src_dir = Path(src_dir)
        if not src_dir.is_dir():
            raise ModelStoreError(f"cannot publish {name} v{version}: {src_dir} is not a directory")
        # A crashed earlier attempt may have left a partial upload: start clean.
        self.backend.delete_prefix(prefix)
        files = []
        for path in sorted(p for p in src_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(src_dir).as_posix()
            if rel in (MANIFEST, MARKER):
                continue
            files.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
            self.backend.put_file(f"{prefix}/{rel}", path)
        final = {
            **manifest,
            "model_name": name,
            "version": version,
            "uri": self.version_uri(name, version),
            "files": files,
            "created_at": _now(),
        }
        body = json.dumps(final, indent=2, sort_keys=True).encode()
        self.backend.put_bytes(f"{prefix}/{MANIFEST}", body)
        self.backend.put_bytes(
            f"{prefix}/{MARKER}", json.dumps({"manifest_sha256": hashlib.sha256(body).hexdigest()}).encode()
        )
        return final

    def read_manifest(self, model_name: str, version: int) -> dict[str, Any]:
        """The manifest of a published version, checked against the sha256 its completion marker recorded
        (a ModelStoreError naming the manifest's key when it was changed or damaged after publishing)."""
        return self._read_published(model_name, version)[0]

    def _read_published(self, model_name: str, version: int) -> tuple[dict[str, Any], bytes, bytes]:
        """(manifest, the manifest's stored bytes, the marker's stored bytes) of a published version."""
        name, version = check_model_name(model_name), check_version(version)
        prefix = f"{name}/{version}"
        try:
            # The marker is read rather than probed: its content is what the manifest is checked against.
            marker = self.backend.get_bytes(f"{prefix}/{MARKER}")
        except StoreBucketNotFound:
            raise
        except StoreNotFound:
            raise ModelStoreError(f"{self.uri}/{prefix} is not a published version") from None
        try:
            expected = json.loads(marker)["manifest_sha256"]
        except (ValueError, KeyError, TypeError):
            expected = None
        if not isinstance(expected, str):
            raise ModelStoreError(
                f"{self.uri}/{prefix}/{MARKER}: completion marker holds no manifest_sha256, so the manifest "
                "cannot be verified (the marker was damaged or not written by ModelStore.publish)"
            )
        body = self.backend.get_bytes(f"{prefix}/{MANIFEST}")
        actual = hashlib.sha256(body).hexdigest()
        if actual != expected:
            raise ModelStoreError(
                f"{self.uri}/{prefix}/{MANIFEST}: sha256 {actual} does not match the {expected} its completion "
                f"marker recorded at publish time (the manifest was changed or damaged since)"
            )
        manifest: dict[str, Any] = json.loads(body)
        return manifest, body, marker

    def fetch(self, model_name: str, version: int, dest: Path) -> Path:
        """Download a published version into `dest/<version>` and verify every file's size and sha256."""
        manifest, manifest_body, marker = self._read_published(model_name, version)
        target = Path(dest) / str(version)
        Path(dest).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=f".{version}.") as tmp:
            staging = Path(tmp)
            for entry in manifest["files"]:
                out = staging / entry["path"]
                self.backend.get_file(f"{model_name}/{version}/{entry['path']}", out)
                size, actual = out.stat().st_size, sha256_file(out)
                if size != entry["size"] or actual != entry["sha256"]:
                    raise ModelStoreError(
                        f"{self.uri}/{model_name}/{version}/{entry['path']}: sha256 {actual} ({size} bytes) "
                        f"does not match the manifest's {entry['sha256']} ({entry['size']} bytes)"
                    )
            # The stored bytes as they are: the copy verifies as a version of a file:// store would.
            (staging / MANIFEST).write_bytes(manifest_body)
            (staging / MARKER).write_bytes(marker)
            if target.exists():
                raise ModelStoreError(f"cannot fetch {model_name} v{version}: {target} already exists")
            staging.rename(target)
            # TemporaryDirectory cleanup must not fail on the renamed path.
            staging.mkdir()
        return target

    def record_event(self, model_name: str, version: int, record: dict[str, Any]) -> None:
        """Keep a run's decision about a version (promoted, rejected and why) next to the model."""
        name, version = check_model_name(model_name), check_version(version)
        raw = str(record.get("run", "run"))
        # Readable and collision-free: sanitising alone would map "a:b" and "a+b" to the same key.
        run = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', raw)[:80]}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"
        body = json.dumps({**record, "recorded_at": _now()}, sort_keys=True, default=str).encode()
        self.backend.put_bytes(f"{name}/{_EVENTS}/{version}/{run}.json", body)

    def events(self, model_name: str, version: int) -> list[dict[str, Any]]:
        prefix = f"{check_model_name(model_name)}/{_EVENTS}/{check_version(version)}"
        return [
            json.loads(self.backend.get_bytes(f"{prefix}/{c}")) for c in self.backend.list_children(prefix)
        ]

    def record_evaluation(self, model_name: str, version: int, name: str, evaluation: dict[str, Any]) -> None:
        """Keep an endpoint's evaluation of a version (accuracy, per-class accuracy, confusion matrix) under
        `name` (e.g. `staging`), for the approval's pictures and the Models page; a later one replaces it."""
        model, version = check_model_name(model_name), check_version(version)
        if not isinstance(name, str) or not EVALUATION_NAME_RE.fullmatch(name):
            raise ConfigError("evaluation name", name, "lowercase letters, digits, - or _ (e.g. staging)")
        body = json.dumps({**evaluation, "recorded_at": _now()}, sort_keys=True, default=str).encode()
        self.backend.put_bytes(f"{model}/{_EVALUATIONS}/{version}/{name}.json", body)

    def evaluations(self, model_name: str, version: int) -> dict[str, dict[str, Any]]:
        """The evaluations recorded for a version, by name ({} when none)."""
        prefix = f"{check_model_name(model_name)}/{_EVALUATIONS}/{check_version(version)}"
        return {
            child.removesuffix(".json"): json.loads(self.backend.get_bytes(f"{prefix}/{child}"))
            for child in self.backend.list_children(prefix)
            if child.endswith(".json")
        }

    # -- aliases --------------------------------------------------------------------------------------

    def alias_history(self, model_name: str, alias: str) -> list[dict[str, Any]]:
        name = check_model_name(model_name)
        prefix = f"{name}/{_ALIAS_DIR}/{self._check_alias(alias)}"
        return [
            json.loads(self.backend.get_bytes(f"{prefix}/{child}"))
            for child in self.backend.list_children(prefix)
            if child.removesuffix(".json").isdigit()
        ]

    def get_alias(self, model_name: str, alias: str) -> dict[str, Any] | None:
        history = self.alias_history(model_name, alias)
        return history[-1] if history else None

    @staticmethod
    def _check_alias(alias: str) -> str:
        if alias not in ALIASES:
            raise ConfigError("alias", alias, f"one of {', '.join(ALIASES)}")
        return alias

    def set_alias(
        self,
        model_name: str,
        alias: str,
        version: int,
        *,
        expected_generation: int | None,
        run_id: str,
        approved_by: str | None = None,
        reason: str = "",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Point `alias` at `version` if nobody moved it since generation `expected_generation` was read
        (None: the alias must not exist yet). Raises AliasConflictError when another writer won."""
        name, version = check_model_name(model_name), check_version(version)
        self._check_alias(alias)
        if not self.is_published(name, version):
            raise ModelStoreError(f"cannot point {alias} at {name} v{version}: version is not published")
        current = self.get_alias(name, alias)
        current_generation = current["generation"] if current else None
        if current_generation != expected_generation:
            raise AliasConflictError(
                f"alias {alias} of {name} is at generation {current_generation} (version "
                f"{current and current.get('version')}, run {current and current.get('run_id')!r}), not "
                f"{expected_generation} as run {run_id!r} expected"
            )
        generation = (expected_generation or 0) + 1
        record = {
            "alias": alias,
            "model_name": name,
            "version": version,
            "generation": generation,
            "run_id": run_id,
            "approved_by": approved_by,
            "reason": reason,
            "updated_at": _now(),
            **(extra or {}),
        }
        key = f"{name}/{_ALIAS_DIR}/{alias}/{generation:010d}.json"
        if not self.backend.put_if_absent(key, json.dumps(record, sort_keys=True).encode()):
            current = self.get_alias(name, alias)
            raise AliasConflictError(
                f"alias {alias} of {name} was changed by run {current and current.get('run_id')!r} "
                f"(now generation {current and current.get('generation')}, version "
                f"{current and current.get('version')}) while run {run_id!r} tried to set it to v{version}"
            )
        return record

    def promote(
        self,
        model_name: str,
        version: int,
        *,
        run_id: str,
        approved_by: str | None,
        extra: dict[str, Any] | None,
        expected_generation: int | Expect | None = Expect.CURRENT,
        reason: str = "promoted",
    ) -> dict[str, Any]:
        """Move `production` to `version`, recording the version it replaces under `previous`.

        `expected_generation` makes it a compare-and-swap against the production generation a decision was
        taken on (None: there was no production); AliasConflictError when production has moved since.
        Production already at `version` is returned unchanged if it is the expected generation or was set
        by `run_id` itself (a retry after its own promotion). The default expects production as read here.
        """
        current = self.get_alias(model_name, "production")
        current_generation = current["generation"] if current else None
        expected = current_generation if expected_generation is Expect.CURRENT else expected_generation
        if (
            current
            and current["version"] == version
            and (current_generation == expected or current.get("run_id") == run_id)
        ):
            return current
        record = self.set_alias(
            model_name,
            "production",
            version,
            expected_generation=expected,
            run_id=run_id,
            approved_by=approved_by,
            reason=reason,
            extra=extra,
        )
        if current:
            # `previous` moves because of this promotion: its record names the approver of that promotion.
            self._set_previous(model_name, current["version"], run_id, approved_by, f"replaced by v{version}")
        return record

    def _set_previous(
        self, model_name: str, version: int, run_id: str, approved_by: str | None, reason: str
    ) -> dict[str, Any]:
        prev = self.get_alias(model_name, "previous")
        return self.set_alias(
            model_name,
            "previous",
            version,
            expected_generation=prev["generation"] if prev else None,
            run_id=run_id,
            approved_by=approved_by,
            reason=reason,
        )

    def rollback(
        self, model_name: str, *, run_id: str, requested_by: str | None, reason: str
    ) -> dict[str, Any]:
        """Move `production` back to the version it pointed at before its current one."""
        history = self.alias_history(model_name, "production")
        if not history:
            raise ModelStoreError(f"{model_name} has no production alias in {self.uri}: nothing to roll back")
        current = history[-1]
        earlier = [h for h in history[:-1] if h["version"] != current["version"]]
        if not earlier:
            raise ModelStoreError(
                f"{model_name} production v{current['version']} has no earlier version to roll back to"
            )
        target = earlier[-1]
        record = self.set_alias(
            model_name,
            "production",
            target["version"],
            expected_generation=current["generation"],
            run_id=run_id,
            approved_by=requested_by,
            reason=f"rollback from v{current['version']}: {reason}",
            # What the earlier promotion recorded about the version, so the record describes what now serves.
            extra={key: target[key] for key in _ROLLBACK_CARRIED if key in target},
        )
        # The version rolled away from becomes `previous`: retention keeps it, and a second rollback (or a
        # promote) can bring it back once it is fixed.
        self._set_previous(
            model_name, current["version"], run_id, requested_by, f"rolled back to v{target['version']}"
        )
        return record

    # -- serving --------------------------------------------------------------------------------------

    def local_model_base(self, model_name: str, version: int, cache_dir: Path) -> Path:
        """A TF-Serving style base path `<base>/<version>/` holding `version` on this machine: the store's own
        directory for file://, else `cache_dir/...` filled by :meth:`fetch` (sha256-verified) once."""
        name, version = check_model_name(model_name), check_version(version)
        local = self.backend.local_path(name)
        if local is not None:
            return local
        # One cache directory per store URI, so two stores with the same model name never mix versions.
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", self.uri)[:100]
        base = Path(cache_dir) / f"{slug}-{hashlib.sha256(self.uri.encode()).hexdigest()[:8]}" / name
        if not (base / str(version) / MARKER).is_file():
            try:
                self.fetch(name, version, base)
            except ModelStoreError:
                # A concurrent fetch of the same version may have won the final rename.
                if not (base / str(version) / MARKER).is_file():
                    raise
        return base

    # -- retention ------------------------------------------------------------------------------------

    def aliased_versions(self, model_name: str) -> dict[int, list[str]]:
        """version -> the aliases whose current record points at it."""
        found: dict[int, list[str]] = {}
        for alias in ALIASES:
            record = self.get_alias(model_name, alias)
            if record:
                found.setdefault(int(record["version"]), []).append(alias)
        return found

    def apply_retention(
        self,
        model_name: str,
        keep_last: int,
        *,
        grace: timedelta = timedelta(hours=48),
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Delete published versions beyond the newest `keep_last`, never one that an alias points at, and
        unfinished uploads whose reservation is older than `grace` (younger ones may be a run publishing
        right now: `grace` must exceed the longest training plus upload).

        Reservations and events stay, so version numbers are never reused and history stays readable.
        """
        name = check_model_name(model_name)
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ConfigError("keep_last", keep_last, "an integer >= 1 (the newest version is always kept)")
        now = now or datetime.now(UTC)
        published = self.published_versions(name)
        aliased = self.aliased_versions(name)
        newest = set(published[-keep_last:])
        reservations = dict(self._reservations(name))
        kept: list[int] = []
        protected: dict[int, str] = {}
        to_delete: list[tuple[int, str]] = []
        for version in published:
            if version in newest:
                kept.append(version)
            elif version in aliased:
                protected[version] = f"aliased as {', '.join(aliased[version])}"
            else:
                to_delete.append((version, "published"))
        unfinished = sorted(
            int(c)
            for c in self.backend.list_children(name)
            if c.isdigit() and int(c) > 0 and int(c) not in published
        )
        for version in unfinished:
            record = reservations.get(version, {})
            try:
                reserved_at = datetime.fromisoformat(str(record.get("reserved_at")))
            except ValueError:
                reserved_at = None
            if reserved_at is not None and now - reserved_at < grace:
                protected[version] = (
                    f"unfinished upload of run {record.get('run_id')!r} within the grace period"
                )
            else:
                to_delete.append((version, "unfinished"))
        deleted: list[int] = []
        for version, kind in to_delete:
            if dry_run:
                deleted.append(version)
                continue
            # Re-read the aliases right before deleting: a promotion may have happened since the listing.
            if kind == "published" and version in self.aliased_versions(name):
                protected[version] = "aliased while retention ran"
                continue
            prefix = f"{name}/{version}"
            if kind == "published":
                # Marker first: from here on every reader sees the version as gone, never as half-deleted.
                self.backend.delete(f"{prefix}/{MARKER}")
            self.backend.delete_prefix(prefix)
            deleted.append(version)
            log.info("retention deleted %s v%s (%s) from %s", name, version, kind, self.uri)
        return {
            "model_name": name,
            "keep_last": keep_last,
            "kept": sorted(kept),
            "protected": {str(v): why for v, why in sorted(protected.items())},
            "deleted": sorted(deleted),
            "dry_run": dry_run,
        }
