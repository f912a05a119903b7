"""ModelStore on the real file:// backend: reservation, atomic publish, integrity, aliases, events."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_mlpipe.exceptions import AliasConflictError, ConfigError, ModelStoreError
from airflow_provider_mlpipe.modelstore import (
    MANIFEST,
    MARKER,
    ModelStore,
    open_store,
    published_versions_in_dir,
)
from airflow_provider_mlpipe.modelstore.backends import FileBackend

if TYPE_CHECKING:
    from pathlib import Path

MODEL = "fashion_mnist"

SAVED_MODEL_FILES = {
    "saved_model.pb": b"\x08\x01fake-graph-def" * 50,
    "variables/variables.index": b"index-bytes",
    "variables/variables.data-00000-of-00001": bytes(range(256)) * 40,
    "assets/vocab.txt": b"a\nb\nc\n",
    "metrics.json": json.dumps({"test_accuracy": 0.9}).encode(),
}


def make_saved_model(base: Path, files: dict[str, bytes] = SAVED_MODEL_FILES) -> Path:
    for rel, data in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return base


class RecordingBackend(FileBackend):
    """The real file backend, additionally remembering the order of the keys it wrote."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes: list[str] = []

    def put_bytes(self, key: str, data: bytes) -> None:
        self.writes.append(key)
        super().put_bytes(key, data)

    def put_file(self, key: str, src: Path) -> None:
        self.writes.append(key)
        super().put_file(key, src)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.writes.append(key)
        return super().put_if_absent(key, data)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> ModelStore:
    return open_store(root.as_uri())


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_saved_model(tmp_path / "export")


def publish(store: ModelStore, src: Path, version: int, **manifest: Any) -> dict[str, Any]:
    return store.publish(MODEL, version, src, {"image": "reg/ns/train:1", **manifest})


