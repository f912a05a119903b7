"""A stand-in for the training image's entrypoint, run by the local runtime's tests as a real process:
reads the training contract's environment, then (FAKE_TRAINER env) publishes the version, fails, or runs
until stopped.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from airflow_provider_mlpipe.training import TrainingRun


def main() -> int:
    run = TrainingRun.from_env()
    mode = os.environ.get("FAKE_TRAINER", "ok")
    print(f"training {run.model_name} v{run.version}", flush=True)
    if mode == "fail":
        print("train: error: --dataset: no such file", file=sys.stderr, flush=True)
        return 3
    if mode == "hang":
        time.sleep(600)
    time.sleep(float(os.environ.get("FAKE_TRAINER_SECONDS", "0")))
    with tempfile.TemporaryDirectory() as src:
        (Path(src) / "saved_model.pb").write_bytes(b"pb")
        run.publish(
            src,
            test_accuracy=0.91,
            class_names=[str(i) for i in range(10)],
            metrics={"per_class_accuracy": [0.9] * 10, "train_seconds": 1.0},
        )
    print("published", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
