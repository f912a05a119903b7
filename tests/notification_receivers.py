"""Local receivers of the pipeline's notifications: an SMTP server and a DingTalk robot endpoint.

Both are real servers on 127.0.0.1 that the notifier reaches over TCP through the same clients it uses in
production (Airflow's SmtpHook on smtplib, requests). What is emulated: the SMTP server is a minimal
RFC 5321 receiver written here on the standard library (aiosmtpd is not installed on this project's
machines), and the DingTalk endpoint checks what DingTalk's robot API checks, per its documentation
("custom robot security settings: additional signature"): the access token, a timestamp in milliseconds
within one hour of now, and sign = base64(HMAC-SHA256(key=secret, msg="<timestamp>\\n<secret>")). It answers
as DingTalk does: HTTP 200 with {"errcode": 0, "errmsg": "ok"}, or a non-zero errcode (310000 for a bad
signature).

Either can be told to refuse the next n messages (`fail_next`), to show retries.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import hashlib
import hmac
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

WAIT_S = 30.0  # a safety net for a broken notifier, never how a test decides: waits end on arrival


class _Inbox:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.refused = 0
        self.fail_next = 0
        self._cond = threading.Condition()

    def take_failure(self) -> bool:
        with self._cond:
            if self.fail_next > 0:
                self.fail_next -= 1
                self.refused += 1
                return True
            return False

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_until(self, predicate: Any, wait_s: float = WAIT_S) -> Any:
        """The first message for which `predicate` is true, waiting for it to arrive."""
        with self._cond:
            found: list[Any] = []

            def seen() -> bool:
                found[:] = [item for item in self.items if predicate(item)]
                return bool(found)

            if not self._cond.wait_for(seen, timeout=wait_s):
                raise AssertionError(f"no matching message among {len(self.items)} received")
            return found[0]

    def wait_for(self, count: int) -> list[Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.items) >= count, timeout=WAIT_S):
                raise AssertionError(f"expected {count} messages, received {len(self.items)}")
            return list(self.items)


# --- SMTP ------------------------------------------------------------------------------------------------


@dataclass
class Mail:
    mail_from: str
    rcpt_to: list[str]
    message: EmailMessage

    @property
    def html(self) -> str:
        part = self.message.get_body(preferencelist=("html",))
        assert part is not None, "no HTML part"
        return str(part.get_content())


class _SmtpHandler(socketserver.StreamRequestHandler):
    server: _SmtpServer

    def _reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())
        self.wfile.flush()

    def handle(self) -> None:
        inbox = self.server.inbox
        self._reply("220 localhost mlpipe-test-smtp")
        mail_from, rcpt_to = "", []
        while raw := self.rfile.readline():
            command = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self._reply("250-localhost" if verb == "EHLO" else "250 localhost")
                if verb == "EHLO":
                    self._reply("250 8BITMIME")
            elif verb == "MAIL":
                if inbox.take_failure():
                    self._reply("451 4.3.0 try again later")
                    continue
                mail_from, rcpt_to = command.split(":", 1)[1].strip().strip("<>").split(">")[0], []
                self._reply("250 OK")
            elif verb == "RCPT":
                rcpt_to.append(command.split(":", 1)[1].strip().strip("<>"))
                self._reply("250 OK")
            elif verb == "DATA":
                self._reply("354 end with <CRLF>.<CRLF>")
                lines: list[bytes] = []
                while (line := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    lines.append(line[1:] if line.startswith(b"..") else line)
                message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                assert isinstance(message, EmailMessage)
                inbox.add(Mail(mail_from, rcpt_to, message))
                self._reply("250 OK queued")
            elif verb in ("RSET", "NOOP"):
                self._reply("250 OK")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("502 command not implemented")


class _SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    inbox: _Inbox


@contextlib.contextmanager
def smtp_receiver() -> Iterator[tuple[int, _Inbox]]:
    """(port, inbox) of a plain-text SMTP server on 127.0.0.1, shut down on exit."""
    server = _SmtpServer(("127.0.0.1", 0), _SmtpHandler)
    server.inbox = _Inbox()
    thread = threading.Thread(target=server.serve_forever, name="smtp-receiver", daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.inbox
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- DingTalk --------------------------------------------------------------------------------------------


@dataclass
class DingTalkMessage:
    payload: dict[str, Any]
    query: dict[str, str] = field(default_factory=dict)


def expected_sign(timestamp: str, secret: str) -> str:
    """DingTalk's documented signature, written out here independently of the hook's."""
    mac = hmac.new(secret.encode(), (timestamp + "\n" + secret).encode(), digestmod=hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


class _DingTalkHandler(BaseHTTPRequestHandler):
    server: _DingTalkServer

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        server = self.server
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path != "/robot/send":
            return self._answer(404, {"errcode": 404, "errmsg": "not found"})
        if query.get("access_token") != server.token:
            return self._answer(200, {"errcode": 300001, "errmsg": "token is not exist"})
        timestamp = query.get("timestamp", "")
        if not timestamp.isdigit() or abs(int(timestamp) - time.time() * 1000) > 3600 * 1000:
            return self._answer(200, {"errcode": 310000, "errmsg": "invalid timestamp"})
        if not hmac.compare_digest(query.get("sign", ""), expected_sign(timestamp, server.secret)):
            server.bad_signatures += 1
            return self._answer(200, {"errcode": 310000, "errmsg": "sign not match"})
        if server.inbox.take_failure():
            return self._answer(200, {"errcode": 130101, "errmsg": "send too fast"})
        server.inbox.add(DingTalkMessage(json.loads(body), query))
        self._answer(200, {"errcode": 0, "errmsg": "ok"})


class _DingTalkServer(ThreadingHTTPServer):
    daemon_threads = True
    token: str
    secret: str
    inbox: _Inbox
    bad_signatures: int


@contextlib.contextmanager
def dingtalk_receiver(token: str, secret: str) -> Iterator[tuple[int, _Inbox, _DingTalkServer]]:
    """(port, inbox, server) of a DingTalk robot endpoint on 127.0.0.1 expecting `token` and `secret`."""
    server = _DingTalkServer(("127.0.0.1", 0), _DingTalkHandler)
    server.token, server.secret, server.inbox, server.bad_signatures = token, secret, _Inbox(), 0
    thread = threading.Thread(target=server.serve_forever, name="dingtalk-receiver", daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.inbox, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
