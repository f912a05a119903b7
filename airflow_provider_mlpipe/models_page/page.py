"""The Models page: one HTML document (`page.html`), its style and script inline: nothing is fetched from a
CDN or any other site.

It reads the JSON API next to it (relative URLs, so it works under any api-server prefix and inside the
Airflow UI's iframe) and shows the SVG pictures the API draws. Links to runs open in the top window.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def page() -> str:
    """The page's HTML, read from the package on first use."""
    return (files(__package__) / "page.html").read_text(encoding="utf-8")
