"""Train -> OSS -> fetch -> serve, and the rollback CLI, against the OSS protocol EMULATOR
(tests/emulators/oss_server.py, in this process on 127.0.0.1; not Alibaba Cloud OSS).

The real trainer (tiny run), the real fetch step and the local TF-Serving-compatible server run as
subprocesses and get their OSS credentials from OSS_* environment variables, as the containers do.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from airflow_provider_mlpipe.datasets import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from airflow_provider_mlpipe.modelstore import MARKER, open_store

REPO_ROOT = Path(__file__).resolve().parents[3]
BUCKET = "mlpipe-models"
MODEL = "fmnist-oss"
STORE = f"oss://{BUCKET}/prod/models"


def _write_idx_gz(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def make_dataset(directory: Path, n_train: int = 300, n_test: int = 100) -> Path:
    """Class k lights up rows 2k..2k+3 (as in the trainer's own tests): learnable in one short epoch."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for images_name, labels_name, n in (
        (TRAIN_IMAGES, TRAIN_LABELS, n_train),
        (TEST_IMAGES, TEST_LABELS, n_test),
    ):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label + 2 : 2 * label + 6, 4:24] = 255
        _write_idx_gz(directory / images_name, images)
        _write_idx_gz(directory / labels_name, labels)
    return directory


def child_env(oss_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPIPE_", "OSS_"))}
    env.update(oss_env)
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT), **extra)
    return env


