"""Tokenized splits for preference and RL objectives: pairs (DPO, reward), unpaired (KTO), prompts (GRPO).

Rows are read by :mod:`tunesmith.data.preference_formats`; each prompt + reply is rendered by
:func:`~tunesmith.data.render.render_example` (the chat template, labels -100 outside the reply) and each
prompt by :func:`~tunesmith.data.render.render_prompt` (plus the generation prompt). The prompt ids must be
a prefix of every rendered sequence, so both replies of a pair are scored after the same tokens; where the
tokenizer merges the prompt's last token with the reply's first (a reply starting with a newline), the
example is dropped and counted. Over-long examples follow ``data.overlong``: ``truncate`` cuts the reply's
tail (keeping at least one reply token; a prompt that leaves no room is dropped), ``drop`` drops them.
Prompt rows longer than ``max_length`` are always dropped: a cut prompt would lose the question::

    data = prepare_preferences(cfg.data, tokenizer, cfg.seed, "preference")
    data.train.chosen_ids[0], data.report["splits"]["train"]["identical_pairs_dropped"]
    run_dir.write_data_report(data.report)

Nothing is cached on disk: these sets are small, and the result depends only on the inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tunesmith.config import DataConfig
from tunesmith.data.formats import Example
from tunesmith.data.mixing import with_prefix
from tunesmith.data.preference_formats import SHAPES, read_preference_source
from tunesmith.data.prepare import SPLITS, file_sha256, hold_out
from tunesmith.data.render import IGNORE_INDEX, ensure_chat_template, render_example, render_prompt
from tunesmith.errors import DataError

_LABEL_PROMPT = "{text}"  # render_* read it only for classification examples, which these never are


@dataclass
class PairSplit:
    """Preference pairs: ``examples[i]`` rendered with its chosen and with its rejected reply."""

    examples: list[Example]
    chosen_ids: list[list[int]]
    chosen_labels: list[list[int]]
    rejected_ids: list[list[int]]
    rejected_labels: list[list[int]]

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class UnpairedSplit:
    """Unpaired (KTO) examples: prompt + completion, and whether the completion is desirable."""

    examples: list[Example]
    input_ids: list[list[int]]
    labels: list[list[int]]
    desirable: list[bool]

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class PromptSplit:
    """RL prompts: the prompt ids end with the generation prompt; graders read ``examples[i].extra``."""

    examples: list[Example]
    prompt_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.examples)


AnySplit = PairSplit | UnpairedSplit | PromptSplit


@dataclass
class PreferenceData:
    """The splits ready for a preference or RL objective, plus the data report (``data_report.json``)."""

    train: AnySplit
    validation: AnySplit | None
    test: AnySplit | None
    shape: str
    report: dict[str, Any]


# ------------------------------------------------------------------------------------------- rendering


def _as_chat(ex: Example, reply: list[dict[str, Any]] | None) -> Example:
    """The prompt (+ reply) as a chat example whose only trained turns are the reply's."""
    prompt = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in ex.messages or []]
    answer = [{k: v for k, v in m.items() if k != "weight"} for m in reply or []]
    return dataclasses.replace(
        ex, kind="chat", messages=prompt + answer, chosen=None, rejected=None, desirable=None
    )


def render_preference_prompt(ex: Example, tokenizer: Any, system_prompt: str | None) -> list[int]:
    """Token ids of the example's prompt followed by the generation prompt (what the model continues)."""
    return render_prompt(_as_chat(ex, None), tokenizer, system_prompt, _LABEL_PROMPT)


def render_reply(
    ex: Example, reply: list[dict[str, Any]], tokenizer: Any, system_prompt: str | None, prompt_ids: list[int]
) -> tuple[list[int], list[int]] | None:
    """``(input_ids, labels)`` of prompt + ``reply``; labels are -100 on the prompt.

    Returns:
        None when ``prompt_ids`` is not a prefix of the ids with a loss-free prompt (the tokenizer merged
        the prompt's last token with the reply's first), so the reply would be scored after other tokens.
    """
    ids, labels = render_example(_as_chat(ex, reply), tokenizer, system_prompt, None, _LABEL_PROMPT)
    n = len(prompt_ids)
    if ids[:n] != prompt_ids or any(label != IGNORE_INDEX for label in labels[:n]) or len(ids) == n:
        return None
    return ids, labels


def _fit(
    ids: list[int], labels: list[int], prompt_len: int, limit: int, overlong: str
) -> tuple[list[int], list[int]] | None:
    """The sequence within ``limit`` tokens (cut at the tail), or None when it is dropped."""
    if len(ids) <= limit:
        return ids, labels
    if overlong == "drop" or prompt_len >= limit:  # at least one reply token must remain
        return None
    return ids[:limit], labels[:limit]


# ------------------------------------------------------------------------------------------- tokenizing


