"""The FastAPI app the `mlpipe_webhooks` plugin mounts on Airflow's api-server at `/mlpipe`.

- `POST /mlpipe/webhooks/acr?token=<secret>`: an ACR push event; one DAG run per (repository, digest).
- `GET /mlpipe/webhooks/acr/events?token=<secret>&limit=50&state=pending`: recent events with their state
  (`received`, `run_created`, `pending` with the `reason`, `ignored`, `rejected`), run ids and run states,
  the time from acknowledgement to run creation (`ack_to_run_created_ms`), and `routes_error`: why the
  routes Variable is unusable (null when it is fine).

Airflow does not authenticate plugin apps, and ACR signs nothing, so every request must carry the shared
secret (Variable `mlpipe_acr_webhook_secret`) as `?token=` or header `X-Mlpipe-Token`; it is compared in
constant time, and a missing or wrong one gets a bare 401. The query parameter is named `token` because
Airflow's access log redacts parameters with that name.

Answers: 202 the event is recorded (durably: committed) and its run will be created behind the inbox by
the dispatcher; the body carries `event_id` and `run_id`, the id the run gets (deterministic), or `status`
`ignored` when no route matches. 200 a redelivery of a known push: the same ids and its current state,
nothing new recorded (its delivery count goes up). 400 malformed JSON; 413 body over 64 KiB; 415 not JSON;
422 a field missing or wrong (named in `detail`); 503 the event could not be recorded (nothing was
accepted; the sender should retry). Client input never yields a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from airflow_provider_mlpipe.webhooks.acr import AcrPushEvent, run_id_for
from airflow_provider_mlpipe.webhooks.dispatch import (
    CachedSettings,
    CreateRunsFn,
    Dispatcher,
    RunStatesFn,
    WebhookSettings,
    airflow_create_runs,
    airflow_engine,
    airflow_run_states,
    airflow_settings,
)
from airflow_provider_mlpipe.webhooks.events import PENDING, RECEIVED, STATES, EventLog

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
TOKEN_HEADER = "X-Mlpipe-Token"
TOKEN_QUERY = "token"
MAX_EVENTS_LIMIT = 500


class _BodyTooLarge(Exception):
    pass


def _detail(status: int, loc: list[str | int], msg: str, type_: str) -> JSONResponse:
    field = ".".join(str(part) for part in loc)
    return JSONResponse({"detail": [{"loc": loc, "field": field, "msg": msg, "type": type_}]}, status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing to buffer more than `limit` bytes whatever Content-Length claims."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


def airflow_gc_freeze() -> bool:
    """`[mlpipe] api_server_gc_freeze` (default true)."""
    from airflow.configuration import conf

    return conf.getboolean("mlpipe", "api_server_gc_freeze", fallback=True)


def freeze_startup_heap() -> int:
    """Move every object alive now out of the cyclic garbage collector's reach; returns how many.

    Measured in the api-server (benchmarks/webhook.py): its full collections scanned the ~650,000
    objects Airflow builds at start-up (modules, the app, configuration), 200 to 330 ms each, every 10 to
    25 s under the benchmark's bursts: every request in flight waited for one, which made the p99 latency.
    Those objects live as long as the process, so scanning them finds nothing; after `gc.freeze()` a
    full collection took 14 to 24 ms. The collection first frees what is already garbage.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def create_app(
    *,
    settings: Callable[[], WebhookSettings] | None = None,
    event_log: Callable[[], EventLog] | None = None,
    create_runs: CreateRunsFn | None = None,
    run_states: RunStatesFn | None = None,
    dispatcher_task: bool = True,
    gc_freeze: Callable[[], bool] = airflow_gc_freeze,
) -> FastAPI:
    """The app. Defaults use Airflow (Variables, `[mlpipe]`, the metadata DB); tests inject their own.

    Nothing is read or connected here: the plugin module builds this app in every Airflow process that
    loads plugins, and only the api-server ever serves it.
    """
    settings_fn = settings or CachedSettings(airflow_settings)
    logs: dict[str, EventLog] = {}

    def default_event_log() -> EventLog:
        if "log" not in logs:
            logs["log"] = EventLog(airflow_engine())
        return logs["log"]

    dispatcher = Dispatcher(
        event_log=event_log or default_event_log,
        settings=settings_fn,
        create_runs=create_runs or airflow_create_runs,
        run_states=run_states or airflow_run_states,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The api-server has imported and built everything by now (this runs at its start-up).
        if gc_freeze():
            log.info("mlpipe: %d start-up objects frozen out of the cyclic GC", freeze_startup_heap())
        # The dispatcher of this api-server process (each worker and replica runs one; claims keep them apart).
        task = asyncio.create_task(dispatcher.run_forever()) if dispatcher_task else None
        try:
            yield
        finally:
            if task is not None:
                # Between two batches: a batch in a worker thread cannot be cancelled, a backlog need not
                # be drained first (its events stay for the next dispatcher).
                dispatcher.stop()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="mlpipe webhooks",
        description="Container registry webhooks that start mlpipe DAG runs.",
        lifespan=lifespan,
        # No interactive docs on an endpoint that is open to the registry's network.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.dispatcher = dispatcher

    async def authenticated(request: Request) -> bool | Response:
        try:
            # Cached settings are read on the event loop: a thread hop per delivery cost more CPU than the
            # rest of the check.
            current = settings_fn.fresh() if isinstance(settings_fn, CachedSettings) else None
            if current is None:
                current = await run_in_threadpool(settings_fn)
        except Exception:
            log.exception("ACR webhook: cannot read its configuration (secret, routes)")
            return JSONResponse(
                {"detail": "configuration unavailable, try again"}, 503, {"Retry-After": "30"}
            )
        provided = request.headers.get(TOKEN_HEADER) or request.query_params.get(TOKEN_QUERY) or ""
        if current.secret is None:
            log.error("ACR webhook refused a request: Variable mlpipe_acr_webhook_secret is not set")
            return Response(status_code=401)
        # Hash both sides first so the comparison does not even leak the secret's length.
        given = hashlib.sha256(provided.encode()).digest()
        if not hmac.compare_digest(given, hashlib.sha256(current.secret.encode()).digest()):
            log.warning(
                "ACR webhook: wrong or missing secret from %s", request.client and request.client.host
            )
            return Response(status_code=401)
        return True

    @app.post("/webhooks/acr")
    async def acr_push(request: Request) -> Response:
        auth = await authenticated(request)
        if isinstance(auth, Response):
            return auth
        if not _is_json(request.headers.get("content-type")):
            return _detail(
                415, ["header", "content-type"], "expected application/json", "unsupported_media_type"
            )
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return _detail(400, ["header", "content-length"], "not a byte count", "invalid_header")
            if int(declared) > MAX_BODY_BYTES:
                return _detail(413, ["body"], f"larger than {MAX_BODY_BYTES} bytes", "too_large")
        try:
            body = await _read_body(request, MAX_BODY_BYTES)
        except _BodyTooLarge:
            return _detail(413, ["body"], f"larger than {MAX_BODY_BYTES} bytes", "too_large")
        try:
            event = AcrPushEvent.model_validate_json(body)
        except ValidationError as err:
            errors = [
                {
                    "loc": ["body", *err_item["loc"]],
                    "field": ".".join(str(part) for part in err_item["loc"]) or "body",
                    "msg": err_item["msg"],
                    "type": err_item["type"],
                }
                for err_item in err.errors(include_url=False, include_input=False, include_context=False)
            ]
            status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
            return JSONResponse({"detail": errors}, status)

        event_id = run_id_for(event.repo_full_name, event.digest)
        try:
            record, created = await run_in_threadpool(dispatcher.accept, event, event_id)
        except Exception:
            log.exception("ACR webhook: could not record event %s", event_id)
            return JSONResponse(
                {"detail": "event not accepted, try again", "event_id": event_id}, 503, {"Retry-After": "30"}
            )
        dispatcher.note_delivery()
        if record.state == RECEIVED:
            dispatcher.wake()
        body_out: dict[str, Any] = {
            "status": record.state,
            "event_id": record.event_id,
            "dag_id": record.dag_id,
            # The id the run has or will have (deterministic); none for an ignored push.
            "run_id": record.run_id or (record.event_id if record.state in (RECEIVED, PENDING) else None),
            "image": record.image,
            "tag": record.tag,
            "reason": record.reason,
            "duplicate": not created,
        }
        return JSONResponse(body_out, 202 if created else 200)

    @app.get("/webhooks/acr/events")
    async def acr_events(request: Request) -> Response:
        auth = await authenticated(request)
        if isinstance(auth, Response):
            return auth
        raw_limit = request.query_params.get("limit", "50")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_EVENTS_LIMIT:
            return _detail(422, ["query", "limit"], f"expected an integer 1..{MAX_EVENTS_LIMIT}", "int_range")
        state = request.query_params.get("state") or None
        if state is not None and state not in STATES:
            return _detail(422, ["query", "state"], f"expected one of {', '.join(STATES)}", "enum")

        def load() -> tuple[list[dict[str, Any]], str | None]:
            routes_error = dispatcher.settings().routes_error
            records = dispatcher.event_log().recent(int(raw_limit), state)
            keys = [(r.dag_id, r.run_id) for r in records if r.dag_id and r.run_id]
            states = dispatcher.run_states(keys)
            return [
                {
                    **r.to_api(),
                    "run_state": states.get((r.dag_id, r.run_id)) if r.dag_id and r.run_id else None,
                }
                for r in records
            ], routes_error

        try:
            events, routes_error = await run_in_threadpool(load)
        except Exception:
            log.exception("ACR webhook: cannot list events")
            return JSONResponse({"detail": "events unavailable, try again"}, 503, {"Retry-After": "30"})
        # A broken routes Variable holds every push pending: say so even before the first push arrives.
        return JSONResponse({"events": events, "total": len(events), "routes_error": routes_error})

    return app
