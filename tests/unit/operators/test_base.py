"""The operators' bases: the shared arguments reach every operator, from its call or from the DAG's
default_args, and template fields merge without repeats."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, BaseOperator

from airflow_provider_mlpipe.operators.base import (
    MlpipeOperator,
    RuntimeOperator,
    StoreOperator,
    merged_template_fields,
)
from airflow_provider_mlpipe.operators.serving import ServingDeployOperator, ServingTeardownOperator
from airflow_provider_mlpipe.operators.train import KubeTrainJobOperator


def test_merged_template_fields_keep_the_first_place_of_each() -> None:
    fields = merged_template_fields(StoreOperator, RuntimeOperator, own=("image", "model_name"))
    assert fields == (
        *BaseOperator.template_fields,
        "model_name",
        "transient_retry",
        "model_store",
        "runtime",
        "image",
    )


def test_shared_arguments_come_from_the_call_or_from_default_args() -> None:
    with DAG(
        "bases",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        default_args={"transient_retry": '{"attempts": 2}'},
    ):
        train = KubeTrainJobOperator(
            task_id="train",
            image="registry.example/train:1",
            model_name="shoes",
            runtime="kubernetes",
            model_store="file:///tmp/store",
            kubernetes_conn_id="k8s",
            namespace="ml",
            oss_conn_id="oss_store",
        )
        teardown = ServingTeardownOperator(
            task_id="teardown", endpoint="staging", transient_retry={"attempts": 3}
        )
    assert (train.model_name, train.runtime, train.model_store) == (
        "shoes",
        "kubernetes",
        "file:///tmp/store",
    )
    assert (train.kubernetes_conn_id, train.namespace, train.oss_conn_id) == ("k8s", "ml", "oss_store")
    assert train.transient_retry_policy.attempts == 2
    assert (teardown.model_name, teardown.runtime, teardown.namespace) == ("fashion_mnist", "local", None)
    assert teardown.transient_retry_policy.attempts == 3


def test_every_operator_of_the_runtime_and_the_store_builds_on_the_bases() -> None:
    assert issubclass(KubeTrainJobOperator, StoreOperator) and issubclass(
        KubeTrainJobOperator, RuntimeOperator
    )
    assert issubclass(ServingDeployOperator, StoreOperator) and issubclass(
        ServingDeployOperator, RuntimeOperator
    )
    assert issubclass(ServingTeardownOperator, RuntimeOperator)
    assert issubclass(StoreOperator, MlpipeOperator) and issubclass(RuntimeOperator, MlpipeOperator)
