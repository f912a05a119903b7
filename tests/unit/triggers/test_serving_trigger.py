"""ServingReadyTrigger against a tiny real HTTP server (a thread) answering TF-Serving model status."""

from __future__ import annotations

import importlib
import inspect
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_mlpipe.hooks.local_process import RUNNING, LocalProcessHook, process_status
from airflow_provider_mlpipe.triggers.serving import ServingReadyTrigger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from airflow.triggers.base import TriggerEvent

MODEL = "fashion_mnist"
VERSION = 3
STATUS_PATH = f"/v1/models/{MODEL}/versions/{VERSION}"


def import_string(classpath: str) -> Any:
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)


def tf_status(state: str, version: int = VERSION) -> dict[str, Any]:
    return {
        "model_version_status": [
            {"version": str(version), "state": state, "status": {"error_code": "OK", "error_message": ""}}
        ]
    }


class StatusServer:
    """Answers GET STATUS_PATH with LOADING for the first `loading` requests, then AVAILABLE."""

    def __init__(self, loading: int | None) -> None:
        self.loading = loading  # None: LOADING forever
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.paths.append(self.path)
                if self.path != STATUS_PATH:
                    self._send(404, {"error": f"Could not find model at {self.path}"})
                    return
                count = sum(1 for p in server.paths if p == STATUS_PATH)
                ready = server.loading is not None and count > server.loading
                self._send(200, tf_status("AVAILABLE" if ready else "LOADING"))

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def make_server() -> Iterator[Callable[[int | None], StatusServer]]:
    servers: list[StatusServer] = []

    def make(loading: int | None) -> StatusServer:
        servers.append(StatusServer(loading))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[LocalProcessHook]:
    hook = LocalProcessHook(str(tmp_path / "state"))
    yield hook
    if hook.state_dir.is_dir():
        for pdir in hook.state_dir.iterdir():
            if pdir.is_dir() and process_status(pdir).state == RUNNING:
                hook.stop(pdir.name, timeout=3)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_trigger(url: str, *, timeout: float = 15.0, **kwargs: Any) -> ServingReadyTrigger:
    return ServingReadyTrigger(
        url=url,
        model_name=MODEL,
        version=VERSION,
        timeout_at=time.time() + timeout,
        poll_interval=0.05,
        **kwargs,
    )


async def events_of(trigger: ServingReadyTrigger) -> list[TriggerEvent]:
    return [event async for event in trigger.run()]


# ---------------------------------------------------------------------------------------- serialization


def test_serialize_returns_classpath_and_every_init_argument() -> None:
    trigger = ServingReadyTrigger(
        url="http://127.0.0.1:8501",
        model_name=MODEL,
        version=VERSION,
        timeout_at=99.5,
        poll_interval=0.5,
        process_dir="/state/serve-x",
    )
    classpath, kwargs = trigger.serialize()
    assert import_string(classpath) is ServingReadyTrigger
    assert set(kwargs) == set(inspect.signature(ServingReadyTrigger.__init__).parameters) - {"self"}
    assert kwargs == {
        "url": "http://127.0.0.1:8501",
        "model_name": MODEL,
        "version": VERSION,
        "timeout_at": 99.5,
        "poll_interval": 0.5,
        "process_dir": "/state/serve-x",
    }
    assert json.loads(json.dumps(kwargs)) == kwargs


async def test_rebuilt_trigger_behaves_the_same(make_server: Callable[[int | None], StatusServer]) -> None:
    server = make_server(1)
    original = make_trigger(server.url)
    classpath, kwargs = original.serialize()
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == original.serialize()
    first = await events_of(original)
    server.paths.clear()  # the rebuilt trigger sees LOADING once too
    second = await events_of(rebuilt)
    assert first == second
    assert first[0].payload["status"] == "success"


# ------------------------------------------------------------------------------------------------- run


async def test_available_after_loading(make_server: Callable[[int | None], StatusServer]) -> None:
    server = make_server(3)
    events = await events_of(make_trigger(server.url + "/"))
    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "success"
    assert payload["details"]["url"] == server.url + "/"
    assert "AVAILABLE" in payload["message"] and "HTTP 200" in payload["message"]
    # Three LOADING answers, then the AVAILABLE one; always the version-specific status URL.
    assert server.paths == [STATUS_PATH] * 4


async def test_available_while_the_server_process_runs(
    make_server: Callable[[int | None], StatusServer], hook: LocalProcessHook
) -> None:
    server = make_server(2)
    hook.start("serve-ok", [sys.executable, "-c", "import time; time.sleep(60)"])
    events = await events_of(make_trigger(server.url, process_dir=str(hook.process_dir("serve-ok"))))
    assert events[0].payload["status"] == "success"
    assert hook.status("serve-ok").state == RUNNING


async def test_timeout_when_never_available(make_server: Callable[[int | None], StatusServer]) -> None:
    server = make_server(None)
    started = time.monotonic()
    events = await events_of(make_trigger(server.url, timeout=0.5))
    assert 0.4 <= time.monotonic() - started < 5
    payload = events[0].payload
    assert payload["status"] == "timeout"
    assert "not AVAILABLE in time" in payload["message"]
    assert "LOADING" in payload["message"]
    assert len(server.paths) >= 2


async def test_timeout_names_the_last_error_when_nothing_listens() -> None:
    url = closed_port_url()
    events = await events_of(make_trigger(url, timeout=0.3))
    payload = events[0].payload
    assert payload["status"] == "timeout"
    assert "ClientConnectorError" in payload["message"]
    assert url.removeprefix("http://") in payload["message"]


async def test_wrong_model_is_not_available(make_server: Callable[[int | None], StatusServer]) -> None:
    server = make_server(0)
    trigger = ServingReadyTrigger(
        url=server.url, model_name="other", version=VERSION, timeout_at=time.time() + 0.3, poll_interval=0.05
    )
    payload = (await events_of(trigger))[0].payload
    assert payload["status"] == "timeout"
    assert "HTTP 404" in payload["message"]


async def test_failed_when_the_server_process_exited(
    make_server: Callable[[int | None], StatusServer], hook: LocalProcessHook
) -> None:
    server = make_server(None)
    hook.start("serve-bad", ["sh", "-c", "echo loading model; echo 'port 8501 in use' >&2; exit 4"])
    pdir = hook.process_dir("serve-bad")
    started = time.monotonic()
    events = await events_of(make_trigger(server.url, process_dir=str(pdir), timeout=30))
    assert time.monotonic() - started < 10  # reported at once, not at the deadline
    payload = events[0].payload
    assert payload["status"] == "failed"
    assert payload["message"] == "server process failed (exit code 4)"
    assert payload["tail"] == ["loading model", "port 8501 in use"]


async def test_failed_when_the_server_process_was_never_started(tmp_path: Path) -> None:
    trigger = make_trigger(closed_port_url(), process_dir=str(tmp_path / "state" / "serve-missing"))
    payload = (await events_of(trigger))[0].payload
    assert payload["status"] == "failed"
    assert "absent" in payload["message"]
