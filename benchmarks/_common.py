"""What every benchmark shares: repeated measurement, the machine and versions it ran on, a printed table
with each figure beside its anchor and target, and a JSON record under benchmarks/results/."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_mlpipe.demo.stack import AirflowStack

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
WORK_DIR = REPO_ROOT / "benchmarks" / ".work"

PACKAGES = (
    "apache-airflow",
    "apache-airflow-core",
    "apache-airflow-task-sdk",
    "apache-airflow-providers-cncf-kubernetes",
    "apache-airflow-providers-standard",
    "tensorflow-cpu",
    "numpy",
    "requests",
)


@dataclass
class Figure:
    """One measured quantity: its runs, and how it compares with an anchor and a target.

    `target` is a (comparison, bound) pair: ("<=", 2.0) means the median must not exceed 2.0."""

    metric: str
    unit: str
    runs: list[float]
    anchor: float | str | None = None
    anchor_label: str = ""
    target: tuple[str, float] | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(statistics.median(self.runs))

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        op, bound = self.target
        return self.median <= bound if op == "<=" else self.median >= bound

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            median=self.median,
            min=min(self.runs),
            max=max(self.runs),
            n=len(self.runs),
            target=None if self.target is None else {"op": self.target[0], "value": self.target[1]},
            met=self.met,
        )
        return data


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        memory_gib = round(mem_kb / 2**20, 1)
    except (OSError, StopIteration):
        memory_gib = None
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def _fmt(value: float | str | None, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    text = f"{value:.4f}" if abs(value) < 1 and unit in ("", "accuracy", "ratio") else f"{value:.3g}"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    return f"{text} {unit}".strip()


def table(title: str, figures: Sequence[Figure]) -> str:
    rows = [("metric", "median [min .. max] (n)", "anchor", "target", "met")]
    for f in figures:
        rows.append(
            (
                f.metric,
                f"{_fmt(f.median, f.unit)} [{_fmt(min(f.runs), '')} .. {_fmt(max(f.runs), '')}] ({len(f.runs)})",
                (f"{_fmt(f.anchor, f.unit)} {f.anchor_label}".strip() if f.anchor is not None else "-"),
                f"{f.target[0]} {_fmt(f.target[1], f.unit)}" if f.target else "-",
                {True: "yes", False: "NO", None: "-"}[f.met],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [title, "=" * len(title)]
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {f.metric}: {f.note}" for f in figures if f.note]
    if notes:
        lines += ["notes:", *notes]
    return "\n".join(lines)


def report(
    name: str, title: str, figures: Sequence[Figure], *, command: str, details: dict[str, Any]
) -> Path:
    """Print the table and write benchmarks/results/<name>.json; returns the JSON path."""
    sys.stdout.write(table(title, figures) + "\n\n")
    sys.stdout.flush()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {
        "benchmark": name,
        "title": title,
        "command": command,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "figures": [f.as_json() for f in figures],
        "details": details,
    }
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def parser(description: str, default_repeats: int = 3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--repeats",
        type=int,
        default=default_repeats,
        help=f"runs per measurement; medians need at least 3 (default {default_repeats})",
    )
    return p


def check_repeats(repeats: int) -> int:
    if repeats < 1:
        raise SystemExit(f"--repeats: got {repeats}, expected an integer >= 1 (3 or more for a median)")
    return repeats


def dataset_dir() -> Path:
    """The four Fashion-MNIST IDX files: MLPIPE_DATASET_DIR, else the shared copy beside the checkout."""
    from airflow_provider_mlpipe.datasets.fashion_mnist import default_dataset_dir

    found = default_dataset_dir()
    if not found:
        raise SystemExit(
            "Fashion-MNIST not found: set MLPIPE_DATASET_DIR to a directory with the four official IDX .gz "
            "files (benchmarks never download)"
        )
    return Path(found)


def airflow_stack(home: str | Path, **config: Any) -> AirflowStack:
    """The demo's AirflowStack for AIRFLOW_HOME `home`, its api-server and production port free ones;
    `config`: the other StackConfig fields."""
    from airflow_provider_mlpipe.demo.stack import AirflowStack, StackConfig, free_port

    return AirflowStack(StackConfig(home=Path(home), port=free_port(), production_port=free_port(), **config))


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (127.0.0.1:5432, trust auth), dropped afterwards."""
    import psycopg2

    name = f"mlpipe_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
