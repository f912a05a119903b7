"""Benchmark 1: training on the full Fashion-MNIST (60,000 / 10,000) with the trainer's defaults, through
the same entrypoint the pipeline runs (a subprocess, as the local runtime starts it), next to the original
demo's model trained in the same run.

Run: python -m benchmarks.training [--repeats 3]"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import Figure, check_repeats, dataset_dir, parser, report

TARGET_ACCURACY = 0.92
TARGET_SECONDS = 120.0


def train_ours(dataset: Path, store: Path, version: int) -> dict[str, float]:
    started = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_provider_mlpipe.images.training.train",
            "--dataset",
            str(dataset),
            "--model-store",
            store.as_uri(),
            "--version",
            str(version),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.monotonic() - started
    metrics = json.loads((store / "fashion_mnist" / str(version) / "metrics.json").read_text())
    return {
        "test_accuracy": float(metrics["test_accuracy"]),
        "training_seconds": float(metrics["training_seconds"]),
        "process_seconds": wall,
    }


def train_anchor(dataset: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.anchor_model", str(dataset)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__ or "").parse_args(argv)
    repeats = check_repeats(args.repeats)
    dataset = dataset_dir()
    ours: list[dict[str, float]] = []
    anchor: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="mlpipe-bench-train-") as tmp:
        for n in range(1, repeats + 1):
            # Interleaved, so drift on the machine (thermal, other load) hits both alike.
            ours.append(train_ours(dataset, Path(tmp), n))
            anchor.append(train_anchor(dataset))
            sys.stderr.write(f"run {n}/{repeats}: ours {ours[-1]}, anchor {anchor[-1]}\n")

    def anchor_middle(key: str) -> float:
        """The anchor's middle run (the upper of the two middle ones for an even count)."""
        return float(sorted(a[key] for a in anchor)[len(anchor) // 2])

    figures = [
        Figure(
            "test accuracy (trainer defaults)",
            "",
            [r["test_accuracy"] for r in ours],
            anchor=anchor_middle("test_accuracy"),
            anchor_label="(original demo model)",
            target=(">=", TARGET_ACCURACY),
        ),
        Figure(
            "training wall time (model.fit)",
            "s",
            [r["training_seconds"] for r in ours],
            anchor=anchor_middle("training_seconds"),
            anchor_label="(original demo model)",
            target=("<=", TARGET_SECONDS),
        ),
        Figure(
            "trainer process, start to published",
            "s",
            [r["process_seconds"] for r in ours],
            note="TensorFlow import, data load and checks, training, test evaluation, export and publish",
        ),
    ]
    report(
        "training",
        "Training: full Fashion-MNIST, trainer defaults vs the original demo model",
        figures,
        command=f"python -m benchmarks.training --repeats {repeats}",
        details={"ours": ours, "anchor": anchor},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
