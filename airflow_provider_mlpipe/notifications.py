"""Tell people what the pipeline needs or did: approval requested, run failed, promoted, rolled back.

`PipelineNotifier` is an Airflow notifier (`airflow.sdk.BaseNotifier`), so it goes wherever Airflow takes
one: a task's `on_failure_callback` / `on_success_callback`, or the approval operator's `notifiers`. It
sends one message per event to each configured channel, named by Airflow connection ids:

- DingTalk: a custom robot of a group chat (`hooks/dingtalk.py`, connection of type `dingding`),
- e-mail: Airflow's SMTP provider (`SmtpHook`, connection of type `smtp`) to `email_to`.

A message that cannot be sent is retried (transient failures, with backoff), then logged; the notifier never
raises, so a chat outage never fails or delays a step beyond its retries.
"""

from __future__ import annotations

import html
import logging
import smtplib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseNotifier

from airflow_provider_mlpipe.exceptions import ConfigError, describe
from airflow_provider_mlpipe.retries import RetryPolicy, call_with_retry, is_transient

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

Event = Literal["approval_requested", "run_failed", "promoted", "rolled_back"]
EVENTS: tuple[Event, ...] = ("approval_requested", "run_failed", "promoted", "rolled_back")
# Chat messages are for reading at a glance: a long traceback belongs in the task log the message links.
MAX_REASON_CHARS = 600


@dataclass(frozen=True)
class Message:
    """One notification: a title (chat preview, mail subject), and `lines` of (label, value, link) facts.

    Rendered as DingTalk markdown and as HTML mail from the same facts, so both channels say the same.
    """

    event: Event
    title: str
    lines: tuple[tuple[str, str], ...]
    link: tuple[str, str] | None = None

    def markdown(self) -> str:
        body = [f"### {self.title}", ""]
        body += [f"- **{label}**: {value}" for label, value in self.lines]
        if self.link:
            body += ["", f"[{self.link[0]}]({self.link[1]})"]
        return "\n".join(body)

    def html(self) -> str:
        rows = "".join(
            f"<tr><th align='left'>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
            for label, value in self.lines
        )
        link = (
            f"<p><a href='{html.escape(self.link[1], quote=True)}'>{html.escape(self.link[0])}</a></p>"
            if self.link
            else ""
        )
        return f"<h3>{html.escape(self.title)}</h3><table>{rows}</table>{link}"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value in (None, "") else str(value)


def _run_line(context: Context) -> tuple[str, str]:
    ti = context["ti"]
    return ("Run", f"{ti.dag_id} / {ti.run_id}")


def _ti_url(context: Context) -> str:
    try:
        return str(context["ti"].log_url)
    except Exception:  # an Airflow without [api] base_url still gets the message, without a link
        return ""


def _approval_requested(context: Context) -> Message:
    task: Any = context["task"]
    evidence = getattr(task, "evidence", None)
    evidence = evidence if isinstance(evidence, dict) else {}
    training = evidence.get("training") or {}
    staging = evidence.get("staging") or {}
    gate = evidence.get("gate") or {}
    model, version = training.get("model_name", "model"), training.get("version", "?")
    production = gate.get("production_version")
    lines = [
        ("Model", f"{model} v{version}"),
        ("Staging accuracy", f"{_fmt(staging.get('accuracy'))} (threshold {_fmt(gate.get('min_accuracy'))})"),
        (
            "Production now",
            f"v{production} at accuracy {_fmt(gate.get('production_accuracy'))}"
            if production is not None
            else "no model in production yet",
        ),
        (
            "Approvers",
            ", ".join(str(user.get("name")) for user in getattr(task, "assigned_users", None) or []),
        ),
        _run_line(context),
    ]
    try:
        from airflow.providers.standard.operators.hitl import HITLOperator

        url = HITLOperator.generate_link_to_ui_from_context(context=context)
    except Exception:  # no [api] base_url: the task's page is the next best link
        url = _ti_url(context)
    return Message(
        "approval_requested",
        f"Approval requested: {model} v{version}",
        tuple(lines),
        ("Open the required action", url) if url else None,
    )


