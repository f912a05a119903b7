"""Airflow plugin: mounts the mlpipe webhooks app (ACR push -> DAG run) on the api-server at `/mlpipe`.

Registered here only (the `plugins/` folder), not also through an `airflow.plugins` entry point, so it
is mounted once. The logic lives in `airflow_provider_mlpipe.webhooks`; building the app reads nothing,
so loading this plugin in the scheduler, dag-processor or a worker costs no I/O.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_mlpipe.webhooks.app import create_app


class MlpipeWebhooksPlugin(AirflowPlugin):
    name = "mlpipe_webhooks"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/mlpipe", "name": "mlpipe webhooks"}]
