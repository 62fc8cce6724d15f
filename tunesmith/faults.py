"""Named fault-injection points, for the crash tests only (``tests/unit/train/test_kill9.py``).

Code that must survive a crash at a given moment marks it with ``fault_point("checkpoint.after_rng")``.
Unset (every real run), a point costs one environment look-up. A test sets::

    TUNESMITH_FAULT=checkpoint.after_rng@2   # the 2nd time this process reaches that point ...
    TUNESMITH_FAULT_MARKER=/tmp/x/hit        # ... write this file, then sleep until killed

and SIGKILLs the process once the marker exists: the kill lands exactly there, not at a timing guess.
``@N`` defaults to 1. Not a user setting: a run that reaches its point never finishes.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

FAULT_ENV = "TUNESMITH_FAULT"
MARKER_ENV = "TUNESMITH_FAULT_MARKER"

_hits: Counter[str] = Counter()


def fault_point(name: str) -> None:
    """Pause here forever (after writing the marker file) when ``TUNESMITH_FAULT`` names this point's
    N-th hit in this process; otherwise return at once."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] != int(nth or 1):
        return
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(f"{name}@{_hits[name]} pid {os.getpid()}\n", encoding="utf-8")
    while True:  # the test kills us here; no timeout, so a slow test machine cannot let the run go on
        time.sleep(1)
