"""A TensorFlow-Serving-compatible REST model server for local runs (the containers run the real one).

Run as::

    python -m airflow_provider_mlpipe.images.serving.server --model_name=mnist \\
        --model_base_path=file:///var/mlpipe/models/mnist [--rest_api_port=8501] [--model_version=N] \\
        [--host=127.0.0.1] [--file_system_poll_wait_seconds=0] [--verbose]

Flags keep the names of `tensorflow_model_server`, and the REST surface (paths, JSON shapes, error bodies and
status codes) follows TF Serving's `http_rest_api_handler`, so the operators, sensors and clients that talk to
the production TF Serving pods work unchanged against this process. Only versions carrying the store's
`_PUBLISHED` marker count (docs/CONTRACTS.md).

The port is bound first and the model loads in a background thread, so a readiness probe sees the version
as LOADING, then AVAILABLE (or END with the load error). TensorFlow is imported lazily by the loader so that
argument errors are reported instantly.

This module is the HTTP plumbing and the command line; the rest of the server lives beside it:
`rest_api` (routing and the REST operations), `codec` (request and response JSON <-> tensors), `models`
(loading versions, their states, the poll-and-swap loop) and `errors` (TF Serving's error codes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from .models import ModelManager
from .rest_api import RestApi

logger = logging.getLogger("airflow_provider_mlpipe.serving")


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive needs HTTP/1.1 plus a Content-Length on every response; Nagle would add ~40 ms per reply.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "mlpipe-tf-serving-compatible"
    server: _Server

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        n = int(length)
        if n < 0:
            raise ValueError(f"Content-Length={length!r}: expected a non-negative integer")
        return self.rfile.read(n)

    def _handle(self) -> None:
        method = self.command
        try:
            try:
                body = self._read_body()
            except ValueError as exc:
                self.close_connection = True  # we cannot tell where the next request starts
                self._send(400, json.dumps({"error": f"Malformed request body framing: {exc}"}).encode(), {})
                return
            status, payload, headers = self.server.api.handle(method, self.path, body)
        except Exception as exc:  # never leave a client without an answer
            logger.exception("internal error handling %s %s", method, self.path)
            status, payload, headers = 500, json.dumps({"error": f"Internal error: {exc!r}"}).encode(), {}
        self._send(status, payload, headers)

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
        ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            # One write: header and body leave in one segment (wfile is unbuffered).
            self.wfile.write(head if self.command == "HEAD" else head + payload)
        except OSError:
            self.close_connection = True
        if self.server.verbose:
            logger.info(
                '%s "%s %s" %d %d', self.client_address[0], self.command, self.path, status, len(payload)
            )

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server calls this for unparsable request lines/headers; answer JSON like every other error.
        self.close_connection = True
        self._send(code, json.dumps({"error": message or HTTPStatus(code).phrase}).encode(), {})

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            logger.info("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: RestApi, verbose: bool) -> None:
        self.api = api
        self.verbose = verbose
        super().__init__(address, _Handler)


def _base_path(value: str) -> Path:
    parsed = urlparse(value)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise argparse.ArgumentTypeError(
                f"--model_base_path={value!r} is invalid: expected file:///absolute/path (no host part)"
            )
        return Path(url2pathname(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise argparse.ArgumentTypeError(
            f"--model_base_path={value!r} is invalid: expected a local path or file:// URI; fetch remote "
            "versions into a local directory first (the serving image's fetch init container does this)"
        )
    return Path(value).expanduser()


def _model_name(value: str) -> str:
    if not value or "/" in value or ":" in value:
        raise argparse.ArgumentTypeError(
            f"--model_name={value!r} is invalid: expected a non-empty name without '/' or ':'"
        )
    return value


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"--rest_api_port={value!r} is invalid: expected an integer 1..65535 (0 = any free port)"
        )
    return port


def _positive_version(value: str) -> int:
    try:
        version = int(value)
    except ValueError:
        version = 0
    if version <= 0:
        raise argparse.ArgumentTypeError(f"--model_version={value!r} is invalid: expected a positive integer")
    return version


def _poll_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(
            f"--file_system_poll_wait_seconds={value!r} is invalid: expected a number >= 0 (0 = load once)"
        )
    return seconds


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m airflow_provider_mlpipe.images.serving.server",
        description="TensorFlow-Serving-compatible REST server for one model (TF Serving's flag names).",
    )
    p.add_argument(
        "--model_name", required=True, type=_model_name, help="name in the /v1/models/{name} paths"
    )
    p.add_argument(
        "--model_base_path",
        required=True,
        type=_base_path,
        help="directory (or file:// URI) holding integer version directories; only published ones count",
    )
    p.add_argument("--rest_api_port", type=_port, default=8501, help="REST port (default 8501)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--model_version",
        type=_positive_version,
        default=None,
        help="serve exactly this version (others answer 404); default: the newest published version",
    )
    p.add_argument(
        "--file_system_poll_wait_seconds",
        type=_poll_seconds,
        default=0.0,
        help="seconds between polls of the base path for a newer published version (0 = look once)",
    )
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    manager = ModelManager(
        model_name=args.model_name,
        base_path=args.model_base_path,
        pinned_version=args.model_version,
        poll_wait_seconds=args.file_system_poll_wait_seconds,
    )
    try:
        server = _Server((args.host, args.rest_api_port), RestApi(manager), verbose=args.verbose)
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", args.host, args.rest_api_port, exc)
        return 1
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    host, port = server.server_address[:2]
    logger.info(
        "Exporting HTTP/REST API at %s:%s for model %s (base path %s)",
        host,
        port,
        args.model_name,
        args.model_base_path,
    )
    # The socket is bound already, so early probes queue in the backlog; starting the manager before serving
    # makes the first answered status request report LOADING rather than "no versions".
    manager.start()
    serve_thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True
    )
    serve_thread.start()
    while not stop.wait(0.5):
        pass
    manager.stop()
    server.shutdown()
    server.server_close()
    logger.info("server stopped")
    if manager.busy:
        # A load in progress holds TensorFlow's native threads; interpreter teardown under them can hang or
        # abort, so leave without it: nothing is left to flush but the log handlers.
        logging.shutdown()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
