"""`python -m airflow_provider_mlpipe.modelstore set-alias`: point staging or previous at a version by hand,
on a real file:// store, through the CLI's own `main`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_mlpipe.modelstore import open_store
from airflow_provider_mlpipe.modelstore.__main__ import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main

MODEL = "fashion_mnist"


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    src = tmp_path / "export"
    src.mkdir()
    (src / "saved_model.pb").write_bytes(b"graph")
    uri = (tmp_path / "store").as_uri()
    for version in (1, 2):
        open_store(uri).publish(MODEL, version, src, {})
    return uri


def test_set_alias_records_who_why_and_which_run(store_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--store", store_uri, "set-alias", "staging", "2", "--reason", "manual smoke test"]
    assert main([*argv, "--approved-by", "alice", "--run-id", "ticket-42"]) == EXIT_OK
    assert capsys.readouterr().out == "staging -> v2 (generation 1): manual smoke test\n"
    assert main(["--store", store_uri, "--json", "set-alias", "staging", "1", "--reason", "back"]) == EXIT_OK
    record = json.loads(capsys.readouterr().out)
    assert (record["version"], record["generation"], record["reason"]) == (1, 2, "back")
    assert record["run_id"].startswith("cli:") and record["approved_by"]
    history = open_store(store_uri).alias_history(MODEL, "staging")
    first = history[0]
    assert (first["version"], first["run_id"], first["approved_by"]) == (2, "ticket-42", "alice")


def test_set_alias_refuses_production_unknown_aliases_and_unpublished_versions(
    store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--store", store_uri, "set-alias"]
    assert main([*base, "production", "1", "--reason", "x"]) == EXIT_USAGE
    assert "promote or rollback" in capsys.readouterr().err
    assert main([*base, "canary", "1", "--reason", "x"]) == EXIT_USAGE
    assert "alias='canary'" in capsys.readouterr().err
    assert main([*base, "staging", "9", "--reason", "x"]) == EXIT_ERROR
    assert "not published" in capsys.readouterr().err
    assert open_store(store_uri).get_alias(MODEL, "production") is None
