"""Benchmark 5: ACR webhook ingestion against a real `airflow api-server` (our FastAPI plugin in it), with
the dag-processor and scheduler running and PostgreSQL as the metadata database: 1,000 deliveries, 10% of
them duplicates of earlier digests, from 16 concurrent clients (keep-alive connections).

Each answer comes once the delivery is durably recorded (202, or 200 for a redelivery); the api-server's
dispatcher creates the runs behind the inbox, in batches. A repeat ends once every unique digest has its run
(runs == unique digests is checked then), and the time from acknowledgement to run creation is read from
the event table (`run_created_at - received_at`).

Run: python -m benchmarks.webhook [--repeats 3] [--deliveries 1000] [--concurrency 16] [--database sqlite]
(results/webhook.json; other settings write results/webhook-<deliveries>-c<concurrency>-<database>.json)"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from benchmarks._common import Figure, airflow_stack, check_repeats, parser, postgres_database, report

SECRET = "bench-" + "5e" * 16
DAG_ID = "bench_acr_ingest"
REPO = "mlpipe/bench-trainer"
DAG_FILE = """
from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param

with DAG(
    dag_id="bench_acr_ingest",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=16,
    params={"image": Param("", type="string"), "digest": Param("", type="string"), "tag": Param("")},
):
    EmptyOperator(task_id="noop")
"""


def payload(digest: str) -> bytes:
    namespace, name = REPO.split("/")
    return json.dumps(
        {
            "push_data": {"digest": digest, "pushed_at": "2026-11-29 12:25:46", "tag": "latest"},
            "repository": {
                "date_created": "2026-10-28 21:31:42",
                "name": name,
                "namespace": namespace,
                "region": "cn-hangzhou",
                "repo_authentication_type": "NO_CERTIFIED",
                "repo_full_name": REPO,
                "repo_origin_type": "NO_CERTIFIED",
                "repo_type": "PRIVATE",
            },
        }
    ).encode()


def deliveries(rng: random.Random, total: int, base: int) -> tuple[list[str], int]:
    """`total` digests, 10% of them repeats of an earlier one in the list; returns (digests, unique)."""
    unique = total - total // 10
    digests = [f"sha256:{base + i:064x}" for i in range(unique)]
    order = digests[:]
    for _ in range(total - unique):
        order.insert(rng.randrange(1, len(order) + 1), rng.choice(digests[: max(1, len(order) // 2)]))
    return order, unique


def blast(url: str, digests: list[str], concurrency: int) -> tuple[float, list[float], dict[int, int]]:
    local = threading.local()
    latencies: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()

    def post(digest: str) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        body = payload(digest)
        started = time.perf_counter()
        resp = session.post(
            url, data=body, params={"token": SECRET}, headers={"Content-Type": "application/json"}, timeout=60
        )
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)
            codes[resp.status_code] = codes.get(resp.status_code, 0) + 1

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, digests))
    return time.perf_counter() - began, latencies, codes


def count_runs(client: Any) -> int:
    return int(client.call("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 1})["total_entries"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (the api-server's workers)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def wait_for_runs(client: Any, wanted: int, timeout: float = 300) -> int:
    """Runs of the DAG once it has `wanted` (or the deadline passed, or no progress for 60 s)."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        runs = count_runs(client)
        if runs >= wanted:
            return runs
        if runs != last:
            last, last_change = runs, time.monotonic()
        elif time.monotonic() - last_change > 60:
            break
        time.sleep(0.5)
    return count_runs(client)


