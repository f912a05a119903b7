"""The SVG pictures: well-formed, and every number drawn is the one given (read back from the <title>s)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from airflow_provider_mlpipe import charts

NS = "{http://www.w3.org/2000/svg}"
NAMES = ["T-shirt/top", "Trouser", "<Pullover & co>"]


def titles(svg: str) -> list[str]:
    root = ET.fromstring(svg)  # raises on malformed XML (an unescaped class name would)
    assert root.tag == f"{NS}svg"
    return [t.text or "" for t in root.iter(f"{NS}title")]


def test_confusion_matrix_cells_carry_counts_and_row_shares() -> None:
    matrix = [[90, 5, 5], [0, 100, 0], [30, 0, 70]]
    found = titles(charts.confusion_svg(matrix, NAMES, "v3: confusion"))
    assert len(found) == 9
    assert "true T-shirt/top, predicted <Pullover & co>: 5 (5.0%)" in found
    assert "true <Pullover & co>, predicted T-shirt/top: 30 (30.0%)" in found


def test_per_class_against_production_shows_both_and_the_change() -> None:
    svg = charts.per_class_svg(
        {"0": 0.9, "1": 0.95, "2": 0.7},
        {"0": 0.85, "1": 0.95, "2": 0.75},
        NAMES,
        candidate_label="v3",
        production_label="production v2",
    )
    found = titles(svg)
    assert "T-shirt/top, v3: 90.0% (+5.0 pts)" in found
    assert "<Pullover & co>, v3: 70.0% (-5.0 pts)" in found
    assert "<Pullover & co>, production v2: 75.0%" in found


def test_per_class_without_production_says_so() -> None:
    svg = charts.per_class_svg({"0": 0.9}, None, NAMES, candidate_label="v1", production_label=None)
    assert titles(svg) == ["T-shirt/top, v1: 90.0%"]
    assert "No model in production yet" in svg


def test_history_marks_production_and_stays_light_with_500_versions() -> None:
    points = [(v, 0.8 + (v % 7) / 100) for v in range(1, 501)]
    svg = charts.history_svg(points, 250, "accuracy by version")
    found = titles(svg)
    assert "v250: 0.8500 (production)" in found
    assert "v500: 0.8300" in found  # the newest is always drawn
    assert len(found) <= 260
    assert "production v250: 0.8500" in svg
    assert "No evaluated versions yet." in charts.history_svg([], None, "empty")
