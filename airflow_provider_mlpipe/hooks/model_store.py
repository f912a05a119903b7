"""Airflow hook over the model store (`airflow_provider_mlpipe.modelstore`).

`file://` stores need nothing else. `oss://bucket/prefix` stores read an Airflow connection of type `oss`
(default `oss_default`) with the Alibaba provider's fields, so a team that already has that connection
reuses it as it is:

- extra `access_key_id` / `access_key_secret` (or the connection's login / password),
- extra `region` (e.g. `cn-hangzhou`), optional extra `endpoint` (e.g. an internal endpoint
  `oss-cn-hangzhou-internal.aliyuncs.com`, or a full URL),
- extra `auth_type`, when present, must be `AK` (the only type the Alibaba provider supports too).

Without that connection the hook falls back to the OSS_* environment variables, as the containers do.
Either way the AccessKey secret is registered with Airflow's secrets masker as soon as it is read, so a task
log shows `***` wherever it would appear.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.hook import BaseHook

from airflow_provider_mlpipe import config
from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.modelstore import ModelStore, open_store

if TYPE_CHECKING:
    from airflow_provider_mlpipe.modelstore.oss import OssCredentials
    from airflow_provider_mlpipe.retries import RetryPolicy


class ModelStoreHook(BaseHook):
    """Open the store at `store_uri` (default: `[mlpipe] model_store`, a local directory).

    :param retry: how transient object-store errors are retried (default `RetryPolicy()`).
    """

    conn_name_attr = "oss_conn_id"
    default_conn_name = "oss_default"
    # The Alibaba provider owns conn type `oss`; we read the same connections but do not register the type
    # again (two providers claiming one type makes Airflow pick one and warn).
    conn_type = "oss"
    hook_name = "MLPipe model store"

    def __init__(
        self,
        store_uri: str | None = None,
        oss_conn_id: str = default_conn_name,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self.store_uri = store_uri or None
        self.oss_conn_id = oss_conn_id
        self.retry = retry

    @property
    def uri(self) -> str:
        return self.store_uri or config.model_store_uri()

    @cached_property
    def store(self) -> ModelStore:
        uri = self.uri
        if uri.startswith("oss://"):
            return open_store(uri, credentials=self.oss_credentials(), retry=self.retry)
        return open_store(uri)

    def oss_credentials(self) -> OssCredentials:
        """Credentials from connection `oss_conn_id`, else from the OSS_* environment variables; the secret
        is masked in task logs from here on."""
        from airflow.sdk.log import mask_secret

        credentials = self._read_oss_credentials()
        # Airflow masks a connection's extras by key name, but not a secret taken from the environment,
        # nor the value once it travels on its own (in the child environment, in an error): mask it here.
        mask_secret(credentials.access_key_secret)
        return credentials

    def _read_oss_credentials(self) -> OssCredentials:
        from airflow_provider_mlpipe.modelstore.oss import OssCredentials

        try:
            conn = self.get_connection(self.oss_conn_id)
        except Exception as exc:
            # AirflowNotFoundException's module differs between Airflow versions: match on the name.
            if type(exc).__name__ != "AirflowNotFoundException":
                raise
            self.log.info("No connection %r: reading OSS credentials from the environment", self.oss_conn_id)
            return OssCredentials.from_env()
        extra: dict[str, Any] = conn.extra_dejson or {}
        field = f"connection {self.oss_conn_id!r}"
        auth_type = extra.get("auth_type")
        if auth_type not in (None, "", "AK"):
            raise ConfigError(f"{field} extra auth_type", auth_type, "AK (access key pair)")
        key_id = extra.get("access_key_id") or conn.login
        secret = extra.get("access_key_secret") or conn.password
        if not key_id:
            raise ConfigError(f"{field} access_key_id", key_id, "extra access_key_id or the login field")
        if not secret:
            raise ConfigError(
                f"{field} access_key_secret", "<empty>", "extra access_key_secret or the password"
            )
        region, endpoint = extra.get("region") or None, extra.get("endpoint") or conn.host or None
        if not region and not endpoint:
            raise ConfigError(f"{field} extra region", region, "an OSS region such as cn-hangzhou")
        return OssCredentials(str(key_id), str(secret), region, endpoint)

    def child_env(self) -> dict[str, str]:
        """Environment a trainer or fetch process needs to open this store (empty for file:// stores).

        Holds the secret: pass it as a process environment only, never to a log, XCom or Airflow param.
        """
        if not self.uri.startswith("oss://"):
            return {}
        return self.oss_credentials().as_env()

    def production_record(self, model_name: str) -> dict[str, object] | None:
        return self.store.get_alias(model_name, "production")
