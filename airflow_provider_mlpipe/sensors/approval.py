"""ApprovalSensor: a human approves or rejects a model version, in the Airflow UI or through the REST API.

Built on Airflow's human-in-the-loop ApprovalOperator: the request appears under "Required actions",
the task waits in `awaiting_input` (no worker slot, no trigger), and a rejection skips the production
branch. The body shows the evidence needed to decide: the gate's verdict (pass or inconclusive) with its
intervals. After an inconclusive verdict the request has a `reason` field: Approve needs a written reason,
which is recorded with the promotion; an Approve without one counts as Reject (said in the log and in the
decision), since nobody could later tell why an unproven model went to production.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict

from airflow_provider_mlpipe.exceptions import ConfigError

if TYPE_CHECKING:
    from airflow.sdk import Context


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value in (None, "") else str(value))


INCONCLUSIVE = "inconclusive"
REASON_PARAM = "reason"


def _interval(value: object) -> str:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        return f"[{value[0]:+.4f}, {value[1]:+.4f}]"
    return "-"


def _gate_lines(gate: dict[str, Any]) -> list[str]:
    verdict = gate.get("verdict")
    if not verdict:
        return []
    level = gate.get("confidence")
    lines = [
        f"**Accuracy gate: {str(verdict).upper()}**" + (f" ({level:.0%} intervals)" if level else ""),
        "",
    ]
    if verdict == INCONCLUSIVE:
        lines += [
            "The data cannot tell whether this model is good enough. To approve, write your reason in the "
            f"`{REASON_PARAM}` field: it is recorded with the promotion. Approve without a reason counts as Reject.",
            "",
        ]
    acc = gate.get("accuracy_interval")
    lines += [
        "| | |",
        "|---|---|",
        f"| Accuracy interval (staging) | {_interval(acc).replace('+', '')} |",
    ]
    if gate.get("difference_interval") is not None:
        lines += [
            f"| Production v{_fmt(gate.get('production_version'))} on the same examples | "
            f"{_fmt(gate.get('champion_accuracy'))} |",
            f"| Difference (candidate - production) | {gate.get('difference', 0):+.4f}, interval "
            f"{_interval(gate.get('difference_interval'))} |",
            f"| McNemar exact p (equal accuracy) | {_fmt(gate.get('mcnemar_p'))} |",
            f"| Examples only the candidate / only production got right | {_fmt(gate.get('discordant'))} |",
        ]
    for key, title in (("broken_classes", "Broke a floor"), ("uncertain_classes", "May break a floor")):
        classes = gate.get(key) or []
        if classes:
            named = ", ".join(
                f"{c.get('class')} {c.get('name') or ''} ({c.get('floor')})".strip() for c in classes
            )
            lines.append(f"| {title} | {named} |")
    lines += ["", "Reasons:", ""] + [f"- {reason}" for reason in gate.get("reasons") or []] + [""]
    return lines


def _production(gate: dict[str, Any]) -> str:
    if "production_version" not in gate:
        return "unknown (no accuracy gate decision)"
    if gate["production_version"] is None:
        return "none: no model is in production yet, this version would be the first"
    return f"v{gate['production_version']} at accuracy {_fmt(gate.get('production_accuracy'))}"


def models_page_prefix() -> str:
    """Where the Models page plugin serves, as a path on the Airflow UI's host: `[mlpipe] models_page_url`,
    else `/mlpipe-models` under the path of `[api] base_url`; empty: no pictures or link."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    configured = conf.get("mlpipe", "models_page_url", fallback=None)
    if configured is not None:
        return configured.rstrip("/")
    base_path = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    return f"{base_path}/mlpipe-models"


