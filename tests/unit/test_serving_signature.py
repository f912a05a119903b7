"""Reading a served model's input and output from TF Serving's metadata, and shaping inputs to them."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from airflow_provider_mlpipe.exceptions import DatasetError, ServingError
from airflow_provider_mlpipe.serving_signature import TensorInfo, parse_metadata, prepare_instances

# A reference answer written by hand, NOT recorded from a running TF Serving (none can run here): the
# layout (key order, int64 sizes as strings, "defaults": {}) that TF Serving 2.x documents and answers for
# a Keras 3 `model.export()` SavedModel, here for a 13-feature, 3-class classifier.
REFERENCE = Path(__file__).parent / "data" / "tf_serving_metadata_keras3_tabular.json"
WHERE = "wine v4 at http://serving:8501"


@pytest.fixture
def reference() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(REFERENCE.read_text())
    return doc


def test_parses_the_reference_tf_serving_answer(reference: dict[str, Any]) -> None:
    sig = parse_metadata(reference, where=WHERE)
    assert sig.key == "serving_default"
    assert sig.single_input() == TensorInfo("input_layer", "DT_FLOAT", (-1, 13))
    assert sig.single_input().numpy_dtype == np.float32
    assert sig.output() == TensorInfo("output_0", "DT_FLOAT", (-1, 3))
    assert sig.output_width() == 3
    init = parse_metadata(reference, signature="__saved_model_init_op", where=WHERE)
    assert init.inputs == {} and init.outputs["__saved_model_init_op"].shape is None


def test_unknown_signature_and_missing_sections_are_named(reference: dict[str, Any]) -> None:
    with pytest.raises(
        ServingError, match=re.escape(f"{WHERE}: the model has no signature 'predict': expected")
    ):
        parse_metadata(reference, signature="predict", where=WHERE)
    with pytest.raises(ServingError, match=re.escape("has no 'metadata.signature_def'")):
        parse_metadata({"metadata": {}}, where=WHERE)
    broken = copy.deepcopy(reference)
    del broken["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]
    with pytest.raises(
        ServingError, match=re.escape("signature 'serving_default': the model metadata has no 'outputs'")
    ):
        parse_metadata(broken, where=WHERE)
    broken = copy.deepcopy(reference)
    sig = broken["metadata"]["signature_def"]["signature_def"]["serving_default"]
    sig["inputs"]["input_layer"]["tensor_shape"]["dim"][1]["size"] = "thirteen"
    with pytest.raises(ServingError, match=re.escape("tensor 'input_layer' has tensor_shape")):
        parse_metadata(broken, where=WHERE)


def test_several_inputs_or_outputs_need_a_choice(reference: dict[str, Any]) -> None:
    sig_doc = reference["metadata"]["signature_def"]["signature_def"]["serving_default"]
    sig_doc["inputs"]["mask"] = sig_doc["inputs"]["input_layer"]
    sig_doc["outputs"]["logits"] = sig_doc["outputs"]["output_0"]
    sig = parse_metadata(reference, where=WHERE)
    with pytest.raises(
        ServingError, match=re.escape("has inputs ['input_layer', 'mask']: expected exactly one")
    ):
        sig.single_input()
    with pytest.raises(
        ServingError, match=re.escape("has outputs ['logits', 'output_0']: expected exactly one")
    ):
        sig.output()
    assert sig.output_width("logits") == 3
    with pytest.raises(
        ServingError, match=re.escape("has no output 'probs': expected one of ['logits', 'output_0']")
    ):
        sig.output("probs")


def test_an_open_output_width_is_none() -> None:
    doc = {"metadata": {"signature_def": {"signature_def": {"serving_default": {
        "inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [], "unknown_rank": True}}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}, {"size": "-1"}]}}},
    }}}}}  # fmt: skip
    sig = parse_metadata(doc, where=WHERE)
    assert sig.output_width() is None
    assert sig.single_input().shape is None


SPEC = TensorInfo("input_layer", "DT_FLOAT", (-1, 13))


def test_inputs_are_cast_to_the_declared_dtype() -> None:
    x = np.random.default_rng(0).normal(size=(4, 13))
    out = prepare_instances(x, SPEC, source="eval.npz", where=WHERE)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x, rtol=1e-6)
    ints = prepare_instances(
        np.array([[1.0, 2.0]]), TensorInfo("ids", "DT_INT64", (-1, 2)), source="s", where=WHERE
    )
    assert ints.dtype == np.int64 and ints.tolist() == [[1, 2]]


def test_integers_for_a_float_input_are_sent_as_they_are() -> None:
    pixels = np.full((2, 8, 8), 200, dtype=np.uint8)
    out = prepare_instances(pixels, TensorInfo("images", "DT_FLOAT", (-1, 8, 8)), source="s", where=WHERE)
    assert out is pixels  # same values, a JSON body of small integers instead of floats


@pytest.mark.parametrize(
    ("shape", "spec_shape", "expected"),
    [
        ((5, 8, 8), (-1, 13), "holds examples of shape [8, 8], but input 'input_layer' of " + WHERE
         + " takes [13] per example (its shape is [-1, 13], -1 = any size)"),
        ((5, 12), (-1, 13), "holds examples of shape [12], but input 'input_layer'"),
        ((5, 13), (), "takes no batch axis per example (its shape is []"),
    ],
)  # fmt: skip
def test_a_shape_mismatch_names_the_input_the_expected_and_the_actual_shape(
    shape: tuple[int, ...], spec_shape: tuple[int, ...], expected: str
) -> None:
    spec = TensorInfo("input_layer", "DT_FLOAT", spec_shape)
    with pytest.raises(DatasetError) as err:
        prepare_instances(np.zeros(shape), spec, source="eval.npz", where=WHERE)
    assert str(err.value).startswith("evaluation data 'eval.npz': field 'inputs' ")
    assert expected in str(err.value)


def test_any_size_dims_and_unknown_rank_accept_any_example_shape() -> None:
    x = np.zeros((3, 7, 5), dtype=np.float32)
    assert prepare_instances(x, TensorInfo("x", "DT_FLOAT", (-1, -1, 5)), source="s", where=WHERE) is x
    assert prepare_instances(x, TensorInfo("x", "DT_FLOAT", None), source="s", where=WHERE) is x


@pytest.mark.parametrize(
    ("values", "dtype", "found"),
    [
        (np.array([[0.5, 1.0]]), "DT_INT32", "0.5 at index [0, 0]"),
        (np.array([[1, 300]]), "DT_UINT8", "300 at index [0, 1]"),
        (np.array([[0, 2]]), "DT_BOOL", "2 at index [0, 1]"),
    ],
)  # fmt: skip
def test_values_the_input_dtype_cannot_hold_are_refused(values: np.ndarray, dtype: str, found: str) -> None:
    with pytest.raises(DatasetError) as err:
        prepare_instances(values, TensorInfo("x", dtype, (-1, 2)), source="eval.npz", where=WHERE)
    assert f"field 'inputs' has {found}, which" in str(err.value)
    assert f"the dtype {dtype} of input 'x' of {WHERE} cannot hold" in str(err.value)


def test_a_string_input_is_refused() -> None:
    with pytest.raises(
        DatasetError, match=re.escape("input 'text' has dtype DT_STRING: the evaluation sends numbers")
    ):
        prepare_instances(np.zeros((1, 1)), TensorInfo("text", "DT_STRING", (-1,)), source="s", where=WHERE)
