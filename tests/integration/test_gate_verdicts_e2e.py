"""The accuracy gate's three verdicts under a real Airflow (scheduler, dag-processor, triggerer, api-server as
separate processes; SQLite + LocalExecutor), with real TensorFlow training on the local runtime and the real
serving server: nothing is emulated. The champion is the model in production, scored through its own
endpoint on the same 1,000 test images as the candidate in the same run.

Four runs, one after the other (each needs the production the one before left):

1. a weak first model (1 epoch on 3,000 images): no champion, the gate applies `min_accuracy` to its
   interval's lower bound; approved, it becomes the champion;
2. a stronger model (3 epochs on 6,000 images) with a per-class floor that Fashion-MNIST's hard classes
   (shirt, pullover, coat) cannot reach after so little training: overall better than the champion, yet it
   fails, naming the classes below the floor;
3. the same stronger model without the floor: clearly better, passes; approved, it becomes the champion;
4. the same configuration again, against a margin of 0: equal to the champion within noise, inconclusive;
   the approval asks for a reason, and the reason given is recorded in production's history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlpipe.demo.stack import AirflowClient, AirflowStack, StackConfig, free_port
from airflow_provider_mlpipe.modelstore import open_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

log = logging.getLogger(__name__)

DAG_ID = "mlpipe_fashion_mnist"
# About 0.75 and 0.85 test accuracy; the stronger model's shirt class stays near 0.5.
WEAK = {"epochs": 1, "train_limit": 3000, "test_limit": 1000, "batch_size": 64, "seed": 1}
STRONG = {"epochs": 3, "train_limit": 6000, "test_limit": 1000, "batch_size": 64, "seed": 1}
CONF: dict[str, Any] = {
    "image": "registry.cn-hangzhou.aliyuncs.com/mlpipe/fashion-trainer:gate",
    "digest": "sha256:" + "cd" * 32,
    "runtime": "local",
    "min_accuracy": 0.3,
    "evaluation_sample": 1000,
    "verify_sample": 300,
    "approvers": ["admin"],
}
FLOOR = 0.8
REASON = "e2e: equal to production within noise; approved to roll out the retrained image"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> Iterator[AirflowStack]:
    airflow = AirflowStack(
        StackConfig(
            home=tmp_path_factory.mktemp("airflow-home"),
            port=free_port(),
            production_port=free_port(),
            dataset_dir=str(fashion_mnist_dir),
            users={"admin": ("admin", "admin-pw")},
        )
    )
    with airflow.running(DAG_ID):
        yield airflow


@pytest.fixture(scope="module")
def admin(stack: AirflowStack) -> AirflowClient:
    return stack.client("admin")


def _run(
    stack: AirflowStack,
    admin: AirflowClient,
    run_id: str,
    conf: dict[str, Any],
    *,
    approve: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trigger a run; if `approve` is given, wait for the approval and Approve with it as params_input."""
    started = time.monotonic()
    admin.trigger(DAG_ID, {**CONF, **conf}, run_id=run_id)
    detail = None
    if approve is not None:
        states = admin.wait_for_run(DAG_ID, run_id, timeout=900, until_task=("approval", "awaiting_input"))
        assert states["approval"] == "awaiting_input", (
            states,
            states.get("accuracy_gate") == "success"
            and admin.xcom(DAG_ID, run_id, "accuracy_gate", key="decision"),
        )
        detail = admin.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/approval/-1/hitlDetails")
        assert stack.respond(admin, DAG_ID, run_id, "approval", "Approve", approve).status_code == 200
    states = admin.wait_for_run(DAG_ID, run_id, timeout=900)
    return {
        "states": states,
        "run_state": admin.run_state(DAG_ID, run_id),
        "decision": admin.xcom(DAG_ID, run_id, "accuracy_gate", key="decision"),
        "staging": admin.xcom(DAG_ID, run_id, "evaluate_staging"),
        "train": admin.xcom(DAG_ID, run_id, "train"),
        "outcome": admin.xcom(DAG_ID, run_id, "record_outcome"),
        "detail": detail,
        "seconds": round(time.monotonic() - started, 1),
    }


@pytest.fixture(scope="module")
def runs(stack: AirflowStack, admin: AirflowClient) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    result["first"] = _run(stack, admin, "gate-first", {"hyperparameters": WEAK}, approve={})
    result["floor"] = _run(
        stack, admin, "gate-class-floor", {"hyperparameters": STRONG, "min_class_accuracy": FLOOR}
    )
    result["better"] = _run(stack, admin, "gate-better", {"hyperparameters": STRONG}, approve={})
    result["equal"] = _run(
        stack,
        admin,
        "gate-equal",
        {"hyperparameters": STRONG, "max_regression": 0.0},
        approve={"reason": REASON},
    )
    for name, run in result.items():
        log.info("run %s: %s s, verdict %s", name, run["seconds"], run["decision"]["verdict"])
    return result