def run_module(
    module: str, args: list[str], env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_module(
        "airflow_provider_mlpipe.modelstore", ["--store", STORE, "--model", MODEL, *args], env, 60
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(base: Path, version: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airflow_provider_mlpipe.images.serving.server",
                f"--model_name={MODEL}",
                f"--model_base_path={base.as_uri()}",
                f"--model_version={version}",
                f"--rest_api_port={port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT)),
            cwd=REPO_ROOT,
        )
    url = f"http://127.0.0.1:{port}/v1/models/{MODEL}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            status = requests.get(url, timeout=2).json()["model_version_status"][0]
            if status["state"] == "AVAILABLE":
                return proc, url
        # Not listening yet, too busy loading to answer within 2 s, or no version yet: not ready yet.
        except (requests.RequestException, KeyError, ValueError):
            pass
        time.sleep(0.1)
    proc.terminate()
    raise AssertionError(f"server not AVAILABLE:\n{log.read_text(errors='replace')[-3000:]}")


def test_train_publish_to_oss_fetch_serve_then_rollback(
    oss: Any, oss_env: dict[str, str], tmp_path: Path
) -> None:
    # The dataset is read from OSS too (oss:// dataset support), through the same backend.
    data = make_dataset(tmp_path / "fm")
    data_store = open_store("oss://mlpipe-data/datasets")
    for path in sorted(data.iterdir()):
        data_store.backend.put_file(f"fashion-mnist/{path.name}", path)

    # 1. The real trainer publishes v1 to oss:// (multipart forced for the variables file).
    env = child_env(
        oss_env, MLPIPE_OSS_MULTIPART_THRESHOLD="102400", MLPIPE_DATASET_CACHE=str(tmp_path / "cache")
    )
    store = open_store(STORE)
    version = store.reserve_version(MODEL, "dag/run-1")
    train = run_module(
        "airflow_provider_mlpipe.images.training.train",
        [
            f"--model-store={STORE}",
            f"--model-name={MODEL}",
            f"--version={version}",
            "--dataset=oss://mlpipe-data/datasets/fashion-mnist",
            "--train-limit=300",
            "--test-limit=100",
            "--epochs=1",
            "--threads=2",
            "--run-id=dag/run-1",
            "--image=registry.example/ns/train@sha256:" + "a" * 64,
        ],
        env,
    )
    assert train.returncode == 0, train.stdout + train.stderr
    assert f"published model={MODEL} version=1 uri={STORE}/{MODEL}/1" in train.stdout
    manifest = store.read_manifest(MODEL, 1)
    assert manifest["run_id"] == "dag/run-1" and manifest["dataset"]["checksum"].startswith("sha256:")
    assert oss.operations["CompleteMultipartUpload"] >= 1
    assert store.published_versions(MODEL) == [1]

    # A second version (same SavedModel bytes, different number) published by this process.
    fetched = store.fetch(MODEL, 1, tmp_path / "v1copy")
    (fetched / "manifest.json").unlink()
    (fetched / MARKER).unlink()
    store.publish(MODEL, 2, fetched, {"run_id": "dag/run-2"})

    # 2. Promote 1 then 2 through the CLI, then roll back: production is 1 again, 2 is `previous`.
    for v in (1, 2):
        promoted = cli(["promote", str(v), "--approved-by", "alice", "--run-id", f"dag/run-{v}"], env)
        assert promoted.returncode == 0, promoted.stderr
    assert "production -> v2" in promoted.stdout
    rollback = cli(["rollback", "--reason", "p99 latency regression", "--requested-by", "carol"], env)
    assert rollback.returncode == 0, rollback.stderr
    aliases = json.loads(cli(["--json", "aliases"], env).stdout)
    assert aliases["production"]["version"] == 1 and aliases["production"]["approved_by"] == "carol"
    assert "rollback from v2: p99 latency regression" in aliases["production"]["reason"]
    assert aliases["previous"]["version"] == 2
    history = json.loads(cli(["--json", "history", "production"], env).stdout)
    assert [h["version"] for h in history] == [1, 2, 1]
    versions = json.loads(cli(["--json", "versions"], env).stdout)
    assert {v["version"]: v["aliases"] for v in versions} == {1: ["production"], 2: ["previous"]}

    # 3. The fetch step (init-container entrypoint) brings production's version to a local base path,
    #    and the server started on it answers with that version.
    production = aliases["production"]["version"]
    base = tmp_path / "serving" / MODEL
    fetch = run_module(
        "airflow_provider_mlpipe.images.serving.fetch",
        [f"--model-store={STORE}", f"--model-name={MODEL}", f"--version={production}", f"--dest={base}"],
        env,
        60,
    )
    assert fetch.returncode == 0, fetch.stdout + fetch.stderr
    assert (base / str(production) / MARKER).is_file()
    proc, url = serve(base, production, tmp_path / "server.log")
    try:
        status = requests.get(url, timeout=30).json()["model_version_status"]
        assert [s["version"] for s in status] == [str(production)]
        images = np.zeros((2, 28, 28), dtype=np.float32)
        images[0, 2:6, 4:24] = 255  # class 0's pattern
        r = requests.post(
            f"{url}/versions/{production}:predict", json={"instances": images.tolist()}, timeout=30
        )
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert len(predictions) == 2 and abs(sum(predictions[0]) - 1.0) < 1e-3
    finally:
        proc.terminate()
        proc.wait(10)


def test_cli_errors_and_exit_codes(oss: Any, oss_env: dict[str, str], tmp_path: Path) -> None:
    env = child_env(oss_env)
    missing = run_module("airflow_provider_mlpipe.modelstore", ["versions"], env, 60)
    assert missing.returncode == 2 and "--store" in missing.stderr

    nothing = cli(["rollback", "--reason", "x"], env)
    assert nothing.returncode == 1 and "nothing to roll back" in nothing.stderr

    denied = cli(["versions"], {**env, "OSS_ACCESS_KEY_SECRET": "wrong-secret"})
    assert denied.returncode == 1 and f"bucket '{BUCKET}'" in denied.stderr
    assert "access denied" in denied.stderr and "wrong-secret" not in denied.stderr

    src = tmp_path / "m"
    src.mkdir()
    (src / "saved_model.pb").write_bytes(b"x")
    store = open_store(STORE)
    store.publish(MODEL, 1, src, {})
    store.publish(MODEL, 2, src, {})
    assert cli(["promote", "1", "--approved-by", "alice"], env).returncode == 0
    not_published = cli(["promote", "9", "--approved-by", "alice"], env)
    assert not_published.returncode == 1 and "not published" in not_published.stderr
    retain = json.loads(cli(["--json", "retain", "--keep", "1"], env).stdout)
    assert retain["deleted"] == [] and retain["protected"] == {"1": "aliased as production"}
    bad_keep = cli(["retain", "--keep", "0"], env)
    assert bad_keep.returncode == 2 and "keep_last" in bad_keep.stderr
