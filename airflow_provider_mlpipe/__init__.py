"""Apache Airflow provider: container push -> trained, tested, human-approved model in production.

This module must stay import-light: the training and serving images import subpackages of it
(`modelstore`, `datasets`) without Airflow installed.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's ProvidersManager through the `apache_airflow_provider` entry point."""
    return {
        # Must equal the distribution name, or Airflow refuses the provider.
        "package-name": "airflow-provider-mlpipe",
        "name": "MLPipe",
        "description": "Train on Kubernetes or locally, gate on accuracy and human approval, deploy TF-Serving.",
        "versions": [__version__],
        # No connection types of our own: the model store reuses the Alibaba provider's `oss` type.
        "connection-types": [],
        "operators": [
            {
                "integration-name": "MLPipe",
                "python-modules": [
                    "airflow_provider_mlpipe.operators.base",
                    "airflow_provider_mlpipe.operators.train",
                    "airflow_provider_mlpipe.operators.serving",
                    "airflow_provider_mlpipe.operators.model_store",
                    "airflow_provider_mlpipe.operators.gates",
                    "airflow_provider_mlpipe.operators.scoring",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "MLPipe",
                "python-modules": [
                    "airflow_provider_mlpipe.sensors.accuracy",
                    "airflow_provider_mlpipe.sensors.approval",
                ],
            }
        ],
        "triggers": [
            {
                "integration-name": "MLPipe",
                "python-modules": [
                    "airflow_provider_mlpipe.triggers.local_process",
                    "airflow_provider_mlpipe.triggers.serving",
                    "airflow_provider_mlpipe.triggers.kubernetes_job",
                    "airflow_provider_mlpipe.triggers.kubernetes_serving",
                ],
            }
        ],
        "notifications": ["airflow_provider_mlpipe.notifications.PipelineNotifier"],
        "hooks": [
            {
                "integration-name": "MLPipe",
                "python-modules": [
                    "airflow_provider_mlpipe.hooks.dingtalk",
                    "airflow_provider_mlpipe.hooks.kubernetes",
                    "airflow_provider_mlpipe.hooks.kubernetes_async",
                    "airflow_provider_mlpipe.hooks.local_process",
                    "airflow_provider_mlpipe.hooks.model_store",
                    "airflow_provider_mlpipe.hooks.serving",
                ],
            }
        ],
    }
