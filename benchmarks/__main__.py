"""Run every benchmark in turn (each also runs alone: python -m benchmarks.<name>), then print the tables
again together from their JSON records.

Run: python -m benchmarks [--repeats 3] [--only training,evaluation,...]"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from benchmarks._common import RESULTS_DIR, Figure, table

ORDER = ("training", "evaluation", "serving_latency", "orchestration", "webhook", "parked")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (default 3)")
    p.add_argument("--only", default=",".join(ORDER), help=f"comma-separated subset of {','.join(ORDER)}")
    p.add_argument(
        "--summary-only",
        action="store_true",
        help="run nothing; print the tables of benchmarks/results/*.json",
    )
    args = p.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(ORDER))
    if unknown:
        raise SystemExit(f"--only: unknown benchmark(s) {unknown}; expected names from {list(ORDER)}")
    failed: list[str] = []
    for name in [] if args.summary_only else chosen:
        started = time.monotonic()
        sys.stdout.write(f"--- {name} (python -m benchmarks.{name} --repeats {args.repeats})\n")
        sys.stdout.flush()
        try:
            importlib.import_module(f"benchmarks.{name}").main(["--repeats", str(args.repeats)])
        except (Exception, SystemExit) as exc:  # one broken benchmark must not hide the others' figures
            failed.append(f"{name}: {exc}")
        sys.stdout.write(f"--- {name} took {time.monotonic() - started:.0f} s\n\n")
    sys.stdout.write("Summary (benchmarks/results/*.json)\n\n")
    for name in chosen:
        path = RESULTS_DIR / f"{name}.json"
        if path.exists():
            record = json.loads(path.read_text())
            figures = [
                Figure(
                    f["metric"],
                    f["unit"],
                    f["runs"],
                    anchor=f["anchor"],
                    anchor_label=f["anchor_label"],
                    target=(f["target"]["op"], f["target"]["value"]) if f["target"] else None,
                )
                for f in record["figures"]
            ]
            sys.stdout.write(table(record["title"], figures) + "\n\n")
    if failed:
        sys.stdout.write("FAILED:\n" + "\n".join(f"  {line}" for line in failed) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
