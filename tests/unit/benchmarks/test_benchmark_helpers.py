"""The arithmetic the benchmark reports rest on: medians and targets, the duplicate mix of the webhook
load, the gaps of the no-op chain, and the JSON record every benchmark writes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from benchmarks import _common
from benchmarks._common import Figure, report, table
from benchmarks.orchestration import chain_gaps
from benchmarks.webhook import deliveries


def test_figure_median_and_targets() -> None:
    assert Figure("x", "s", [3.0, 1.0, 2.0], target=("<=", 2.0)).met is True
    assert Figure("x", "s", [3.0, 2.5, 2.1], target=("<=", 2.0)).met is False
    assert Figure("x", "", [0.91, 0.93, 0.92], target=(">=", 0.92)).met is True
    assert Figure("x", "", [0.91, 0.919, 0.93], target=(">=", 0.92)).met is False
    assert Figure("x", "s", [1.0]).met is None


def test_table_shows_value_anchor_target_and_verdict() -> None:
    text = table(
        "T", [Figure("wall", "s", [1.5, 1.0, 2.0], anchor=3.0, anchor_label="(old)", target=("<=", 2.0))]
    )
    row = next(line for line in text.splitlines() if line.startswith("wall"))
    assert "1.5 s [1 .. 2] (3)" in row
    assert "3 s (old)" in row
    assert "<= 2 s" in row
    assert row.rstrip().endswith("yes")


def test_report_writes_machine_versions_and_stats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    path = report(
        "demo", "Demo", [Figure("a", "ms", [5.0, 1.0, 3.0], target=("<=", 4.0))], command="c", details={}
    )
    record = json.loads(path.read_text())
    (figure,) = record["figures"]
    assert (figure["median"], figure["min"], figure["max"], figure["n"]) == (3.0, 1.0, 5.0, 3)
    assert figure["met"] is True
    assert record["command"] == "c"
    assert record["machine"]["cores"] >= 1
    assert record["machine"]["versions"]["apache-airflow"]


def test_webhook_load_has_ten_percent_duplicates_of_earlier_digests() -> None:
    order, unique = deliveries(random.Random(1), 1000, base=5)
    assert len(order) == 1000
    assert unique == 900 == len(set(order))
    # A duplicate is a redelivery: the same digest was delivered earlier in the stream.
    first_positions = {d: order.index(d) for d in set(order)}
    repeats = [i for i, d in enumerate(order) if first_positions[d] != i]
    assert len(repeats) == 100


def test_chain_gaps_are_start_minus_previous_end() -> None:
    def ti(n: int, start: str, end: str) -> dict[str, str]:
        return {
            "task_id": f"noop_{n}",
            "start_date": f"2026-01-01T00:00:{start}Z",
            "end_date": f"2026-01-01T00:00:{end}Z",
        }

    gaps, e2e = chain_gaps([ti(2, "03.000", "04.000"), ti(1, "00.000", "02.500"), ti(3, "04.250", "05.000")])
    assert gaps == pytest.approx([0.5, 0.25])
    assert e2e == pytest.approx(5.0)
