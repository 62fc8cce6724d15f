"""Shared Hypothesis settings and a case counter for the fuzz tests (readers, config, server bodies).

Two profiles: ``make test`` runs :data:`FAST` cases per target with a fixed seed (``derandomize``: the same
cases every run, so a failure reproduces); ``make chaos`` runs :data:`LONG` fresh random cases per target.
The number of cases each target ran is counted in :data:`CASES` and printed at the end of the session
(``tests/conftest.py``), so docs/robustness.md can quote it::

    @given(files())
    def prop(f):
        CASES["readers"] += 1
        ...

    assert run_counted("readers", FAST, prop) >= FAST
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings

FAST = 150
"""Cases per target in ``make test`` (the whole fuzz set stays under ~40 s on a loaded 2-core machine)."""
LONG = 3000
"""Cases per target under the ``chaos`` marker."""

CASES: Counter[str] = Counter()
"""Cases run per target in this session (summed over tests that share a target)."""
OUTCOMES: Counter[str] = Counter()
"""How the cases ended, per target (``"server /v1/classify 4xx"``): shows the fuzzer got past validation."""


def profile(max_examples: int) -> settings:
    """Hypothesis settings: no deadline (a loaded CI box is slow), no example database on disk, and a fixed
    seed for the fast profile."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=max_examples <= FAST,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


def run_counted(target: str, max_examples: int, prop: Callable[[], Any]) -> int:
    """Run the Hypothesis test ``prop`` (already ``@given``) under :func:`profile`; the cases it ran.

    ``prop`` must add 1 to ``CASES[target]`` per case (its first line).
    """
    before = CASES[target]
    profile(max_examples)(prop)()
    return CASES[target] - before
