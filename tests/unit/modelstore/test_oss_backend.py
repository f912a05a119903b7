"""The OSS backend through the real oss2 client, against an OSS protocol EMULATOR (tests/emulators/oss_server.py)
running in this process over HTTP on 127.0.0.1. The emulator is not Alibaba Cloud OSS: it implements what
oss2 sends here (objects, listing, multipart, forbid-overwrite, CRC64 headers) and checks signature V1."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe.exceptions import (
    AliasConflictError,
    ConfigError,
    DatasetError,
    ModelStoreError,
    StoreAccessDenied,
    StoreBucketNotFound,
    StoreUnavailable,
)
from airflow_provider_mlpipe.modelstore import MARKER, ModelStore, open_store
from airflow_provider_mlpipe.modelstore.oss import OssBackend, OssCredentials
from airflow_provider_mlpipe.retries import RetryPolicy

BUCKET = "mlpipe-models"
PREFIX = "team/models"
MODEL = "fashion_mnist"
FILES = {
    "saved_model.pb": b"\x08\x01graph" * 100,
    "variables/variables.index": b"index-bytes",
    # Above the 100 KiB multipart threshold used below: goes through InitiateMultipartUpload/UploadPart.
    "variables/variables.data-00000-of-00001": os.urandom(350 * 1024),
    "metrics.json": json.dumps({"test_accuracy": 0.9}).encode(),
}


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_src(base: Path, files: dict[str, bytes] = FILES) -> Path:
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    return base


def oss_store(
    oss: Any,
    tmp_path: Path,
    *,
    secret: str = "emulator-key-secret",
    key_id: str = "emulator-key-id",
    bucket: str = BUCKET,
    sleeps: Sleeps | None = None,
    attempts: int = 3,
    timeout: float = 30.0,
) -> ModelStore:
    creds = OssCredentials(key_id, secret, "cn-hangzhou", oss.endpoint)
    backend = OssBackend(
        bucket,
        PREFIX,
        creds,
        multipart_threshold=100 * 1024,
        part_size=100 * 1024,
        retry=RetryPolicy(
            attempts=attempts,
            base_delay=0.01,
            max_delay=0.04,
            sleep=sleeps if sleeps is not None else Sleeps(),
        ),
        checkpoint_dir=tmp_path / "checkpoints",
        connect_timeout=timeout,
    )
    return ModelStore(backend)


@pytest.fixture
def store(oss: Any, tmp_path: Path) -> ModelStore:
    return oss_store(oss, tmp_path)


def test_publish_fetch_round_trip_with_multipart(oss: Any, store: ModelStore, tmp_path: Path) -> None:
    src = make_src(tmp_path / "export")
    version = store.reserve_version(MODEL, "run-1")
    assert version == 1 and store.reserve_version(MODEL, "run-1") == 1  # a retried run keeps its number
    manifest = store.publish(MODEL, version, src, {"run_id": "run-1", "image": "reg/ns/train@sha256:ab"})
    assert oss.operations["InitiateMultipartUpload"] == 1 and oss.operations["UploadPart"] == 4
    assert oss.operations["CompleteMultipartUpload"] == 1
    assert manifest["uri"] == f"oss://{BUCKET}/{PREFIX}/{MODEL}/1"
    assert {f["path"]: f["size"] for f in manifest["files"]} == {k: len(v) for k, v in FILES.items()}
    assert f"{PREFIX}/{MODEL}/1/{MARKER}" in oss.keys(BUCKET)

    # A version without the marker (an upload in progress) is invisible; the next reservation skips it.
    store.backend.put_bytes(f"{MODEL}/7/saved_model.pb", b"partial")
    assert store.published_versions(MODEL) == [1]
    assert store.reserve_version(MODEL, "run-2") == 2
    # Publishing again is idempotent: nothing is rewritten.
    puts = oss.operations["PutObject"]
    assert store.publish(MODEL, 1, src, {"run_id": "other"}) == manifest
    assert oss.operations["PutObject"] == puts

    target = store.fetch(MODEL, 1, tmp_path / "serving")
    assert oss.operations["GetObject"] >= 4 + 3  # the big file comes back as ranged parts
    for rel, data in FILES.items():
        assert (target / rel).read_bytes() == data
    assert (target / MARKER).is_file()
    assert store.read_manifest(MODEL, 1)["run_id"] == "run-1"


def test_a_corrupted_byte_is_detected_naming_the_file(oss: Any, store: ModelStore, tmp_path: Path) -> None:
    store.publish(MODEL, 1, make_src(tmp_path / "export"), {})
    rel = "variables/variables.index"
    oss.corrupt(BUCKET, f"{PREFIX}/{MODEL}/1/{rel}", offset=3)
    with pytest.raises(ModelStoreError) as info:
        store.fetch(MODEL, 1, tmp_path / "serving")
    message = str(info.value)
    assert f"oss://{BUCKET}/{PREFIX}/{MODEL}/1/{rel}" in message and "sha256" in message
    assert not (tmp_path / "serving" / "1").exists()


def race(store: ModelStore, generation: int, attempts: list[tuple[int, str]]) -> dict[str, object]:
    """Every (version, run) calls set_alias from the same read generation at the same moment."""
    barrier = threading.Barrier(len(attempts))
    outcomes: dict[str, object] = {}

    def promote(version: int, run: str) -> None:
        barrier.wait()
        try:
            outcomes[run] = store.set_alias(
                MODEL, "production", version, expected_generation=generation, run_id=run, approved_by="bob"
            )
        except AliasConflictError as err:
            outcomes[run] = err

    threads = [threading.Thread(target=promote, args=attempt) for attempt in attempts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return outcomes


def test_concurrent_promotions_exactly_one_wins(oss: Any, store: ModelStore, tmp_path: Path) -> None:
    src = make_src(tmp_path / "export", {"saved_model.pb": b"x"})
    for version in (1, 2, 3, 4):
        store.publish(MODEL, version, src, {})
    store.promote(MODEL, 1, run_id="seed", approved_by="alice", extra=None)
    for round_ in range(3):
        current = store.get_alias(MODEL, "production")
        assert current is not None
        outcomes = race(store, current["generation"], [(v, f"r{round_}-v{v}") for v in (2, 3, 4)])
        winners = [run for run, out in outcomes.items() if isinstance(out, dict)]
        losers = [out for out in outcomes.values() if isinstance(out, AliasConflictError)]
        assert len(winners) == 1 and len(losers) == 2, outcomes
        assert all(winners[0] in str(err) for err in losers)  # the loser is told who won
        final = store.get_alias(MODEL, "production")
        assert final is not None and final["run_id"] == winners[0]
        assert final["generation"] == current["generation"] + 1


def test_wrong_secret_fails_fast_naming_bucket_and_key(oss: Any, tmp_path: Path) -> None:
    sleeps = Sleeps()
    bad = oss_store(oss, tmp_path, secret="not-the-secret", sleeps=sleeps)
    with pytest.raises(StoreAccessDenied) as info:
        bad.read_manifest(MODEL, 1)
    message = str(info.value)
    assert f"bucket {BUCKET!r}" in message and f"{PREFIX}/{MODEL}/1/{MARKER}" in message
    assert "SignatureDoesNotMatch" in message and "not-the-secret" not in message
    assert sleeps == [] and oss.operations["HeadObject"] == 0  # refused before any work, no retry

    with pytest.raises(StoreAccessDenied, match="InvalidAccessKeyId"):
        oss_store(oss, tmp_path, key_id="someone-else").published_versions(MODEL)
    assert "not-the-secret" not in repr(OssCredentials("id", "not-the-secret", "cn-hangzhou"))


def test_missing_bucket_is_named(oss: Any, tmp_path: Path) -> None:
    sleeps = Sleeps()
    missing = oss_store(oss, tmp_path, bucket="no-such-bucket", sleeps=sleeps)
    with pytest.raises(StoreBucketNotFound) as info:
        missing.published_versions(MODEL)
    assert "bucket 'no-such-bucket' does not exist at http://127.0.0.1" in str(info.value)
    with pytest.raises(StoreBucketNotFound) as info:
        missing.backend.get_bytes("probe.json")
    assert f"bucket 'no-such-bucket', key '{PREFIX}/probe.json'" in str(info.value)
    assert sleeps == []


def test_access_denied_fails_fast_naming_bucket_and_key(oss: Any, tmp_path: Path) -> None:
    """A RAM policy that does not allow the object (403 AccessDenied, a valid signature): no retry."""
    sleeps = Sleeps()
    store = oss_store(oss, tmp_path, sleeps=sleeps, attempts=5)
    oss.fail_next(5, status=403, code="AccessDenied", match=lambda method, key, q: method == "GET")
    with pytest.raises(StoreAccessDenied) as info:
        store.backend.get_bytes("probe.json")
    message = str(info.value)
    assert f"bucket {BUCKET!r}, key '{PREFIX}/probe.json'" in message and "AccessDenied" in message
    assert "emulator-key-secret" not in message
    assert oss.faults_served["GET 403"] == 1 and sleeps == []


def test_transient_errors_are_retried_with_capped_backoff(oss: Any, tmp_path: Path) -> None:
    sleeps = Sleeps()
    store = oss_store(oss, tmp_path, sleeps=sleeps, attempts=5)
    oss.fail_next(3, status=503, code="ServiceUnavailable", match=lambda method, key, q: method == "PUT")
    store.backend.put_bytes("probe.json", b"{}")
    assert oss.faults_served["PUT 503"] == 3 and oss.operations["PutObject"] == 1
    # Wait n is 0.01 * 2**(n-1) jittered down by up to half, capped at 0.04: it grows.
    assert len(sleeps) == 3
    for n, waited in enumerate(sleeps, start=1):
        assert 0.005 * 2 ** (n - 1) <= waited <= 0.01 * 2 ** (n - 1), sleeps

    oss.fail_next(2, status=0, match=lambda method, key, q: method == "GET")  # connection reset
    assert store.backend.get_bytes("probe.json") == b"{}"
    assert oss.faults_served["GET reset"] == 2

    oss.fail_next(1, status=429, code="TooManyRequests")
    assert store.backend.list_children("") == ["probe.json"]

    oss.fail_next(10, status=500, code="InternalError")
    with pytest.raises(StoreUnavailable) as info:
        store.backend.get_bytes("probe.json")
    assert f"bucket {BUCKET!r}, key '{PREFIX}/probe.json'" in str(info.value)
    assert "after 5 attempts" in str(info.value) and "InternalError" in str(info.value)


def test_a_read_timeout_is_retried_then_succeeds(oss: Any, tmp_path: Path) -> None:
    sleeps = Sleeps()
    store = oss_store(oss, tmp_path, sleeps=sleeps, attempts=5, timeout=0.3)
    store.backend.put_bytes("probe.json", b"{}")
    # The emulator answers 1.2 s late, the client waits 0.3 s: two timeouts, then a timely answer.
    oss.delay_next(2, 1.2, match=lambda method, key, q: method == "GET")
    assert store.backend.get_bytes("probe.json") == b"{}"
    assert oss.faults_served["GET delay"] == 2
    assert len(sleeps) == 2 and 0.005 <= sleeps[0] <= 0.01 <= sleeps[1] <= 0.02


def test_multipart_upload_survives_a_failed_part(oss: Any, store: ModelStore, tmp_path: Path) -> None:
    oss.fail_next(1, status=0, match=lambda method, key, q: "partNumber" in q and q["partNumber"] == "3")
    manifest = store.publish(MODEL, 1, make_src(tmp_path / "export"), {})
    assert oss.faults_served["PUT reset"] == 1
    target = store.fetch(MODEL, 1, tmp_path / "serving")
    assert (target / "variables/variables.data-00000-of-00001").read_bytes() == FILES[
        "variables/variables.data-00000-of-00001"
    ]
    assert manifest["version"] == 1


@pytest.mark.parametrize("kind", ["file", "oss"])
def test_retention_keeps_newest_and_aliased_versions(oss: Any, tmp_path: Path, kind: str) -> None:
    store = oss_store(oss, tmp_path) if kind == "oss" else open_store((tmp_path / "store").as_uri())
    src = make_src(tmp_path / "export", {"saved_model.pb": b"x"})
    for run in range(1, 7):
        assert store.reserve_version(MODEL, f"run-{run}") == run
    for version in (1, 2, 3, 4, 5):
        store.publish(MODEL, version, src, {})
    store.backend.put_bytes(f"{MODEL}/6/saved_model.pb", b"upload in progress")
    store.promote(MODEL, 2, run_id="p1", approved_by="alice", extra=None)
    store.promote(MODEL, 4, run_id="p2", approved_by="alice", extra=None)  # production 4, previous 2

    dry = store.apply_retention(MODEL, 1, dry_run=True)
    assert dry["deleted"] == [1, 3] and store.published_versions(MODEL) == [1, 2, 3, 4, 5]
    result = store.apply_retention(MODEL, 1)
    assert result["kept"] == [5] and result["deleted"] == [1, 3]
    assert set(result["protected"]) == {"2", "4", "6"} and "production" in result["protected"]["4"]
    assert store.published_versions(MODEL) == [2, 4, 5]
    assert store.backend.list_files(f"{MODEL}/1") == []
    # Numbers are never reused and a retried run still gets its own.
    assert store.reserve_version(MODEL, "run-7") == 7 and store.reserve_version(MODEL, "run-3") == 3

    later = datetime.now(UTC) + timedelta(days=3)
    assert store.apply_retention(MODEL, 1, now=later)["deleted"] == [6]  # a stale unfinished upload
    with pytest.raises(ConfigError, match="keep_last"):
        store.apply_retention(MODEL, 0)


def test_open_store_reads_oss_credentials_from_the_environment(
    oss_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(f"oss://{BUCKET}/{PREFIX}")
    assert store.uri == f"oss://{BUCKET}/{PREFIX}" and store.published_versions(MODEL) == []
    monkeypatch.delenv("OSS_ACCESS_KEY_SECRET")
    with pytest.raises(ConfigError) as info:
        open_store(f"oss://{BUCKET}/{PREFIX}")
    assert "OSS_ACCESS_KEY_SECRET" in str(info.value)
    with pytest.raises(ConfigError, match="bucket name"):
        open_store("oss://Bad_Bucket/x")


def test_hook_reads_the_alibaba_style_connection(oss: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook

    conn = {
        "conn_type": "oss",
        "extra": {
            "auth_type": "AK",
            "access_key_id": "emulator-key-id",
            "access_key_secret": "emulator-key-secret",
            "region": "cn-hangzhou",
            "endpoint": oss.endpoint,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", json.dumps(conn))
    for key in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_REGION", "OSS_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    hook = ModelStoreHook(f"oss://{BUCKET}/{PREFIX}")
    assert hook.store.published_versions(MODEL) == []
    assert hook.child_env()["OSS_ENDPOINT"] == oss.endpoint
    assert ModelStoreHook("/tmp/x").child_env() == {}

    conn["extra"]["auth_type"] = "STS"  # type: ignore[index]
    monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", json.dumps(conn))
    with pytest.raises(ConfigError, match="auth_type"):
        ModelStoreHook(f"oss://{BUCKET}/{PREFIX}").store  # noqa: B018


def test_oss_dataset_is_downloaded_and_missing_files_are_named(
    oss_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_mlpipe.datasets import FILES as DATASET_FILES
    from airflow_provider_mlpipe.datasets import load_fashion_mnist

    monkeypatch.setenv("MLPIPE_DATASET_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetError) as info:
        load_fashion_mnist("oss://mlpipe-data/fm")
    assert DATASET_FILES[0] in str(info.value) and "oss://mlpipe-data/fm" in str(info.value)
    with pytest.raises(DatasetError, match="bucket 'nope-bucket' does not exist"):
        load_fashion_mnist("oss://nope-bucket/fm")


def test_local_model_base_fetches_remote_versions_once(oss: Any, store: ModelStore, tmp_path: Path) -> None:
    store.publish(MODEL, 1, make_src(tmp_path / "export"), {})
    base = store.local_model_base(MODEL, 1, tmp_path / "cache")
    assert (base / "1" / MARKER).is_file() and base.name == MODEL
    gets = oss.operations["GetObject"]
    assert store.local_model_base(MODEL, 1, tmp_path / "cache") == base
    assert oss.operations["GetObject"] == gets  # already there: nothing downloaded again

    local = open_store((tmp_path / "local").as_uri())
    local.publish(MODEL, 1, make_src(tmp_path / "export"), {})
    assert local.local_model_base(MODEL, 1, tmp_path / "cache") == local.model_base_dir(MODEL)