class _Counter:
    """The per-split counts of tokenization and the token lengths of what was kept."""

    def __init__(self) -> None:
        self.counts = {"truncated": 0, "dropped_overlong": 0, "dropped_prompt_mismatch": 0, "kept": 0}
        self.lengths: dict[str, list[int]] = {}

    def length(self, name: str, value: int) -> None:
        self.lengths.setdefault(name, []).append(value)

    def report(self, kept: int) -> dict[str, Any]:
        lengths = {
            name: {"mean": round(sum(v) / len(v), 2), "max": max(v)} for name, v in self.lengths.items() if v
        }
        return {**self.counts, "kept": kept, "lengths": lengths}


def _tokenize_pairs(examples: list[Example], tokenizer: Any, data_cfg: DataConfig) -> tuple[PairSplit, dict]:
    split, tally = PairSplit([], [], [], [], []), _Counter()
    for ex in examples:
        prompt_ids = render_preference_prompt(ex, tokenizer, data_cfg.system_prompt)
        chosen = render_reply(ex, ex.chosen or [], tokenizer, data_cfg.system_prompt, prompt_ids)
        rejected = render_reply(ex, ex.rejected or [], tokenizer, data_cfg.system_prompt, prompt_ids)
        if chosen is None or rejected is None:
            tally.counts["dropped_prompt_mismatch"] += 1
            continue
        n, limit = len(prompt_ids), data_cfg.max_length
        fitted = [_fit(*seq, n, limit, data_cfg.overlong) for seq in (chosen, rejected)]
        if fitted[0] is None or fitted[1] is None:
            tally.counts["dropped_overlong"] += 1
            continue
        tally.counts["truncated"] += max(len(chosen[0]), len(rejected[0])) > limit
        (c_ids, c_labels), (r_ids, r_labels) = fitted
        split.examples.append(ex)
        split.chosen_ids.append(c_ids)
        split.chosen_labels.append(c_labels)
        split.rejected_ids.append(r_ids)
        split.rejected_labels.append(r_labels)
        tally.length("prompt", n)
        tally.length("chosen", len(c_ids) - n)
        tally.length("rejected", len(r_ids) - n)
    return split, tally.report(len(split))


def _tokenize_unpaired(
    examples: list[Example], tokenizer: Any, data_cfg: DataConfig
) -> tuple[UnpairedSplit, dict]:
    split, tally = UnpairedSplit([], [], [], []), _Counter()
    for ex in examples:
        prompt_ids = render_preference_prompt(ex, tokenizer, data_cfg.system_prompt)
        rendered = render_reply(ex, ex.chosen or [], tokenizer, data_cfg.system_prompt, prompt_ids)
        if rendered is None:
            tally.counts["dropped_prompt_mismatch"] += 1
            continue
        fitted = _fit(*rendered, len(prompt_ids), data_cfg.max_length, data_cfg.overlong)
        if fitted is None:
            tally.counts["dropped_overlong"] += 1
            continue
        tally.counts["truncated"] += len(rendered[0]) > data_cfg.max_length
        split.examples.append(ex)
        split.input_ids.append(fitted[0])
        split.labels.append(fitted[1])
        split.desirable.append(bool(ex.desirable))
        tally.length("prompt", len(prompt_ids))
        tally.length("completion", len(fitted[0]) - len(prompt_ids))
    report = tally.report(len(split))
    report["desirable"] = sum(split.desirable)
    report["undesirable"] = len(split) - report["desirable"]
    return split, report


def _tokenize_prompts(
    examples: list[Example], tokenizer: Any, data_cfg: DataConfig
) -> tuple[PromptSplit, dict]:
    split, tally = PromptSplit([], []), _Counter()
    for ex in examples:
        prompt_ids = render_preference_prompt(ex, tokenizer, data_cfg.system_prompt)
        if len(prompt_ids) >= data_cfg.max_length:  # no room left to generate in
            tally.counts["dropped_overlong"] += 1
            continue
        split.examples.append(ex)
        split.prompt_ids.append(prompt_ids)
        tally.length("prompt", len(prompt_ids))
    report = tally.report(len(split))
    del report["truncated"], report["dropped_prompt_mismatch"]  # prompts are never cut nor paired
    return split, report


_TOKENIZERS = {"preference": _tokenize_pairs, "unpaired": _tokenize_unpaired, "prompt": _tokenize_prompts}


