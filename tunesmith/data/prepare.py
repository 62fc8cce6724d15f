"""Turn the configured data files into tokenized train/validation/test splits and a data report.

Steps: read and validate each file (:mod:`tunesmith.data.formats`), hold out a seeded validation fraction
when no validation file is given, render and tokenize (:mod:`tunesmith.data.render`), truncate or drop
over-long examples, and count everything on the way into ``report`` (written as ``data_report.json``).

Tokenized splits are cached under ``$TUNESMITH_HOME/cache/tokenized/<key>/`` as one Parquet file per split
(columns ``input_ids``, ``labels`` and ``example``: the kept :class:`Example` as JSON, so evaluation gets
exactly the examples the ids came from without re-reading) plus ``report.json``. The key hashes the input
files' bytes, the tokenizer (vocabulary, special tokens, chat template), every data setting that changes the
result, and the seed; any change is a miss and a fresh directory::

    data = prepare_data(cfg.data, tokenizer, cfg.seed)
    data.train.input_ids[0], data.report["splits"]["train"]["truncated"], data.report["cache"]  # "hit"/"miss"
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import DataConfig
from tunesmith.data.formats import KIND_OF_FORMAT, Example, SourceData, read_source
from tunesmith.data.mixing import with_prefix
from tunesmith.data.render import (
    IGNORE_INDEX,
    class_target_labels,
    ensure_chat_template,
    head_input_ids,
    render_example,
)
from tunesmith.errors import ConfigError, DataError
from tunesmith.io import atomic_dir, write_json_atomic
from tunesmith.models.loading import tunesmith_home

CACHE_VERSION = 1
"""Bump when rendering or the cache layout changes, so old caches are not reused."""
SPLITS = ("train", "validation", "test")
_PATH_FIELDS = {"train", "validation", "test"}  # hashed by content instead of by name


@dataclass
class Split:
    """One tokenized split; ``examples[i]`` is the source of ``input_ids[i]`` and ``labels[i]``."""

    examples: list[Example]
    input_ids: list[list[int]]
    labels: list[list[int]]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class PreparedData:
    """The splits ready for training and evaluation, plus the data report."""

    train: Split
    validation: Split | None
    test: Split | None
    kind: str
    label_names: list[str] | None
    report: dict[str, Any]
    retain: Split | None = None
    """``data.retain``'s rows, rendered like train (the lm pipeline reads them; None without the key)."""


def fingerprint_tokenizer(tokenizer: Any) -> str:
    """A sha256 that changes whenever tokenization or rendering would: vocab, merges, specials, template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the full tokenizer.json: vocab, merges, normalizer, added tokens
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    meta = {
        "class": type(tokenizer).__name__,
        "special_tokens": tokenizer.special_tokens_map,
        "chat_template": tokenizer.chat_template,
    }
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """The sha256 of a data file's bytes, as ``data_report.json`` records it.

    Raises:
        DataError: The file is missing or not a file.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: file not found" if not file.exists() else f"{path}: not a file")
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_dir(key: str) -> Path:
    return tunesmith_home() / "cache" / "tokenized" / key


def _cache_key(
    data_cfg: DataConfig, files: dict[str, dict[str, str]], tokenizer_fp: str, seed: int, head: str = "lm"
) -> str:
    settings = {k: v for k, v in data_cfg.model_dump(mode="json").items() if k not in _PATH_FIELDS}
    payload = {
        "version": CACHE_VERSION,
        "files": {name: info["sha256"] for name, info in files.items()},
        "tokenizer": tokenizer_fp,
        "settings": settings,
        "seed": seed,
    }
    if head != "lm":  # only then, so the keys of existing (lm) caches stay valid
        payload["head"] = head
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:32]


# ---------------------------------------------------------------------------------------- reading + split


def _read_split(path: str, data_cfg: DataConfig, train: SourceData | None) -> SourceData:
    """Read one file; validation/test must be the same kind as train and use train's label names."""
    label_names = data_cfg.labels if train is None else train.label_names
    source = read_source(path, data_cfg.format, data_cfg.on_bad_row, label_names)
    if train is not None and KIND_OF_FORMAT[source.format] != KIND_OF_FORMAT[train.format]:
        raise DataError(
            f"{path} is in {source.format!r} format but the training file {data_cfg.train} is in "
            f"{train.format!r} format; validation and test files must hold the same kind of rows as train"
        )
    return source


