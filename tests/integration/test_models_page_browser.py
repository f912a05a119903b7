"""Browser tests (Playwright driving Debian's Chromium at /usr/bin/chromium) of what people look at: the Models
page inside the Airflow UI, and the approval request's pictures in the UI's required-action view.

Real: a whole Airflow (api-server, scheduler, dag-processor; LocalExecutor) with this repository's plugins, its
login form, a file:// model store seeded with three published versions, two promotions and a recorded staging
evaluation, and a DAG whose one task is the pipeline's ApprovalSensor with that evidence (the evidence a
pipeline run hands it: so no training runs here; the end-to-end test covers the pipeline). Screenshots go to
the test's temporary directory.

Install: `apt-get install -y chromium` and the `test` extra (playwright). Playwright's own browser download is
not used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe.demo.stack import AirflowStack, StackConfig, free_port
from airflow_provider_mlpipe.modelstore import open_store
from tests.integration.browser import (
    CHROMIUM,
    browser_page,
    image_loaded,
    log_in,
    models_page_frame,
    table_rows,
)
from tests.integration.test_models_page import seed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DAG_ID = "mlpipe_approval_view"
DAG = """
from datetime import datetime
from airflow.sdk import DAG
from airflow_provider_mlpipe.sensors.approval import ApprovalSensor

with DAG("{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
         params={{"approvers": ["admin"], "approval_timeout_minutes": 60}}):
    ApprovalSensor(task_id="approval", evidence={{
        "training": {{"model_name": "fashion_mnist", "version": 3, "image": "reg/ns/trainer:3",
                      "digest": "sha256:{digest}", "test_accuracy": 0.89}},
        "staging": {{"accuracy": 0.89, "samples": 100, "endpoint_url": "http://127.0.0.1:1",
                     "per_class_accuracy": {{"0": 0.93, "1": 0.97, "2": 0.77}},
                     "class_names": ["T-shirt/top", "Trouser", "Pullover"]}},
        "gate": {{"passed": True, "min_accuracy": 0.85, "max_regression": 0.01,
                  "production_version": 2, "production_accuracy": 0.87}},
    }})
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium (see README, Tests)")
    home = tmp_path_factory.mktemp("airflow-browser")
    dags = home / "dags"
    dags.mkdir()
    (dags / f"{DAG_ID}.py").write_text(DAG.format(dag_id=DAG_ID, digest="ab" * 32))
    airflow = AirflowStack(
        StackConfig(home=home, port=free_port(), production_port=free_port(), dags_folder=dags)
    )
    seed(open_store((home / "mlpipe" / "models").as_uri()), home)
    try:
        airflow.start(components=("api-server", "scheduler", "dag-processor"))
        yield airflow
    finally:
        airflow.stop()


@pytest.fixture
def page(stack: AirflowStack) -> Iterator[Any]:
    with browser_page() as opened:
        yield opened


def test_models_page_in_the_airflow_ui(stack: AirflowStack, page: Any, tmp_path: Path) -> None:
    log_in(page, stack.url, "/plugin/mlpipe-models", "admin", "admin")
    # The navigation entry the plugin's external view adds, and the page in its iframe.
    frame = models_page_frame(page)
    rows = table_rows(frame.locator("#versions tbody tr"))
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        ("3", "0.8900", "", "-"),
        ("2", "0.8700", "production", "bob"),
        ("1", "0.8500", "previous", "alice"),
    ]
    timeline = table_rows(frame.locator("#timeline tbody tr"))
    assert [t[1:5] for t in timeline] == [
        ["promotion", "v2", "0.8700", "bob"],
        ["promotion", "v1", "0.8500", "alice"],
    ]
    per_class = table_rows(frame.locator("#per-class tbody tr"))
    assert per_class == [
        ["0 T-shirt/top", "0.9300", "0.9000", "3.0"],
        ["1 Trouser", "0.9700", "0.9500", "2.0"],
        ["2 Pullover", "0.7700", "0.8000", "-3.0"],
    ]
    inner = page.frames[-1]
    for selector in ("#history", "#per-class-img", "#confusion-img"):
        image_loaded(inner, selector)
    page.screenshot(path=str(tmp_path / "models-page.png"), full_page=True)


def test_approval_request_shows_the_pictures(stack: AirflowStack, page: Any, tmp_path: Path) -> None:
    admin = stack.client("admin")
    admin.wait_for_dag(DAG_ID)
    admin.unpause(DAG_ID)
    run_id = admin.trigger(DAG_ID, {})
    stack.wait_parked(DAG_ID, run_id, "approval")
    path = f"/dags/{DAG_ID}/runs/{run_id}/tasks/approval/required_actions"
    log_in(page, stack.url, path, "admin", "admin")
    page.get_by_text("v2 at accuracy 0.8700").wait_for(timeout=60_000)
    per_class = 'img[src$="/mlpipe-models/api/models/fashion_mnist/versions/3/per_class.svg?against=2"]'
    confusion = 'img[src$="/mlpipe-models/api/models/fashion_mnist/versions/3/confusion.svg"]'
    for selector in (per_class, confusion):
        page.locator(selector).wait_for(timeout=30_000)
        image_loaded(page, selector)
    link = page.get_by_role("link", name="fashion_mnist on the Models page", exact=False)
    assert link.get_attribute("href").endswith("/mlpipe-models/?model=fashion_mnist&version=3")
    page.screenshot(path=str(tmp_path / "approval.png"), full_page=True)
