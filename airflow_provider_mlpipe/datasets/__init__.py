"""Datasets used by the mlpipe trainer (numpy only; TensorFlow is imported lazily where needed)."""

from __future__ import annotations

from airflow_provider_mlpipe.datasets.fashion_mnist import (
    CLASS_NAMES,
    DATASET_DIR_ENV,
    FILES,
    IMAGE_SHAPE,
    KERAS_DOWNLOAD,
    NUM_CLASSES,
    OFFICIAL_MD5,
    TEST_IMAGES,
    TEST_LABELS,
    TEST_SIZE,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    TRAIN_SIZE,
    FashionMnist,
    check_dataset_dir,
    dataset_checksum,
    default_dataset_dir,
    file_md5,
    load_fashion_mnist,
    load_split,
    resolve_location,
)
from airflow_provider_mlpipe.datasets.sources import FASHION_MNIST_SOURCE, load_evaluation_source

__all__ = [
    "CLASS_NAMES",
    "DATASET_DIR_ENV",
    "FASHION_MNIST_SOURCE",
    "FILES",
    "IMAGE_SHAPE",
    "KERAS_DOWNLOAD",
    "NUM_CLASSES",
    "OFFICIAL_MD5",
    "TEST_IMAGES",
    "TEST_LABELS",
    "TEST_SIZE",
    "TRAIN_IMAGES",
    "TRAIN_LABELS",
    "TRAIN_SIZE",
    "FashionMnist",
    "check_dataset_dir",
    "dataset_checksum",
    "default_dataset_dir",
    "file_md5",
    "load_evaluation_source",
    "load_fashion_mnist",
    "load_split",
    "resolve_location",
]
