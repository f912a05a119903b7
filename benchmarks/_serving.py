"""A model in the trainer's default architecture and a local serving process for the serving benchmarks.

Inference cost depends on the architecture, not on how long it trained, so a short training of the
default architecture stands in for the fully trained model (the training benchmark measures that one)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from airflow_provider_mlpipe.demo.stack import free_port
from benchmarks._common import WORK_DIR, dataset_dir

MODEL = "fashion_mnist"
VERSION = 1
SERVER_MODULE = "airflow_provider_mlpipe.images.serving.server"


def ensure_model() -> Path:
    """The model store root holding fashion_mnist/1, trained once and reused by later benchmark runs."""
    store = WORK_DIR / "models"
    if not (store / MODEL / str(VERSION) / "metrics.json").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "airflow_provider_mlpipe.images.training.train",
                f"--dataset={dataset_dir()}",
                f"--model-store={store.as_uri()}",
                f"--version={VERSION}",
                "--epochs=1",
                "--train-limit=10000",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return store


@contextlib.contextmanager
def serving(store: Path, *, timeout: float = 120.0) -> Iterator[str]:
    """The local runtime's serving process on a free port; yields its base URL once the model is AVAILABLE."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            SERVER_MODULE,
            f"--model_name={MODEL}",
            f"--model_base_path={store / MODEL}",
            f"--rest_api_port={port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serving process exited with {proc.returncode} before the model loaded")
            try:
                with urllib.request.urlopen(f"{url}/v1/models/{MODEL}", timeout=2) as resp:
                    states = [s["state"] for s in json.load(resp)["model_version_status"]]
                if "AVAILABLE" in states:
                    break
            except (urllib.error.URLError, ConnectionError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {MODEL} not AVAILABLE at {url} within {timeout:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
