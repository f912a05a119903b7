"""Init-container step: fetch one published model version into TF Serving's model base path.

    python -m airflow_provider_mlpipe.images.serving.fetch --model-store URI --model-name NAME \
        --version N --dest /models/NAME

Every file is checked against the manifest's sha256; the version appears under `dest` only when complete
(so TF Serving, which loads any integer directory, never sees a partial one). Exit 0 also when the
version is already there (a restarted pod), 2 on bad arguments, 1 on a store error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("mlpipe.fetch")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    parser = argparse.ArgumentParser(prog="fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", default=os.environ.get("MLPIPE_MODEL_STORE"), required=False)
    parser.add_argument("--model-name", default=os.environ.get("MLPIPE_MODEL_NAME", "fashion_mnist"))
    parser.add_argument("--version", default=os.environ.get("MLPIPE_MODEL_VERSION"))
    parser.add_argument("--dest", default=os.environ.get("MLPIPE_MODEL_DEST"))
    args = parser.parse_args(argv)

    from airflow_provider_mlpipe.exceptions import MlpipeError
    from airflow_provider_mlpipe.modelstore import MARKER, open_store

    for flag, value in (("--model-store", args.model_store), ("--dest", args.dest)):
        if not value:
            parser.error(f"{flag} is required (or its MLPIPE_* environment variable)")
    try:
        version = int(args.version)
        if version < 1:
            raise ValueError
    except (TypeError, ValueError):
        parser.error(f"--version={args.version!r} is invalid: expected an integer >= 1")
    dest = Path(args.dest)
    if (dest / str(version) / MARKER).is_file():
        log.info("%s v%s already present in %s", args.model_name, version, dest)
        return 0
    try:
        target = open_store(args.model_store).fetch(args.model_name, version, dest)
    except MlpipeError as err:
        log.error("fetch failed: %s", err)
        return 1
    log.info("fetched %s v%s into %s", args.model_name, version, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
