"""The real DAG under a real Airflow: scheduler, dag-processor, triggerer and api-server run as separate
processes started here, twice: SQLite + LocalExecutor (the embedded default) and PostgreSQL +
CeleryExecutor with two Celery workers on Redis (production-like). The local runtime runs real TensorFlow training and a
real TF-Serving-compatible server. Nothing is emulated; only the data is small (a few thousand images,
two epochs) so the whole module takes a few minutes on two cores. Three tests that do not depend on the
stack run on one (`one_stack`): the CLI trigger on SQLite (the CLI's refusals still run on both), the
rollback and the second team's pipeline on the production-like stack.

One more run, started by the ACR webhook, checks that no secret reaches a log: it trains on the `kubernetes`
runtime with an `oss://` store, so its tasks and the triggerer load the `kubernetes_default` kubeconfig
(with a bearer token) and the `oss_default` secret. For that run alone the Kubernetes API and OSS are the
EMULATORS of tests/kubernetes_emulator.py and tests/emulators/oss_server.py, served over HTTP from this test
process; the test plays the Job controller and fails every training Job, so the run ends quickly.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from numpy import load as np_load

from airflow_provider_mlpipe.demo.stack import AirflowClient, AirflowStack, StackConfig, free_port
from airflow_provider_mlpipe.hooks.local_process import RUNNING, LocalProcessHook
from airflow_provider_mlpipe.modelstore import open_store
from tests.notification_receivers import dingtalk_receiver, smtp_receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

DAG_ID = "mlpipe_fashion_mnist"
# The second example pipeline (dags/mlpipe_digits.py): another team's image, model shape and data.
DIGITS_DAG_ID = "mlpipe_digits"
DIGITS_MODEL = "digits"
REPO = Path(__file__).resolve().parents[2]
SMALL = {"epochs": 2, "train_limit": 3000, "test_limit": 1000}
BASE_CONF: dict[str, Any] = {
    "image": "registry.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer:e2e",
    "digest": "sha256:" + "ab" * 32,
    "tag": "e2e",
    "runtime": "local",
    "min_accuracy": 0.5,
    "evaluation_sample": 1000,
    "verify_sample": 300,
    "approvers": ["admin"],
    "hyperparameters": SMALL,
}


DINGTALK_TOKEN, DINGTALK_SECRET = "e2e-robot", "SECe2e0123456789"
# Each stack's notification receivers (a local SMTP server and DingTalk endpoint), by AIRFLOW_HOME.
INBOXES: dict[Path, tuple[Any, Any]] = {}


# Two Airflow set-ups run the same tests: the embedded one (SQLite, LocalExecutor) and the
# production-like one (PostgreSQL metadata database, CeleryExecutor with two workers on Redis).
@pytest.fixture(scope="module", params=["sqlite-local", "postgres-celery"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fashion_mnist_dir: Path,
    postgres_database: Callable[[], str],
) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("airflow-home")
    extra: dict[str, Any] = {}
    if request.param == "postgres-celery":
        extra = {"sql_alchemy_conn": postgres_database(), "executor": "CeleryExecutor", "celery_workers": 2}
    with (
        smtp_receiver() as (smtp_port, smtp),
        dingtalk_receiver(DINGTALK_TOKEN, DINGTALK_SECRET) as (dingtalk_port, dingtalk, _),
    ):
        # The pipelines notify through these two connections ([mlpipe] notify_*), to receivers in this process.
        connections = {
            "AIRFLOW_CONN_E2E_SMTP": json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": smtp_port,
                    "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "mlpipe@example.com"},
                }
            ),
            "AIRFLOW_CONN_E2E_DINGTALK": json.dumps(
                {
                    "conn_type": "dingding",
                    "host": f"http://127.0.0.1:{dingtalk_port}",
                    "password": DINGTALK_TOKEN,
                    "extra": {"secret": DINGTALK_SECRET},
                }
            ),
        }
        airflow = AirflowStack(
            StackConfig(
                home=home,
                port=free_port(),
                production_port=free_port(),
                dataset_dir=str(fashion_mnist_dir),
                users={"admin": ("admin", "admin-pw"), "intruder": ("op", "intruder-pw")},
                # The webhook reads its secret and routes afresh on every push: `secret_run` sets them late.
                extra_config={
                    "mlpipe": {
                        "acr_webhook_config_ttl": "0",
                        "production_ports": f"{DIGITS_MODEL}={free_port()}",
                        "notify_dingtalk_conn_id": "e2e_dingtalk",
                        "notify_smtp_conn_id": "e2e_smtp",
                        "notify_email_to": "ml-team@example.com",
                    }
                },
                env=connections,
                **extra,
            )
        )
        INBOXES[airflow.home] = (smtp, dingtalk)
        with airflow.running(DAG_ID):
            yield airflow


@pytest.fixture(scope="module")
def admin(stack: AirflowStack) -> AirflowClient:
    return stack.client("admin")


def _store(stack: AirflowStack) -> Any:
    return open_store((stack.home / "mlpipe" / "models").as_uri())


def _running_endpoints(stack: AirflowStack) -> list[str]:
    hook = LocalProcessHook(str(stack.home / "mlpipe" / "state"))
    if not hook.state_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in hook.state_dir.iterdir()
        if p.is_dir() and p.name.startswith("serve-") and hook.status(p.name).state == RUNNING
    )


def _wait_awaiting_input(client: AirflowClient, run_id: str) -> dict[str, str | None]:
    states = client.wait_for_run(DAG_ID, run_id, timeout=600, until_task=("approval", "awaiting_input"))
    assert states["approval"] == "awaiting_input", states
    return states


def _approval_in_the_browser(stack: AirflowStack, run_id: str, screenshots: Path) -> dict[str, Any]:
    """What a person sees of the waiting approval in the Airflow UI (Chromium): the request's text and whether
    its pictures loaded; a screenshot in `screenshots`."""
    from tests.integration.browser import browser_page, image_loaded, log_in

    path = f"/dags/{DAG_ID}/runs/{run_id}/tasks/approval/required_actions"
    with browser_page() as page:
        log_in(page, stack.url, path, "admin", "admin-pw")
        page.get_by_text("Per-class accuracy (staging):").wait_for(timeout=60_000)
        images = {}
        for name in ("per_class.svg", "confusion.svg"):
            selector = f'img[src*="/mlpipe-models/api/models/fashion_mnist/versions/"][src*="/{name}"]'
            image_loaded(page, selector)
            images[name] = page.locator(selector).get_attribute("src")
        page.screenshot(path=str(screenshots / "approval.png"))
        return {"text": page.locator("body").inner_text(), "images": images}


@pytest.fixture(scope="module")
def promoted(
    stack: AirflowStack, admin: AirflowClient, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One full run: train, staging, gate, approval by REST, production, verify, promote."""
    run_id = admin.trigger(DAG_ID, BASE_CONF, run_id="e2e-happy")
    _wait_awaiting_input(admin, run_id)
    screenshots = tmp_path_factory.mktemp("screenshots")
    browser = _approval_in_the_browser(stack, run_id, screenshots)
    detail = admin.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/approval/-1/hitlDetails")
    intruder = stack.client("intruder").respond(DAG_ID, run_id, "approval", "Approve", settle=0)
    approved = stack.respond(admin, DAG_ID, run_id, "approval", "Approve")
    states = admin.wait_for_run(DAG_ID, run_id, timeout=600)
    return {
        "run_id": run_id,
        "detail": detail,
        "intruder_status": intruder.status_code,
        "approve_status": approved.status_code,
        "states": states,
        "run_state": admin.run_state(DAG_ID, run_id),
        "train": admin.xcom(DAG_ID, run_id, "train"),
        "staging": admin.xcom(DAG_ID, run_id, "evaluate_staging"),
        "production": admin.xcom(DAG_ID, run_id, "deploy_production"),
        "outcome": admin.xcom(DAG_ID, run_id, "record_outcome"),
        "browser": browser,
        "screenshots": screenshots,
    }


