"""What a served model takes and gives, read from TF Serving's metadata, and evaluation inputs shaped to it.

`GET /v1/models/<name>[/versions/<v>]/metadata` answers (TF Serving's `GetModelMetadataResponse` as JSON, proto
field names, int64 as strings)::

    {"model_spec": {"name": "m", "signature_name": "", "version": "3"},
     "metadata": {"signature_def": {"signature_def": {"serving_default": {
         "inputs": {"x": {"dtype": "DT_FLOAT", "name": "serving_default_x:0",
                          "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "13", "name": ""}],
                                           "unknown_rank": false}}},
         "outputs": {"output_0": {...}}, "method_name": "tensorflow/serving/predict"}}}}}

numpy only: no TensorFlow, no Airflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from airflow_provider_mlpipe.exceptions import DatasetError, ServingError

DEFAULT_SIGNATURE = "serving_default"

# TF's DataType enum names (types.proto) that a JSON request can carry as numbers or booleans.
TF_DTYPES: dict[str, np.dtype[Any]] = {
    "DT_HALF": np.dtype(np.float16),
    "DT_FLOAT": np.dtype(np.float32),
    "DT_DOUBLE": np.dtype(np.float64),
    "DT_INT8": np.dtype(np.int8),
    "DT_INT16": np.dtype(np.int16),
    "DT_INT32": np.dtype(np.int32),
    "DT_INT64": np.dtype(np.int64),
    "DT_UINT8": np.dtype(np.uint8),
    "DT_UINT16": np.dtype(np.uint16),
    "DT_UINT32": np.dtype(np.uint32),
    "DT_UINT64": np.dtype(np.uint64),
    "DT_BOOL": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output: its key in the signature, TF dtype name, and shape (-1: any size; None: any rank)."""

    key: str
    dtype: str
    shape: tuple[int, ...] | None

    @property
    def numpy_dtype(self) -> np.dtype[Any] | None:
        return TF_DTYPES.get(self.dtype)

    def shown_shape(self) -> str:
        return "any shape" if self.shape is None else str(list(self.shape))


@dataclass(frozen=True)
class SignatureInfo:
    """A signature of the served model, as its metadata describes it; `where` names model, version and URL."""

    key: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    where: str

    def single_input(self) -> TensorInfo:
        """The one input the evaluation data feeds: an `.npz` has one `inputs` array."""
        if len(self.inputs) != 1:
            raise ServingError(
                f"{self.where}: signature {self.key!r} has inputs {sorted(self.inputs)}: expected exactly one "
                "(the evaluation data holds one 'inputs' array)"
            )
        return next(iter(self.inputs.values()))

    def output(self, name: str | None = None) -> TensorInfo:
        """The output scored: `name`, or the only one."""
        if name is not None:
            if name not in self.outputs:
                raise ServingError(
                    f"{self.where}: signature {self.key!r} has no output {name!r}: "
                    f"expected one of {sorted(self.outputs)}"
                )
            return self.outputs[name]
        if len(self.outputs) != 1:
            raise ServingError(
                f"{self.where}: signature {self.key!r} has outputs {sorted(self.outputs)}: "
                "expected exactly one, or the sensor's output_name naming the class scores"
            )
        return next(iter(self.outputs.values()))

    def output_width(self, name: str | None = None) -> int | None:
        """Number of classes the output scores ([batch, K] -> K); None when the metadata leaves it open."""
        shape = self.output(name).shape
        if shape is None or len(shape) != 2 or shape[1] < 1:
            return None
        return shape[1]


def _get(doc: object, path: tuple[str, ...], where: str) -> Any:
    node = doc
    for depth, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            raise ServingError(
                f"{where}: the model metadata has no {'.'.join(path[: depth + 1])!r}: expected TF Serving's "
                "GetModelMetadataResponse (metadata.signature_def.signature_def.<signature>)"
            )
        node = node[key]
    return node


