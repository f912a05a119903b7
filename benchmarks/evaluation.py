"""Benchmark 2: accuracy evaluation of all 10,000 test images through the serving REST API (`:predict`,
the AccuracySensor's own client: ServingHook.evaluate), against in-process prediction with the same
SavedModel (the limit: no HTTP, no JSON).

Run: python -m benchmarks.evaluation [--repeats 5]"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks._common import Figure, check_repeats, dataset_dir, parser, report
from benchmarks._serving import MODEL, VERSION, ensure_model, serving

TARGET_SECONDS = 2.0


def in_process(saved_model_dir: str, images: Any, batch_size: int) -> tuple[float, Any]:
    import numpy as np
    import tensorflow as tf

    fn = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    fn(images=tf.constant(images[:batch_size], dtype=tf.float32))  # trace and warm up outside the clock
    started = time.perf_counter()
    preds = [
        np.argmax(fn(images=tf.constant(images[i : i + batch_size], dtype=tf.float32))["probabilities"], 1)
        for i in range(0, len(images), batch_size)
    ]
    return time.perf_counter() - started, np.concatenate(preds)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "", default_repeats=5)
    p.add_argument(
        "--batch-size", type=int, default=500, help="images per :predict (default 500, as the AccuracySensor)"
    )
    args = p.parse_args(argv)
    repeats = check_repeats(args.repeats)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from airflow_provider_mlpipe.datasets.fashion_mnist import load_fashion_mnist
    from airflow_provider_mlpipe.hooks.serving import ServingHook

    data = load_fashion_mnist(str(dataset_dir()), 1, None)
    images, labels = data.x_test, data.y_test
    store = ensure_model()
    rest: list[float] = []
    accuracies: set[float] = set()
    with serving(store) as url:
        hook = ServingHook(url, MODEL)
        hook.evaluate(images[:100], labels[:100], version=VERSION)  # connection and first-request warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            metrics = hook.evaluate(images, labels, version=VERSION, batch_size=args.batch_size)
            rest.append(time.perf_counter() - started)
            accuracies.add(round(metrics["accuracy"], 6))
    local: list[float] = []
    local_acc: set[float] = set()
    for _ in range(repeats):
        seconds, pred = in_process(str(store / MODEL / str(VERSION)), images, args.batch_size)
        local.append(seconds)
        local_acc.add(round(float(np.mean(pred == labels)), 6))
    if accuracies != local_acc:
        raise SystemExit(
            f"REST and in-process accuracies differ: {sorted(accuracies)} vs {sorted(local_acc)}"
        )
    ratios = [r / loc for r, loc in zip(sorted(rest), sorted(local), strict=True)]
    figures = [
        Figure(
            "10,000 images through REST :predict",
            "s",
            rest,
            anchor=3.0,
            anchor_label="(this server before this work)",
            target=("<=", TARGET_SECONDS),
        ),
        Figure("same, in-process SavedModel (the limit)", "s", local),
        Figure(
            "REST / in-process",
            "x",
            ratios,
            note="ratio of sorted runs (fastest with fastest)",
        ),
    ]
    report(
        "evaluation",
        "Accuracy evaluation: 10,000 test images, REST vs in-process",
        figures,
        command=f"python -m benchmarks.evaluation --repeats {repeats} --batch-size {args.batch_size}",
        details={"accuracy": sorted(accuracies), "batch_size": args.batch_size, "samples": len(labels)},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