def test_the_browser_shows_the_runs_approval_pictures_and_models_page(
    stack: AirflowStack, promoted: dict[str, Any]
) -> None:
    """Chromium, logged in through Airflow's form: the approval request of this run showed its numbers and
    pictures; after the promotion the Models page shows the version, its tables and charts."""
    from tests.integration.browser import browser_page, image_loaded, log_in, models_page_frame, table_rows

    version, staging = promoted["train"]["version"], promoted["staging"]
    seen = promoted["browser"]
    assert "Accuracy (staging, 1000 test examples)" in seen["text"]
    assert f"{staging['accuracy']:.4f}" in seen["text"]
    assert "none: no model is in production yet, this version would be the first" in seen["text"]
    assert seen["images"]["per_class.svg"].endswith(f"/fashion_mnist/versions/{version}/per_class.svg")
    assert seen["images"]["confusion.svg"].endswith(f"/fashion_mnist/versions/{version}/confusion.svg")

    with browser_page() as page:
        log_in(page, stack.url, "/plugin/mlpipe-models", "admin", "admin-pw")
        frame = models_page_frame(page)
        frame.locator(f'#versions tr[data-version="{version}"]').click()
        frame.locator("#per-class tbody tr").first.wait_for(timeout=30_000)
        rows = {row[0]: row for row in table_rows(frame.locator("#versions tbody tr"))}
        row = rows[str(version)]
        assert f"{promoted['train']['test_accuracy']:.4f}" == row[2]
        assert "production" in row[3] and row[4] == "admin"
        per_class = table_rows(frame.locator("#per-class tbody tr"))
        assert len(per_class) == 10
        assert per_class[9][0] == "9 Ankle boot"
        assert per_class[9][1] == f"{staging['per_class_accuracy']['9']:.4f}"
        inner = page.frames[-1]
        for selector in ("#history", "#per-class-img", "#confusion-img"):
            image_loaded(inner, selector)
        page.screenshot(path=str(promoted["screenshots"] / "models-page.png"))


