"""Secrets the hooks read never show in a task log: each is registered with Airflow's secrets masker
(`airflow.sdk.log.mask_secret`) when it is loaded, and the trainer's environment is never logged.

`shown(text)` passes a log record through the masker exactly as a task's log records pass through it (the
supervisor applies the same masker); nothing of the masker is emulated. The Kubernetes API is the kmock
emulator of tests/kubernetes_emulator.py, reached with the connection's kubeconfig and bearer token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from airflow_provider_mlpipe.hooks.kubernetes import KubernetesResourceHook
from airflow_provider_mlpipe.hooks.kubernetes_async import AsyncKubernetesResourceHook
from airflow_provider_mlpipe.hooks.kubernetes_common import kube_connection_secrets
from airflow_provider_mlpipe.hooks.local_process import SUCCEEDED, LocalProcessHook
from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook
from tests.kubernetes_emulator import NAMESPACE, EmulatedCluster, emulated_cluster

CONN = "kubernetes_masked"


@pytest.fixture
def shown() -> Iterator[Callable[[str], str]]:
    """What a task log shows of a line: the record after Airflow's secrets masker filtered it."""
    from airflow.sdk._shared.secrets_masker import SecretsMasker, _secrets_masker

    enabled = SecretsMasker.is_log_masking_enabled()
    SecretsMasker.enable_log_masking()

    def through_the_masker(text: str) -> str:
        record = logging.LogRecord("airflow.task", logging.INFO, __file__, 1, "%s", (text,), None)
        _secrets_masker().filter(record)
        return record.getMessage()

    yield through_the_masker
    if not enabled:
        SecretsMasker.disable_log_masking()


def kubeconfig_text(server: str, token: str, key_data: str) -> str:
    """A kubeconfig as a person pastes it into the connection form: YAML text, one string."""
    return (
        "apiVersion: v1\nkind: Config\ncurrent-context: ctx\n"
        f"clusters:\n- name: c\n  cluster:\n    server: {server}\n"
        f"users:\n- name: u\n  user:\n    token: {token}\n    client-key-data: {key_data}\n"
        f"contexts:\n- name: ctx\n  context:\n    cluster: c\n    user: u\n    namespace: {NAMESPACE}\n"
    )


@pytest.fixture
def k8s_text_kubeconfig(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[EmulatedCluster, str, str]]:
    token, key_data = f"tok-{secrets.token_hex(16)}", secrets.token_hex(24)
    with emulated_cluster() as cluster:
        text = kubeconfig_text(cluster.url, token, key_data)
        conn = {"conn_type": "kubernetes", "extra": {"kube_config": text}}
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps(conn))
        yield cluster, token, text


def test_kubeconfig_and_its_token_are_masked_once_the_sync_hook_loads_them(
    k8s_text_kubeconfig: tuple[EmulatedCluster, str, str], shown: Callable[[str], str]
) -> None:
    cluster, token, text = k8s_text_kubeconfig
    # Airflow alone masks extras by key name, and `kube_config` is not a sensitive name.
    assert token in shown(f"Authorization: Bearer {token}")
    assert KubernetesResourceHook(CONN, NAMESPACE).get("Job", "absent") is None
    assert cluster.requests == [("GET", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/absent")]
    assert shown(f"Authorization: Bearer {token}") == "Authorization: Bearer ***"
    assert token not in shown(text) and "***" in shown(text)


async def test_kubeconfig_and_its_token_are_masked_once_the_async_hook_loads_them(
    k8s_text_kubeconfig: tuple[EmulatedCluster, str, str], shown: Callable[[str], str]
) -> None:
    _cluster, token, text = k8s_text_kubeconfig
    assert token in shown(f"token={token}")
    assert await AsyncKubernetesResourceHook(CONN, NAMESPACE).get("Job", "absent") is None
    assert shown(f"token={token}") == "token=***"
    assert token not in shown(text)


def test_kube_connection_secrets_are_the_kubeconfig_and_its_credentials() -> None:
    kubeconfig = {
        "clusters": [{"name": "c", "cluster": {"server": "https://k8s.example:6443"}}],
        "users": [
            {"name": "a", "user": {"token": "bearer-aaaa", "client-key-data": "a2V5LWRhdGE="}},
            {
                "name": "b",
                "user": {"auth-provider": {"config": {"client-secret": "cs-1", "id-token": "it-1"}}},
            },
        ],
    }
    found = kube_connection_secrets({"kube_config": kubeconfig, "namespace": "mlpipe", "in_cluster": False})
    assert found == [json.dumps(kubeconfig), "bearer-aaaa", "a2V5LWRhdGE=", "cs-1", "it-1"]
    text = "users:\n- name: a\n  user:\n    password: pw-123456\n"
    assert kube_connection_secrets({"extra__kubernetes__kube_config": text}) == [text, "pw-123456"]
    assert kube_connection_secrets({"kube_config_path": "/etc/kube/config", "namespace": "x"}) == []


def test_the_oss_secret_from_the_environment_is_masked(
    monkeypatch: pytest.MonkeyPatch, shown: Callable[[str], str]
) -> None:
    secret = secrets.token_urlsafe(24)
    monkeypatch.delenv("AIRFLOW_CONN_OSS_DEFAULT", raising=False)
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "LTAI5tMASKINGTEST")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", secret)
    monkeypatch.setenv("OSS_REGION", "cn-hangzhou")
    assert secret in shown(f"secret {secret}")
    hook = ModelStoreHook("oss://mlpipe-models/team")
    env = hook.child_env()
    assert env["OSS_ACCESS_KEY_SECRET"] == secret
    assert shown(f"secret {secret}") == "secret ***"
    assert secret not in shown(json.dumps(env))


def test_the_webhook_secret_variable_is_masked_by_its_name(shown: Callable[[str], str]) -> None:
    """Airflow masks a Variable's value when the name is sensitive; ours must stay such a name."""
    from airflow.sdk._shared.secrets_masker import should_hide_value_for_key
    from airflow.sdk.log import mask_secret

    from airflow_provider_mlpipe.webhooks.dispatch import SECRET_VARIABLE

    assert should_hide_value_for_key(SECRET_VARIABLE)
    value = secrets.token_hex(32)
    mask_secret(value, SECRET_VARIABLE)  # what Variable.get does with every value it returns
    assert shown(f"token={value}") == "token=***"


def test_the_trainer_environment_never_reaches_a_log_or_a_state_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    secret = secrets.token_urlsafe(24)
    hook = LocalProcessHook(str(tmp_path / "state"))
    # The child proves it got the secret by printing its digest, never the secret itself.
    child = (
        "import hashlib, os; print(hashlib.sha256(os.environ['OSS_ACCESS_KEY_SECRET'].encode()).hexdigest())"
    )
    with caplog.at_level(logging.DEBUG):
        hook.start("train-masked-v1", [sys.executable, "-c", child], env={"OSS_ACCESS_KEY_SECRET": secret})
        deadline = time.monotonic() + 30
        while hook.status("train-masked-v1").state != SUCCEEDED:
            assert time.monotonic() < deadline, hook.status("train-masked-v1")
            time.sleep(0.05)
    pdir = hook.process_dir("train-masked-v1")
    assert hashlib.sha256(secret.encode()).hexdigest() in (pdir / "output.log").read_text()
    captured = capfd.readouterr()
    assert secret not in caplog.text + captured.out + captured.err
    files = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert files and all(secret.encode() not in p.read_bytes() for p in files)
