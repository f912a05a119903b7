"""mlpipe_fashion_mnist: pushed training image -> trained, tested, human-approved model in production.

train -> deploy staging (and point the store's `staging` alias at it) -> accuracy gate -> human approval
-> deploy production -> verify (or roll back) -> promote in the model store. Staging is torn down in every
outcome; the last task records how the run ended and fails the run if any step failed.

Trigger it from the UI's trigger form, `airflow dags trigger mlpipe_fashion_mnist --conf '{...}'`,
the REST API (`POST /api/v2/dags/mlpipe_fashion_mnist/dagRuns` with `conf`), or the ACR webhook.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, XComArg, task
from airflow.sdk.definitions.param import ParamsDict

from airflow_provider_mlpipe.operators.gates import AccuracyGateOperator
from airflow_provider_mlpipe.operators.model_store import (
    ModelAliasOperator,
    ModelPromoteOperator,
    PipelineOutcomeOperator,
)
from airflow_provider_mlpipe.operators.serving import ServingDeployOperator, ServingTeardownOperator
from airflow_provider_mlpipe.operators.train import KubeTrainJobOperator
from airflow_provider_mlpipe.params import PIPELINE_DAG_ID, RUN_PARAMS
from airflow_provider_mlpipe.sensors.accuracy import AccuracySensor
from airflow_provider_mlpipe.sensors.approval import ApprovalSensor

MODEL = "{{ params.model_name }}"
RUNTIME = "{{ params.runtime }}"
STORE = "{{ params.model_store or None }}"
DATASET = "{{ params.dataset or None }}"
# The Fashion-MNIST test split of the run's dataset (empty: MLPIPE_DATASET_DIR, the shared copy, or Keras'
# download), read as evaluation data (airflow_provider_mlpipe.datasets.load_evaluation_source).
EVALUATION_DATA = "fashion-mnist:{{ params.dataset }}"

# Generated from the one definition of each run param (airflow_provider_mlpipe.params), which the
# first task, the webhook's routes and the trainer's command line check against too.
PARAMS = ParamsDict({name: Param(**spec.param_kwargs()) for name, spec in RUN_PARAMS.items()})

with DAG(
    dag_id=PIPELINE_DAG_ID,
    description="Train, stage, gate, approve and deploy a Fashion-MNIST model from a pushed image",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=16,
    params=PARAMS,
    render_template_as_native_obj=True,
    default_args={
        # Fixed for a task when its run is created: per-run overrides go through the retry_policy Param.
        "retries": 2,
        "retry_delay": timedelta(seconds=15),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        # The run's in-task retries of transient errors: every provider operator and sensor takes
        # transient_retry (templated), so default_args hands it to each and to no other task.
        "transient_retry": "{{ params.retry_policy }}",
    },
    tags=["mlpipe", "mlops"],
    doc_md=__doc__,
) as dag:

    @task(retries=0)
    def validate_params(**context: Any) -> dict[str, object]:
        """Reject bad input before any work starts; nothing in production changes.

        Airflow refuses a bad value of a known param when the run is created, but keeps a conf key that
        no param defines, and checks each param alone: the unknown key and the params that contradict
        each other are refused here, before `train` reserves a model version.
        """
        from airflow_provider_mlpipe.validation import check_run_params

        conf = getattr(context.get("dag_run"), "conf", None) or {}
        return check_run_params(dict(context["params"]), conf)

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
        evaluation_data=EVALUATION_DATA,
        model_store=STORE,
        sample_size="{{ params.evaluation_sample }}",
    )
    accuracy_gate = AccuracyGateOperator(
        task_id="accuracy_gate",
        metrics=evaluate_staging.output,
        min_accuracy="{{ params.min_accuracy }}",
        max_regression="{{ params.max_regression }}",
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
        retries=0,
    )
    teardown_staging = ServingTeardownOperator(
        task_id="teardown_staging",
        endpoint="staging",
        model_name=MODEL,
        runtime=RUNTIME,
    ).as_teardown(setups=deploy_staging)
    deploy_production = ServingDeployOperator(
        task_id="deploy_production",
        endpoint="production",
        model_name=MODEL,
        version=XComArg(train, key="version"),
        runtime=RUNTIME,
        model_store=STORE,
        replicas="{{ params.kubernetes.replicas | default(1) }}",
    )
    verify_production = AccuracySensor(
        task_id="verify_production",
        endpoint_url=XComArg(deploy_production, key="url"),
        model_name=MODEL,
        version=XComArg(train, key="version"),
        evaluation_data=EVALUATION_DATA,
        model_store=STORE,
        sample_size="{{ params.verify_sample }}",
        baseline_accuracy=XComArg(evaluate_staging, key="accuracy"),
        tolerance=0.05,
        retries=1,
    )
    rollback_production = ServingDeployOperator(
        task_id="rollback_production",
        endpoint="production",
        model_name=MODEL,
        from_alias="production",
        teardown_if_unresolved=True,
        skip_unless_ran="deploy_production",
        runtime=RUNTIME,
        model_store=STORE,
        replicas="{{ params.kubernetes.replicas | default(1) }}",
        trigger_rule="one_failed",
    )
    promote_model = ModelPromoteOperator(
        task_id="promote_model",
        model_name=MODEL,
        version=XComArg(train, key="version"),
        model_store=STORE,
        approval=XComArg(approval, key="decision"),
        evaluation=evaluate_staging.output,
        training=train.output,
        # Promote only over the production the gate compared against and the approver saw.
        expected_production=XComArg(accuracy_gate, key="decision"),
    )
    outcome = PipelineOutcomeOperator(
        task_id="record_outcome",
        model_name=MODEL,
        model_store=STORE,
        trigger_rule="all_done",
        retries=0,
    )

    validated >> train >> deploy_staging >> evaluate_staging >> accuracy_gate >> [approval, accuracy_rejected]
    # Beside the evaluation, which need not wait for a store write; the gate waits for both.
    deploy_staging >> set_staging_alias >> accuracy_gate
    [approval, accuracy_rejected] >> teardown_staging
    approval >> deploy_production >> verify_production >> promote_model
    [deploy_production, verify_production] >> rollback_production
    [promote_model, rollback_production, teardown_staging, accuracy_rejected] >> outcome