def run_threads(count: int, target: Any) -> list[Any]:
    """Run target(i) in `count` threads released together; return results/exceptions by index."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


# ------------------------------------------------------------------------------------ reserve_version


def test_reserve_version_is_stable_for_the_same_run(store: ModelStore) -> None:
    first = store.reserve_version(MODEL, "dag/run-a")
    assert first == 1
    assert store.reserve_version(MODEL, "dag/run-a") == 1
    # A fresh store object on the same root (a retried task in another process) agrees.
    assert open_store(store.uri).reserve_version(MODEL, "dag/run-a") == 1


def test_reserve_version_is_monotonic_across_runs(store: ModelStore) -> None:
    versions = [store.reserve_version(MODEL, f"dag/run-{i}") for i in range(4)]
    assert versions == [1, 2, 3, 4]
    # The earliest run still gets its own number back.
    assert store.reserve_version(MODEL, "dag/run-0") == 1


def test_reserve_version_skips_versions_published_without_reservation(store: ModelStore, src: Path) -> None:
    publish(store, src, 7)
    assert store.reserve_version(MODEL, "dag/new-run") == 8


def test_reserve_version_rejects_empty_run_id(store: ModelStore) -> None:
    with pytest.raises(ConfigError) as info:
        store.reserve_version(MODEL, "")
    assert info.value.field == "run_id"


def test_racing_runs_reserve_distinct_versions(store: ModelStore) -> None:
    results = run_threads(8, lambda i: store.reserve_version(MODEL, f"dag/racer-{i}"))
    assert all(isinstance(v, int) for v in results), results
    assert sorted(results) == list(range(1, 9))
    # Each run keeps its number afterwards.
    for i, version in enumerate(results):
        assert store.reserve_version(MODEL, f"dag/racer-{i}") == version


def test_racing_attempts_of_one_run_agree_on_one_version(store: ModelStore) -> None:
    store.reserve_version(MODEL, "dag/other")  # version 1 belongs to another run
    results = run_threads(8, lambda _i: store.reserve_version(MODEL, "dag/same"))
    assert results == [2] * 8


# ---------------------------------------------------------------------------------------------- publish


def test_publish_writes_every_file_with_size_and_sha256(store: ModelStore, root: Path, src: Path) -> None:
    manifest = publish(store, src, 1, digest="sha256:" + "a" * 64)
    by_path = {f["path"]: f for f in manifest["files"]}
    assert set(by_path) == set(SAVED_MODEL_FILES)
    for rel, data in SAVED_MODEL_FILES.items():
        assert by_path[rel]["size"] == len(data)
        assert by_path[rel]["sha256"] == hashlib.sha256(data).hexdigest()
        assert (root / MODEL / "1" / rel).read_bytes() == data
    assert manifest["model_name"] == MODEL
    assert manifest["version"] == 1
    assert manifest["image"] == "reg/ns/train:1"
    assert manifest["digest"] == "sha256:" + "a" * 64
    assert manifest["created_at"]
    assert manifest["uri"] == f"{store.uri}/{MODEL}/1"
    # What is on disk is what was returned, and the marker seals exactly that manifest.
    on_disk = (root / MODEL / "1" / MANIFEST).read_bytes()
    assert json.loads(on_disk) == manifest
    marker = json.loads((root / MODEL / "1" / MARKER).read_text())
    assert marker["manifest_sha256"] == hashlib.sha256(on_disk).hexdigest()
    assert store.read_manifest(MODEL, 1) == manifest
    assert store.is_published(MODEL, 1)
    assert store.published_versions(MODEL) == [1]


def test_publish_writes_the_marker_last(root: Path, src: Path) -> None:
    backend = RecordingBackend(root)
    store = ModelStore(backend)
    store.publish(MODEL, 1, src, {})
    assert backend.writes[-1] == f"{MODEL}/1/{MARKER}"
    assert backend.writes[-2] == f"{MODEL}/1/{MANIFEST}"
    assert set(backend.writes[:-2]) == {f"{MODEL}/1/{rel}" for rel in SAVED_MODEL_FILES}


def test_readers_ignore_a_version_without_marker(store: ModelStore, root: Path, src: Path) -> None:
    publish(store, src, 1)
    publish(store, src, 3)
    # Version 2: everything but the marker, as a crashed publish leaves it.
    make_saved_model(root / MODEL / "2")
    (root / MODEL / "2" / MANIFEST).write_text("{}")
    assert store.published_versions(MODEL) == [1, 3]
    assert not store.is_published(MODEL, 2)
    assert published_versions_in_dir(root / MODEL) == [1, 3]
    with pytest.raises(ModelStoreError, match="not a published version"):
        store.read_manifest(MODEL, 2)


def test_republish_is_idempotent_and_writes_nothing(root: Path, src: Path, tmp_path: Path) -> None:
    backend = RecordingBackend(root)
    store = ModelStore(backend)
    first = store.publish(MODEL, 1, src, {"image": "one"})
    backend.writes.clear()
    other = make_saved_model(tmp_path / "other", {"saved_model.pb": b"different"})
    again = store.publish(MODEL, 1, other, {"image": "two"})
    assert again == first
    assert backend.writes == []
    assert (root / MODEL / "1" / "saved_model.pb").read_bytes() == SAVED_MODEL_FILES["saved_model.pb"]


def test_publish_cleans_partial_leftovers(store: ModelStore, root: Path, src: Path) -> None:
    leftovers = root / MODEL / "1"
    (leftovers / "variables").mkdir(parents=True)
    (leftovers / "stale.bin").write_bytes(b"from a crashed attempt")
    (leftovers / "variables" / "variables.index").write_bytes(b"half")
    manifest = publish(store, src, 1)
    assert not (leftovers / "stale.bin").exists()
    assert "stale.bin" not in {f["path"] for f in manifest["files"]}
    assert (leftovers / "variables" / "variables.index").read_bytes() == b"index-bytes"


def test_publish_does_not_copy_a_manifest_or_marker_from_the_source(store: ModelStore, src: Path) -> None:
    (src / MANIFEST).write_text('{"forged": true}')
    (src / MARKER).write_text("{}")
    manifest = publish(store, src, 1)
    assert {f["path"] for f in manifest["files"]} == set(SAVED_MODEL_FILES)
    assert "forged" not in store.read_manifest(MODEL, 1)


def test_publish_requires_a_source_directory(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="is not a directory"):
        store.publish(MODEL, 1, tmp_path / "missing", {})
    assert not store.is_published(MODEL, 1)


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.0])
def test_publish_rejects_bad_versions(store: ModelStore, src: Path, version: object) -> None:
    with pytest.raises(ConfigError) as info:
        store.publish(MODEL, version, src, {})  # type: ignore[arg-type]
    assert info.value.field == "version"


# ------------------------------------------------------------------------------------------------ fetch


def test_fetch_copies_and_verifies_every_file(store: ModelStore, src: Path, tmp_path: Path) -> None:
    manifest = publish(store, src, 2)
    dest = tmp_path / "cache"
    dest.mkdir()
    target = store.fetch(MODEL, 2, dest)
    assert target == dest / "2"
    for rel, data in SAVED_MODEL_FILES.items():
        assert (target / rel).read_bytes() == data
    assert json.loads((target / MANIFEST).read_text()) == manifest
    assert (target / MARKER).is_file()
    # The fetched copy is itself a published TF-Serving version directory, and no staging dir is left.
    assert published_versions_in_dir(dest) == [2]
    assert sorted(p.name for p in dest.iterdir()) == ["2"]


def test_fetch_detects_a_corrupted_byte(store: ModelStore, root: Path, src: Path, tmp_path: Path) -> None:
    publish(store, src, 1)
    rel = "variables/variables.data-00000-of-00001"
    stored = root / MODEL / "1" / rel
    data = bytearray(stored.read_bytes())
    data[1234] ^= 0x01
    stored.write_bytes(bytes(data))
    dest = tmp_path / "cache"
    dest.mkdir()
    with pytest.raises(ModelStoreError) as info:
        store.fetch(MODEL, 1, dest)
    message = str(info.value)
    assert rel in message
    assert "sha256" in message
    assert hashlib.sha256(SAVED_MODEL_FILES[rel]).hexdigest() in message
    # Nothing half-fetched is left behind.
    assert list(dest.iterdir()) == []


def test_fetch_refuses_unpublished_and_existing_targets(store: ModelStore, src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "cache"
    dest.mkdir()
    with pytest.raises(ModelStoreError, match="not a published version"):
        store.fetch(MODEL, 1, dest)
    publish(store, src, 1)
    (dest / "1").mkdir()
    with pytest.raises(ModelStoreError, match="already exists"):
        store.fetch(MODEL, 1, dest)


# ---------------------------------------------------------------------------------------------- aliases


@pytest.fixture
def three_versions(store: ModelStore, src: Path) -> ModelStore:
    for version in (1, 2, 3):
        publish(store, src, version)
    return store


def test_set_alias_needs_a_published_version_and_a_known_alias(store: ModelStore) -> None:
    with pytest.raises(ModelStoreError, match="not published"):
        store.set_alias(MODEL, "production", 1, expected_generation=None, run_id="r")
    with pytest.raises(ConfigError) as info:
        store.set_alias(MODEL, "canary", 1, expected_generation=None, run_id="r")
    assert info.value.field == "alias"
    assert store.get_alias(MODEL, "production") is None


def test_set_alias_compare_and_swap_sequential(three_versions: ModelStore) -> None:
    store = three_versions
    first = store.set_alias(MODEL, "staging", 1, expected_generation=None, run_id="a")
    assert first["generation"] == 1
    second = store.set_alias(MODEL, "staging", 2, expected_generation=1, run_id="b")
    assert second["generation"] == 2
    # A writer that still believes the alias is at generation 1 (or absent) loses.
    with pytest.raises(AliasConflictError) as info:
        store.set_alias(MODEL, "staging", 3, expected_generation=1, run_id="c")
    assert "'b'" in str(info.value) and "generation 2" in str(info.value)
    with pytest.raises(AliasConflictError):
        store.set_alias(MODEL, "staging", 3, expected_generation=None, run_id="c")
    current = store.get_alias(MODEL, "staging")
    assert current is not None
    assert (current["version"], current["generation"], current["run_id"]) == (2, 2, "b")
    assert [h["version"] for h in store.alias_history(MODEL, "staging")] == [1, 2]


def test_set_alias_two_racing_writers_exactly_one_wins(three_versions: ModelStore) -> None:
    store = three_versions
    store.set_alias(MODEL, "production", 1, expected_generation=None, run_id="seed")
    results = run_threads(
        2, lambda i: store.set_alias(MODEL, "production", 2 + i, expected_generation=1, run_id=f"writer-{i}")
    )
    winners = [r for r in results if isinstance(r, dict)]
    losers = [r for r in results if isinstance(r, AliasConflictError)]
    assert len(winners) == 1 and len(losers) == 1, results
    current = store.get_alias(MODEL, "production")
    assert current is not None
    assert current["generation"] == 2
    assert current["run_id"] == winners[0]["run_id"]
    assert current["version"] == winners[0]["version"]
    assert winners[0]["run_id"] in str(losers[0])


def test_set_alias_refuses_an_expected_generation_that_was_never_read(three_versions: ModelStore) -> None:
    store = three_versions
    store.set_alias(MODEL, "production", 1, expected_generation=None, run_id="a")
    with pytest.raises(AliasConflictError):
        store.set_alias(MODEL, "production", 2, expected_generation=5, run_id="b")


def test_promote_records_previous(three_versions: ModelStore) -> None:
    store = three_versions
    first = store.promote(MODEL, 1, run_id="r1", approved_by="alice", extra={"accuracy": 0.81})
    assert (first["version"], first["generation"], first["approved_by"], first["accuracy"]) == (
        1,
        1,
        "alice",
        0.81,
    )
    assert store.get_alias(MODEL, "previous") is None

    store.promote(MODEL, 2, run_id="r2", approved_by="bob", extra={"accuracy": 0.85})
    prod, prev = store.get_alias(MODEL, "production"), store.get_alias(MODEL, "previous")
    assert prod is not None and prev is not None
    assert (prod["version"], prod["generation"], prod["run_id"]) == (2, 2, "r2")
    assert (prev["version"], prev["generation"]) == (1, 1)
    assert prev["reason"] == "replaced by v2"

    # Promoting what is already in production changes nothing.
    again = store.promote(MODEL, 2, run_id="r2-retry", approved_by="bob", extra=None)
    assert again == prod
    assert len(store.alias_history(MODEL, "production")) == 2

    store.promote(MODEL, 3, run_id="r3", approved_by=None, extra=None)
    prev = store.get_alias(MODEL, "previous")
    assert prev is not None and (prev["version"], prev["generation"]) == (2, 2)


def test_promote_against_an_expected_generation(three_versions: ModelStore) -> None:
    store = three_versions
    # No production yet and none expected: the first promotion.
    first = store.promote(MODEL, 1, run_id="r1", approved_by="alice", extra=None, expected_generation=None)
    assert first["generation"] == 1
    # Expecting none while one exists, or an older generation, loses: nothing is written.
    with pytest.raises(AliasConflictError, match="generation 1"):
        store.promote(MODEL, 2, run_id="r2", approved_by="bob", extra=None, expected_generation=None)
    store.promote(MODEL, 2, run_id="r2", approved_by="bob", extra=None, expected_generation=1)
    with pytest.raises(AliasConflictError, match="not 1 as run 'r3' expected"):
        store.promote(MODEL, 3, run_id="r3", approved_by="carol", extra=None, expected_generation=1)
    assert [h["version"] for h in store.alias_history(MODEL, "production")] == [1, 2]
    previous = store.get_alias(MODEL, "previous")
    assert previous is not None and previous["version"] == 1
    # Production at the version by this very run (its retry) is returned as it is; by another run, not.
    again = store.promote(MODEL, 2, run_id="r2", approved_by="bob", extra=None, expected_generation=1)
    assert again == store.get_alias(MODEL, "production") and again["generation"] == 2
    with pytest.raises(AliasConflictError):
        store.promote(MODEL, 2, run_id="other", approved_by="bob", extra=None, expected_generation=1)
    assert len(store.alias_history(MODEL, "production")) == 2


def test_rollback_returns_production_to_the_prior_version(three_versions: ModelStore) -> None:
    store = three_versions
    store.promote(MODEL, 1, run_id="r1", approved_by="alice", extra={"accuracy": 0.81})
    store.promote(MODEL, 2, run_id="r2", approved_by="bob", extra={"accuracy": 0.85})
    record = store.rollback(MODEL, run_id="rb", requested_by="carol", reason="latency regression")
    assert record["version"] == 1
    assert record["generation"] == 3
    assert record["approved_by"] == "carol"
    assert "rollback from v2" in record["reason"] and "latency regression" in record["reason"]
    assert record["accuracy"] == 0.81
    current = store.get_alias(MODEL, "production")
    assert current is not None and current["version"] == 1


def test_rollback_without_history_errors_clearly(three_versions: ModelStore) -> None:
    store = three_versions
    with pytest.raises(ModelStoreError) as info:
        store.rollback(MODEL, run_id="rb", requested_by=None, reason="x")
    assert MODEL in str(info.value) and "nothing to roll back" in str(info.value)
    store.promote(MODEL, 1, run_id="r1", approved_by=None, extra=None)
    with pytest.raises(ModelStoreError, match="no earlier version"):
        store.rollback(MODEL, run_id="rb", requested_by=None, reason="x")
    current = store.get_alias(MODEL, "production")
    assert current is not None and current["generation"] == 1


# ----------------------------------------------------------------------------------------------- events


def test_record_event_and_events(three_versions: ModelStore) -> None:
    store = three_versions
    assert store.events(MODEL, 1) == []
    store.record_event(MODEL, 1, {"run": "dag/run:1", "outcome": "rejected_by_gate"})
    store.record_event(MODEL, 1, {"run": "dag/run:2", "outcome": "promoted"})
    store.record_event(MODEL, 2, {"run": "dag/run:3", "outcome": "failed"})
    events = store.events(MODEL, 1)
    assert sorted(e["outcome"] for e in events) == ["promoted", "rejected_by_gate"]
    assert all(e["recorded_at"] for e in events)
    assert {e["run"] for e in events} == {"dag/run:1", "dag/run:2"}
    # A retried outcome task of the same run replaces its record instead of adding one.
    store.record_event(MODEL, 1, {"run": "dag/run:1", "outcome": "failed"})
    assert sorted(e["outcome"] for e in store.events(MODEL, 1)) == ["failed", "promoted"]
    assert [e["outcome"] for e in store.events(MODEL, 2)] == ["failed"]


# ------------------------------------------------------------------------------------------- open_store


@pytest.mark.parametrize(
    "uri",
    [
        "",
        None,
        "oss://Not_A_Bucket/prefix",
        "oss://",
        "s3://bucket/models",
        "file://otherhost/var/models",
        "http://x/y",
    ],
)
def test_open_store_rejects_unusable_uris(uri: object) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(uri)  # type: ignore[arg-type]
    assert info.value.field == "model_store"
    assert info.value.value == uri
    assert "model_store=" in str(info.value)


def test_open_store_accepts_paths_and_file_uris(tmp_path: Path) -> None:
    base = tmp_path / "models"
    for uri in (str(base), base.as_uri(), f"file://localhost{base}"):
        store = open_store(uri)
        assert store.uri == base.resolve().as_uri()
        assert store.local_version_dir(MODEL, 4) == base.resolve() / MODEL / "4"


def test_open_store_round_trips_its_own_uri_with_a_space(tmp_path: Path, src: Path) -> None:
    store = open_store(str(tmp_path / "my models"))
    store.publish(MODEL, 1, src, {})
    reopened = open_store(store.uri)  # what the train operator passes to the trainer (--model-store)
    assert reopened.backend.local_path("") == store.backend.local_path("")
    assert reopened.is_published(MODEL, 1)


def test_file_backend_refuses_keys_outside_the_root(store: ModelStore) -> None:
    with pytest.raises(ModelStoreError, match="escapes"):
        store.backend.get_bytes("../outside")


# ---------------------------------------------------------------------------- published_versions_in_dir


def test_published_versions_in_dir(tmp_path: Path) -> None:
    assert published_versions_in_dir(tmp_path / "missing") == []
    base = tmp_path / MODEL
    for name, sealed in (("1", True), ("2", False), ("10", True), ("0", True), ("latest", True)):
        (base / name).mkdir(parents=True)
        if sealed:
            (base / name / MARKER).write_text("{}")
    (base / "4").write_text("a file, not a version directory")
    (base / "5").mkdir()
    (base / "5" / MARKER).mkdir()  # a directory named like the marker does not count
    assert published_versions_in_dir(base) == [1, 10]


# ------------------------------------------------------------------------------------------ model names


@pytest.mark.parametrize("name", ["a", "fashion_mnist", "fmnist-v2", "x" * 63, "0model9"])
def test_valid_model_names(store: ModelStore, name: str) -> None:
    assert store.published_versions(name) == []
    assert store.version_uri(name, 1).endswith(f"/{name}/1")


@pytest.mark.parametrize(
    "name", ["", "A", "Fashion", "_a", "a_", "-a", "a-", "x" * 64, "a/b", "../etc", "a.b", "a b", None]
)
def test_invalid_model_names(store: ModelStore, src: Path, name: object) -> None:
    with pytest.raises(ConfigError) as info:
        store.publish(name, 1, src, {})  # type: ignore[arg-type]
    assert info.value.field == "model_name"
    assert info.value.value == name
    with pytest.raises(ConfigError):
        store.reserve_version(name, "run")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- manifest integrity


def test_read_manifest_detects_a_tampered_manifest(store: ModelStore, root: Path, src: Path) -> None:
    publish(store, src, 1, metrics={"test_accuracy": 0.81})
    path = root / MODEL / "1" / MANIFEST
    tampered = json.loads(path.read_text())
    tampered["metrics"]["test_accuracy"] = 0.99
    path.write_text(json.dumps(tampered, indent=2, sort_keys=True))
    with pytest.raises(ModelStoreError) as info:
        store.read_manifest(MODEL, 1)
    message = str(info.value)
    assert f"{store.uri}/{MODEL}/1/{MANIFEST}" in message and "completion marker" in message
    # Fetching reads the manifest first: nothing is copied from a version whose manifest lies.
    with pytest.raises(ModelStoreError, match="completion marker"):
        store.fetch(MODEL, 1, root.parent / "serving")
    assert not (root.parent / "serving" / "1").exists()


def test_read_manifest_refuses_a_marker_without_the_manifest_sha256(
    store: ModelStore, root: Path, src: Path
) -> None:
    publish(store, src, 1)
    (root / MODEL / "1" / MARKER).write_text("{}")
    with pytest.raises(ModelStoreError) as info:
        store.read_manifest(MODEL, 1)
    assert f"{store.uri}/{MODEL}/1/{MARKER}" in str(info.value) and "manifest_sha256" in str(info.value)


def test_fetched_copy_keeps_the_stored_manifest_and_marker(
    store: ModelStore, src: Path, tmp_path: Path
) -> None:
    published = publish(store, src, 1)
    target = store.fetch(MODEL, 1, tmp_path / "serving" / MODEL)
    # The copy is itself a valid store layout: its manifest still verifies against its marker.
    copy = open_store((tmp_path / "serving").as_uri())
    assert copy.read_manifest(MODEL, 1) == published
    assert (target / MARKER).read_bytes() == (store.local_version_dir(MODEL, 1) / MARKER).read_bytes()


def test_fetch_detects_a_file_of_the_wrong_size(
    store: ModelStore, root: Path, src: Path, tmp_path: Path
) -> None:
    publish(store, src, 1)
    rel = "variables/variables.index"
    (root / MODEL / "1" / rel).write_bytes(SAVED_MODEL_FILES[rel][:-2])
    with pytest.raises(ModelStoreError) as info:
        store.fetch(MODEL, 1, tmp_path / "serving")
    message, size = str(info.value), len(SAVED_MODEL_FILES[rel])
    assert f"{store.uri}/{MODEL}/1/{rel}: sha256 " in message
    assert f"({size - 2} bytes) does not match" in message and f"({size} bytes)" in message


# ------------------------------------------------------------------------ what alias records carry


def test_previous_names_the_approver_of_the_promotion_that_displaced_it(three_versions: ModelStore) -> None:
    store = three_versions
    store.promote(MODEL, 1, run_id="r1", approved_by="alice", extra=None)
    store.promote(MODEL, 2, run_id="r2", approved_by="bob", extra=None)
    prev = store.get_alias(MODEL, "previous")
    assert prev is not None
    assert (prev["version"], prev["run_id"], prev["approved_by"]) == (1, "r2", "bob")


def test_rollback_carries_the_image_and_digest_of_the_version_it_restores(three_versions: ModelStore) -> None:
    store = three_versions
    first = {
        "accuracy": 0.81,
        "evaluated_samples": 1000,
        "image": "reg/ns/train:1",
        "digest": "sha256:" + "a" * 64,
    }
    store.promote(MODEL, 1, run_id="r1", approved_by="alice", extra=first)
    second = {
        "accuracy": 0.85,
        "evaluated_samples": 1000,
        "image": "reg/ns/train:2",
        "digest": "sha256:" + "b" * 64,
    }
    store.promote(MODEL, 2, run_id="r2", approved_by="bob", extra=second)
    record = store.rollback(MODEL, run_id="rb", requested_by="carol", reason="latency")
    assert record["version"] == 1
    assert {key: record[key] for key in first} == first