def ack_to_run_ms(database_url: str, digests: list[str]) -> list[float]:
    """Acknowledgement (the event's commit) to run creation, per unique digest, from the event table."""
    from sqlalchemy import create_engine, select

    from airflow_provider_mlpipe.webhooks.acr import run_id_for
    from airflow_provider_mlpipe.webhooks.events import events_table

    ids = sorted({run_id_for(REPO, d) for d in digests})
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(events_table.c.received_at, events_table.c.run_created_at).where(
                    events_table.c.event_id.in_(ids), events_table.c.run_created_at.is_not(None)
                )
            ).all()
    finally:
        engine.dispose()
    return [(created - received).total_seconds() * 1000 for received, created in rows]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "")
    p.add_argument("--deliveries", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    args = p.parse_args(argv)
    repeats = check_repeats(args.repeats)
    rng = random.Random(7)
    rates: list[float] = []
    p50: list[float] = []
    p99: list[float] = []
    runs_ok: list[float] = []
    ack_p50: list[float] = []
    ack_p99: list[float] = []
    cpu_per_delivery: list[float] = []
    cpu_per_run: list[float] = []
    details: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack_ctx:
        db = stack_ctx.enter_context(postgres_database()) if args.database == "postgres" else None
        home = Path(stack_ctx.enter_context(tempfile.TemporaryDirectory(prefix="mlpipe-bench-webhook-")))
        dags = home / "dags"
        dags.mkdir()
        (dags / f"{DAG_ID}.py").write_text(DAG_FILE)
        stack = airflow_stack(home, dags_folder=dags, sql_alchemy_conn=db)
        # Set before the api-server starts: the webhook caches its settings for acr_webhook_config_ttl.
        stack.write_config()
        stack.migrate()
        routes = [{"repository": REPO, "tag": "*", "dag_id": DAG_ID}]
        stack.airflow("variables", "set", "mlpipe_acr_webhook_secret", SECRET)
        stack.airflow("variables", "set", "mlpipe_acr_routes", json.dumps(routes))
        stack_ctx.enter_context(stack.running(DAG_ID, ("api-server", "dag-processor", "scheduler")))
        client = stack.client()
        database_url = db or f"sqlite:///{home / 'airflow.db'}"
        url = f"{stack.url}/mlpipe/webhooks/acr"
        blast(url, [f"sha256:{i:064x}" for i in range(1, 33)], args.concurrency)  # warm-up, 32 runs
        wait_for_runs(client, 32)
        for n in range(repeats):
            before = count_runs(client)
            digests, unique = deliveries(rng, args.deliveries, base=10_000 * (n + 1))
            api_pid = stack.procs["api-server"].pid
            load = os.getloadavg()[0]
            cpu0 = cpu_seconds(api_pid)
            seconds, lat, codes = blast(url, digests, args.concurrency)
            cpu1 = cpu_seconds(api_pid)
            runs_at_last_answer = count_runs(client) - before
            if set(codes) - {200, 202}:
                raise SystemExit(f"unexpected answers: {codes}")
            # Every answer came with the event recorded; now wait for the dispatcher to catch up.
            created = wait_for_runs(client, before + unique) - before
            cpu2 = cpu_seconds(api_pid)
            # The blast's share includes the dispatching done meanwhile; the rest is after the last answer.
            cpu_per_delivery.append(1000 * (cpu1 - cpu0) / len(digests))
            if created > runs_at_last_answer:
                cpu_per_run.append(1000 * (cpu2 - cpu1) / (created - runs_at_last_answer))
            ack = ack_to_run_ms(database_url, digests)
            q = statistics.quantiles(lat, n=100, method="inclusive")
            qa = statistics.quantiles(ack, n=100, method="inclusive")
            rates.append(len(lat) / seconds)
            p50.append(q[49] * 1000)
            p99.append(q[98] * 1000)
            ack_p50.append(qa[49])
            ack_p99.append(qa[98])
            runs_ok.append(float(created == unique and len(ack) == unique))
            details.append(
                {
                    "seconds": seconds,
                    "codes": codes,
                    "unique": unique,
                    "runs_created": created,
                    "runs_at_last_answer": runs_at_last_answer,
                    "api_server_cpu_s_blast": round(cpu1 - cpu0, 2),
                    "api_server_cpu_s_until_runs": round(cpu2 - cpu0, 2),
                    "load_average_1m_at_start": load,
                    "cores": os.cpu_count(),
                }
            )
    figures = [
        Figure("deliveries/s", "/s", rates, target=(">=", 200.0)),
        Figure("p50 latency", "ms", p50),
        Figure("p99 latency", "ms", p99, target=("<=", 100.0)),
        Figure(
            "runs created == unique digests",
            "",
            runs_ok,
            target=(">=", 1.0),
            note="1 = every run of the repeat matched its unique digests exactly",
        ),
        Figure("ack -> run created p50", "ms", ack_p50),
        Figure("ack -> run created p99", "ms", ack_p99),
        Figure(
            "api-server CPU per delivery",
            "ms",
            cpu_per_delivery,
            note="during the blast, including the dispatching done meanwhile; machine load in details",
        ),
    ]
    if cpu_per_run:
        figures.append(
            Figure(
                "api-server CPU per run created",
                "ms",
                cpu_per_run,
                note="the runs created after the last answer, and the CPU they took",
            )
        )
    # The setting keeps the name the README's table reads; other settings get their own record.
    defaults = (args.deliveries, args.concurrency, args.database) == (1000, 16, "postgres")
    name = "webhook" if defaults else f"webhook-{args.deliveries}-c{args.concurrency}-{args.database}"
    report(
        name,
        f"ACR webhook ingestion: {args.deliveries} deliveries, 10% duplicates, concurrency {args.concurrency} "
        f"({args.database})",
        figures,
        command=(
            f"python -m benchmarks.webhook --repeats {repeats} --deliveries {args.deliveries} "
            f"--concurrency {args.concurrency} --database {args.database}"
        ),
        details={"repeats": details, "database": args.database},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
