"""PipelineNotifier: each event reaches a DingTalk robot (signed) and an SMTP server with the right content,
failures are retried, and a message that cannot be sent never raises.

Real: the notifier, the DingTalk hook (requests) and Airflow's SmtpHook (smtplib) talking over TCP to local
receivers (tests/notification_receivers.py: a minimal SMTP server and an HTTP endpoint that checks DingTalk's
token, timestamp and HMAC-SHA256 signature as DingTalk documents them); connections are real Airflow
connections from AIRFLOW_CONN_* variables. Emulated: the task instance (FakeTI: ids, log URL and the task's
own XCom, as the Task SDK hands them to a callback).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_provider_mlpipe.notifications import MAX_REASON_CHARS, PipelineNotifier, pipeline_notifiers
from airflow_provider_mlpipe.retries import RetryPolicy
from airflow_provider_mlpipe.sensors.approval import ApprovalSensor
from tests.notification_receivers import dingtalk_receiver, smtp_receiver

TOKEN = "robot-token-123"
SECRET = "SECc0ffee0123456789abcdef"
BASE_URL = "http://airflow.example:8080"
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)


@dataclass
class FakeTI:
    task_id: str
    dag_id: str = "mlpipe_fashion_mnist"
    run_id: str = "manual__2026-12-01T09:00:00+00:00"
    map_index: int = -1
    try_number: int = 3
    result: Any = None
    pulled: list[Any] = field(default_factory=list)

    @property
    def log_url(self) -> str:
        return f"{BASE_URL}/dags/{self.dag_id}/runs/{self.run_id}/tasks/{self.task_id}"

    def xcom_pull(self, task_ids: str) -> Any:
        self.pulled.append(task_ids)
        return self.result if task_ids == self.task_id else None


@dataclass
class Receivers:
    smtp: Any
    dingtalk: Any
    dingtalk_server: Any


@pytest.fixture
def receivers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receivers]:
    with smtp_receiver() as (smtp_port, smtp), dingtalk_receiver(TOKEN, SECRET) as (port, ding, server):
        monkeypatch.setenv(
            "AIRFLOW_CONN_MLPIPE_DINGTALK",
            json.dumps(
                {
                    "conn_type": "dingding",
                    "host": f"http://127.0.0.1:{port}",
                    "password": TOKEN,
                    "extra": {"secret": SECRET},
                }
            ),
        )
        monkeypatch.setenv(
            "AIRFLOW_CONN_MLPIPE_SMTP",
            json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": smtp_port,
                    # retry_limit 0: the notifier's own retry policy is the one under test.
                    "extra": {
                        "disable_ssl": True,
                        "disable_tls": True,
                        "from_email": "mlpipe@example.com",
                        "retry_limit": 0,
                        "timeout": 10,
                    },
                }
            ),
        )
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE_URL)
        yield Receivers(smtp, ding, server)


def notifier(event: Any, **kwargs: Any) -> PipelineNotifier:
    return PipelineNotifier(
        event=event,
        dingtalk_conn_id="mlpipe_dingtalk",
        smtp_conn_id="mlpipe_smtp",
        email_to=["ops@example.com", "ml@example.com"],
        retry_policy=FAST,
        **kwargs,
    )


def delivered(receivers: Receivers) -> tuple[str, str, Any]:
    """(DingTalk markdown, e-mail HTML, the mail) of the one message each receiver got."""
    (ding,) = receivers.dingtalk.wait_for(1)
    (mail,) = receivers.smtp.wait_for(1)
    assert ding.payload["msgtype"] == "markdown"
    return ding.payload["markdown"]["text"], mail.html, mail


def approval_context(evidence: dict[str, Any]) -> dict[str, Any]:
    task = ApprovalSensor(task_id="approval", evidence=evidence)
    task.assigned_users = [{"id": "alice", "name": "alice"}, {"id": "bob", "name": "bob"}]
    ti = FakeTI(task_id="approval")
    return {"task": task, "ti": ti, "task_instance": ti}


EVIDENCE = {
    "training": {"model_name": "fashion_mnist", "version": 7},
    "staging": {"accuracy": 0.91234, "samples": 10000},
    "gate": {"min_accuracy": 0.85, "production_version": 6, "production_accuracy": 0.905},
}


def test_approval_requested_links_the_required_action(receivers: Receivers) -> None:
    # Called as Airflow calls a HITL operator's notifiers: BaseNotifier.__call__(context).
    notifier("approval_requested")(approval_context(EVIDENCE))
    markdown, html, mail = delivered(receivers)
    link = (
        f"{BASE_URL}/dags/mlpipe_fashion_mnist/runs/manual__2026-12-01T09:00:00+00:00/tasks/approval/"
        "required_actions?map_index=-1"
    )
    assert f"[Open the required action]({link})" in markdown
    assert link.replace("&", "&amp;") in html
    for text in (markdown, html):
        assert "fashion_mnist v7" in text
        assert "0.9123 (threshold 0.8500)" in text
        assert "v6 at accuracy 0.9050" in text
        assert "alice, bob" in text
    assert mail.message["Subject"] == "[mlpipe] Approval requested: fashion_mnist v7"
    assert sorted(mail.rcpt_to) == ["ml@example.com", "ops@example.com"]
    assert mail.mail_from == "mlpipe@example.com"
    assert receivers.dingtalk_server.bad_signatures == 0


def test_approval_without_production_says_so_in_words(receivers: Receivers) -> None:
    evidence = {**EVIDENCE, "gate": {"min_accuracy": 0.85, "production_version": None}}
    notifier("approval_requested")(approval_context(evidence))
    markdown, html, _ = delivered(receivers)
    assert "no model in production yet" in markdown and "no model in production yet" in html
    assert "accuracy -" not in markdown


def test_run_failed_names_the_step_and_why(receivers: Receivers) -> None:
    ti = FakeTI(task_id="deploy_production")
    error = RuntimeError("TF Serving at http://127.0.0.1:8501 never became ready within 300 s")
    notifier("run_failed")({"ti": ti, "task_instance": ti, "exception": error})
    markdown, html, mail = delivered(receivers)
    assert mail.message["Subject"] == "[mlpipe] Run failed at step deploy_production"
    for text in (markdown, html):
        assert "deploy_production" in text
        assert "never became ready within 300 s" in text
        assert "mlpipe_fashion_mnist / manual__2026-12-01T09:00:00+00:00" in text
    assert f"({ti.log_url})" in markdown


def test_run_failed_cuts_a_huge_reason(receivers: Receivers) -> None:
    ti = FakeTI(task_id="train")
    notifier("run_failed")({"ti": ti, "exception": ValueError("x" * 5000)})
    markdown, _, _ = delivered(receivers)
    (why,) = [line for line in markdown.splitlines() if line.startswith("- **Why**: ")]
    reason = why.removeprefix("- **Why**: ")
    assert reason.startswith("ValueError: xxx") and reason.endswith("x…")
    assert len(reason) == MAX_REASON_CHARS


def test_promoted_reports_version_accuracy_and_approver(receivers: Receivers) -> None:
    ti = FakeTI(
        task_id="promote_model",
        result={"model_name": "fashion_mnist", "version": 7, "accuracy": 0.9123, "approved_by": "alice"},
    )
    notifier("promoted")({"ti": ti, "task": None})
    markdown, html, mail = delivered(receivers)
    assert ti.pulled == ["promote_model"]
    assert mail.message["Subject"] == "[mlpipe] Promoted: fashion_mnist v7 is in production"
    for text in (markdown, html):
        assert "0.9123" in text and "alice" in text


def test_rolled_back_reports_from_where_and_why(receivers: Receivers) -> None:
    ti = FakeTI(
        task_id="rollback_alias",
        result={
            "model_name": "fashion_mnist",
            "version": 5,
            "from_version": 6,
            "reason": "rollback from v6: complaints",
        },
    )
    notifier("rolled_back")({"ti": ti, "task": None})
    markdown, html, _ = delivered(receivers)
    for text in (markdown, html):
        assert "production serves v5 again" in text
        assert "v6" in text and "complaints" in text


def test_transient_refusals_are_retried_until_delivered(receivers: Receivers) -> None:
    receivers.dingtalk.fail_next = 2  # errcode 130101 "send too fast"
    receivers.smtp.fail_next = 2  # 451 to MAIL FROM
    ti = FakeTI(task_id="train")
    notifier("run_failed")({"ti": ti, "exception": RuntimeError("boom")})
    delivered(receivers)
    assert receivers.dingtalk.refused == 2 and receivers.smtp.refused == 2


def test_a_channel_that_cannot_be_reached_is_logged_and_never_raises(
    receivers: Receivers, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A wrong signing secret is refused for good (errcode 310000): no retry can fix it.
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLPIPE_DINGTALK",
        json.dumps(
            {
                "conn_type": "dingding",
                "host": f"http://127.0.0.1:{receivers.dingtalk_server.server_address[1]}",
                "password": TOKEN,
                "extra": {"secret": "SECwrong"},
            }
        ),
    )
    ti = FakeTI(task_id="train")
    with caplog.at_level(logging.ERROR, logger="airflow_provider_mlpipe.notifications"):
        notifier("run_failed")({"ti": ti, "exception": RuntimeError("boom")})
    # E-mail still went out.
    receivers.smtp.wait_for(1)
    assert receivers.dingtalk_server.bad_signatures == 1
    assert receivers.dingtalk.items == []
    (record,) = [r for r in caplog.records if "not sent" in r.getMessage()]
    assert "DingTalk (mlpipe_dingtalk)" in record.getMessage() and "310000" in record.getMessage()


def test_retries_exhausted_is_logged_and_never_raises(
    receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    receivers.smtp.fail_next = 10
    receivers.dingtalk.fail_next = 10
    ti = FakeTI(task_id="train")
    with caplog.at_level(logging.ERROR, logger="airflow_provider_mlpipe.notifications"):
        notifier("run_failed")({"ti": ti, "exception": RuntimeError("boom")})
    assert receivers.smtp.refused == FAST.attempts and receivers.dingtalk.refused == FAST.attempts
    messages = sorted(r.getMessage() for r in caplog.records if "not sent" in r.getMessage())
    assert len(messages) == 2
    assert all(f"{FAST.attempts} attempts" in m for m in messages)


def test_missing_connection_is_logged_and_never_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_ROBOT", raising=False)
    ti = FakeTI(task_id="train")
    with caplog.at_level(logging.ERROR, logger="airflow_provider_mlpipe.notifications"):
        PipelineNotifier(event="run_failed", dingtalk_conn_id="no_such_robot", retry_policy=FAST)(
            {"ti": ti, "exception": RuntimeError("boom")}
        )
    assert any("no_such_robot" in r.getMessage() for r in caplog.records)


def test_configuration_errors_are_refused_when_the_dag_is_built() -> None:
    with pytest.raises(ValueError, match="event"):
        PipelineNotifier(event="deployed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="email_to"):
        PipelineNotifier(event="promoted", smtp_conn_id="smtp_default")


def test_pipeline_notifiers_one_per_event_or_none() -> None:
    assert pipeline_notifiers() == {
        "approval_requested": [],
        "run_failed": [],
        "promoted": [],
        "rolled_back": [],
    }
    built = pipeline_notifiers(dingtalk_conn_id="robot")
    assert {event: [n.event for n in ns] for event, ns in built.items()} == {  # type: ignore[attr-defined]
        event: [event] for event in built
    }
