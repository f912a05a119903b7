"""The FastAPI app the `mlpipe_models` plugin mounts on Airflow's api-server at `/mlpipe-models`.

- `GET /mlpipe-models/`: the page (HTML, its script inline: no CDN, nothing fetched from outside),
  `?model=<name>&version=<v>` opens a model and version;
- `GET /mlpipe-models/api/models`: every model with its version count and production version;
- `GET /mlpipe-models/api/models/<model>`: versions (created, image digest, dataset checksum, accuracy,
  approver, aliases, run), the production version, the timeline of promotions and rollbacks (who, why);
- `GET /mlpipe-models/api/models/<model>/versions/<v>`: per-class accuracy against production, confusion
  matrix;
- pictures (SVG): `.../<model>/history.svg`, `.../versions/<v>/confusion.svg`, `.../versions/<v>/per_class.svg`.

Airflow does not authenticate plugin apps, so every route asks Airflow's own auth manager: the caller is
the user of the JWT in `Authorization: Bearer` or in the UI's session cookie (`get_user`, what the REST API
uses; 401 without one), and must be allowed to read every pipeline DAG (`[mlpipe] models_page_dags`,
default `mlpipe_fashion_mnist`), else 403.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_mlpipe import charts
from airflow_provider_mlpipe.exceptions import ConfigError, StoreNotFound
from airflow_provider_mlpipe.models_page.data import ModelsData
from airflow_provider_mlpipe.models_page.page import page as page_html
from airflow_provider_mlpipe.modelstore.store import MODEL_NAME_RE

log = logging.getLogger(__name__)

URL_PREFIX = "/mlpipe-models"
SVG = "image/svg+xml"
# Pictures and data change when a run promotes: a browser may reuse them briefly, never a proxy.
CACHE = {"Cache-Control": "private, max-age=10"}


def pipeline_dags() -> list[str]:
    from airflow.configuration import conf

    from airflow_provider_mlpipe.params import PIPELINE_DAG_ID

    raw = conf.get("mlpipe", "models_page_dags", fallback=PIPELINE_DAG_ID) or PIPELINE_DAG_ID
    return [d.strip() for d in raw.split(",") if d.strip()]


def authorized(user: Any) -> None:
    """403 unless the auth manager lets `user` read every pipeline DAG."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    manager = get_auth_manager()
    denied = [
        dag_id
        for dag_id in pipeline_dags()
        if not manager.is_authorized_dag(method="GET", details=DagDetails(id=dag_id), user=user)
    ]
    if denied:
        raise HTTPException(403, f"Forbidden: no read access to DAG(s) {', '.join(denied)}")


def _check_model(model: str) -> str:
    if not MODEL_NAME_RE.fullmatch(model):
        raise HTTPException(404, f"no model {model!r}")
    return model


class _Store:
    """The store the page reads, opened on first use (loading the plugin does no I/O)."""

    @cached_property
    def data(self) -> ModelsData:
        from airflow.configuration import conf

        from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook

        store_uri = conf.get("mlpipe", "models_page_store", fallback="") or None
        oss_conn_id = conf.get("mlpipe", "models_page_oss_conn_id", fallback="oss_default")
        return ModelsData(ModelStoreHook(store_uri, oss_conn_id=oss_conn_id).store)


def create_app(data: ModelsData | None = None) -> FastAPI:
    """The app; `data` replaces the configured store (tests)."""
    from airflow.api_fastapi.core_api.security import get_user

    store = _Store()
    if data is not None:
        store.data = data  # type: ignore[misc]

    # A default, not Annotated[...]: with postponed annotations FastAPI resolves hints in module globals,
    # where the lazily imported get_user is not.
    def access(user: Any = Depends(get_user)) -> Any:  # noqa: B008
        authorized(user)
        return user

    app = FastAPI(title="mlpipe models", dependencies=[Depends(access)])

    async def call(fn: Any, *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except (StoreNotFound, KeyError) as err:
            raise HTTPException(404, str(err)) from None
        except ConfigError as err:
            raise HTTPException(404, str(err)) from None

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache"})

    @app.get("/api/models")
    async def models() -> JSONResponse:
        return JSONResponse(await call(store.data.overview), headers=CACHE)

    @app.get("/api/models/{model}")
    async def model(model: str) -> JSONResponse:
        body = await call(store.data.model, _check_model(model))
        if not body["versions"] and model not in await call(store.data.models):
            raise HTTPException(404, f"no model {model!r} in the store")
        return JSONResponse(body, headers=CACHE)

    @app.get("/api/models/{model}/versions/{version}")
    async def version(model: str, version: int) -> JSONResponse:
        return JSONResponse(await call(store.data.version, _check_model(model), version), headers=CACHE)

    @app.get("/api/models/{model}/history.svg")
    async def history(model: str) -> Response:
        body = await call(store.data.model, _check_model(model))
        points = [
            (row["version"], float(row["accuracy"]))
            for row in body["versions"]
            if row["accuracy"] is not None
        ]
        production = (body["production"] or {}).get("version")
        svg = charts.history_svg(points, production, f"{model}: test accuracy by version")
        return Response(svg, media_type=SVG, headers=CACHE)

    @app.get("/api/models/{model}/versions/{version}/confusion.svg")
    async def confusion(model: str, version: int) -> Response:
        body = await call(store.data.version, _check_model(model), version)
        if not body["confusion_matrix"]:
            raise HTTPException(404, f"{model} v{version} has no recorded evaluation with a confusion matrix")
        svg = charts.confusion_svg(
            body["confusion_matrix"], body["class_names"], f"{model} v{version}: confusion matrix"
        )
        return Response(svg, media_type=SVG, headers=CACHE)

    @app.get("/api/models/{model}/versions/{version}/per_class.svg")
    async def per_class(
        model: str, version: int, against: Annotated[int | None, Query(ge=1)] = None
    ) -> Response:
        body = await call(store.data.version, _check_model(model), version)
        if not body["per_class_accuracy"]:
            raise HTTPException(404, f"{model} v{version} has no per-class accuracy")
        production = body["production"]
        if against is not None:
            # The production the approval was asked against, even after production moved on.
            other = await call(store.data.version, model, against)
            production = {"version": against, "per_class_accuracy": other["per_class_accuracy"]}
        compare = production if production and production["version"] != version else None
        svg = charts.per_class_svg(
            body["per_class_accuracy"],
            compare["per_class_accuracy"] if compare else None,
            body["class_names"],
            candidate_label=f"v{version}",
            production_label=f"production v{compare['version']}" if compare else None,
        )
        return Response(svg, media_type=SVG, headers=CACHE)

    return app
