"""The base of every configuration section (kept apart from config.py so the objective and grader schemas in
tunesmith/objective.py can use it without an import cycle)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for every section: unknown keys are rejected instead of silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)
