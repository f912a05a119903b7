"""Trainer entrypoint: argument validation (fast, no TensorFlow) and a real tiny train -> publish run."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from airflow_provider_mlpipe.images.training import train

from airflow_provider_mlpipe.datasets import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from airflow_provider_mlpipe.modelstore import MANIFEST, MARKER, METRICS, open_store

REPO_ROOT = Path(__file__).resolve().parents[3]
MODULE = "airflow_provider_mlpipe.images.training.train"


def _clean_env(**extra: str) -> dict[str, str]:
    # Drop MLPIPE_* from the outer environment so a developer's shell cannot change the outcome.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPIPE_")}
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _no_mlpipe_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MLPIPE_"):
            monkeypatch.delenv(key)


def _write_idx_gz(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def make_learnable_dataset(directory: Path, n_train: int, n_test: int) -> Path:
    """Class k lights up rows 2k..2k+3: trivially learnable, so a short run shows real learning."""
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


def _run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", MODULE, *args],
        cwd=REPO_ROOT,
        env=env if env is not None else _clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- argument validation (in-process: no TensorFlow import, milliseconds each) ----------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--version", "1"], "--model-store is missing"),
        (["--model-store", "/tmp/store"], "--version is missing"),
        (
            ["--model-store", "/tmp/store", "--version", "0"],
            "--version='0' is invalid: expected an integer >= 1",
        ),
        (["--model-store", "/tmp/store", "--version", "v1"], "--version='v1' is invalid"),
        (["--model-store", "/tmp/store", "--version", "1", "--epochs", "0"], "--epochs='0' is invalid"),
        (
            ["--model-store", "/tmp/store", "--version", "1", "--batch-size", "x"],
            "--batch-size='x' is invalid",
        ),
        (
            ["--model-store", "/tmp/store", "--version", "1", "--learning-rate", "2"],
            "--learning-rate='2' is invalid: expected a number in (0, 1]",
        ),
        (["--model-store", "/tmp/store", "--version", "1", "--seed", "-3"], "--seed='-3' is invalid"),
        (["--model-store", "/tmp/store", "--version", "1", "--train-limit", "-1"], "--train-limit='-1'"),
        (["--model-store", "/tmp/store", "--version", "1", "--test-limit", "1.5"], "--test-limit='1.5'"),
        (["--model-store", "/tmp/store", "--version", "1", "--threads", "many"], "--threads='many'"),
        (
            ["--model-store", "/tmp/store", "--version", "1", "--model-name", "Bad Name"],
            "--model-name='Bad Name'",
        ),
        (["--model-store", "s3://bucket/x", "--version", "1"], "--model-store='s3://bucket/x' is invalid"),
        (["--model-store", "/tmp/store", "--version", "1", "--dataset", "ftp://x"], "--dataset='ftp://x'"),
        (
            ["--model-store", "/tmp/store", "--version", "1", "--digest", "sha256:short"],
            "--digest='sha256:short' is invalid: expected empty or 'sha256:' followed by 64 lowercase hex",
        ),
        (
            ["--model-store", "/tmp/store", "--version", "1", "--epochs", "1001"],
            "--epochs='1001' is invalid: expected an integer in [1, 1000]",
        ),
        (
            ["--model-store", "/tmp/store", "--version", "1", "--nonsense"],
            "unrecognized arguments: --nonsense",
        ),
    ],
)
def test_invalid_args_exit_2_naming_the_flag(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        sys.exit(train.main(args))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err


def test_env_vars_and_flag_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPIPE_MODEL_STORE", "/tmp/store-from-env")
    monkeypatch.setenv("MLPIPE_MODEL_VERSION", "7")
    monkeypatch.setenv("MLPIPE_EPOCHS", "3")
    monkeypatch.setenv("MLPIPE_RUN_ID", "manual__1")
    config = train.validate_args(train.build_parser().parse_args(["--epochs", "2"]))
    assert config.model_store == "/tmp/store-from-env"
    assert config.version == 7
    assert config.epochs == 2  # the flag wins over MLPIPE_EPOCHS
    assert config.run_id == "manual__1"
    assert config.model_name == train.DEFAULT_MODEL_NAME
    assert config.seed == 42
    assert (config.train_limit, config.test_limit, config.threads) == (0, 0, 0)


def test_env_var_error_names_env_var(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLPIPE_BATCH_SIZE", "big")
    assert train.main(["--model-store", "/tmp/s", "--version", "1"]) == 2
    assert "--batch-size (from MLPIPE_BATCH_SIZE)='big' is invalid" in capsys.readouterr().err


def test_help_and_validation_do_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "from airflow_provider_mlpipe.images.training import train\n"
        "rc = train.main(['--model-store', '/tmp/s', '--version', 'zero'])\n"
        "sys.exit(10 + rc if 'tensorflow' in sys.modules else rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr


DIGEST = "sha256:" + "cd" * 32


@pytest.mark.parametrize(
    ("image", "digest", "recorded"),
    [
        (f"registry.example/ns/train@{DIGEST}", None, DIGEST),  # pinned reference alone: its digest
        (f"registry.example:5000/ns/train:1@{DIGEST}", "", DIGEST),
        (f"registry.example/ns/train@{DIGEST}", "sha256:" + "ab" * 32, "sha256:" + "ab" * 32),  # given wins
        ("registry.example/ns/train:1", "", ""),  # nothing to take it from
        ("registry.example/ns/train@sha256:short", None, None),  # not a digest
        (None, None, None),
    ],
)
def test_manifest_digest_falls_back_to_the_pinned_image_reference(
    image: str | None, digest: str | None, recorded: str | None
) -> None:
    assert train.manifest_digest(image, digest) == recorded


def test_model_store_help_names_every_scheme() -> None:
    text = train.build_parser().format_help()
    assert "file:///abs/path" in text and "oss://bucket/prefix" in text


def test_script_mode_help() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "training_image" / "train.py"), "--help"],
        cwd=REPO_ROOT / "training_image",
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--model-store" in result.stdout
    assert "MLPIPE_MODEL_VERSION" in result.stdout


def test_dataset_error_exits_2(tmp_path: Path) -> None:
    result = _run(
        ["--model-store", str(tmp_path / "store"), "--version", "1", "--dataset", str(tmp_path / "none")]
    )
    assert result.returncode == 2, result.stderr
    assert "does not exist" in result.stderr
    assert str(tmp_path / "none") in result.stderr
    oss = _run(["--model-store", str(tmp_path / "store"), "--version", "1", "--dataset", "oss://b/fm"])
    assert oss.returncode == 2
    assert "oss://b/fm" in oss.stderr and "bucket name" in oss.stderr
    assert not (tmp_path / "store" / "fashion_mnist" / "1" / MARKER).exists()


# -- real training runs ---------------------------------------------------------------------------------


def test_train_publish_and_idempotent_retry(tmp_path: Path) -> None:
    dataset = make_learnable_dataset(tmp_path / "fm", n_train=600, n_test=200)
    store_uri = (tmp_path / "store").as_uri()
    env = _clean_env(MLPIPE_EPOCHS="1", MLPIPE_IMAGE="registry.example/mlpipe-train:1", MLPIPE_THREADS="2")
    args = [
        "--dataset",
        dataset.as_uri(),
        "--model-store",
        store_uri,
        "--model-name",
        "fmnist-test",
        "--version",
        "3",
        "--batch-size",
        "64",
        "--train-limit",
        "600",
        "--test-limit",
        "200",
        "--digest",
        "sha256:" + "ab" * 32,
        "--run-id",
        "manual__2025",
        "--scratch-dir",
        str(tmp_path / "scratch"),
    ]
    result = _run(args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("epoch 1/1 loss=") and "accuracy=" in line for line in lines), lines
    last = lines[-1]
    assert last.startswith(
        f"published model=fmnist-test version=3 uri={store_uri}/fmnist-test/3 test_accuracy="
    )

    version_dir = tmp_path / "store" / "fmnist-test" / "3"
    assert (version_dir / MARKER).is_file()
    assert (version_dir / "saved_model.pb").is_file()
    manifest = json.loads((version_dir / MANIFEST).read_text())
    assert manifest["model_name"] == "fmnist-test"
    assert manifest["version"] == 3
    assert manifest["image"] == "registry.example/mlpipe-train:1"
    assert manifest["digest"] == "sha256:" + "ab" * 32
    assert manifest["run_id"] == "manual__2025"
    assert manifest["hyperparameters"]["epochs"] == 1
    assert manifest["hyperparameters"]["batch_size"] == 64
    assert manifest["hyperparameters"]["seed"] == 42
    assert manifest["dataset"]["location"] == dataset.as_uri()
    assert manifest["dataset"]["checksum"].startswith("sha256:")
    assert manifest["dataset"]["train_examples"] == 600
    assert manifest["tensorflow_version"] == "2.21.0"
    paths = {entry["path"] for entry in manifest["files"]}
    assert {"saved_model.pb", METRICS} <= paths
    assert any(p.startswith("variables/") for p in paths)
    for entry in manifest["files"]:
        data = (version_dir / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
        assert len(data) == entry["size"]

    metrics = json.loads((version_dir / METRICS).read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["test_accuracy"] == manifest["metrics"]["test_accuracy"]
    assert metrics["test_loss"] > 0
    assert set(metrics["per_class_accuracy"]) == {str(i) for i in range(10)}
    assert metrics["per_class_accuracy_by_name"].keys() >= {"T-shirt/top", "Ankle boot"}
    assert metrics["test_examples"] == 200
    assert last.endswith(f"test_accuracy={metrics['test_accuracy']:.4f}")
    # The scratch export stays where the caller put it (caller-owned); nothing else is left in the store.
    assert (tmp_path / "scratch" / "export-fmnist-test-3" / "saved_model.pb").is_file()

    store = open_store(store_uri)
    assert store.is_published("fmnist-test", 3)
    assert store.published_versions("fmnist-test") == [3]

    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    serving = loaded.signatures["serving_default"]
    _, input_spec = serving.structured_input_signature
    assert list(input_spec) == ["images"]
    assert input_spec["images"].dtype == tf.float32
    assert input_spec["images"].shape.as_list() == [None, 28, 28]
    assert list(serving.structured_outputs) == ["probabilities"]
    batch = np.stack([np.zeros((28, 28)), np.full((28, 28), 255.0)]).astype("float32")
    probabilities = serving(images=tf.constant(batch))["probabilities"].numpy()
    assert probabilities.shape == (2, 10)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)

    # A retry of the same version must not train again or rewrite anything.
    mtime = (version_dir / MANIFEST).stat().st_mtime_ns
    started = time.monotonic()
    retry = _run(args, env=env)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert "already published" in retry.stdout
    assert "epoch " not in retry.stdout
    assert time.monotonic() - started < 30
    assert (version_dir / MANIFEST).stat().st_mtime_ns == mtime


def test_sigterm_exits_143_without_publishing(tmp_path: Path) -> None:
    dataset = make_learnable_dataset(tmp_path / "fm", n_train=600, n_test=100)
    store_dir = tmp_path / "store"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            MODULE,
            "--dataset",
            str(dataset),
            "--model-store",
            str(store_dir),
            "--version",
            "1",
            "--epochs",
            "500",
            "--batch-size",
            "32",
        ],
        cwd=REPO_ROOT,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        seen = []
        for line in proc.stdout:
            seen.append(line)
            # Signal once training is really under way (after the first epoch log line).
            if line.startswith("epoch 1/500"):
                break
            assert time.monotonic() < deadline, seen
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, "".join(seen) + out + err
    assert "terminated by SIGTERM" in out
    assert not (store_dir / "fashion_mnist" / "1" / MARKER).exists()


def test_unexpected_error_exits_1_with_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(config: train.TrainConfig) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train, "train_and_publish", boom)
    assert train.main(["--model-store", "/tmp/store", "--version", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "RuntimeError: disk on fire" in err
