"""Row-level data tools behind ``tunesmith data clean|dedup|pii|split``: streaming, non-destructive, reported.

Each tool reads a file row by row (any format :func:`tunesmith.data.formats.iter_rows` reads), writes a new
JSONL file atomically and returns a report of what changed, how many rows and why. Rows that cannot be read
stop the step (``on_bad_row="stop"``) or are skipped and counted under ``bad_rows`` (``"skip"``)::

    from tunesmith.data.tools import clean_file, dedup_file, redact_file, split_file
    reports = [
        clean_file("raw.jsonl", "work/clean.jsonl"),
        dedup_file("work/clean.jsonl", "work/dedup.jsonl"),
        redact_file("work/dedup.jsonl", "work/redacted.jsonl"),
        split_file("work/redacted.jsonl", "work/splits", ratios=(0.8, 0.1, 0.1), seed=0),
    ]
"""

from tunesmith.data.tools.augment import augment_file, split_keeping_augmented
from tunesmith.data.tools.clean import CleanOptions, clean_file, clean_text
from tunesmith.data.tools.dedup import NearDupConfig, contamination, dedup_file, dedup_files, find_leakage
from tunesmith.data.tools.inspect import inspect_file
from tunesmith.data.tools.lint import lint_file
from tunesmith.data.tools.pii import find_pii, redact_file, redact_text
from tunesmith.data.tools.pipeline import run_prepare_steps
from tunesmith.data.tools.split import split_file
from tunesmith.data.tools.stream import BadRows, add_report_entry, transform_file
from tunesmith.data.tools.textfields import map_text, text_fields

__all__ = [
    "BadRows",
    "CleanOptions",
    "NearDupConfig",
    "add_report_entry",
    "augment_file",
    "clean_file",
    "clean_text",
    "contamination",
    "dedup_file",
    "dedup_files",
    "find_leakage",
    "find_pii",
    "inspect_file",
    "lint_file",
    "map_text",
    "redact_file",
    "redact_text",
    "run_prepare_steps",
    "split_file",
    "split_keeping_augmented",
    "text_fields",
    "transform_file",
]
