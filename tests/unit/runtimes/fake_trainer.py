"""A stand-in for the training image's entrypoint, run by the local runtime's tests as a real process:
takes the trainer's arguments, then (FAKE_TRAINER env) publishes the version, fails, or runs until stopped.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from airflow_provider_mlpipe.modelstore import open_store


def main() -> int:
    parser = argparse.ArgumentParser()
    for flag in ("--model-store", "--model-name", "--version", "--image", "--digest", "--run-id"):
        parser.add_argument(flag, required=True)
    args, _ = parser.parse_known_args()
    mode = os.environ.get("FAKE_TRAINER", "ok")
    print(f"training {args.model_name} v{args.version}", flush=True)
    if mode == "fail":
        print("train: error: --dataset: no such file", file=sys.stderr, flush=True)
        return 3
    if mode == "hang":
        time.sleep(600)
    time.sleep(float(os.environ.get("FAKE_TRAINER_SECONDS", "0")))
    with tempfile.TemporaryDirectory() as src:
        (Path(src) / "saved_model.pb").write_bytes(b"pb")
        metrics = {"test_accuracy": 0.91, "per_class_accuracy": [0.9] * 10, "train_seconds": 1.0}
        open_store(args.model_store).publish(
            args.model_name,
            int(args.version),
            Path(src),
            {"metrics": metrics, "image": args.image, "digest": args.digest},
        )
    print("published", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
