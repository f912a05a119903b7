"""The Models page plugin on a real Airflow api-server: behind Airflow's own auth, reading the real store.

Real: `airflow api-server` with this repository's plugins folder, its SimpleAuthManager and JWTs (the
outsider's token is signed by that same auth manager, for a user with no role: no access to any DAG), a
file:// model store with published versions, promotions, a rollback and a recorded staging evaluation.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from airflow_provider_mlpipe.demo.stack import AirflowClient, AirflowStack, StackConfig, free_port
from airflow_provider_mlpipe.modelstore import ModelStore, open_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "fashion_mnist"
NAMES = ["T-shirt/top", "Trouser", "Pullover"]
BASE = "/mlpipe-models"


def seed(store: ModelStore, tmp: Path) -> None:
    export = tmp / "export"
    export.mkdir()
    (export / "saved_model.pb").write_bytes(b"model")
    for version, accuracy in ((1, 0.85), (2, 0.87), (3, 0.89)):
        store.publish(
            MODEL,
            version,
            export,
            {
                "run_id": f"mlpipe_fashion_mnist/manual__run-{version}",
                "digest": f"sha256:{version:064x}",
                "dataset": {"checksum": f"{version:032x}"},
                "metrics": {"test_accuracy": accuracy, "per_class_accuracy": {"0": 0.9, "1": 0.95, "2": 0.8}},
                "class_names": NAMES,
            },
        )
    store.promote(
        MODEL, 1, run_id="mlpipe_fashion_mnist/manual__run-1", approved_by="alice", extra={"accuracy": 0.85}
    )
    store.promote(
        MODEL, 2, run_id="mlpipe_fashion_mnist/manual__run-2", approved_by="bob", extra={"accuracy": 0.87}
    )
    store.record_evaluation(
        MODEL,
        3,
        "staging",
        {
            "accuracy": 0.89,
            "per_class_accuracy": {"0": 0.93, "1": 0.97, "2": 0.77},
            "confusion_matrix": [[93, 2, 5], [1, 97, 2], [19, 4, 77]],
            "class_names": NAMES,
        },
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("airflow-models-page")
    (home / "dags").mkdir()
    airflow = AirflowStack(
        StackConfig(
            home=home,
            port=free_port(),
            production_port=free_port(),
            dags_folder=home / "dags",
            users={"admin": ("admin", "admin"), "vera": ("viewer", "vera")},
        )
    )
    seed(open_store((home / "mlpipe" / "models").as_uri()), home)
    try:
        airflow.start(components=("api-server",))
        yield airflow
    finally:
        airflow.stop()


def outsider_token(stack: AirflowStack) -> str:
    """A JWT from the stack's own auth manager for a user without a role (allowed nothing)."""
    code = (
        "from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager\n"
        "from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser\n"
        "print(SimpleAuthManager().generate_jwt(SimpleAuthManagerUser(username='outsider', role=None)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=stack.env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def token(client: AirflowClient) -> str:
    return str(client.session.headers["Authorization"]).removeprefix("Bearer ")


PATHS = [
    f"{BASE}/",
    f"{BASE}/api/models",
    f"{BASE}/api/models/{MODEL}",
    f"{BASE}/api/models/{MODEL}/versions/3",
    f"{BASE}/api/models/{MODEL}/history.svg",
    f"{BASE}/api/models/{MODEL}/versions/3/confusion.svg",
]


def test_anonymous_gets_401_and_a_user_without_dag_access_403(stack: AirflowStack) -> None:
    outsider = outsider_token(stack)
    for path in PATHS:
        assert requests.get(stack.url + path, timeout=30).status_code == 401, path
        bearer = requests.get(stack.url + path, headers={"Authorization": f"Bearer {outsider}"}, timeout=30)
        assert bearer.status_code == 403, path
        assert "mlpipe_fashion_mnist" in bearer.text
        # The browser's way (an <img> in the approval carries the UI's session cookie, no header).
        assert requests.get(stack.url + path, cookies={"_token": outsider}, timeout=30).status_code == 403
        assert requests.get(stack.url + path, cookies={"_token": "not-a-jwt"}, timeout=30).status_code in (
            401,
            403,
        )


def test_viewer_reads_versions_timeline_and_pictures(stack: AirflowStack) -> None:
    jwt = token(stack.client("vera"))
    get = lambda path: requests.get(stack.url + path, cookies={"_token": jwt}, timeout=30)  # noqa: E731
    overview = get(f"{BASE}/api/models").json()
    assert overview == [
        {"name": MODEL, "versions": 3, "latest": 3, "production": {"version": 2, "accuracy": 0.87}}
    ]
    model = get(f"{BASE}/api/models/{MODEL}").json()
    assert [(r["version"], r["aliases"], r["approved_by"]) for r in model["versions"]] == [
        (1, ["previous"], "alice"),
        (2, ["production"], "bob"),
        (3, [], None),
    ]
    assert [(t["kind"], t["version"], t["who"]) for t in model["timeline"]] == [
        ("promotion", 2, "bob"),
        ("promotion", 1, "alice"),
    ]
    confusion = get(f"{BASE}/api/models/{MODEL}/versions/3/confusion.svg")
    assert confusion.headers["content-type"].startswith("image/svg+xml")
    assert "true Pullover, predicted T-shirt/top: 19 (19.0%)" in confusion.text
    per_class = get(f"{BASE}/api/models/{MODEL}/versions/3/per_class.svg")
    assert "Pullover, v3: 77.0% (-3.0 pts)" in per_class.text  # against production v2's 0.80
    assert "production v2" in per_class.text
    history = get(f"{BASE}/api/models/{MODEL}/history.svg")
    assert "v2: 0.8700 (production)" in history.text
    missing = get(f"{BASE}/api/models/{MODEL}/versions/2/confusion.svg")
    assert missing.status_code == 404 and "no recorded evaluation" in missing.text


def test_page_ships_its_script_and_is_in_the_navigation(stack: AirflowStack) -> None:
    admin = stack.client("admin")
    page = requests.get(
        stack.url + f"{BASE}/", headers={"Authorization": f"Bearer {token(admin)}"}, timeout=30
    )
    assert page.status_code == 200 and "<script>" in page.text
    # Nothing from a CDN: no absolute URL anywhere in the page.
    assert not re.search(r"https?://", page.text.replace("http://www.w3.org/2000/svg", ""))
    plugins = admin.call("GET", "/plugins")["plugins"]
    (ours,) = [p for p in plugins if p["name"] == "mlpipe_models"]
    (view,) = ours["external_views"]
    assert (view["name"], view["href"], view["destination"], view["url_route"]) == (
        "Models",
        f"{BASE}/",
        "nav",
        "mlpipe-models",
    )