def _run_failed(context: Context) -> Message:
    ti = context["ti"]
    exception = context.get("exception")
    reason = describe(exception) if isinstance(exception, BaseException) else _fmt(exception)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    url = _ti_url(context)
    return Message(
        "run_failed",
        f"Run failed at step {ti.task_id}",
        (
            ("Step", str(ti.task_id)),
            ("Why", reason),
            ("Attempt", _fmt(getattr(ti, "try_number", None))),
            _run_line(context),
        ),
        ("Open the step's log", url) if url else None,
    )


def _own_result(context: Context) -> dict[str, Any]:
    ti = context["ti"]
    value = ti.xcom_pull(task_ids=ti.task_id)
    return value if isinstance(value, dict) else {}


def _promoted(context: Context) -> Message:
    record = _own_result(context)
    model = record.get("model_name") or getattr(context["task"], "model_name", "model")
    url = _ti_url(context)
    return Message(
        "promoted",
        f"Promoted: {model} v{_fmt(record.get('version'))} is in production",
        (
            ("Model", f"{model} v{_fmt(record.get('version'))}"),
            ("Accuracy", _fmt(record.get("accuracy"))),
            ("Approved by", _fmt(record.get("approved_by"))),
            _run_line(context),
        ),
        ("Open the run", url) if url else None,
    )


def _rolled_back(context: Context) -> Message:
    record = _own_result(context)
    task: Any = context["task"]
    model = record.get("model_name") or getattr(task, "model_name", "model")
    # ModelRollbackOperator (the alias moved back) records from_version and reason; the pipeline's
    # rollback_production (the endpoint redeployed from the alias) records the version it serves again.
    lines = [("Model", f"{model}: production serves v{_fmt(record.get('version'))} again")]
    if record.get("from_version") is not None:
        lines.append(("Rolled back from", f"v{record['from_version']}"))
    reason = record.get("reason") or getattr(task, "reason", None)
    if not reason:
        reason = "a production step failed (deploy_production or verify_production)"
    lines += [("Why", _fmt(reason)), _run_line(context)]
    url = _ti_url(context)
    return Message(
        "rolled_back",
        f"Rolled back: {model} production is v{_fmt(record.get('version'))}",
        tuple(lines),
        ("Open the run", url) if url else None,
    )


BUILDERS: Mapping[Event, Callable[[Context], Message]] = {
    "approval_requested": _approval_requested,
    "run_failed": _run_failed,
    "promoted": _promoted,
    "rolled_back": _rolled_back,
}


def _smtp_transient(exc: BaseException) -> bool:
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500  # 4xx: try again later; 5xx: refused for good
    if isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError):
        return True
    # SmtpHook wraps a connection it could not open in AirflowException("Unable to connect ...").
    if "Unable to connect" in str(exc):
        return True
    return is_transient(exc)


