"""Airflow plugin: the Models page (`/mlpipe-models`, and "Models" in the UI's navigation).

The app asks Airflow's auth manager on every request (see `airflow_provider_mlpipe.models_page.app`);
building it reads nothing, so loading this plugin outside the api-server costs no I/O.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_mlpipe.models_page.app import URL_PREFIX, create_app


class MlpipeModelsPlugin(AirflowPlugin):
    name = "mlpipe_models"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "mlpipe models"}]
    # url_route: shown inside the Airflow UI (an iframe at /plugin/mlpipe-models), under its navigation.
    external_views = [
        {"name": "Models", "href": f"{URL_PREFIX}/", "destination": "nav", "url_route": "mlpipe-models"}
    ]