def test_first_model_has_no_champion_and_passes_on_its_lower_bound(runs: dict[str, dict[str, Any]]) -> None:
    first = runs["first"]
    assert first["run_state"] == "success", first["states"]
    decision = first["decision"]
    assert decision["verdict"] == "pass"
    assert decision["production_version"] is None and decision["difference_interval"] is None
    assert first["staging"]["champion"] is None
    assert decision["accuracy_interval"][0] >= CONF["min_accuracy"]
    assert decision["reasons"][0].startswith("no champion to compare with: first model")
    assert "**Accuracy gate: PASS**" in first["detail"]["body"]


def test_a_class_below_its_floor_fails_naming_it_though_overall_accuracy_is_higher(
    stack: AirflowStack, runs: dict[str, dict[str, Any]]
) -> None:
    floor, first = runs["floor"], runs["first"]
    decision = floor["decision"]
    champion = floor["staging"]["champion"]
    # The champion was scored through its endpoint on the same examples in this run.
    assert champion["version"] == first["train"]["version"] and champion["error"] is None
    assert sum(sum(cells) for cells in champion["paired_counts"]) == floor["staging"]["samples"] == 1000
    # Better overall than the champion, on the same examples...
    assert decision["accuracy"] > decision["champion_accuracy"]
    assert decision["difference"] > 0
    # ...yet failed, for the classes below the floor, each named, and only those.
    assert decision["verdict"] == "fail" and floor["states"]["accuracy_rejected"] == "success"
    broken = decision["broken_classes"]
    assert broken, decision["reasons"]
    per_class = floor["staging"]["per_class_accuracy"]
    names = floor["staging"]["class_names"]
    for entry in broken:
        assert entry["floor"] == "min_class_accuracy"
        assert per_class[str(entry["class"])] < FLOOR and entry["interval"][1] < FLOOR
        assert entry["name"] == names[entry["class"]]
        assert f"class {entry['class']} ({entry['name']})" in decision["reason"]
    assert floor["outcome"]["outcome"] == "rejected_by_gate"
    assert floor["run_state"] == "success"
    assert floor["states"]["approval"] == "skipped" and floor["states"]["deploy_production"] == "skipped"
    # Never in production: the next run's gate still compared against the first model.
    history = open_store((stack.home / "mlpipe" / "models").as_uri()).alias_history(
        "fashion_mnist", "production"
    )
    assert floor["train"]["version"] not in [h["version"] for h in history]
    assert runs["better"]["decision"]["production_version"] == first["train"]["version"]


def test_a_clearly_better_model_passes(stack: AirflowStack, runs: dict[str, dict[str, Any]]) -> None:
    better, first = runs["better"], runs["first"]
    assert better["run_state"] == "success", better["states"]
    decision = better["decision"]
    assert decision["verdict"] == "pass"
    assert decision["production_version"] == first["train"]["version"]
    low, high = decision["difference_interval"]
    assert low > -decision["max_regression"] and low <= decision["difference"] <= high
    body = better["detail"]["body"]
    assert "**Accuracy gate: PASS**" in body and "Difference (candidate - production)" in body
    assert better["detail"]["params"] in ({}, None)  # no reason asked for
    # Its promotion (a later run promoted another version since): the verdict and the endpoint the next
    # run's gate scored it at.
    history = open_store((stack.home / "mlpipe" / "models").as_uri()).alias_history(
        "fashion_mnist", "production"
    )
    record = next(h for h in history if h["version"] == better["train"]["version"])
    assert record["gate_verdict"] == "pass" and record["approval_reason"] is None
    assert record["endpoint_url"] == runs["equal"]["staging"]["champion"]["endpoint_url"]
    assert record["endpoint_url"].startswith("http://127.0.0.1:")


def test_equal_within_noise_is_inconclusive_and_the_reason_is_recorded(
    stack: AirflowStack, runs: dict[str, dict[str, Any]]
) -> None:
    equal, better = runs["equal"], runs["better"]
    decision = equal["decision"]
    assert decision["verdict"] == "inconclusive", decision["reasons"]
    assert decision["production_version"] == better["train"]["version"]
    low, high = decision["difference_interval"]
    assert low < 0 <= high  # straddles the line -max_regression = 0
    detail = equal["detail"]
    assert "reason" in detail["params"]
    assert "written reason is required" in detail["subject"]
    assert "**Accuracy gate: INCONCLUSIVE**" in detail["body"]
    assert f"[{low:+.4f}, {high:+.4f}]" in detail["body"]
    assert equal["run_state"] == "success", equal["states"]
    assert equal["outcome"]["outcome"] == "promoted"
    history = open_store((stack.home / "mlpipe" / "models").as_uri()).alias_history(
        "fashion_mnist", "production"
    )
    record = history[-1]
    assert record["version"] == equal["train"]["version"]
    assert (record["gate_verdict"], record["approval_reason"]) == ("inconclusive", REASON)
    assert record["reason"].endswith(f"approver's reason: {REASON}")
    assert "gate inconclusive" in record["reason"]