def render_pictures(training: dict[str, Any], gate: dict[str, Any], models_page: str) -> list[str]:
    """Markdown images of the staging evaluation, drawn by the Models page plugin (`models_page`, a path or
    URL). Airflow's UI renders markdown images but drops `data:` URIs and raw HTML, so the pictures are
    URLs on the same host; the browser sends the UI's session cookie and the plugin checks it."""
    from urllib.parse import quote, urlencode

    model, version = training.get("model_name"), training.get("version")
    if not models_page or not model or version in (None, ""):
        return []
    base = f"{models_page}/api/models/{quote(str(model))}/versions/{quote(str(version))}"
    production = gate.get("production_version")
    against = f"?against={production}" if production is not None else ""
    comparison = (
        f"against production v{production}"
        if production is not None
        else "(no model in production to compare with)"
    )
    page = f"{models_page}/?{urlencode({'model': model, 'version': version})}"
    return [
        f"Per-class accuracy of v{version} on staging {comparison}, and its confusion matrix:",
        "",
        f"![Per-class accuracy of v{version} {comparison}]({base}/per_class.svg{against})",
        f"![Confusion matrix of v{version} on staging]({base}/confusion.svg)",
        "",
        f"[{model} on the Models page: every version, accuracy history, promotions and rollbacks]({page})",
        "",
    ]


def render_evidence(evidence: dict[str, Any], *, models_page: str = "") -> str:
    """Markdown body of the approval request; `models_page` (path or URL of the Models page plugin) adds
    its pictures and a link."""
    training = evidence.get("training") or {}
    staging = evidence.get("staging") or {}
    gate = evidence.get("gate") or {}
    lines = [
        f"### {training.get('model_name', '?')} version {training.get('version', '?')}",
        "",
        *_gate_lines(gate),
        "| | |",
        "|---|---|",
        f"| Image | `{_fmt(training.get('image'))}` |",
        f"| Digest | `{_fmt(training.get('digest'))}` |",
        f"| Staging endpoint | {_fmt(staging.get('endpoint_url'))} |",
        f"| Accuracy (staging, {_fmt(staging.get('samples'))} test examples) | **{_fmt(staging.get('accuracy'))}** |",
        f"| Threshold (min_accuracy) | {_fmt(gate.get('min_accuracy'))} |",
        f"| Production now | {_production(gate)} |",
        f"| Allowed regression | {_fmt(gate.get('max_regression'))} |",
        f"| Training test accuracy | {_fmt(training.get('test_accuracy'))} |",
        "",
        *render_pictures(training, gate, models_page),
        "Per-class accuracy (staging):",
        "",
        "| class | accuracy |",
        "|---|---|",
    ]
    per_class = staging.get("per_class_accuracy") or {}
    names = staging.get("class_names") or []
    # Classes in numeric order (not the dict's): "10" must come after "9".
    indices = sorted(int(key) for key in per_class if str(key).isdigit())
    for index in indices or range(len(names)):
        name = f" {names[index]}" if index < len(names) else ""
        lines.append(f"| {index}{name} | {_fmt(per_class.get(str(index)))} |")
    return "\n".join(lines)


def _verdict(evidence: object) -> str | None:
    gate = evidence.get("gate") if isinstance(evidence, dict) else None
    verdict = gate.get("verdict") if isinstance(gate, dict) else None
    return verdict if isinstance(verdict, str) else None