def test_happy_path_reaches_production(stack: AirflowStack, promoted: dict[str, Any]) -> None:
    assert promoted["run_state"] == "success", promoted["states"]
    states = promoted["states"]
    for task in (
        "validate_params",
        "train",
        "deploy_staging",
        "set_staging_alias",
        "evaluate_staging",
        "accuracy_gate",
        "approval",
        "deploy_production",
        "verify_production",
        "promote_model",
        "teardown_staging",
        "record_outcome",
    ):
        assert states[task] == "success", (task, states)
    assert states["accuracy_rejected"] == "skipped"
    assert states["rollback_production"] == "skipped"
    assert promoted["outcome"]["outcome"] == "promoted"

    version = promoted["train"]["version"]
    assert promoted["production"]["version"] == version
    assert promoted["staging"]["samples"] == 1000
    assert 0.5 <= promoted["staging"]["accuracy"] <= 1.0
    assert len(promoted["staging"]["confusion_matrix"]) == 10

    record = _store(stack).get_alias("fashion_mnist", "production")
    assert record["version"] == version
    assert record["approved_by"] == "admin"
    staging = _store(stack).get_alias("fashion_mnist", "staging")
    assert (staging["version"], staging["run_id"]) == (version, f"{DAG_ID}/{promoted['run_id']}")
    assert record["run_id"] == f"{DAG_ID}/{promoted['run_id']}"


def test_promotion_notifies_and_runs_the_asset_consumer_dag(
    stack: AirflowStack, admin: AirflowClient, promoted: dict[str, Any]
) -> None:
    """The approval request and the promotion reach both channels; the promotion's asset event starts
    mlpipe_batch_scoring, which scores with the promoted version through the production endpoint."""
    version, run_id = promoted["train"]["version"], promoted["run_id"]
    smtp, dingtalk = INBOXES[stack.home]
    for title in (
        f"Approval requested: fashion_mnist v{version}",
        f"Promoted: fashion_mnist v{version} is in production",
    ):
        mail = smtp.wait_until(lambda m, t=title: m.message["Subject"] == f"[mlpipe] {t}")
        assert mail.rcpt_to == ["ml-team@example.com"]
        chat = dingtalk.wait_until(lambda m, t=title: m.payload["markdown"]["title"] == t)
        assert f"{DAG_ID} / {run_id}" in chat.payload["markdown"]["text"]
    approval = dingtalk.wait_until(lambda m: m.payload["markdown"]["title"].startswith("Approval requested"))
    assert (
        f"/dags/{DAG_ID}/runs/{run_id}/tasks/approval/required_actions"
        in approval.payload["markdown"]["text"]
    )

    consumer = "mlpipe_batch_scoring"
    deadline = time.monotonic() + 300
    scored: dict[str, Any] | None = None
    while scored is None and time.monotonic() < deadline:
        runs = admin.call("GET", f"/dags/{consumer}/dagRuns", params={"order_by": "start_date"})["dag_runs"]
        for run in runs:
            if run["run_type"] == "asset_triggered" and run["state"] == "success":
                result = admin.xcom(consumer, run["dag_run_id"], "score")
                if result["version"] == version:
                    scored = result
        time.sleep(2)
    assert scored is not None, f"no successful asset-triggered {consumer} run scored v{version}"
    assert scored["rows"] == 1000
    rows = Path(scored["output"]).read_text().splitlines()
    assert rows[0] == "index,class,class_name" and len(rows) == 1001


def test_approval_request_shows_evidence_and_only_approvers_may_answer(promoted: dict[str, Any]) -> None:
    detail = promoted["detail"]
    assert detail["options"] == ["Approve", "Reject"]
    assert detail["defaults"] == ["Reject"]
    assert [u["id"] for u in detail["assigned_users"]] == ["admin"]
    body = detail["body"]
    assert f"version {promoted['train']['version']}" in body
    assert BASE_CONF["digest"] in body
    assert f"{promoted['staging']['accuracy']:.4f}" in body
    assert "Ankle boot" in body
    assert promoted["intruder_status"] == 403
    assert promoted["approve_status"] == 200


