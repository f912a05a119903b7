"""mlpipe_digits: the second example pipeline, for a team's own model: a dense network on scikit-learn's
8x8 handwritten digits (features [batch, 64] in, 10 class probabilities out), trained by its own image
(training_image/examples/digits/). The provider's code is the same as for mlpipe_fashion_mnist.

Prepare the data once (`python training_image/examples/digits/prepare_data.py DIR`), then trigger with
`airflow dags trigger mlpipe_digits --conf '{"image": "<registry>/<ns>/digits-trainer@sha256:...",
"dataset": "DIR"}'` (or push the image: an ACR webhook route names this DAG).
"""

from __future__ import annotations

from pathlib import Path

from airflow_provider_mlpipe.pipeline import build_pipeline, build_rollback_pipeline

# The local runtime runs the trainer in place of the image; Kubernetes runs the image's ENTRYPOINT.
TRAINER = Path(__file__).resolve().parents[1] / "training_image" / "examples" / "digits" / "train.py"
# Both gates score the held-out split prepare_data.py wrote next to the training data.
EVALUATION_DATA = "{{ params.dataset }}/test.npz"

dag = build_pipeline(
    dag_id="mlpipe_digits",
    model_name="digits",
    evaluation_data=EVALUATION_DATA,
    local_training_command=["python", str(TRAINER)],
    param_defaults={"min_accuracy": 0.9, "verify_sample": 200},
    doc_md=__doc__,
)
rollback = build_rollback_pipeline(
    dag_id="mlpipe_digits_rollback", model_name="digits", evaluation_data=EVALUATION_DATA
)