class PipelineNotifier(BaseNotifier):
    """Send the `event` notification to DingTalk and/or e-mail; never raises.

    :param event: one of approval_requested, run_failed, promoted, rolled_back.
    :param dingtalk_conn_id: connection of the DingTalk robot (type `dingding`); None: no DingTalk.
    :param smtp_conn_id: Airflow SMTP connection; None: no e-mail.
    :param email_to: recipients of the e-mail (required with `smtp_conn_id`).
    :param email_from: sender; None: the SMTP connection's `from_email` extra.
    :param retry_policy: retries of transient failures per channel, e.g. {"attempts": 3, "base_delay": 2}.
    """

    template_fields: Sequence[str] = ("dingtalk_conn_id", "smtp_conn_id", "email_to", "email_from")

    def __init__(
        self,
        *,
        event: Event,
        dingtalk_conn_id: str | None = None,
        smtp_conn_id: str | None = None,
        email_to: str | Sequence[str] | None = None,
        email_from: str | None = None,
        retry_policy: Mapping[str, Any] | RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        if event not in EVENTS:
            raise ConfigError("event", event, f"one of {', '.join(EVENTS)}")
        if smtp_conn_id and not email_to:
            raise ConfigError("email_to", email_to, "one or more addresses when smtp_conn_id is set")
        self.event: Event = event
        self.dingtalk_conn_id = dingtalk_conn_id
        self.smtp_conn_id = smtp_conn_id
        self.email_to = email_to
        self.email_from = email_from
        self.retry = (
            retry_policy
            if isinstance(retry_policy, RetryPolicy)
            else RetryPolicy.from_conf(
                dict(retry_policy) if retry_policy is not None else {"attempts": 3, "base_delay": 2.0}
            )
        )

    def notify(self, context: Context) -> None:
        try:
            message = BUILDERS[self.event](context)
        except Exception as exc:
            log.error(
                "Notification %s not sent: its content could not be built: %s", self.event, describe(exc)
            )
            return
        channels: list[tuple[str, Callable[[], None]]] = []
        if self.dingtalk_conn_id:
            channels.append((f"DingTalk ({self.dingtalk_conn_id})", lambda: self._send_dingtalk(message)))
        if self.smtp_conn_id:
            channels.append((f"e-mail ({self.smtp_conn_id})", lambda: self._send_email(message)))
        for name, send in channels:
            try:
                send()
            except Exception as exc:
                # Deliberately swallowed: a notification is a courtesy, the pipeline's state is the truth.
                log.error("Notification %s not sent to %s: %s", self.event, name, describe(exc))
            else:
                log.info("Notification %s sent to %s", self.event, name)

    def _send_dingtalk(self, message: Message) -> None:
        from airflow_provider_mlpipe.hooks.dingtalk import DingTalkHook

        assert self.dingtalk_conn_id  # for mypy: only called when set
        DingTalkHook(self.dingtalk_conn_id, retry=self.retry).send_markdown(message.title, message.markdown())

    def _send_email(self, message: Message) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        assert self.smtp_conn_id and self.email_to

        def send() -> None:
            with SmtpHook(smtp_conn_id=self.smtp_conn_id or "") as hook:
                hook.send_email_smtp(
                    to=self.email_to or [],
                    from_email=self.email_from,
                    subject=f"[mlpipe] {message.title}",
                    html_content=message.html(),
                )

        call_with_retry(
            send, policy=self.retry, what=f"e-mail via {self.smtp_conn_id}", is_transient=_smtp_transient
        )


def _setting(value: str | None, key: str) -> str | None:
    """An argument, else `[mlpipe] <key>` (empty: none)."""
    if value is not None:
        return value or None
    from airflow.configuration import conf

    return conf.get("mlpipe", key, fallback="") or None


def pipeline_notifiers(
    *,
    dingtalk_conn_id: str | None = None,
    smtp_conn_id: str | None = None,
    email_to: str | Sequence[str] | None = None,
    email_from: str | None = None,
) -> dict[Event, list[BaseNotifier]]:
    """One notifier per event for a pipeline DAG; each channel from its argument, else from `[mlpipe]
    notify_dingtalk_conn_id`, `notify_smtp_conn_id`, `notify_email_to` (comma-separated), `notify_email_from`
    ("" turns a channel off). Empty lists when no channel is configured."""
    dingtalk = _setting(dingtalk_conn_id, "notify_dingtalk_conn_id")
    smtp = _setting(smtp_conn_id, "notify_smtp_conn_id")
    if email_to is None:
        raw = _setting(None, "notify_email_to") or ""
        email_to = [address.strip() for address in raw.split(",") if address.strip()] or None
    sender = _setting(email_from, "notify_email_from")
    if not (dingtalk or smtp):
        return {event: [] for event in EVENTS}
    return {
        event: [
            PipelineNotifier(
                event=event,
                dingtalk_conn_id=dingtalk,
                smtp_conn_id=smtp,
                email_to=email_to,
                email_from=sender,
            )
        ]
        for event in EVENTS
    }