def test_production_endpoint_serves_the_promoted_version(
    stack: AirflowStack, promoted: dict[str, Any]
) -> None:
    prod = promoted["production"]
    status = requests.get(f"{prod['url']}/v1/models/fashion_mnist", timeout=10).json()
    assert status["model_version_status"][0]["version"] == str(prod["version"])
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    resp = requests.post(
        f"{prod['url']}/v1/models/fashion_mnist:predict", json={"instances": [[[0] * 28] * 28]}, timeout=10
    )
    assert resp.status_code == 200
    probs = resp.json()["predictions"][0]
    assert len(probs) == 10 and abs(sum(probs) - 1.0) < 1e-3
    # Staging was torn down; production is the only endpoint left.
    assert _running_endpoints(stack) == ["serve-fashion-mnist-production"]


def test_training_progress_is_in_the_task_log(stack: AirflowStack, promoted: dict[str, Any]) -> None:
    logs = list((stack.home / "logs").glob(f"dag_id={DAG_ID}/run_id={promoted['run_id']}/task_id=train/*"))
    text = "".join(p.read_text() for p in logs)
    assert "epoch 1/2" in text and "epoch 2/2" in text
    assert "published model=fashion_mnist" in text


SECRET_REPO = "mlpipe/secrets-e2e"
SECRET_BUCKET = "mlpipe-e2e-secrets"


def _kubeconfig_text(server: str, token: str, key_data: str) -> str:
    # As pasted into the connection form: YAML text, which Airflow does not mask by itself.
    return (
        "apiVersion: v1\nkind: Config\ncurrent-context: e2e\n"
        f"clusters:\n- name: e2e\n  cluster:\n    server: {server}\n"
        f"users:\n- name: e2e\n  user:\n    token: {token}\n    client-key-data: {key_data}\n"
        "contexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: e2e\n    namespace: mlpipe\n"
    )


@pytest.fixture(scope="module")
def secret_run(stack: AirflowStack, admin: AirflowClient) -> Iterator[dict[str, Any]]:
    """A run started by the webhook (with its secret) that loads the OSS and Kubernetes credentials."""
    from tests.emulators.oss_server import OssEmulator
    from tests.kubernetes_emulator import Gone, emulated_cluster

    values = {
        "oss": secrets.token_urlsafe(30),
        "token": f"e2e-token-{secrets.token_hex(20)}",
        "key_data": secrets.token_hex(32),
        "webhook": secrets.token_hex(32),
    }
    stop = threading.Event()
    with OssEmulator("e2e-key-id", values["oss"], buckets=(SECRET_BUCKET,)) as oss, emulated_cluster() as k8s:

        def fail_every_job() -> None:
            """The Job controller of the emulated cluster: every training Job fails at once."""
            while not stop.is_set():
                for name in k8s.names("jobs"):
                    # A Job deleted since the list (the task's on_kill) is skipped, as a controller does.
                    if not ((k8s.get("jobs", name) or {}).get("status") or {}).get("conditions"):
                        with contextlib.suppress(Gone):
                            k8s.finish_job(
                                name, succeeded=False, reason="BackoffLimitExceeded", message="e2e"
                            )
                stop.wait(0.5)

        controller = threading.Thread(target=fail_every_job, name="e2e-job-controller", daemon=True)
        controller.start()
        oss_extra = {
            "auth_type": "AK",
            "access_key_id": "e2e-key-id",
            "access_key_secret": values["oss"],
            "region": "cn-hangzhou",
            "endpoint": oss.endpoint,
        }
        kube_extra = {
            "kube_config": _kubeconfig_text(k8s.url, values["token"], values["key_data"]),
            "namespace": "mlpipe",
        }
        for conn_id, conn_type, extra in (
            ("oss_default", "oss", oss_extra),
            ("kubernetes_default", "kubernetes", kube_extra),
        ):
            admin.call(
                "POST",
                "/connections",
                json={"connection_id": conn_id, "conn_type": conn_type, "extra": json.dumps(extra)},
            )
        params = {
            "runtime": "kubernetes",
            "model_store": f"oss://{SECRET_BUCKET}/e2e",
            "approvers": ["admin"],
            "hyperparameters": SMALL,
            # The run's own in-task retry budget: 2 attempts (one retry) of each call.
            "retry_policy": {"attempts": 2, "base_delay": 0.1, "max_delay": 0.5},
        }
        routes = [{"repository": SECRET_REPO, "dag_id": DAG_ID, "params": params}]
        admin.call(
            "POST", "/variables", json={"key": "mlpipe_acr_webhook_secret", "value": values["webhook"]}
        )
        admin.call("POST", "/variables", json={"key": "mlpipe_acr_routes", "value": json.dumps(routes)})
        # One transient failure of the first Job creation, retried under the run's policy.
        k8s.fail_next(1, 503, method="POST", path=r"/jobs$")
        namespace, name = SECRET_REPO.split("/")
        push = {
            "push_data": {"digest": "sha256:" + "cd" * 32, "pushed_at": "2026-01-01 00:00:00", "tag": "v1"},
            "repository": {
                "name": name,
                "namespace": namespace,
                "region": "cn-hangzhou",
                "repo_full_name": SECRET_REPO,
                "repo_type": "PRIVATE",
            },
        }
        resp = requests.post(
            f"{stack.url}/mlpipe/webhooks/acr",
            params={"token": values["webhook"]},
            json=push,
            timeout=60,
        )
        # Checked by the test, not here: a failure must not take the other runs' tests down with it.
        answer = {"status": resp.status_code, "body": resp.text}
        try:
            yield {"answer": answer, "secrets": values, "oss": oss, "k8s": k8s}
        finally:
            stop.set()
            controller.join(timeout=10)


