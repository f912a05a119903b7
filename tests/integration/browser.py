"""Chromium through Playwright for the browser tests: Debian's /usr/bin/chromium (`apt-get install -y
chromium`), never Playwright's own browser download."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    """A fresh page of a headless Chromium, closed on exit."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} missing: apt-get install -y chromium (README, Tests)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        finally:
            browser.close()


def log_in(page: Any, base_url: str, path: str, user: str, password: str) -> None:
    """Open `path`: Airflow sends the browser to its login form, we sign in, it comes back to `path`."""
    page.goto(base_url + path)
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}", timeout=60_000)


def image_loaded(frame: Any, selector: str) -> None:
    """Wait until the image at `selector` was fetched and decoded (a 401/403/404 leaves naturalWidth 0)."""
    frame.wait_for_function(
        "(s) => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector,
        timeout=30_000,
    )


def table_rows(locator: Any) -> list[list[str]]:
    """The cells' text of each row of a table body locator."""
    texts = locator.evaluate_all("rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))")
    return [list(row) for row in texts]


def models_page_frame(page: Any) -> Any:
    """The Models page inside the Airflow UI (its iframe), once its versions table is there."""
    page.locator('a[aria-label="Models"][href="/plugin/mlpipe-models"]').wait_for(timeout=60_000)
    frame = page.frame_locator("iframe").first
    frame.locator("#versions tbody tr").first.wait_for(timeout=60_000)
    return frame
