"""Hold points: a test holds a running step at a known place until it releases it.

A fault test must inject its fault while a step is in a given state (training still running, an evaluation
request in flight). Racing the step with a clock passes on an idle machine and fails on a busy one, so the
trainer, the serving server and the ACR webhook's dispatcher each have one named point where they wait
while a file exists:

    MLPIPE_HOLD_<POINT>=/path/to/file   (points: TRAINING_EPOCH, PREDICT, DISPATCH_BATCH)

DISPATCH_BATCH: the dispatcher has written a batch's runs and outcomes and not committed them.

The step logs one line when it starts waiting (the event a test waits for) and one when released. Unset,
a hold point costs one environment lookup. Every hold ends after `MLPIPE_HOLD_MAX_SECONDS` (600 by default)
even if the file stays, so a test that forgot its file cannot hang a step for ever.
"""

from __future__ import annotations

import logging
import os
import time

HELD = "held at"
RELEASED = "released from"


def env_name(point: str) -> str:
    return f"MLPIPE_HOLD_{point.upper()}"


def hold(point: str, log: logging.Logger) -> float:
    """Wait while the file named by MLPIPE_HOLD_<point> exists; returns the seconds waited."""
    path = os.environ.get(env_name(point))
    if not path or not os.path.exists(path):
        return 0.0
    limit = float(os.environ.get("MLPIPE_HOLD_MAX_SECONDS", "600"))
    started = time.monotonic()
    log.warning("%s %s while %s exists", HELD, point, path)
    _flush(log)
    while os.path.exists(path) and time.monotonic() - started < limit:
        time.sleep(0.05)
    waited = time.monotonic() - started
    log.warning("%s %s after %.1f s", RELEASED, point, waited)
    _flush(log)
    return waited


def _flush(log: logging.Logger) -> None:
    for handler in [*log.handlers, *logging.getLogger().handlers]:
        handler.flush()
