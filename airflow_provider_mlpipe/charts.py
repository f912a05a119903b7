"""Pictures of a model's evaluation as self-contained SVG: confusion-matrix heatmap, per-class accuracy
against production, accuracy over versions with the production version marked.

Plain SVG text, written here: no plotting library, no fonts or scripts to fetch, so the pictures render
offline, in an `<img>` of the approval request as in the Models page. Every number drawn is also in the
element's `<title>` (a tooltip, and what tests and screen readers read).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

FONT = "font-family='DejaVu Sans, Arial, sans-serif'"
CANDIDATE = "#2e86c1"
PRODUCTION = "#a6acaf"


def _svg(width: float, height: float, body: list[str], label: str) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
        f"viewBox='0 0 {width:.0f} {height:.0f}' role='img' aria-label='{escape(label, quote=True)}' {FONT}>"
        f"<rect width='100%' height='100%' fill='white'/>{''.join(body)}</svg>"
    )


def _names(class_names: Sequence[str] | None, count: int) -> list[str]:
    names = list(class_names or [])
    return [names[i] if i < len(names) else str(i) for i in range(count)]


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def confusion_svg(matrix: Sequence[Sequence[int]], class_names: Sequence[str] | None, title: str) -> str:
    """Heatmap of `matrix[true][predicted]`; a cell's shade is its share of the true class' examples."""
    k = len(matrix)
    names = _names(class_names, k)
    # About 300 px wide for ten classes: the Airflow UI shows an approval's pictures at most 300 px wide.
    cell, left, top = 21.0, 84.0, 40.0
    body = [f"<text x='4' y='14' font-size='11' font-weight='bold'>{escape(title)}</text>"]
    body.append("<text x='4' y='29' font-size='9' fill='#555'>rows: true class, columns: predicted</text>")
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        y = top + i * cell
        body.append(
            f"<text x='{left - 4}' y='{y + cell / 2 + 3:.0f}' font-size='9' text-anchor='end'>"
            f"{escape(names[i])}</text>"
        )
        for j, count in enumerate(row):
            share = count / total
            x = left + j * cell
            # Diagonal in blue (right), off-diagonal in red (confusions), both darker with the share.
            hue = "46,134,193" if i == j else "203,67,53"
            colour = f"rgba({hue},{0.08 + 0.92 * share:.3f})"
            ink = "white" if share > 0.5 else "black"
            body.append(
                f"<g><title>true {escape(names[i])}, predicted {escape(names[j])}: {count} "
                f"({_pct(share)})</title><rect x='{x:.0f}' y='{y:.0f}' width='{cell - 1:.0f}' "
                f"height='{cell - 1:.0f}' fill='{colour}'/><text x='{x + cell / 2:.0f}' y='{y + cell / 2 + 3:.0f}' "
                f"font-size='7' text-anchor='middle' fill='{ink}'>{count}</text></g>"
            )
    for j in range(k):
        x = left + j * cell + cell / 2
        y = top + k * cell + 6
        body.append(
            f"<text x='{x:.0f}' y='{y:.0f}' font-size='9' text-anchor='end' "
            f"transform='rotate(-45 {x:.0f} {y:.0f})'>{escape(names[j])}</text>"
        )
    # Never narrower than the title (a model with few classes).
    return _svg(max(left + k * cell + 8, 12 + 6.5 * len(title)), top + k * cell + 80, body, title)


def per_class_svg(
    candidate: Mapping[str, float],
    production: Mapping[str, float] | None,
    class_names: Sequence[str] | None,
    *,
    candidate_label: str,
    production_label: str | None,
) -> str:
    """Per-class accuracy bars of the candidate, each beside production's for the same class (when known)."""
    indices = sorted(int(key) for key in candidate if str(key).isdigit())
    names = _names(class_names, (max(indices) + 1) if indices else 0)
    # About 300 px wide: the Airflow UI shows an approval's pictures at most 300 px wide.
    bar, gap, left, width = 9.0, 5.0, 84.0, 120.0
    rows = 2 if production else 1
    top = 40.0
    body = [
        f"<rect x='4' y='6' width='9' height='9' fill='{CANDIDATE}'/>"
        f"<text x='16' y='14' font-size='10'>{escape(candidate_label)}</text>"
    ]
    if production:
        body.append(
            f"<rect x='110' y='6' width='9' height='9' fill='{PRODUCTION}'/>"
            f"<text x='122' y='14' font-size='10'>{escape(production_label or 'production')}</text>"
        )
    else:
        body.append(
            "<text x='4' y='30' font-size='9' fill='#555'>No model in production yet: nothing to compare"
            " against.</text>"
        )
    for n, index in enumerate(indices):
        y = top + n * (rows * bar + gap)
        key = str(index)
        body.append(
            f"<text x='{left - 4}' y='{y + rows * bar / 2 + 3:.0f}' font-size='9' text-anchor='end'>"
            f"{escape(names[index])}</text>"
        )
        series = [(candidate_label, candidate.get(key), CANDIDATE)]
        if production:
            series.append((production_label or "production", production.get(key), PRODUCTION))
        for r, (label, value, colour) in enumerate(series):
            if value is None:
                continue
            yy = y + r * bar
            delta = ""
            if r == 0 and production and production.get(key) is not None:
                change = (value - float(production[key])) * 100
                delta = f" ({change:+.1f} pts)"
            body.append(
                f"<g><title>{escape(names[index])}, {escape(label)}: {_pct(float(value))}{delta}</title>"
                f"<rect x='{left}' y='{yy:.0f}' width='{width * float(value):.1f}' height='{bar - 1:.0f}' "
                f"fill='{colour}'/><text x='{left + width * float(value) + 4:.1f}' y='{yy + bar - 2:.0f}' "
                f"font-size='7'>{_pct(float(value))}{escape(delta)}</text></g>"
            )
    height = top + len(indices) * (rows * bar + gap) + 10
    return _svg(left + width + 96, height, body, f"Per-class accuracy: {candidate_label}")


