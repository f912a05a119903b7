"""Webhooks that start pipeline runs: Alibaba Container Registry (ACR) image pushes.

`acr` holds the payload models, routing, image reference and run id; `events` the durable event log;
`dispatch` turns a recorded event into a DAG run; `app` the FastAPI app that the plugin in `plugins/`
mounts on Airflow's api-server at `/mlpipe`.
"""

from __future__ import annotations
