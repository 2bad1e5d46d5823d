"""Hypothesis profiles: ``ci`` (the default, what ``make test`` runs) and ``deep`` (``make test-deep``).

``HYPOTHESIS_PROFILE`` picks one (default ``ci``) when this module is imported, which must happen
before the test modules are (conftest imports it), because ``@given`` and ``@settings`` take their
defaults from the profile loaded at decoration time.

- ``ci``: few examples, derandomized, so ``make test`` stays inside its time budget and draws the
  same examples on every run (a red CI is a real regression, not a lucky draw).
- ``deep``: tens of thousands of examples and long stateful runs, randomized, so each run explores
  new inputs; failures go to the example database under ``.hypothesis/`` and replay first next time.

Tests whose examples are costly (state machines over the scheduler, the TVM cache) say how many
examples each profile gets with ``costly``.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

DATABASE = DirectoryBasedExampleDatabase(Path(__file__).resolve().parents[1] / ".hypothesis" / "examples")

settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=20_000,
    stateful_step_count=200,
    derandomize=False,
    database=DATABASE,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)  # an unknown name raises InvalidArgument listing the registered ones


def costly(ci: int, deep: int, ci_steps: int | None = None) -> settings:
    """Settings for a test whose examples are expensive: ``ci`` examples (and ``ci_steps`` stateful
    steps) under the ci profile, ``deep`` examples with the deep profile's long runs under deep."""
    if PROFILE == "deep":
        return settings(max_examples=deep)
    return settings(max_examples=ci) if ci_steps is None else settings(max_examples=ci, stateful_step_count=ci_steps)