def history_svg(points: Sequence[tuple[int, float]], production_version: int | None, title: str) -> str:
    """Accuracy of each version (x: version, y: accuracy), the production version ringed and a line at its
    accuracy."""
    left, top, width, height = 50.0, 30.0, 640.0, 200.0
    body = [f"<text x='{left}' y='18' font-size='14' font-weight='bold'>{escape(title)}</text>"]
    if not points:
        body.append(f"<text x='{left}' y='{top + 40}' font-size='12'>No evaluated versions yet.</text>")
        return _svg(left + width + 20, top + 80, body, title)
    values = [accuracy for _, accuracy in points]
    low = max(0.0, min(values) - 0.02)
    high = min(1.0, max(values) + 0.01)
    span = (high - low) or 0.01
    n = len(points)

    def x_of(i: int) -> float:
        return left + (width * i / (n - 1) if n > 1 else width / 2)

    def y_of(value: float) -> float:
        return top + height - (value - low) / span * height

    for tick in range(5):
        value = low + span * tick / 4
        y = y_of(value)
        body.append(
            f"<line x1='{left}' x2='{left + width}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
            f"<text x='{left - 4}' y='{y + 3:.1f}' font-size='9' text-anchor='end'>{value:.3f}</text>"
        )
    path = " ".join(f"{'M' if i == 0 else 'L'}{x_of(i):.1f},{y_of(a):.1f}" for i, (_, a) in enumerate(points))
    body.append(f"<path d='{path}' fill='none' stroke='{CANDIDATE}' stroke-width='1.5'/>")
    # Draw at most ~200 markers: 500 versions stay a light picture.
    step = max(1, n // 200)
    for i, (version, accuracy) in enumerate(points):
        if version != production_version and i % step and i != n - 1:
            continue
        ring = version == production_version
        body.append(
            f"<g class='{'production' if ring else 'version'}'><title>v{version}: {accuracy:.4f}"
            f"{' (production)' if ring else ''}</title><circle cx='{x_of(i):.1f}' cy='{y_of(accuracy):.1f}' "
            f"r='{5 if ring else 2.5}' fill='{'#c0392b' if ring else CANDIDATE}'/></g>"
        )
    if production_version is not None:
        production = dict(points).get(production_version)
        if production is not None:
            y = y_of(production)
            body.append(
                f"<line x1='{left}' x2='{left + width}' y1='{y:.1f}' y2='{y:.1f}' stroke='#c0392b' "
                f"stroke-dasharray='4 3'/><text x='{left + width}' y='{y - 4:.1f}' font-size='10' "
                f"text-anchor='end' fill='#c0392b'>production v{production_version}: {production:.4f}</text>"
            )
    first, last = points[0][0], points[-1][0]
    body.append(
        f"<text x='{left}' y='{top + height + 16}' font-size='10'>v{first}</text>"
        f"<text x='{left + width}' y='{top + height + 16}' font-size='10' text-anchor='end'>v{last}</text>"
    )
    return _svg(left + width + 20, top + height + 30, body, title)