def tokenize_preference_split(
    examples: list[Example], tokenizer: Any, data_cfg: DataConfig, shape: str
) -> tuple[AnySplit, dict[str, Any]]:
    """Render and tokenize examples of one shape; apply ``data.prefix``, ``system_prompt``, the length limit.

    Returns:
        The split and its counts: ``truncated``, ``dropped_overlong``, ``dropped_prompt_mismatch`` (not for
        prompts), ``kept``, ``lengths`` (``{"prompt"|"chosen"|"rejected"|"completion": {"mean", "max"}}``
        in tokens after truncation, replies without the prompt) and, for unpaired data, ``desirable`` and
        ``undesirable``.
    """
    if data_cfg.prefix:  # on the first user turn, as supervised runs put it
        examples = [_with_prefix(ex, data_cfg.prefix) for ex in examples]
    return _TOKENIZERS[shape](examples, tokenizer, data_cfg)


def _with_prefix(ex: Example, prefix: str) -> Example:
    prompt = with_prefix(dataclasses.replace(ex, kind="chat"), prefix)
    return dataclasses.replace(prompt, kind=ex.kind)


# ------------------------------------------------------------------------------------------- the API


def _sources(data_cfg: DataConfig, seed: int, shape: str) -> dict[str, tuple[list[Example], dict[str, Any]]]:
    """The examples of each split with their reading counts (a held-out validation split when no file)."""
    assert data_cfg.train is not None
    train = read_preference_source(data_cfg.train, shape, data_cfg.on_bad_row)
    out = {"train": (train.examples, {"format": train.format, **train.counts})}
    for name in ("validation", "test"):
        if (path := getattr(data_cfg, name)) is not None:
            source = read_preference_source(path, shape, data_cfg.on_bad_row)
            out[name] = (source.examples, {"format": source.format, **source.counts})
    if data_cfg.validation is None:
        kept, held = hold_out(train.examples, data_cfg.validation_fraction, seed)
        if held:
            out["train"] = (kept, {**out["train"][1], "held_out_for_validation": len(held)})
            counts = {"rows_read": len(held), "malformed_skipped": 0, "identical_pairs_dropped": 0}
            out["validation"] = (held, {**counts, "held_out_from": "train"})
    return out


def prepare_preferences(data_cfg: DataConfig, tokenizer: Any, seed: int, shape: str) -> PreferenceData:
    """Read, validate, split, render and tokenize the configured data for a preference or RL objective.

    Args:
        data_cfg: The ``data`` section: ``train`` / ``validation`` / ``test`` files, ``validation_fraction``,
            ``max_length`` + ``overlong``, ``system_prompt``, ``prefix``, ``on_bad_row``. ``format``,
            ``labels`` and ``label_prompt`` are for supervised rows and not read here.
        tokenizer: The model's tokenizer; given a ChatML template in place if it has none.
        seed: Seeds the validation hold-out (when there is no validation file).
        shape: ``preference`` (pairs), ``unpaired`` (KTO) or ``prompt`` (RL prompts).

    Returns:
        The splits (validation/test None when absent) and the report: ``format``, ``shape``, ``files``
        (path + sha256), ``splits`` (reading and tokenizing counts per split), ``validation``
        (file/held_out/none), ``max_length``, ``overlong``, ``seed``.

    Raises:
        DataError: Unknown shape, no train file, missing/malformed files, rows of another shape, nothing
            left to train on.
    """
    if shape not in SHAPES:
        raise DataError(f"unknown preference data shape {shape!r} (known: {', '.join(SHAPES)})")
    if data_cfg.tasks:
        raise DataError("data.tasks (multi-task mixing) is for supervised runs; set data.train instead")
    if not data_cfg.train:
        raise DataError(f"data.train is not set: point it at your {shape} file, e.g. `--set data.train=FILE`")
    ensure_chat_template(tokenizer)
    files = {
        name: {"path": str(path), "sha256": file_sha256(path)}
        for name in SPLITS
        if (path := getattr(data_cfg, name)) is not None
    }
    splits: dict[str, AnySplit | None] = dict.fromkeys(SPLITS)
    reports: dict[str, dict[str, Any]] = {}
    for name, (examples, counts) in _sources(data_cfg, seed, shape).items():
        splits[name], token_counts = tokenize_preference_split(examples, tokenizer, data_cfg, shape)
        reports[name] = {**counts, **token_counts}
    train = splits["train"]
    if not train:
        raise DataError(f"{data_cfg.train}: no usable {shape} examples ({_why_none(reports['train'])})")
    report = {
        "format": reports["train"]["format"],
        "shape": shape,
        "kind": shape,
        "files": files,
        "splits": reports,
        "validation": "file" if data_cfg.validation else ("held_out" if "validation" in reports else "none"),
        "max_length": data_cfg.max_length,
        "overlong": data_cfg.overlong,
        "seed": seed,
    }
    return PreferenceData(train, splits["validation"], splits["test"], shape, report)


def _why_none(counts: dict[str, Any]) -> str:
    names = ("rows_read", "malformed_skipped", "identical_pairs_dropped", "dropped_overlong")
    names += ("dropped_prompt_mismatch",)
    return ", ".join(f"{counts[name]} {name}" for name in names if name in counts)
