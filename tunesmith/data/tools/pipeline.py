"""Run a list of data steps over the training file before training: ``data.prepare`` in a run config.

::

    data:
      train: raw.jsonl
      prepare:
        - {step: clean, unicode: NFKC, min_chars: 10}
        - {step: dedup}                              # exact + near duplicates
        - {step: pii}
        - {step: leakage, eval_files: [val.jsonl]}       # drop train rows that repeat validation rows
        - {step: augment, ops: [swap, delete], n: 1}

Each step reads the previous step's output and writes ``<work_dir>/<NN>-<step>.jsonl``; the original file is
never modified. The reports come back in order, ready for ``data_report.json``. From a run config, rows that
cannot be read follow ``data.on_bad_row`` (stop, or skip and count under each report's ``bad_rows``) and
paraphrases come from the run's own ``model.name``::

    train_path, reports = run_prepare_steps(
        "raw.jsonl", cfg.data.prepare, run_dir / "data", on_bad_row=cfg.data.on_bad_row, model=cfg.model.name
    )

A step is one entry in :data:`PREPARE_STEPS`: its name and a function ``(src, dst, **options) -> report``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from tunesmith.data.tools.augment import augment_file
from tunesmith.data.tools.clean import CleanOptions, clean_file
from tunesmith.data.tools.dedup import dedup_file, find_leakage, near_settings
from tunesmith.data.tools.pii import redact_file
from tunesmith.errors import ConfigError, DataError


def _clean(src: Path, dst: Path, on_bad_row: str = "stop", **options: Any) -> dict[str, Any]:
    return clean_file(src, dst, CleanOptions(**options), on_bad_row=on_bad_row)


def _dedup(
    src: Path,
    dst: Path,
    near: bool = True,
    threshold: float = 0.8,
    num_perm: int = 128,
    on_bad_row: str = "stop",
    index: Literal["auto", "memory", "disk"] = "auto",
    tmp_dir: str | None = None,
) -> dict[str, Any]:
    config, where = near_settings(threshold, num_perm, index, tmp_dir)
    return dedup_file(src, dst, near=near, config=config, on_bad_row=on_bad_row, index=where)


def _pii(src: Path, dst: Path, names: bool = False, on_bad_row: str = "stop") -> dict[str, Any]:
    return redact_file(src, dst, names=names, on_bad_row=on_bad_row)


def _leakage(
    src: Path,
    dst: Path,
    eval_files: Sequence[str],
    near: bool = True,
    threshold: float = 0.8,
    num_perm: int = 128,
    on_bad_row: str = "stop",
    index: Literal["auto", "memory", "disk"] = "auto",
    tmp_dir: str | None = None,
) -> dict[str, Any]:
    config, where = near_settings(threshold, num_perm, index, tmp_dir)
    return find_leakage(
        src, list(eval_files), dst, near=near, config=config, on_bad_row=on_bad_row, index=where
    )


def _augment(
    src: Path,
    dst: Path,
    n: int = 1,
    ops: Sequence[str] = ("swap", "delete"),
    seed: int = 0,
    rate: float = 0.1,
    model: str = "default",
    on_bad_row: str = "stop",
) -> dict[str, Any]:
    # Paraphrasing loads a model: opt in with ops: [paraphrase, ...]; the default is the cheap word edits.
    return augment_file(src, dst, n=n, ops=ops, seed=seed, rate=rate, model_name=model, on_bad_row=on_bad_row)


PREPARE_STEPS: dict[str, Callable[..., dict[str, Any]]] = {
    "clean": _clean,
    "dedup": _dedup,
    "pii": _pii,
    "leakage": _leakage,
    "augment": _augment,
}
"""Steps a run config may list under ``data.prepare``, by name."""


def _options(fn: Callable[..., Any], step: dict[str, Any], index: int, run: dict[str, Any]) -> dict[str, Any]:
    """The step's options, checked against what its function accepts (so a typo is an error, not ignored),
    on top of the run-wide settings in ``run`` that the step takes (``on_bad_row``, ``model``)."""
    options = {k: v for k, v in step.items() if k != "step"}
    accepted = set(list(inspect.signature(fn).parameters)[2:])
    if fn is _clean:
        accepted |= set(CleanOptions.__dataclass_fields__)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"data.prepare[{index}] ({step['step']}): unknown option(s) {unknown}; "
            f"accepted: {', '.join(sorted(accepted)) or 'none'}"
        )
    return {k: v for k, v in run.items() if k in accepted} | options


def run_prepare_steps(
    train_path: str | Path,
    steps: Sequence[dict[str, Any]],
    work_dir: str | Path,
    *,
    on_bad_row: str = "stop",
    model: str = "default",
) -> tuple[Path, list[dict[str, Any]]]:
    """Apply ``steps`` in order to the training file.

    Args:
        train_path: The training file (never modified).
        steps: ``[{"step": "clean", ...options}, ...]``; names and options as in :data:`PREPARE_STEPS`.
        work_dir: Where the intermediate files go (``01-clean.jsonl``, ``02-dedup.jsonl``...).
        on_bad_row: ``data.on_bad_row`` for every step: ``stop`` at an unreadable row, or ``skip`` and count
            it in the step's ``bad_rows`` (a step's own ``on_bad_row`` option wins).
        model: The run's ``model.name``: what ``augment`` paraphrases with unless the step names a ``model``.

    Returns:
        The last step's output (``train_path`` itself when there are no steps) and the step reports in order.

    Raises:
        ConfigError: an unknown step or option.
        DataError: a step failed (unreadable file, malformed row...).
    """
    current = Path(train_path)
    if not current.is_file():
        raise DataError(f"training file {current} does not exist; check data.train")
    work_dir = Path(work_dir)
    reports: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        name = step.get("step") if isinstance(step, dict) else None
        if name not in PREPARE_STEPS:
            raise ConfigError(
                f"data.prepare[{i}]: unknown step {name!r}; known steps: {', '.join(PREPARE_STEPS)} "
                "(write each as {step: NAME, ...options})"
            )
        fn = PREPARE_STEPS[name]
        options = _options(fn, step, i, {"on_bad_row": on_bad_row, "model": model})
        dst = work_dir / f"{i + 1:02d}-{name}.jsonl"
        try:
            inspect.signature(fn).bind(current, dst, **options)
        except TypeError as err:  # e.g. leakage without its required ``eval_files`` list
            raise ConfigError(f"data.prepare[{i}] ({name}): {err}") from None
        reports.append(fn(current, dst, **options))
        current = dst
    return current, reports