@pytest.fixture(scope="module")
def other_runs(
    stack: AirflowStack,
    admin: AirflowClient,
    promoted: dict[str, Any],
    secret_run: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict:
    """Three more runs at once, after the happy path: low accuracy, rejected, broken dataset (while the
    webhook's run of `secret_run` goes on beside them)."""
    broken = tmp_path_factory.mktemp("broken-dataset")
    (broken / "train-images-idx3-ubyte.gz").write_bytes(b"")
    runs = {
        "low": admin.trigger(DAG_ID, {**BASE_CONF, "min_accuracy": 0.999}, run_id="e2e-low-accuracy"),
        "reject": admin.trigger(DAG_ID, BASE_CONF, run_id="e2e-rejected"),
        "broken": admin.trigger(DAG_ID, {**BASE_CONF, "dataset": str(broken)}, run_id="e2e-broken-dataset"),
    }
    _wait_awaiting_input(admin, runs["reject"])
    assert stack.respond(admin, DAG_ID, runs["reject"], "approval", "Reject").status_code == 200
    result = {}
    for key, run_id in runs.items():
        states = admin.wait_for_run(DAG_ID, run_id, timeout=600)
        result[key] = {"run_id": run_id, "states": states, "run_state": admin.run_state(DAG_ID, run_id)}
    return result


def _production_unchanged(stack: AirflowStack, promoted: dict[str, Any]) -> None:
    record = _store(stack).get_alias("fashion_mnist", "production")
    assert record["version"] == promoted["train"]["version"]
    status = requests.get(f"{promoted['production']['url']}/v1/models/fashion_mnist", timeout=10).json()
    assert status["model_version_status"][0]["version"] == str(promoted["train"]["version"])


def test_low_accuracy_is_rejected_by_the_gate(
    stack: AirflowStack, admin: AirflowClient, other_runs: dict, promoted: dict[str, Any]
) -> None:
    run = other_runs["low"]
    states = run["states"]
    assert run["run_state"] == "success"
    assert states["accuracy_gate"] == "success" and states["accuracy_rejected"] == "success"
    assert states["approval"] == "skipped" and states["deploy_production"] == "skipped"
    assert states["teardown_staging"] == "success"
    outcome = admin.xcom(DAG_ID, run["run_id"], "record_outcome")
    assert outcome["outcome"] == "rejected_by_gate"
    assert "below min_accuracy 0.9990" in outcome["reason"]
    _production_unchanged(stack, promoted)


def test_rejection_by_approver(
    stack: AirflowStack, admin: AirflowClient, other_runs: dict, promoted: dict[str, Any]
) -> None:
    run = other_runs["reject"]
    states = run["states"]
    assert run["run_state"] == "success"
    assert states["approval"] == "success"
    assert states["deploy_production"] == "skipped" and states["promote_model"] == "skipped"
    assert states["teardown_staging"] == "success"
    outcome = admin.xcom(DAG_ID, run["run_id"], "record_outcome")
    assert outcome["outcome"] == "rejected_by_approver"
    assert outcome["reason"] == "rejected by admin"
    _production_unchanged(stack, promoted)
    events = _store(stack).events("fashion_mnist", outcome["version"])
    assert [e["outcome"] for e in events] == ["rejected_by_approver"]
    assert _running_endpoints(stack) == ["serve-fashion-mnist-production"]


def test_broken_dataset_fails_at_once_naming_the_file(
    stack: AirflowStack, other_runs: dict, promoted: dict[str, Any]
) -> None:
    run = other_runs["broken"]
    states = run["states"]
    assert run["run_state"] == "failed"
    assert states["validate_params"] == "failed"
    assert states["train"] == "upstream_failed"
    log = "".join(
        p.read_text()
        for p in (stack.home / "logs").glob(
            f"dag_id={DAG_ID}/run_id={run['run_id']}/task_id=validate_params/*"
        )
    )
    assert "train-labels-idx1-ubyte.gz" in log
    _production_unchanged(stack, promoted)


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({k: v for k, v in BASE_CONF.items() if k != "image"}, "image"),
        ({**BASE_CONF, "min_accuracy": 1.5}, "min_accuracy"),
        ({**BASE_CONF, "runtime": "mainframe"}, "runtime"),
        ({**BASE_CONF, "hyperparameters": {"epochs": 0}}, "epochs"),
        # The trainer's own range, from the one definition: refused before a version is reserved.
        ({**BASE_CONF, "hyperparameters": {"learning_rate": 2}}, "learning_rate"),
        ({**BASE_CONF, "runtime": "kubernetes", "kubernetes": {"gpu": 2}}, "gpu"),
    ],
)
def test_bad_conf_is_refused_by_the_rest_api(admin: AirflowClient, conf: dict[str, Any], field: str) -> None:
    before = admin.call("GET", f"/dags/{DAG_ID}/dagRuns")["total_entries"]
    resp = admin.request("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
    assert resp.status_code == 400, resp.text
    assert field in json.dumps(resp.json())
    assert admin.call("GET", f"/dags/{DAG_ID}/dagRuns")["total_entries"] == before


@pytest.mark.one_stack("sqlite-local")  # the CLI on PostgreSQL: the refusal tests below run on both
def test_cli_trigger_with_conf(stack: AirflowStack, admin: AirflowClient) -> None:
    """`airflow dags trigger --conf` creates a run with the conf (and the Params defaults filled in)."""
    conf = {**BASE_CONF, "min_accuracy": 0.999, "hyperparameters": {"epochs": 1, "train_limit": 500}}
    result = stack.airflow("dags", "trigger", DAG_ID, "--run-id", "e2e-cli", "--conf", json.dumps(conf))
    assert "e2e-cli" in result.stdout
    run = admin.call("GET", f"/dags/{DAG_ID}/dagRuns/e2e-cli")
    assert run["conf"]["min_accuracy"] == 0.999
    deadline = time.monotonic() + 600
    while admin.run_state(DAG_ID, "e2e-cli") not in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(2)
    assert admin.xcom(DAG_ID, "e2e-cli", "record_outcome")["outcome"] == "rejected_by_gate"


def test_cli_refuses_a_hyperparameter_out_of_the_trainers_range(
    stack: AirflowStack, admin: AirflowClient
) -> None:
    conf = {**BASE_CONF, "hyperparameters": {"learning_rate": 2}}
    bad = stack.airflow(
        "dags", "trigger", DAG_ID, "--run-id", "e2e-cli-lr", "--conf", json.dumps(conf), check=False
    )
    assert bad.returncode != 0
    assert "learning_rate" in bad.stdout + bad.stderr
    assert admin.request("GET", f"/dags/{DAG_ID}/dagRuns/e2e-cli-lr").status_code == 404


# Confs Airflow accepts (an unknown key becomes an untyped param; each param is checked alone) that the
# run cannot honour: `validate_params` refuses them, naming the key, before `train` reserves a version.
UNHONOURABLE: dict[str, tuple[dict[str, Any], str]] = {
    "misspelt": (
        {**BASE_CONF, "min_acuracy": 0.95},
        "unknown param 'min_acuracy'; did you mean 'min_accuracy'?",
    ),
    "gpus-on-local": (
        {**BASE_CONF, "runtime": "local", "kubernetes": {"gpus": 2}},
        "these settings apply to runtime 'kubernetes' only",
    ),
    "two-digests": (
        {**BASE_CONF, "image": "registry.cn-hangzhou.aliyuncs.com/mlpipe/t@sha256:" + "12" * 32},
        "the digest the image reference carries (sha256:" + "12" * 32 + ")",
    ),
}


@pytest.fixture(scope="module")
def unhonourable_runs(stack: AirflowStack, admin: AirflowClient) -> dict[tuple[str, str], dict[str, Any]]:
    """Each conf of UNHONOURABLE started through the REST API and through the CLI, all at once."""
    runs: dict[tuple[str, str], str] = {}
    for case, (conf, _) in UNHONOURABLE.items():
        # Created: Airflow 3.3 cannot refuse these at the API (see README, "Starting a run").
        runs[(case, "rest")] = admin.trigger(DAG_ID, conf, run_id=f"e2e-refused-{case}-rest")
        cli_run = f"e2e-refused-{case}-cli"
        stack.airflow("dags", "trigger", DAG_ID, "--run-id", cli_run, "--conf", json.dumps(conf))
        runs[(case, "cli")] = cli_run
    return {
        key: {
            "run_id": run_id,
            "states": admin.wait_for_run(DAG_ID, run_id, timeout=300),
            "run_state": admin.run_state(DAG_ID, run_id),
        }
        for key, run_id in runs.items()
    }


@pytest.mark.parametrize("via", ["rest", "cli"])
@pytest.mark.parametrize("case", list(UNHONOURABLE))
def test_unhonourable_conf_is_refused_by_validate_params_before_any_work(
    stack: AirflowStack, unhonourable_runs: dict[tuple[str, str], dict[str, Any]], case: str, via: str
) -> None:
    run = unhonourable_runs[(case, via)]
    states = run["states"]
    assert run["run_state"] == "failed", states
    assert states["validate_params"] == "failed", states
    assert states["train"] == "upstream_failed", states
    log = "".join(
        p.read_text()
        for p in (stack.home / "logs").glob(
            f"dag_id={DAG_ID}/run_id={run['run_id']}/task_id=validate_params/*"
        )
    )
    assert UNHONOURABLE[case][1] in log
    # No model version was reserved for the run: `train` never started.
    reservations = stack.home / "mlpipe" / "models" / "fashion_mnist" / "_reservations"
    assert not [p.name for p in reservations.glob("*.json") if run["run_id"] in p.read_text()]


def test_no_secret_reaches_any_log(
    stack: AirflowStack, admin: AirflowClient, secret_run: dict[str, Any]
) -> None:
    """The OSS secret, the kubeconfig's token and key, and the webhook secret appear in no file under the
    Airflow logs directory (task logs, triggerer, scheduler, api-server, workers), though each was used."""
    answer = secret_run["answer"]
    # 202: recorded; the api-server's dispatcher creates the run behind the answer.
    assert answer["status"] == 202, answer
    run_id = json.loads(answer["body"])["run_id"]
    deadline = time.monotonic() + 120
    while admin.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}").status_code == 404:
        assert time.monotonic() < deadline, f"the webhook's run {run_id} was not created within 120 s"
        time.sleep(1)
    states = admin.wait_for_run(DAG_ID, run_id, timeout=600)
    assert admin.run_state(DAG_ID, run_id) == "failed" and states["train"] == "failed", states
    # Each credential was really used: OSS checked the signature of the version reservation, the cluster
    # got the Job (created after one 503), the triggerer polled it.
    oss, k8s = secret_run["oss"], secret_run["k8s"]
    assert oss.operations["PutObject"] >= 1
    assert ("POST", "/apis/batch/v1/namespaces/mlpipe/jobs") in k8s.requests
    assert any(method == "GET" and "/jobs/train-" in path for method, path in k8s.requests)
    train_log = "".join(
        p.read_text(errors="replace")
        for p in (stack.home / "logs").glob(f"dag_id={DAG_ID}/run_id={run_id}/task_id=train/*")
    )
    assert "BackoffLimitExceeded" in train_log
    # The run's retry_policy Param reached the Kubernetes hook: 2 attempts, not the default 5.
    assert "(attempt 1 of 2, HTTP 503" in train_log

    files = [p for p in (stack.home / "logs").rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert files and total > 10_000, (len(files), total)
    leaks = {
        f"{p.relative_to(stack.home)}: {name}"
        for p in files
        for name, value in secret_run["secrets"].items()
        if value.encode() in p.read_bytes()
    }
    assert not leaks, sorted(leaks)


ROLLBACK_DAG_ID = "mlpipe_rollback_production"


@pytest.mark.one_stack("postgres-celery")  # an operation on production: the production-like stack
def test_rollback_restores_the_previous_model_and_production_serves_it(
    stack: AirflowStack, admin: AirflowClient, promoted: dict[str, Any]
) -> None:
    """A second image reaches production; then the rollback DAG moves the `production` alias back and the
    production endpoint serves the first version again. Last in the module: it changes production."""
    first = promoted["train"]["version"]
    url = promoted["production"]["url"]
    conf = {**BASE_CONF, "digest": "sha256:" + "ef" * 32, "tag": "e2e-second"}
    second_run = admin.trigger(DAG_ID, conf, run_id="e2e-second")
    _wait_awaiting_input(admin, second_run)
    # The same training as the first: the paired gate may find them equal within noise (inconclusive),
    # which needs a written reason to approve; with a pass verdict the reason is only recorded.
    reason = {"reason": "e2e: second image, same training"}
    assert stack.respond(admin, DAG_ID, second_run, "approval", "Approve", reason).status_code == 200
    states = admin.wait_for_run(DAG_ID, second_run, timeout=600)
    assert admin.run_state(DAG_ID, second_run) == "success", states
    second = admin.xcom(DAG_ID, second_run, "train")["version"]
    assert second != first
    served = requests.get(f"{url}/v1/models/fashion_mnist", timeout=10).json()
    assert served["model_version_status"][0]["version"] == str(second)

    admin.wait_for_dag(ROLLBACK_DAG_ID)
    rollback_conf = {"reason": "e2e: complaints about v2", "verify_sample": BASE_CONF["verify_sample"]}
    run_id = admin.trigger(ROLLBACK_DAG_ID, rollback_conf, run_id="e2e-rollback")
    states = admin.wait_for_run(ROLLBACK_DAG_ID, run_id, timeout=600)
    assert admin.run_state(ROLLBACK_DAG_ID, run_id) == "success", states

    store = _store(stack)
    production = store.get_alias("fashion_mnist", "production")
    assert production["version"] == first
    assert production["run_id"] == f"{ROLLBACK_DAG_ID}/{run_id}"
    assert production["reason"] == f"rollback from v{second}: e2e: complaints about v2"
    assert store.get_alias("fashion_mnist", "previous")["version"] == second
    served = requests.get(f"{url}/v1/models/fashion_mnist", timeout=10).json()
    assert served["model_version_status"][0] == {
        "version": str(first),
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    verified = admin.xcom(ROLLBACK_DAG_ID, run_id, "verify_production")
    assert verified["version"] == first and verified["samples"] == BASE_CONF["verify_sample"]
    resp = requests.post(
        f"{url}/v1/models/fashion_mnist:predict", json={"instances": [[[0] * 28] * 28]}, timeout=10
    )
    assert resp.status_code == 200 and len(resp.json()["predictions"][0]) == 10
    assert _running_endpoints(stack) == ["serve-fashion-mnist-production"]


@pytest.mark.one_stack("postgres-celery")  # what differs is the team's code, not the stack
def test_a_second_team_pipeline_runs_end_to_end_with_its_own_image_model_and_data(
    stack: AirflowStack, admin: AirflowClient, tmp_path: Path
) -> None:
    """dags/mlpipe_digits.py (the pipeline factory, a few lines) trains its own trainer on scikit-learn's
    8x8 digits through the same provider code: its model takes `features` [batch, 64] where the
    Fashion-MNIST one takes [batch, 28, 28], and both gates score the .npz the README's step wrote."""
    dataset = tmp_path / "digits-data"
    # The README's data step, verbatim but for the directory.
    subprocess.run(
        [sys.executable, "training_image/examples/digits/prepare_data.py", str(dataset)], cwd=REPO, check=True
    )
    admin.wait_for_dag(DIGITS_DAG_ID)
    admin.unpause(DIGITS_DAG_ID)
    conf = {
        "image": "registry.cn-hangzhou.aliyuncs.com/team-b/digits-trainer:e2e",
        "digest": "sha256:" + "d1" * 32,
        "dataset": str(dataset),
        "approvers": ["admin"],
    }
    run_id = admin.trigger(DIGITS_DAG_ID, conf, run_id="e2e-digits")
    states = admin.wait_for_run(DIGITS_DAG_ID, run_id, timeout=600, until_task=("approval", "awaiting_input"))
    assert states["approval"] == "awaiting_input", states
    staging = admin.xcom(DIGITS_DAG_ID, run_id, "evaluate_staging")
    assert stack.respond(admin, DIGITS_DAG_ID, run_id, "approval", "Approve").status_code == 200
    states = admin.wait_for_run(DIGITS_DAG_ID, run_id, timeout=600)
    assert admin.run_state(DIGITS_DAG_ID, run_id) == "success", states

    # The gate learnt the input from the served model's metadata and the class names from the manifest.
    assert staging["input"] == {"name": "features", "dtype": "DT_FLOAT", "shape": [-1, 64]}
    assert staging["class_names"] == [str(digit) for digit in range(10)]
    assert staging["samples"] == 450 and staging["accuracy"] >= 0.9
    assert staging["evaluation_data"].endswith("digits-data/test.npz")
    trained = admin.xcom(DIGITS_DAG_ID, run_id, "train")
    store = _store(stack)
    assert store.get_alias(DIGITS_MODEL, "production")["version"] == trained["version"]
    manifest = store.read_manifest(DIGITS_MODEL, trained["version"])
    assert manifest["trainer"] == "training_image/examples/digits/train.py"
    assert manifest["digest"] == conf["digest"] and manifest["image"] == conf["image"]

    # Production answers on the digits model's own port, beside the Fashion-MNIST production endpoint.
    url = admin.xcom(DIGITS_DAG_ID, run_id, "deploy_production")["url"]
    assert url.endswith(f":{stack.config.extra_config['mlpipe']['production_ports'].split('=')[1]}")
    with np_load(dataset / "test.npz") as data:
        rows, labels = data["inputs"][:20].tolist(), data["labels"][:20].tolist()
    answer = requests.post(f"{url}/v1/models/{DIGITS_MODEL}:predict", json={"instances": rows}, timeout=10)
    assert answer.status_code == 200, answer.text
    predicted = [max(range(10), key=p.__getitem__) for p in answer.json()["predictions"]]
    assert sum(p == y for p, y in zip(predicted, labels, strict=True)) >= 17
    assert "serve-digits-production" in _running_endpoints(stack)