def _tensor(key: str, doc: object, where: str) -> TensorInfo:
    if not isinstance(doc, dict):
        raise ServingError(
            f"{where}: tensor {key!r} in the model metadata is {doc!r:.100}: expected an object"
        )
    dtype = doc.get("dtype", "DT_INVALID")
    shape_doc = doc.get("tensor_shape") or {}
    if not isinstance(shape_doc, dict):
        raise ServingError(f"{where}: tensor {key!r} has tensor_shape {shape_doc!r:.100}: expected an object")
    shape: tuple[int, ...] | None
    if shape_doc.get("unknown_rank"):
        shape = None
    else:
        try:
            # proto3 JSON writes int64 as strings; an omitted size is 0, as in the proto.
            shape = tuple(int(dim.get("size", 0)) for dim in shape_doc.get("dim") or [])
        except (AttributeError, TypeError, ValueError):
            raise ServingError(
                f"{where}: tensor {key!r} has tensor_shape {shape_doc!r:.200}: expected dims with integer sizes"
            ) from None
    return TensorInfo(key, str(dtype), shape)


def parse_metadata(doc: object, *, signature: str = DEFAULT_SIGNATURE, where: str) -> SignatureInfo:
    """`signature` of a metadata answer; errors name `where` and what is missing."""
    signatures = _get(doc, ("metadata", "signature_def", "signature_def"), where)
    if not isinstance(signatures, dict) or signature not in signatures:
        known = sorted(signatures) if isinstance(signatures, dict) else []
        raise ServingError(f"{where}: the model has no signature {signature!r}: expected one of {known}")
    sig = signatures[signature]
    inputs = _get(sig, ("inputs",), f"{where} signature {signature!r}")
    outputs = _get(sig, ("outputs",), f"{where} signature {signature!r}")
    if not isinstance(inputs, dict) or not isinstance(outputs, dict):
        raise ServingError(f"{where}: signature {signature!r} has inputs/outputs that are not objects")
    return SignatureInfo(
        key=signature,
        inputs={k: _tensor(k, v, where) for k, v in inputs.items()},
        outputs={k: _tensor(k, v, where) for k, v in outputs.items()},
        where=where,
    )


def prepare_instances(
    inputs: npt.NDArray[Any], spec: TensorInfo, *, source: str, where: str
) -> npt.NDArray[Any]:
    """`inputs` (examples on the first axis) checked against the model's input `spec` and cast to its dtype.

    Returns the array to send. Values must survive the cast (floats into an integer input must be whole
    numbers in range; 0/1 into a boolean one), except float into a narrower float, which only rounds.
    """
    target = spec.numpy_dtype
    if target is None:
        raise DatasetError(
            f"{where}: input {spec.key!r} has dtype {spec.dtype}: the evaluation sends numbers or booleans "
            f"(expected one of {', '.join(TF_DTYPES)})"
        )
    if spec.shape is not None:
        expected, actual = spec.shape[1:], inputs.shape[1:]
        if (
            not spec.shape
            or len(expected) != len(actual)
            or any(e != -1 and e != a for e, a in zip(expected, actual, strict=True))
        ):
            raise DatasetError(
                f"evaluation data {source!r}: field 'inputs' holds examples of shape {list(actual)}, but input "
                f"{spec.key!r} of {where} takes {list(expected) if spec.shape else 'no batch axis'} per example "
                f"(its shape is {list(spec.shape)}, -1 = any size)"
            )
    if inputs.dtype == target:
        return inputs
    cast = inputs.astype(target)
    if not (inputs.dtype.kind == "f" and target.kind == "f"):
        changed = cast.astype(inputs.dtype) != inputs
        if changed.any():
            index = tuple(int(i) for i in np.argwhere(changed)[0])
            value = inputs[index].item()
            raise DatasetError(
                f"evaluation data {source!r}: field 'inputs' has {value!r} at index {list(index)}, which "
                f"the dtype {spec.dtype} of input {spec.key!r} of {where} cannot hold: expected values that "
                f"survive a cast from {inputs.dtype} to {target}"
            )
        if target.kind == "f" and inputs.dtype.kind in "iu":
            # Same values either way (checked above), and integers keep the JSON body several times smaller.
            return inputs
    return cast
