"""The serving fetch step against a real file:// store."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow_provider_mlpipe.images.serving.fetch import main

from airflow_provider_mlpipe.modelstore import MARKER, open_store


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    src = tmp_path / "export"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"graph")
    (src / "variables" / "variables.index").write_bytes(b"index")
    store = open_store(str(tmp_path / "store"))
    store.publish("fm", 1, src, {"run_id": "r"})
    return store.uri


def test_fetch_places_a_complete_verified_version(tmp_path: Path, store_uri: str) -> None:
    dest = tmp_path / "models" / "fm"
    argv = ["--model-store", store_uri, "--model-name", "fm", "--version", "1", "--dest", str(dest)]
    assert main(argv) == 0
    assert (dest / "1" / "saved_model.pb").read_bytes() == b"graph"
    assert (dest / "1" / "variables" / "variables.index").read_bytes() == b"index"
    assert (dest / "1" / MARKER).is_file()
    # A restarted pod finds the version in place and does nothing.
    assert main(argv) == 0


def test_fetch_detects_a_corrupted_file(tmp_path: Path, store_uri: str, caplog) -> None:
    stored = Path(store_uri.removeprefix("file://")) / "fm" / "1" / "saved_model.pb"
    stored.write_bytes(b"graph!")
    dest = tmp_path / "models" / "fm"
    code = main(["--model-store", store_uri, "--model-name", "fm", "--version", "1", "--dest", str(dest)])
    assert code == 1
    assert "saved_model.pb" in caplog.text and "sha256" in caplog.text
    assert not (dest / "1").exists()


def test_fetch_refuses_a_bad_version(tmp_path: Path, store_uri: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--model-store", store_uri, "--version", "zero", "--dest", str(tmp_path)])
    assert exc.value.code == 2
    assert "--version='zero'" in capsys.readouterr().err
