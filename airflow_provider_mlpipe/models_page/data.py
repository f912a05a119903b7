"""What the Models page shows, read through the model store API (file:// and oss://).

A published version never changes (its manifest is checked against its completion marker), so manifests
are cached in-process for good; aliases, evaluations and the version list are read on every request by
default (`ttl` 0): a person who just approved a promotion must see it at once, and those reads are a few
small objects. With 500 versions the first read of a model fetches the manifests in parallel, later pages
read only the alias histories and the version list.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from airflow_provider_mlpipe.modelstore import ModelStore
from airflow_provider_mlpipe.modelstore.store import MODEL_NAME_RE

T = TypeVar("T")
MANIFEST_WORKERS = 16


def _run_link(run: object) -> dict[str, str] | None:
    """`dag_id/run_id` (the store's run key) as the UI path of that run."""
    if not isinstance(run, str) or "/" not in run:
        return None
    dag_id, run_id = run.split("/", 1)
    from urllib.parse import quote

    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "path": f"/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}",
    }


class ModelsData:
    """Reads one store for the page; thread-safe, shared by the app's requests."""

    def __init__(self, store: ModelStore, *, ttl: float = 0.0) -> None:
        self.store = store
        self.ttl = ttl
        self._manifests: dict[tuple[str, int], dict[str, Any]] = {}
        self._timed: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def _cached(self, key: tuple[str, ...], load: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            hit = self._timed.get(key)
            if hit is not None and now - hit[0] < self.ttl:
                return hit[1]  # type: ignore[no-any-return]
        value = load()
        with self._lock:
            self._timed[key] = (now, value)
        return value

    def models(self) -> list[str]:
        return self._cached(
            ("models",),
            lambda: [c for c in self.store.backend.list_children("") if MODEL_NAME_RE.fullmatch(c)],
        )

    def versions(self, model: str) -> list[int]:
        return self._cached(("versions", model), lambda: self.store.published_versions(model))

    def manifest(self, model: str, version: int) -> dict[str, Any]:
        key = (model, version)
        with self._lock:
            cached = self._manifests.get(key)
        if cached is None:
            cached = self.store.read_manifest(model, version)
            with self._lock:
                self._manifests[key] = cached
        return cached

    def manifests(self, model: str, versions: list[int]) -> dict[int, dict[str, Any]]:
        with self._lock:
            missing = [v for v in versions if (model, v) not in self._manifests]
        if len(missing) > 1:
            with ThreadPoolExecutor(min(MANIFEST_WORKERS, len(missing))) as pool:
                list(pool.map(lambda v: self.manifest(model, v), missing))
        return {v: self.manifest(model, v) for v in versions}

    def history(self, model: str, alias: str) -> list[dict[str, Any]]:
        return self._cached(("alias", model, alias), lambda: self.store.alias_history(model, alias))

    def evaluations(self, model: str, version: int) -> dict[str, dict[str, Any]]:
        return self._cached(("eval", model, str(version)), lambda: self.store.evaluations(model, version))

    # -- what the page shows --------------------------------------------------------------------------

    def production(self, model: str) -> dict[str, Any] | None:
        history = self.history(model, "production")
        return history[-1] if history else None

    def overview(self) -> list[dict[str, Any]]:
        out = []
        for model in self.models():
            production = self.production(model)
            versions = self.versions(model)
            out.append(
                {
                    "name": model,
                    "versions": len(versions),
                    "latest": versions[-1] if versions else None,
                    "production": production
                    and {
                        "version": production.get("version"),
                        "accuracy": production.get("accuracy"),
                    },
                }
            )
        return out

    def model(self, model: str) -> dict[str, Any]:
        versions = self.versions(model)
        manifests = self.manifests(model, versions)
        aliases: dict[int, list[str]] = {}
        approvers: dict[int, str] = {}
        for alias in ("production", "staging", "previous"):
            history = self.history(model, alias)
            if history:
                aliases.setdefault(int(history[-1]["version"]), []).append(alias)
        timeline = []
        for record in self.history(model, "production"):
            reason = str(record.get("reason") or "")
            kind = "rollback" if reason.startswith("rollback") else "promotion"
            if kind == "promotion" and record.get("approved_by"):
                approvers[int(record["version"])] = str(record["approved_by"])
            timeline.append(
                {
                    "kind": kind,
                    "version": record.get("version"),
                    "generation": record.get("generation"),
                    "who": record.get("approved_by"),
                    "why": reason,
                    "at": record.get("updated_at"),
                    "accuracy": record.get("accuracy"),
                    "run": _run_link(record.get("run_id")),
                }
            )
        production = self.production(model)
        rows = []
        for version in versions:
            manifest = manifests[version]
            metrics = manifest.get("metrics") or {}
            dataset = manifest.get("dataset") or {}
            rows.append(
                {
                    "version": version,
                    "created_at": manifest.get("created_at"),
                    "image": manifest.get("image"),
                    "digest": manifest.get("digest"),
                    "dataset_checksum": dataset.get("checksum"),
                    "accuracy": metrics.get("test_accuracy"),
                    "approved_by": approvers.get(version),
                    "aliases": sorted(aliases.get(version, [])),
                    "run": _run_link(manifest.get("run_id")),
                }
            )
        return {
            "name": model,
            "production": production
            and {"version": production.get("version"), "accuracy": production.get("accuracy")},
            "versions": rows,
            "timeline": list(reversed(timeline)),
        }

    def version(self, model: str, version: int) -> dict[str, Any]:
        manifest = self.manifest(model, version)
        production = self.production(model)
        production_version = int(production["version"]) if production else None
        evaluation = self.evaluations(model, version).get("staging")
        production_evaluation = (
            self.evaluations(model, production_version).get("staging") if production_version else None
        )
        metrics = manifest.get("metrics") or {}
        return {
            "name": model,
            "version": version,
            "class_names": manifest.get("class_names") or (evaluation or {}).get("class_names"),
            "per_class_accuracy": (evaluation or {}).get("per_class_accuracy")
            or metrics.get("per_class_accuracy"),
            "per_class_source": "staging evaluation" if evaluation else "training test split",
            "confusion_matrix": (evaluation or {}).get("confusion_matrix"),
            "accuracy": (evaluation or {}).get("accuracy", metrics.get("test_accuracy")),
            "production": production_version
            and {
                "version": production_version,
                "accuracy": production.get("accuracy") if production else None,
                "per_class_accuracy": (production_evaluation or {}).get("per_class_accuracy")
                or (self.manifest(model, production_version).get("metrics") or {}).get("per_class_accuracy"),
            },
        }
