"""Pipeline factories: the whole train -> stage -> gate -> approve -> production DAG from a few arguments.

`build_pipeline` builds a team's pipeline for its own model: train (the team's image) -> deploy staging
(and point the store's `staging` alias at it) -> accuracy gate -> human approval -> deploy production ->
verify (or roll back) -> promote in the model store. Staging is torn down in every outcome; the last task
records how the run ended and fails the run if any step failed. `build_rollback_pipeline` builds the DAG
that puts the previous production version back.

A DAG file calls one of them at module level, e.g.::

    dag = build_pipeline(
        dag_id="mlpipe_churn",
        model_name="churn",
        evaluation_data="oss://ml-data/churn/eval.npz",  # airflow_provider_mlpipe.evaluation
    )

The run params (airflow_provider_mlpipe.params) are the same for every pipeline; `param_defaults`
changes their defaults for this one (validated here, at parse time, against each param's schema).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, BaseNotifier, Param, XComArg, task
from airflow.sdk.definitions.param import ParamsDict

from airflow_provider_mlpipe.exceptions import ConfigError
from airflow_provider_mlpipe.modelstore.store import check_model_name
from airflow_provider_mlpipe.notifications import Event, pipeline_notifiers
from airflow_provider_mlpipe.operators.gates import AccuracyGateOperator
from airflow_provider_mlpipe.operators.model_store import (
    ModelAliasOperator,
    ModelPromoteOperator,
    ModelRollbackOperator,
    PipelineOutcomeOperator,
)
from airflow_provider_mlpipe.operators.serving import ServingDeployOperator, ServingTeardownOperator
from airflow_provider_mlpipe.operators.train import KubeTrainJobOperator
from airflow_provider_mlpipe.params import REPLICAS, RUN_PARAMS, check_known
from airflow_provider_mlpipe.sensors.accuracy import AccuracySensor
from airflow_provider_mlpipe.sensors.approval import ApprovalSensor

MODEL = "{{ params.model_name }}"
RUNTIME = "{{ params.runtime }}"
STORE = "{{ params.model_store or None }}"
DATASET = "{{ params.dataset or None }}"
START_DATE = datetime(2026, 1, 1)
TAGS = ("mlpipe", "mlops")

# Fixed for a task when its run is created: per-run overrides go through the retry_policy Param.
DEFAULT_ARGS: dict[str, Any] = {
    "retries": 2,
    "retry_delay": timedelta(seconds=15),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}


def pipeline_params(model_name: str, param_defaults: Mapping[str, Any] | None = None) -> ParamsDict:
    """The run params with this pipeline's defaults, each checked against its schema now: a wrong default
    would otherwise surface only when someone triggers a run."""
    from airflow.sdk.exceptions import ParamValidationError

    check_model_name(model_name)
    overrides = {"model_name": model_name, **dict(param_defaults or {})}
    check_known(overrides, overrides)
    params: dict[str, Param] = {}
    for name, spec in RUN_PARAMS.items():
        kwargs = spec.param_kwargs()
        if name in overrides:
            kwargs["default"] = overrides[name]
        params[name] = Param(**kwargs)
        if name in overrides:
            try:
                params[name].resolve()
            except ParamValidationError as exc:
                raise ConfigError(
                    f"param_defaults[{name!r}]", overrides[name], f"a value the param accepts ({exc})"
                ) from None
    return ParamsDict(params)


def _check_evaluation_data(evaluation_data: object) -> str:
    if not isinstance(evaluation_data, str) or not evaluation_data.strip():
        raise ConfigError(
            "evaluation_data",
            evaluation_data,
            "an evaluation data location: a path, file:// or oss:// .npz, or a datasets source "
            "(templated, e.g. '{{ params.dataset }}/test.npz')",
        )
    return evaluation_data


def build_pipeline(
    *,
    dag_id: str,
    model_name: str,
    evaluation_data: str,
    local_training_command: Sequence[str] | None = None,
    dataset_check: Callable[[str], object] | None = None,
    param_defaults: Mapping[str, Any] | None = None,
    description: str | None = None,
    doc_md: str | None = None,
    tags: Sequence[str] = TAGS,
    default_args: Mapping[str, Any] | None = None,
    max_active_runs: int = 16,
    start_date: datetime = START_DATE,
    dingtalk_conn_id: str | None = None,
    smtp_conn_id: str | None = None,
    email_to: str | Sequence[str] | None = None,
    models_page: str | None = None,
    production_pool: str | None = None,
) -> DAG:
    """The pipeline DAG for one model.

    :param dag_id: the DAG's id (the ACR webhook's routes name it).
    :param model_name: the model's name in the store, the default of the `model_name` param.
    :param evaluation_data: the held-out data the staging gate and production check score, in the
        evaluation contract (airflow_provider_mlpipe.evaluation) or a source of
        airflow_provider_mlpipe.datasets.sources; templated with the run's params.
    :param local_training_command: local runtime: the command that stands in for the training image
        (a leading `python` is the worker's interpreter); None: the trainer this repository ships.
    :param dataset_check: checks a run's local `dataset` before any work starts, raising an error that
        names what is missing; None: that it exists.
    :param param_defaults: other run params' defaults for this pipeline (e.g. `min_accuracy`).
    :param default_args: merged over the pipeline's (2 task retries with backoff).
    :param dingtalk_conn_id: DingTalk robot connection for the notifications (approval requested, a step
        failed, promoted, rolled back); None: `[mlpipe] notify_dingtalk_conn_id` (empty: no DingTalk).
    :param smtp_conn_id: SMTP connection for the same notifications by e-mail to `email_to`; None:
        `[mlpipe] notify_smtp_conn_id` and `notify_email_to` (empty: no e-mail).
    :param models_page: path or URL of the Models page plugin for the approval's pictures and link; None:
        `[mlpipe] models_page_url`, else `/mlpipe-models` on the UI's host; "": no pictures.
    :param production_pool: an Airflow pool (one slot, counting deferred tasks) for the tasks that change
        or check production, so that two approved runs change it one at a time; None: no pool (the
        runtimes still refuse a stale write and a superseded rollout).
    """
    evaluation_data = _check_evaluation_data(evaluation_data)
    params = pipeline_params(model_name, param_defaults)
    notifiers = pipeline_notifiers(
        dingtalk_conn_id=dingtalk_conn_id, smtp_conn_id=smtp_conn_id, email_to=email_to
    )
    with DAG(
        dag_id=dag_id,
        description=description or f"Train, stage, gate, approve and deploy {model_name} from a pushed image",
        schedule=None,
        start_date=start_date,
        catchup=False,
        max_active_runs=max_active_runs,
        params=params,
        render_template_as_native_obj=True,
        default_args={
            **DEFAULT_ARGS,
            # The run's in-task retries of transient errors: every provider operator and sensor takes
            # transient_retry (templated), so default_args hands it to each and to no other task.
            "transient_retry": "{{ params.retry_policy }}",
            # Which step failed and why, once its retries are spent (record_outcome excepted, below).
            "on_failure_callback": notifiers["run_failed"],
            **dict(default_args or {}),
        },
        tags=list(tags),
        doc_md=doc_md or __doc__,
    ) as dag:
        _pipeline_tasks(
            evaluation_data, local_training_command, dataset_check, notifiers, models_page, production_pool
        )
    return dag


def _pipeline_tasks(
    evaluation_data: str,
    local_training_command: Sequence[str] | None,
    dataset_check: Callable[[str], object] | None,
    notifiers: Mapping[Event, list[BaseNotifier]],
    models_page: str | None,
    production_pool: str | None,
) -> None:
    production = _production_pool(production_pool)

    @task(retries=0)
    def validate_params(**context: Any) -> dict[str, object]:
        """Reject bad input before any work starts; nothing in production changes.

        Airflow refuses a bad value of a known param when the run is created, but keeps a conf key that
        no param defines, and checks each param alone: the unknown key and the params that contradict
        each other are refused here, before `train` reserves a model version.
        """
        from airflow_provider_mlpipe.validation import check_run_params

        conf = getattr(context.get("dag_run"), "conf", None) or {}
        return check_run_params(dict(context["params"]), conf, check_dataset=dataset_check)

    validated = validate_params()

    train = KubeTrainJobOperator(
        task_id="train",
        image="{{ params.image }}",
        digest="{{ params.digest }}",
        model_name=MODEL,
        runtime=RUNTIME,
        model_store=STORE,
        dataset=DATASET,
        hyperparameters="{{ params.hyperparameters }}",  # type: ignore[arg-type]
        local_command=local_training_command,
        gpus="{{ params.kubernetes.gpus | default(0) }}",
        cpu="{{ params.kubernetes.cpu | default('2') }}",
        memory="{{ params.kubernetes.memory | default('4Gi') }}",
        node_selector="{{ params.kubernetes.node_selector | default({}) }}",  # type: ignore[arg-type]
        tolerations="{{ params.kubernetes.tolerations | default([]) }}",  # type: ignore[arg-type]
    )
    deploy_staging = ServingDeployOperator(
        task_id="deploy_staging",
        endpoint="staging",
        model_name=MODEL,
        version=XComArg(train, key="version"),
        runtime=RUNTIME,
        model_store=STORE,
    )
    set_staging_alias = ModelAliasOperator(
        task_id="set_staging_alias",
        alias="staging",
        model_name=MODEL,
        version=XComArg(deploy_staging, key="version"),
        model_store=STORE,
        reason="deployed to staging",
    )
    evaluate_staging = AccuracySensor(
        task_id="evaluate_staging",
        endpoint_url=XComArg(deploy_staging, key="url"),
        model_name=MODEL,
        version=XComArg(train, key="version"),
        evaluation_data=evaluation_data,
        model_store=STORE,
        sample_size="{{ params.evaluation_sample }}",
        # Kept in the store for the approval's pictures and the Models page.
        record_as="staging",
        # The champion (production) scored on the same examples in the same task: the gate's paired evidence.
        compare_with_production=True,
    )
    accuracy_gate = AccuracyGateOperator(
        task_id="accuracy_gate",
        metrics=evaluate_staging.output,
        min_accuracy="{{ params.min_accuracy }}",
        max_regression="{{ params.max_regression }}",
        confidence_level="{{ params.confidence_level }}",
        min_class_accuracy="{{ params.min_class_accuracy }}",
        max_class_drop="{{ params.max_class_drop }}",
        model_name=MODEL,
        model_store=STORE,
        pass_task_id="approval",
        fail_task_id="accuracy_rejected",
    )
    accuracy_rejected = EmptyOperator(task_id="accuracy_rejected")
    approval = ApprovalSensor(
        task_id="approval",
        evidence={
            "training": train.output,
            "staging": evaluate_staging.output,
            "gate": XComArg(accuracy_gate, key="decision"),
        },
        models_page=models_page,
        notifiers=notifiers["approval_requested"],
        retries=0,
    )
    teardown_staging = ServingTeardownOperator(
        task_id="teardown_staging",
        endpoint="staging",
        model_name=MODEL,
        runtime=RUNTIME,
    ).as_teardown(setups=deploy_staging)
    deploy_production, verify_production = _serve_production(
        XComArg(train, key="version"),
        evaluation_data,
        replicas="{{ params.kubernetes.replicas | default(1) }}",
        production=production,
        baseline_accuracy=XComArg(evaluate_staging, key="accuracy"),
        tolerance=0.05,
    )
    rollback_production = ServingDeployOperator(
        task_id="rollback_production",
        **production,
        endpoint="production",
        model_name=MODEL,
        from_alias="production",
        teardown_if_unresolved=True,
        skip_unless_ran="deploy_production",
        runtime=RUNTIME,
        model_store=STORE,
        replicas="{{ params.kubernetes.replicas | default(1) }}",
        trigger_rule="one_failed",
        on_success_callback=notifiers["rolled_back"],
    )
    promote_model = ModelPromoteOperator(
        task_id="promote_model",
        **production,
        model_name=MODEL,
        version=XComArg(train, key="version"),
        model_store=STORE,
        approval=XComArg(approval, key="decision"),
        evaluation=evaluate_staging.output,
        training=train.output,
        # Promote only over the production the gate compared against and the approver saw.
        expected_production=XComArg(accuracy_gate, key="decision"),
        on_success_callback=notifiers["promoted"],
        # Recorded with the promotion: the next run's gate scores this model there, as the champion.
        production_endpoint=XComArg(deploy_production, key="url"),
    )
    outcome = PipelineOutcomeOperator(
        task_id="record_outcome",
        model_name=MODEL,
        model_store=STORE,
        trigger_rule="all_done",
        retries=0,
        # It fails on purpose when a step failed: that step's own notification already said which and why.
        on_failure_callback=[],
    )

    validated >> train >> deploy_staging >> evaluate_staging >> accuracy_gate >> [approval, accuracy_rejected]
    # Beside the evaluation, which need not wait for a store write; the gate waits for both.
    deploy_staging >> set_staging_alias >> accuracy_gate
    [approval, accuracy_rejected] >> teardown_staging
    approval >> deploy_production >> verify_production >> promote_model
    [deploy_production, verify_production] >> rollback_production
    [promote_model, rollback_production, teardown_staging, accuracy_rejected] >> outcome


def _shared(name: str, model_name: str, description: str | None = None) -> Param:
    """A param the pipeline defines too, with the pipeline's schema and default."""
    kwargs = RUN_PARAMS[name].param_kwargs()
    if name == "model_name":
        kwargs["default"] = model_name
    if description:
        kwargs["description"] = description
    return Param(**kwargs)


def _serve_production(
    version: XComArg,
    evaluation_data: str,
    *,
    replicas: str,
    production: Mapping[str, Any],
    **verify: Any,
) -> tuple[ServingDeployOperator, AccuracySensor]:
    """deploy_production -> verify_production of `version`, as the pipeline and the rollback DAG run them;
    `verify` adds to the check (the pipeline compares with the staging score)."""
    deploy = ServingDeployOperator(
        task_id="deploy_production",
        **production,
        endpoint="production",
        model_name=MODEL,
        version=version,
        runtime=RUNTIME,
        model_store=STORE,
        replicas=replicas,
    )
    check = AccuracySensor(
        task_id="verify_production",
        **production,
        endpoint_url=XComArg(deploy, key="url"),
        model_name=MODEL,
        version=version,
        evaluation_data=evaluation_data,
        model_store=STORE,
        sample_size="{{ params.verify_sample }}",
        retries=1,
        **verify,
    )
    deploy >> check
    return deploy, check


def _production_pool(pool: str | None) -> dict[str, Any]:
    if pool is None:
        return {}
    if not isinstance(pool, str) or not pool.strip():
        raise ConfigError("production_pool", pool, "None or an Airflow pool name")
    return {"pool": pool}


def build_rollback_pipeline(
    *,
    dag_id: str,
    model_name: str,
    evaluation_data: str,
    description: str | None = None,
    doc_md: str | None = None,
    tags: Sequence[str] = TAGS,
    start_date: datetime = START_DATE,
    dingtalk_conn_id: str | None = None,
    smtp_conn_id: str | None = None,
    email_to: str | Sequence[str] | None = None,
    production_pool: str | None = None,
) -> DAG:
    """The DAG that puts the previous production version of `model_name` back and serves it.

    rollback alias (the store's `production` moves back to the version before it; the one rolled away from
    becomes `previous`) -> deploy production from that version -> verify production with a sample. A
    retried or repeated task of the same run adopts the rollback it already made instead of rolling back
    twice. One run at a time: two at once would each move the alias one step. Notifications (rolled back, a
    step failed) as `build_pipeline`'s; `production_pool` too (the pipeline's pool serializes a rollback
    with the pipelines' production changes).
    """
    check_model_name(model_name)
    production = _production_pool(production_pool)
    notifiers = pipeline_notifiers(
        dingtalk_conn_id=dingtalk_conn_id, smtp_conn_id=smtp_conn_id, email_to=email_to
    )
    evaluation_data = _check_evaluation_data(evaluation_data)
    params = ParamsDict(
        {
            "reason": Param(
                type="string",
                minLength=1,
                description="Why production goes back (kept in the alias history)",
            ),
            "runtime": _shared(
                "runtime",
                model_name,
                "Where production is served: this machine, or a Deployment on Kubernetes",
            ),
            "model_name": _shared("model_name", model_name),
            "model_store": _shared("model_store", model_name),
            "dataset": _shared("dataset", model_name),
            "verify_sample": _shared("verify_sample", model_name),
            "replicas": Param(1, description="runtime=kubernetes", **REPLICAS.schema()),
        }
    )
    with DAG(
        dag_id=dag_id,
        description=description
        or f"Move {model_name}'s production back to the previous version and serve it",
        schedule=None,
        start_date=start_date,
        catchup=False,
        max_active_runs=1,
        params=params,
        render_template_as_native_obj=True,
        default_args={
            "retries": 2,
            "retry_delay": timedelta(seconds=15),
            "on_failure_callback": notifiers["run_failed"],
        },
        tags=list(tags),
        doc_md=doc_md or build_rollback_pipeline.__doc__,
    ) as dag:
        rollback = ModelRollbackOperator(
            task_id="rollback_alias",
            **production,
            model_name=MODEL,
            model_store=STORE,
            reason="{{ params.reason }}",
            on_success_callback=notifiers["rolled_back"],
        )
        deploy_production, _ = _serve_production(
            XComArg(rollback, key="version"),
            evaluation_data,
            replicas="{{ params.replicas }}",
            production=production,
        )
        rollback >> deploy_production
    return dag