class ApprovalSensor(ApprovalOperator):
    """Ask `approvers` to approve the model version described by `evidence`; timeout means Reject.

    :param evidence: dict with `training` (train XCom), `staging` (AccuracySensor XCom) and `gate`
        (accuracy gate decision); XComArgs resolve at run time.
    :param approvers: Airflow user names allowed to answer; default: the run's `approvers` param.
    :param response_timeout_minutes: how long to wait; default: the run's `approval_timeout_minutes`
        param, else 24 hours. On timeout the default answer, Reject, applies.
    :param models_page: path or URL of the Models page plugin, for the pictures and the link in the request;
        None: `models_page_prefix()` (`[mlpipe] models_page_url`, else `/mlpipe-models` on the UI's host);
        "": no pictures.
    :param notifiers: Airflow notifiers called once the request is written (e.g.
        `notifications.PipelineNotifier(event="approval_requested", ...)`).
    """

    template_fields: Sequence[str] = (
        *ApprovalOperator.template_fields,
        "evidence",
        "approvers",
        "response_timeout_minutes",
    )
    ui_color = "#e8daef"

    def __init__(
        self,
        *,
        evidence: dict[str, Any] | Any,
        approvers: list[str] | None = None,
        response_timeout_minutes: int | str | None = None,
        subject: str = "Approve model for production?",
        models_page: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(subject=subject, defaults=self.REJECT, **kwargs)
        self.models_page = models_page
        self.evidence = evidence
        self.approvers = approvers
        self.response_timeout_minutes = response_timeout_minutes

    def execute(self, context: Context) -> Any:
        params = context["params"]
        approvers = self.approvers if self.approvers is not None else params.get("approvers")
        if (
            not isinstance(approvers, list)
            or not approvers
            or not all(isinstance(a, str) and a for a in approvers)
        ):
            raise ConfigError("approvers", approvers, "a non-empty list of Airflow user names")
        minutes_raw = next(
            (
                value
                for value in (self.response_timeout_minutes, params.get("approval_timeout_minutes"))
                if value not in (None, "")
            ),
            24 * 60,
        )
        try:
            minutes = int(minutes_raw)
        except (TypeError, ValueError):
            raise ConfigError(
                "approval_timeout_minutes", minutes_raw, "a whole number of minutes >= 1"
            ) from None
        if minutes < 1:
            raise ConfigError("approval_timeout_minutes", minutes_raw, "a whole number of minutes >= 1")
        evidence = self.evidence if isinstance(self.evidence, dict) else {}
        self.assigned_users = [{"id": name, "name": name} for name in approvers]
        self.response_timeout = timedelta(minutes=minutes)
        training = evidence.get("training") or {}
        self.subject = (
            f"Approve {training.get('model_name', 'model')} v{training.get('version', '?')} for production?"
        )
        if _verdict(evidence) == INCONCLUSIVE:
            self.subject += " (accuracy gate inconclusive: a written reason is required to approve)"
            # Set here, not in __init__: only an inconclusive verdict asks for it.
            self.params = ParamsDict(
                {
                    REASON_PARAM: Param(
                        "",
                        type="string",
                        description="Why approve although the accuracy gate was inconclusive "
                        "(recorded with the promotion)",
                    )
                }
            )
        models_page = self.models_page if self.models_page is not None else models_page_prefix()
        self.body = render_evidence(evidence, models_page=models_page)
        self.log.info("Approval requested from %s (timeout %s min, then Reject)", approvers, minutes)
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        # Pushed before the parent's execute_complete: on Reject it skips downstream by raising, which
        # drops the return value, and the run's outcome must still say who rejected.
        if "error" not in event:
            user = event.get("responded_by_user")
            params_input = event.get("params_input") or {}
            raw_reason = params_input.get(REASON_PARAM) if isinstance(params_input, dict) else None
            reason = raw_reason.strip() if isinstance(raw_reason, str) and raw_reason.strip() else None
            verdict = _verdict(self.evidence)
            refused = None
            if verdict == INCONCLUSIVE and event.get("chosen_options") == [self.APPROVE] and not reason:
                refused = (
                    "Approve without a written reason after an inconclusive accuracy gate: counted as Reject "
                    f"(expected a non-empty '{REASON_PARAM}')"
                )
                self.log.warning("%s", refused)
                event = {**event, "chosen_options": [self.REJECT]}
            decision = {
                "chosen_options": event.get("chosen_options"),
                "responded_by_user": user,
                "responded_at": str(event.get("responded_at")),
                "timed_out": bool(event.get("timedout")) or user is None,
                "gate_verdict": verdict,
                "reason": reason,
                "refused": refused,
            }
            context["ti"].xcom_push(key="decision", value=decision)
            self.log.info("Decision: %s by %s", decision["chosen_options"], user or "timeout (default)")
        return super().execute_complete(context, event)
