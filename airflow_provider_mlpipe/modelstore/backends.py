"""Object-store backends: the few primitive operations :class:`ModelStore` is built on.

Keys are `/`-separated strings relative to the store root. `put_if_absent` is the one synchronisation
primitive (forbid-overwrite): version reservations and alias changes are compare-and-swap on top of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Protocol

from airflow_provider_mlpipe.exceptions import ModelStoreError, StoreNotFound


class Backend(Protocol):
    uri: str

    def get_bytes(self, key: str) -> bytes: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def put_if_absent(self, key: str, data: bytes) -> bool: ...

    def put_file(self, key: str, src: Path) -> None: ...

    def get_file(self, key: str, dest: Path) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list_children(self, prefix: str) -> list[str]: ...

    def list_files(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def local_path(self, key: str) -> Path | None: ...


class FileBackend:
    """`file://` backend: a directory on a local or shared file system (the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ModelStoreError(f"key {key!r} escapes the store root {self.root}")
        return path

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def _write_temp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return Path(tmp)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StoreNotFound(f"{self.uri}/{key} does not exist") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        # Readers never see a half-written object: write aside, then rename over.
        os.replace(self._write_temp(path, data), path)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            # link() fails if the target exists: an atomic forbid-overwrite on POSIX file systems.
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, key: str, src: Path) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, path)

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(self._path(key), dest)
        except FileNotFoundError:
            raise StoreNotFound(f"{self.uri}/{key} does not exist") from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list_children(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        if not path.is_dir():
            return []
        return sorted(child.name for child in path.iterdir() if not child.name.startswith("."))

    def list_files(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(base).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)
