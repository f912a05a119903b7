"""BatchScoringOperator: score a file of examples with the production endpoint, write one CSV of predictions.

The example consumer of the production asset (`dags/mlpipe_batch_scoring.py`): it runs when a promotion or
rollback emits an event on `assets.production_asset(model)`, and scores with exactly the version the event
names (TF Serving's `/versions/<v>:predict`), so a run never mixes two models.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlpipe import config
from airflow_provider_mlpipe.assets import production_asset
from airflow_provider_mlpipe.exceptions import ConfigError, ModelStoreError, ServingError
from airflow_provider_mlpipe.operators.base import StoreOperator, merged_template_fields
from airflow_provider_mlpipe.runs import run_key

if TYPE_CHECKING:
    from airflow.sdk import Context


def production_url(model_name: str) -> str:
    """The local runtime's production endpoint of `model_name`: `[mlpipe] local_host` and its production
    port (`[mlpipe] production_ports`, else `production_port`)."""
    return f"http://{config.local_host()}:{config.production_port(model_name)}"


class BatchScoringOperator(StoreOperator):
    """Predict the class of every example in `input` with `model_name` at `endpoint_url`.

    The version scored: `version` when given, else the one named by the newest event on the model's
    production asset that triggered this run, else the store's `production` alias.

    XCom: {model_name, version, rows, output, class_counts}.

    :param endpoint_url: the production endpoint; default the local runtime's (`production_url`).
    :param input: examples as evaluation data (`.npz` path, file://, oss://, or `fashion-mnist:<dataset>`);
        only `inputs` is used (labels are not needed to score).
    :param output_dir: where the CSV goes; default `<AIRFLOW_HOME>/mlpipe/scores`.
    :param limit: score the first `limit` examples (0: all).
    :param output_name: the output holding the class scores, for a model with several outputs.
    """

    template_fields: Sequence[str] = merged_template_fields(
        StoreOperator, own=("endpoint_url", "input", "output_dir", "version", "limit")
    )

    def __init__(
        self,
        *,
        input: str,
        endpoint_url: str | None = None,
        output_dir: str | None = None,
        version: int | str | None = None,
        limit: int | str = 0,
        output_name: str | None = None,
        batch_size: int = 500,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ConfigError("batch_size", batch_size, "an integer >= 1")
        self.input = input
        self.endpoint_url = endpoint_url
        self.output_dir = output_dir
        self.version = version
        self.limit = limit
        self.output_name = output_name
        self.batch_size = batch_size

    def _version(self, context: Context) -> tuple[int, str]:
        if self.version not in (None, ""):
            try:
                return int(self.version), "given"  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ConfigError("version", self.version, "an integer model version") from None
        asset = production_asset(self.model_name)
        events = (context.get("triggering_asset_events") or {}).get(asset) or []
        versions = [e.extra.get("version") for e in events if isinstance(getattr(e, "extra", None), dict)]
        versions = [v for v in versions if isinstance(v, int) and not isinstance(v, bool)]
        if versions:
            return versions[-1], f"asset event on {asset.name}"
        alias = self.store_hook.store.get_alias(self.model_name, "production")
        if not alias:
            raise ModelStoreError(f"{self.model_name} has no production model in {self.store_hook.uri}")
        return int(alias["version"]), "the store's production alias"

    def execute(self, context: Context) -> dict[str, Any]:
        import numpy as np

        from airflow_provider_mlpipe.datasets.sources import load_evaluation_source
        from airflow_provider_mlpipe.hooks.serving import ServingHook
        from airflow_provider_mlpipe.serving_signature import prepare_instances

        try:
            limit = int(self.limit or 0)
        except (TypeError, ValueError):
            raise ConfigError("limit", self.limit, "a whole number >= 0") from None
        version, why = self._version(context)
        url = self.endpoint_url or production_url(self.model_name)
        self.log.info("Scoring %s with %s v%s (%s) at %s", self.input, self.model_name, version, why, url)
        data = load_evaluation_source(self.input, retry=self.transient_retry_policy)
        inputs = data.inputs[:limit] if limit else data.inputs
        hook = ServingHook(url, self.model_name, retry=self.transient_retry_policy)
        signature = hook.signature(version)
        instances = prepare_instances(
            inputs, signature.single_input(), source=data.source, where=signature.where
        )
        predicted: list[int] = []
        for start in range(0, len(instances), self.batch_size):
            rows = hook.predict(instances[start : start + self.batch_size].tolist(), version=version)
            if rows and isinstance(rows[0], dict):
                name = self.output_name or signature.output().key
                rows = [row[name] for row in rows]
            scores = np.asarray(rows, dtype=float)
            if scores.ndim != 2:
                raise ServingError(f"{url}: predictions have shape {scores.shape}, expected (batch, classes)")
            predicted.extend(int(i) for i in scores.argmax(axis=1))
        names = list(data.class_names or [])
        output = self._write(context, version, predicted, names)
        counts: dict[str, int] = {}
        for index in predicted:
            label = names[index] if index < len(names) else str(index)
            counts[label] = counts.get(label, 0) + 1
        self.log.info("Wrote %d predictions to %s", len(predicted), output)
        return {
            "model_name": self.model_name,
            "version": version,
            "rows": len(predicted),
            "output": str(output),
            "class_counts": counts,
        }

    def _write(self, context: Context, version: int, predicted: list[int], names: list[str]) -> Path:
        directory = Path(self.output_dir or config.airflow_home() / "mlpipe" / "scores").expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        run = re.sub(r"[^A-Za-z0-9_.-]", "_", run_key(context))[:120]
        target = directory / f"{self.model_name}-v{version}-{run}.csv"
        # Whole or not at all: a reader never sees half a file, a retry overwrites it.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["index", "class", "class_name"])
                for i, index in enumerate(predicted):
                    writer.writerow([i, index, names[index] if index < len(names) else ""])
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target