def hold_out(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Seeded random ``fraction`` of ``examples`` (at least one, never all); both parts keep file order."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    n_val = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    held = set(random.Random(seed).sample(range(len(examples)), n_val))
    train = [ex for i, ex in enumerate(examples) if i not in held]
    return train, [ex for i, ex in enumerate(examples) if i in held]


# ------------------------------------------------------------------------------------------ tokenization


def _tokenize(
    examples: list[Example],
    tokenizer: Any,
    data_cfg: DataConfig,
    label_names: list[str] | None,
    head: str = "lm",
) -> tuple[Split, dict[str, int]]:
    """Render every example, apply the over-length policy, and count what happened."""
    counts = {"truncated": 0, "dropped_overlong": 0, "dropped_no_target": 0, "kept": 0, "tokens": 0}
    counts["target_tokens"] = 0
    split = Split([], [], [])
    limit = data_cfg.max_length
    for ex in examples:
        if data_cfg.prefix:  # kept on the example too, so evaluation prompts carry the same prefix
            ex = with_prefix(ex, data_cfg.prefix)
        if head == "classification":  # the text (+ suffix); the class id sits at the last position
            suffix = data_cfg.suffix or ""
            ids = head_input_ids(ex.text or "", tokenizer, suffix)
            truncated = len(ids) > limit
            if truncated and suffix:  # rare: encode again, cutting the text and keeping the suffix
                ids = head_input_ids(ex.text or "", tokenizer, suffix, limit)
            labels = class_target_labels(len(ids[:limit]), ex.label or 0)
        else:
            ids, labels = render_example(
                ex, tokenizer, data_cfg.system_prompt, label_names, data_cfg.label_prompt
            )
            truncated = len(ids) > limit
        if truncated and data_cfg.overlong == "drop":
            counts["dropped_overlong"] += 1
            continue
        # Cutting the end keeps the prompt's start; an answer that starts past the limit is lost entirely.
        ids, labels = ids[:limit], labels[:limit]
        targets = sum(label != IGNORE_INDEX for label in labels)
        if targets == 0:
            counts["dropped_no_target"] += 1
            continue
        counts["truncated"] += truncated
        counts["tokens"] += len(ids)
        counts["target_tokens"] += targets
        split.examples.append(ex)
        split.input_ids.append(ids)
        split.labels.append(labels)
    counts["kept"] = len(split)
    return split, counts


# ----------------------------------------------------------------------------------------------- caching


def _save(directory: Path, splits: dict[str, Split | None], report: dict[str, Any]) -> None:
    import pyarrow as pa  # deferred: pyarrow loads only for the tokenized cache
    import pyarrow.parquet as pq  # deferred: pyarrow loads only for the token cache

    token_lists = pa.list_(pa.int32())
    with atomic_dir(directory) as tmp:
        for name, split in splits.items():
            if split is None:
                continue
            table = pa.table(
                {
                    "input_ids": pa.array(split.input_ids, type=token_lists),
                    "labels": pa.array(split.labels, type=token_lists),
                    "example": [json.dumps(dataclasses.asdict(ex), default=str) for ex in split.examples],
                }
            )
            pq.write_table(table, tmp / f"{name}.parquet")
        write_json_atomic(tmp / "report.json", report)


def _load(directory: Path) -> tuple[dict[str, Split | None], dict[str, Any]] | None:
    """The cached splits and report, or None when absent or unreadable (then it is rebuilt)."""
    import pyarrow as pa  # deferred: pyarrow loads only for the tokenized cache
    import pyarrow.parquet as pq

    report_path = directory / "report.json"
    if not report_path.is_file():
        return None
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        splits: dict[str, Split | None] = {}
        for name in SPLITS:
            file = directory / f"{name}.parquet"
            if name not in report["splits"]:
                splits[name] = None
                continue
            table = pq.read_table(file)
            examples = [Example(**json.loads(s)) for s in table.column("example").to_pylist()]
            splits[name] = Split(
                examples, table.column("input_ids").to_pylist(), table.column("labels").to_pylist()
            )
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return None
    return splits, report


# ---------------------------------------------------------------------------------------------- the API


def _build(
    data_cfg: DataConfig, tokenizer: Any, seed: int, files: dict[str, dict[str, str]], head: str = "lm"
) -> tuple[dict[str, Split | None], dict[str, Any]]:
    assert data_cfg.train is not None
    train = _read_split(data_cfg.train, data_cfg, None)
    sources: dict[str, SourceData | None] = {"train": train, "validation": None, "test": None}
    for name in ("validation", "test"):
        path = getattr(data_cfg, name)
        if path is not None:
            sources[name] = _read_split(path, data_cfg, train)
    kind = KIND_OF_FORMAT[train.format]
    if head == "classification" and kind != "classification":
        raise ConfigError(
            f"model.head: classification needs classification data (rows with text and label); "
            f"{data_cfg.train} holds {train.format!r} rows. Set model.head: lm, or point data.train at "
            "text/label rows (data.format: classification)"
        )
    train_examples, held_out = train.examples, []
    if data_cfg.validation is None:
        train_examples, held_out = hold_out(train.examples, data_cfg.validation_fraction, seed)
    to_render: dict[str, tuple[list[Example], dict[str, int]]] = {
        "train": (train_examples, dict(train.counts))
    }
    if held_out:
        to_render["train"][1]["held_out_for_validation"] = len(held_out)
        n = len(held_out)
        to_render["validation"] = (held_out, {"rows_read": n, "malformed_skipped": 0, "empty_dropped": 0})
    for name in ("validation", "test"):
        if (source := sources[name]) is not None:
            to_render[name] = (source.examples, dict(source.counts))
    splits: dict[str, Split | None] = dict.fromkeys(SPLITS)
    split_reports: dict[str, dict[str, Any]] = {}
    for name, (examples, counts) in to_render.items():
        splits[name], token_counts = _tokenize(examples, tokenizer, data_cfg, train.label_names, head)
        split_reports[name] = {**counts, **token_counts}
    if not splits["train"]:
        c = split_reports["train"]
        raise DataError(
            f"{data_cfg.train}: no usable training examples ({c['rows_read']} rows read, "
            f"{c['malformed_skipped']} malformed, {c['empty_dropped']} empty, {c['dropped_overlong']} "
            f"over max_length={data_cfg.max_length}, {c['dropped_no_target']} with no answer left after "
            "truncation)"
        )
    if held_out:
        split_reports["validation"]["held_out_from"] = "train"
    report = {
        "format": train.format,
        "kind": kind,
        "files": files,
        "splits": split_reports,
        "label_names": train.label_names,
        "validation": "file" if data_cfg.validation else ("held_out" if held_out else "none"),
        "max_length": data_cfg.max_length,
        "overlong": data_cfg.overlong,
        "seed": seed,
    }
    if head != "lm":
        report["head"] = head
    return splits, report


def prepare_data(data_cfg: DataConfig, tokenizer: Any, seed: int, head: str = "lm") -> PreparedData:
    """Read, validate, split, render and tokenize the configured data (cached across runs).

    Args:
        data_cfg: The ``data`` section of the run config.
        tokenizer: The model's tokenizer; given a ChatML template in place if it has none.
        seed: Seeds the validation hold-out (when there is no validation file).
        head: ``lm`` renders through the chat template (labels = answer tokens); ``classification`` encodes
            the text alone with the class id as the last position's label (``model.head``).

    Returns:
        The splits (validation/test None when absent) and the report; ``report["cache"]`` is ``hit`` or
        ``miss``.

    Raises:
        DataError: No train file, missing/malformed/empty files, mismatched formats, nothing left to train on.
    """
    if not data_cfg.train:
        raise DataError(
            "data.train is not set: point it at your training file, e.g. `--set data.train=train.jsonl` "
            "(JSONL, CSV, Parquet or .txt)"
        )
    ensure_chat_template(tokenizer)
    files = {
        name: {"path": str(path), "sha256": file_sha256(path)}
        for name in SPLITS
        if (path := getattr(data_cfg, name)) is not None
    }
    key = _cache_key(data_cfg, files, fingerprint_tokenizer(tokenizer), seed, head)
    directory = _cache_dir(key)
    cached = _load(directory)
    if cached is not None:
        splits, report = cached
        report["cache"] = "hit"
    else:
        splits, report = _build(data_cfg, tokenizer, seed, files, head)
        report["cache_key"] = key
        _save(directory, splits, report)
        report["cache"] = "miss"
    report["files"] = files  # same bytes may sit at a new path; report where they are now
    train = splits["train"]
    assert train is not None
    return PreparedData(
        train, splits["validation"], splits["test"], report["kind"], report["label_names"], report
    )
