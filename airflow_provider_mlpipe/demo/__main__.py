"""`make demo`: the whole pipeline on this machine, on the local runtime.

Starts Airflow (SQLite, LocalExecutor, AIRFLOW_HOME=.airflow in the repository, DAGs and plugins from the
repository), triggers mlpipe_fashion_mnist, shows every step's state as it changes, answers the approval
through the REST API as the demo user (or leaves it to you in the UI with --manual-approval), and ends
with the production endpoint, the model version, its test accuracy and one real prediction.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import requests

from airflow_provider_mlpipe.demo.stack import REPO_ROOT, AirflowStack, StackConfig

DAG_ID = "mlpipe_fashion_mnist"


def _say(message: str) -> None:
    # The demo's screen output is its product, not a log: plain lines on stdout, flushed as they happen.
    sys.stdout.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stdout.flush()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


class TrainingProgress:
    """New epoch lines of the local training process (the same lines the train task's log shows)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.offsets: dict[Path, int] = {}

    def new_lines(self) -> list[str]:
        from airflow_provider_mlpipe.hooks.local_process import read_log

        lines: list[str] = []
        for pdir in sorted(self.state_dir.glob("train-*")):
            if ".attempt-" in pdir.name:
                continue
            found, self.offsets[pdir] = read_log(pdir, self.offsets.get(pdir, 0))
            lines += [line for line in found if line.startswith(("epoch", "published", "training"))]
        return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_mlpipe.demo", description=__doc__)
    parser.add_argument(
        "--home", default=str(REPO_ROOT / ".airflow"), help="AIRFLOW_HOME (default: .airflow)"
    )
    parser.add_argument("--port", type=int, default=8080, help="Airflow UI / API port")
    parser.add_argument("--production-port", type=int, default=8501, help="production endpoint port")
    parser.add_argument(
        "--manual-approval", action="store_true", help="leave the approval to a person in the UI"
    )
    parser.add_argument("--keep-running", action="store_true", help="leave Airflow and the endpoint running")
    parser.add_argument("--epochs", type=int, default=None, help="override the trainer's default epochs")
    parser.add_argument("--train-limit", type=int, default=0, help="train on the first N images (0 = all)")
    parser.add_argument("--min-accuracy", type=float, default=0.85, help="accuracy gate floor")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    args = parser.parse_args(argv)

    from airflow_provider_mlpipe.datasets.fashion_mnist import CLASS_NAMES, default_dataset_dir, load_split

    dataset = default_dataset_dir()
    _say(f"Dataset: {dataset or 'Keras download (no local copy found; set MLPIPE_DATASET_DIR)'}")
    for port in (args.port, args.production_port):
        if not _port_free(port):
            _say(f"Port {port} is in use: stop what runs there or pass --port / --production-port")
            return 2

    stack = AirflowStack(
        StackConfig(
            home=Path(args.home), port=args.port, production_port=args.production_port, dataset_dir=dataset
        )
    )
    _say(f"Starting Airflow in {stack.home} (scheduler, dag-processor, triggerer, api-server) ...")
    ok = False
    try:
        stack.start()
        _say(f"Airflow UI: {stack.url}  (user admin, password admin)")
        client = stack.client("admin")
        client.wait_for_dag(DAG_ID)
        client.unpause(DAG_ID)
        hyper: dict[str, int] = {}
        if args.epochs:
            hyper["epochs"] = args.epochs
        if args.train_limit:
            hyper["train_limit"] = args.train_limit
        conf = {
            "image": "localhost/mlpipe/fashion-trainer:demo",
            "tag": "demo",
            "runtime": "local",
            "min_accuracy": args.min_accuracy,
            "approvers": ["admin"],
            "hyperparameters": hyper,
        }
        run_id = client.trigger(DAG_ID, conf)
        _say(f"Triggered run {run_id}: {stack.url}/dags/{DAG_ID}/runs/{run_id}")

        train_logs = TrainingProgress(stack.home / "mlpipe" / "state")

        shown: dict[str, str | None] = {}

        def show(task_id: str, state: str | None) -> None:
            if state and shown.get(task_id) != state:
                shown[task_id] = state
                _say(f"  {task_id:<22} {state}")

        def progress(states: dict[str, str | None]) -> None:
            if states.get("train") in ("running", "deferred", "scheduled", "queued"):
                for line in train_logs.new_lines():
                    _say(f"    train: {line}")

        states = client.wait_for_run(
            DAG_ID,
            run_id,
            timeout=args.timeout,
            until_task=("approval", "awaiting_input"),
            on_change=show,
            on_poll=progress,
        )
        if states.get("approval") == "awaiting_input":
            if args.manual_approval:
                _say(f"Approval waits for you: {stack.url} -> Required actions (user admin / admin)")
            else:
                _say(
                    "Approving as the demo user 'admin' through PATCH .../approval/-1/hitlDetails (REST API)"
                )
                resp = stack.respond(client, DAG_ID, run_id, "approval", "Approve")
                if not resp.ok:
                    _say(f"Approval failed: HTTP {resp.status_code} {resp.text[:300]}")
                    return 1
            states = client.wait_for_run(DAG_ID, run_id, timeout=args.timeout, on_change=show)
        final = client.run_state(DAG_ID, run_id)
        outcome = (
            client.xcom(DAG_ID, run_id, "record_outcome") if states.get("record_outcome") == "success" else {}
        )
        _say(f"Run {final}: {outcome.get('outcome', '?')} ({outcome.get('reason', 'see the task logs')})")
        if outcome.get("outcome") != "promoted":
            return 1
        production = client.xcom(DAG_ID, run_id, "deploy_production")
        staging = client.xcom(DAG_ID, run_id, "evaluate_staging")
        images, labels = load_split(dataset, "test", 1) if dataset else (None, None)
        _say(f"Production endpoint: {production['url']}/v1/models/{production['model_name']}")
        _say(f"Model version:       {production['version']}")
        _say(f"Test accuracy:       {staging['accuracy']:.4f} on {staging['samples']} test images (via REST)")
        if images is not None and labels is not None:
            resp = requests.post(
                f"{production['url']}/v1/models/{production['model_name']}:predict",
                json={"instances": images.tolist()},
                timeout=30,
            )
            resp.raise_for_status()
            probs = resp.json()["predictions"][0]
            best = max(range(len(probs)), key=probs.__getitem__)
            _say(
                f"Prediction:          test image 0 -> {CLASS_NAMES[best]} (p={probs[best]:.3f}); "
                f"true label {CLASS_NAMES[int(labels[0])]}"
            )
        ok = True
        return 0
    finally:
        if args.keep_running:
            _say(f"Left running: Airflow at {stack.url}; stop with: kill the processes in {stack.home}/logs")
        else:
            stopped = stack.stop_local_runtime()
            stack.stop()
            _say(f"Stopped Airflow and the local endpoints ({', '.join(stopped) or 'none'})")
        if not ok:
            _say(f"Logs: {stack.home / 'logs'}")


if __name__ == "__main__":
    sys.exit(main())
