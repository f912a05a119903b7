"""Versioned model store: `<root>/<model>/<version>/` + manifest + completion marker, aliases with history.

Pure Python (no Airflow import): the training container, the serving fetch step and the Airflow hook all
use this same code. Backends implement a handful of object operations; every rule about layout, atomic
publish, integrity, version reservation and aliases lives in :class:`ModelStore` once.
"""

from __future__ import annotations

from airflow_provider_mlpipe.modelstore.store import (
    ALIASES,
    MANIFEST,
    MARKER,
    METRICS,
    ModelStore,
    open_store,
    published_versions_in_dir,
)

__all__ = [
    "ALIASES",
    "MANIFEST",
    "MARKER",
    "METRICS",
    "ModelStore",
    "open_store",
    "published_versions_in_dir",
]
