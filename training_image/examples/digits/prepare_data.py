"""Write the digits example's dataset: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no
download), split once with a fixed seed into `train.npz` and `test.npz` in the evaluation contract's
format (airflow_provider_mlpipe.evaluation): `inputs` [N, 64] float32 pixel intensities 0..16, `labels`
[N] class ids, `class_names` "0".."9".

    python training_image/examples/digits/prepare_data.py /var/mlpipe/datasets/digits

The trainer reads both files from the run's `dataset`; the pipeline scores staging and production on
`test.npz` from the same place (dags/mlpipe_digits.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TEST_FRACTION = 0.25
SEED = 0
CLASS_NAMES = [str(digit) for digit in range(10)]


def prepare(directory: Path) -> tuple[Path, Path]:
    """Write train.npz and test.npz under `directory` (created if missing); the same files every time."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = digits.data.astype(np.float32)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(labels))
    cut = int(len(labels) * (1 - TEST_FRACTION))
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, idx in (("train", order[:cut]), ("test", order[cut:])):
        path = directory / f"{name}.npz"
        np.savez(path, inputs=inputs[idx], labels=labels[idx], class_names=np.array(CLASS_NAMES))
        paths.append(path)
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("directory", type=Path, help="where train.npz and test.npz are written")
    args = parser.parse_args(argv)
    train, test = prepare(args.directory)
    sys.stdout.write(f"wrote {train} and {test}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
