"""Benchmark 6: waiting is free. 200 runs parked at the approval gate (the pipeline's ApprovalSensor), on
the production-like metadata database (PostgreSQL) with the LocalExecutor:
executor slots in use, the scheduler's loop time and CPU, and the memory of scheduler, triggerer and
api-server, against the same stack with no run parked.

Run: python -m benchmarks.parked [--repeats 3] [--runs 200] [--window 30]"""

from __future__ import annotations

import re
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    REPO_ROOT,
    Figure,
    airflow_stack,
    check_repeats,
    parser,
    postgres_database,
    report,
)

DAG_ID = "bench_parked_approval"
_LOOP = re.compile(r"Ran scheduling loop in ([0-9.]+) ms")


def tree_pss_mib(pid: int) -> float:
    """Proportional set size of a process and all its descendants: shared pages (forked workers share most
    of theirs with their parent) are split between the sharers instead of counted once per process."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total_kib = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, clock ticks (100 Hz)


def restart_scheduler(stack: Any, debug: bool) -> None:
    """DEBUG logging is the only way Airflow reports each loop's duration without a StatsD server, and it
    costs CPU itself: loop times are read in a DEBUG phase, CPU and memory in an INFO phase."""
    # SIGKILL: a LocalExecutor scheduler can take over a minute to stop on SIGTERM; nothing is running.
    stack.kill_component("scheduler", signal.SIGKILL)
    stack.config.component_env["scheduler"] = {"AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG"} if debug else {}
    stack.start_component("scheduler")
    time.sleep(15)  # start-up: parsing settings, adopting runs, the first loops


def observe(stack: Any, window: float) -> dict[str, Any]:
    """Scheduler CPU share and memory of the components over `window` s (INFO logging), then the
    scheduler's loop durations over another `window` s (DEBUG logging)."""
    pid = stack.procs["scheduler"].pid
    cpu0 = cpu_seconds(pid)
    time.sleep(window)
    cpu1 = cpu_seconds(pid)
    memory = {name: tree_pss_mib(stack.procs[name].pid) for name in ("scheduler", "triggerer", "api-server")}
    restart_scheduler(stack, debug=True)
    log = stack.home / "logs" / "scheduler.log"
    offset = log.stat().st_size
    time.sleep(window)
    with log.open("rb") as fh:
        fh.seek(offset)
        loops = [float(m) for m in _LOOP.findall(fh.read().decode(errors="replace"))]
    restart_scheduler(stack, debug=False)
    return {
        "loop_ms_median": statistics.median(loops) if loops else float("nan"),
        "loops": len(loops),
        "scheduler_cpu_pct": 100 * (cpu1 - cpu0) / window,
        "memory_mib": memory,
    }


def _patient(call: Any, *args: Any, **kwargs: Any) -> Any:
    """While 200 tasks start at once the api-server (one worker, two cores) can take longer than the
    client's 30 s to answer: wait and ask again rather than abort the measurement."""
    import requests

    for attempt in range(10):
        try:
            return call(*args, **kwargs)
        except (requests.Timeout, requests.ConnectionError):
            if attempt == 9:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


def busy_slots(client: Any) -> tuple[int, dict[str, int]]:
    """Task instances holding an executor slot (queued or running), from one listing of every run."""
    states: dict[str, int] = {}
    offset = 0
    while True:  # pages of 100: Airflow's [api] maximum_page_limit
        body = _patient(
            client.call,
            "GET",
            f"/dags/{DAG_ID}/dagRuns/~/taskInstances",
            params={"limit": 100, "offset": offset},
        )
        for ti in body["task_instances"]:
            states[str(ti["state"])] = states.get(str(ti["state"]), 0) + 1
        offset += len(body["task_instances"])
        if not body["task_instances"] or offset >= int(body["total_entries"]):
            break
    return states.get("running", 0) + states.get("queued", 0), states


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--window", type=float, default=30.0, help="seconds observed per measurement")
    args = p.parse_args(argv)
    repeats = check_repeats(args.repeats)
    idle: list[dict[str, Any]] = []
    parked: list[dict[str, Any]] = []
    slots: list[float] = []
    # PostgreSQL: 200 runs starting at once is a production load, which SQLite's single writer lock
    # turns into "database is locked" errors.
    with postgres_database() as db, tempfile.TemporaryDirectory(prefix="mlpipe-bench-parked-") as home:
        stack = airflow_stack(
            home, sql_alchemy_conn=db, dags_folder=REPO_ROOT / "benchmarks" / "dags", parallelism=32
        )
        with stack.running(DAG_ID):  # every component, the triggerer too
            client = stack.client()
            time.sleep(10)  # let start-up settle before the baseline
            for _ in range(repeats):
                idle.append(observe(stack, args.window))
            for i in range(args.runs):
                try:
                    _patient(client.trigger, DAG_ID, {}, run_id=f"parked-{i:04d}")
                except RuntimeError as err:
                    if "HTTP 409" not in str(err):  # 409: an earlier timed-out attempt did create it
                        raise
            deadline = time.monotonic() + 900
            while True:
                used, states = busy_slots(client)
                if states.get("awaiting_input", 0) == args.runs:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"runs not all parked within 900 s: {states}")
                time.sleep(5)
            time.sleep(10)
            for _ in range(repeats):
                parked.append(observe(stack, args.window))
                used, states = busy_slots(client)
                slots.append(float(used))

    def med(rows: list[dict[str, Any]], key: str, sub: str | None = None) -> float:
        return statistics.median(r[key][sub] if sub else r[key] for r in rows)

    figures = [
        Figure(f"executor slots in use, {args.runs} parked", "", slots, target=("<=", 0.0)),
        Figure(
            "scheduler loop, median",
            "ms",
            [r["loop_ms_median"] for r in parked],
            anchor=med(idle, "loop_ms_median"),
            anchor_label="(none parked)",
        ),
        Figure(
            "scheduler CPU",
            "%",
            [r["scheduler_cpu_pct"] for r in parked],
            anchor=med(idle, "scheduler_cpu_pct"),
            anchor_label="(none parked)",
        ),
    ]
    for name in ("scheduler", "triggerer", "api-server"):
        figures.append(
            Figure(
                f"{name} memory (PSS, with children)",
                "MiB",
                [r["memory_mib"][name] for r in parked],
                anchor=med(idle, "memory_mib", name),
                anchor_label="(none parked)",
            )
        )
    report(
        "parked",
        f"Waiting is free: {args.runs} runs parked at the approval gate",
        figures,
        command=f"python -m benchmarks.parked --repeats {repeats} --runs {args.runs} --window {args.window:g}",
        details={"idle": idle, "parked": parked},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
