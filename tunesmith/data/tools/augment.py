"""More training rows from the ones you have: model paraphrases and seeded word-level edits.

``augment_file`` keeps every original row and writes, after each one, up to ``n`` new rows per operation.
Only the *question side* changes (the last user turn of a chat, ``instruction``, ``prompt``, or a text /
classification ``text``); answers and labels stay, so every new row is still correct:

* ``paraphrase``: the model (the base model by default) rewrites the text ("Rewrite this question in other
  words...", greedy; the k-th paraphrase uses the k-th of three instructions, so ``n`` above 3 adds nothing);
* ``swap``: ``round(rate * words)`` (at least 1) random swaps of two words;
* ``delete``: each word is dropped with probability ``rate`` (at least one word goes, at least one stays).

Word edits keep the text's own spaces and newlines. Every operation is seeded by ``(seed, line, op, k)``, so
the same file and seed give the same output. New rows are marked ``"augmented": true``, ``"augment_op"``
and ``"augment_source"`` (the digest of the row they came from), and dropped when they equal, after the
dedup module's normalisation, any original row or an earlier new row.

**Augmented rows must never be evaluated on**: a paraphrase of a validation question in train is leakage,
and a paraphrase in validation measures nothing. So ``augment_file`` refuses files named like validation or
test splits, and :func:`split_keeping_augmented` (behind ``tunesmith data split``) splits only the original
rows and then appends the augmented ones to train — except those whose source row landed in validation or
test, which are dropped. Run ``dedup`` *before* augmenting (near-duplicate removal would undo the edits)::

    report = augment_file("train.jsonl", "train.aug.jsonl", n=1, ops=("swap", "delete"), seed=0)
    report["augmented"]   # {"swap": 950, "delete": 948}
    split_keeping_augmented("train.aug.jsonl", "splits/", ratios=(0.9, 0.1), seed=0)
"""

from __future__ import annotations

import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from tunesmith.data.formats import detect_format, iter_rows
from tunesmith.data.render import ensure_chat_template
from tunesmith.data.tools.dedup import normalize_for_match, row_digest
from tunesmith.data.tools.split import split_file
from tunesmith.data.tools.stream import AtomicJSONLWriter, BadRows, check_input, check_outputs
from tunesmith.data.tools.textfields import text_fields
from tunesmith.errors import DataError, ModelError

OPS: tuple[str, ...] = ("paraphrase", "swap", "delete")
PARAPHRASE_PROMPTS: tuple[str, ...] = (
    "Rewrite this {noun} in other words, keeping its meaning. Reply with the new {noun} only.\n\n{text}",
    "Say the same {noun} differently, with other words and the same meaning. Reply with it only.\n\n{text}",
    "Paraphrase the following {noun}. Keep every fact. Reply with the paraphrase only.\n\n{text}",
)
_EVAL_NAME_RE = re.compile(r"(^|[._\-])(val|valid|validation|dev|test|eval|heldout)([._\-]|$)", re.IGNORECASE)
_TOKEN_RE = re.compile(r"\S+|\s+")
_CHUNK_ROWS = 64  # rows paraphrased together: enough for full generation batches, bounded memory


def row_key(row: dict[str, Any]) -> str:
    """Hex digest of a row's normalised text: the identity used for dedup and ``augment_source``."""
    return row_digest([normalize_for_match(t) for _, t in text_fields(row)]).hex()


def refuse_eval_file(path: str | Path) -> None:
    """Refuse to augment a file whose name says it is a validation or test split.

    Raises:
        DataError: the file name contains ``val``, ``validation``, ``dev``, ``test``, ``eval`` or ``heldout``
            as a separate word.
    """
    if _EVAL_NAME_RE.search(Path(path).stem):
        raise DataError(
            f"{path} looks like a validation or test file; augmented rows must only ever be trained on. "
            "Augment the training file (or the whole file before `tunesmith data split`, which keeps "
            "augmented rows in train)"
        )


# ------------------------------------------------------------------------------------------- word edits


def _words(text: str) -> tuple[list[str], list[int]]:
    """Tokens (words and whitespace runs, in order) and the indices of the words among them."""
    tokens = _TOKEN_RE.findall(text)
    return tokens, [i for i, tok in enumerate(tokens) if not tok.isspace()]


def random_swap(text: str, rng: random.Random, rate: float = 0.1) -> str:
    """Swap two random words ``max(1, round(rate * words))`` times; spacing stays where it was.

    Returns the text unchanged when it has fewer than two words.
    """
    tokens, where = _words(text)
    if len(where) < 2:
        return text
    for _ in range(max(1, round(rate * len(where)))):
        a, b = rng.sample(where, 2)
        tokens[a], tokens[b] = tokens[b], tokens[a]
    return "".join(tokens)


def random_delete(text: str, rng: random.Random, rate: float = 0.1) -> str:
    """Drop each word with probability ``rate``; at least one word goes and at least one stays.

    A dropped word takes the whitespace before it along (the first word's, the whitespace after it), so no
    double spaces appear. Returns the text unchanged when it has fewer than two words.
    """
    tokens, where = _words(text)
    if len(where) < 2:
        return text
    drop = {i for i in where if rng.random() < rate}
    if not drop:
        drop = {rng.choice(where)}
    if len(drop) == len(where):
        drop.discard(rng.choice(where))
    keep = [i for i in where if i not in drop]
    lead = tokens[0] if tokens[0].isspace() else ""
    tail = tokens[-1] if tokens[-1].isspace() else ""
    out = [lead, tokens[keep[0]]]
    for i in keep[1:]:
        out += [tokens[i - 1], tokens[i]]  # the whitespace that preceded this word in the original
    return "".join([*out, tail])


# --------------------------------------------------------------------------------------- the text to edit


def augment_target(row: dict[str, Any]) -> tuple[str, str] | None:
    """Which text of a row augmentation rewrites: ``(where, text)``, or None when there is none.

    ``where`` is a ``messages.<i>.content`` path (the last user turn of a chat row) or a key (``instruction``,
    ``prompt``, ``text``).
    """
    try:
        fmt = detect_format(row)
    except DataError:
        return None
    if fmt == "chat":
        messages = row["messages"]
        if not isinstance(messages, list):
            return None
        users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not isinstance(messages[users[-1]].get("content"), str):
            return None
        return f"messages.{users[-1]}.content", messages[users[-1]]["content"]
    key = {"instruction": "instruction", "prompt_completion": "prompt"}.get(fmt, "text")
    value = row.get(key)
    return (key, value) if isinstance(value, str) and value.strip() else None


def _replace(row: dict[str, Any], where: str, text: str) -> dict[str, Any]:
    new = dict(row)
    if where.startswith("messages."):
        i = int(where.split(".")[1])
        new["messages"] = [*row["messages"]]
        new["messages"][i] = {**row["messages"][i], "content": text}
    else:
        new[where] = text
    return new


# ------------------------------------------------------------------------------------------- paraphrases


class Paraphraser:
    """Greedy paraphrases from a causal LM through :func:`tunesmith.infer.generate.generate_texts`.

    The model is loaded on first use, so building one is free when no row needs it. Pass ``model`` and
    ``tokenizer`` to use ones already loaded; ``model_name`` (default: ``default``, the base model) names
    what to load otherwise.
    """

    def __init__(
        self,
        model_name: str | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        max_new_tokens: int = 128,
        batch_size: int = 8,
    ) -> None:
        if (model is None) != (tokenizer is None):
            raise ModelError("give the paraphrasing model and its tokenizer together, or neither")
        # A model passed in is named by its config (a saved directory) or its class, for the report.
        given = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        self.model_name = model_name if model_name is not None else ("default" if model is None else given)
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def _load(self) -> None:
        # deferred: torch loads only to paraphrase (the data tools stay torch-free)
        from tunesmith.models.loading import load_causal_lm, load_tokenizer

        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.model_name)
        if self.model is None:
            self.model = load_causal_lm(self.model_name)

    def prompt_ids(self, text: str, noun: str, k: int) -> list[int]:
        """Token ids of the k-th paraphrase request for ``text``, as a user turn plus generation prompt."""
        content = PARAPHRASE_PROMPTS[k % len(PARAPHRASE_PROMPTS)].format(noun=noun, text=text)
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def __call__(self, requests: Sequence[tuple[str, str, int]]) -> list[str]:
        """Paraphrase each ``(text, noun, k)``; returns the cleaned replies in order."""
        if not requests:
            return []
        # deferred: torch loads only to paraphrase (the data tools stay torch-free)
        from tunesmith.infer.generate import generate_texts

        if self.model is None or self.tokenizer is None:
            self._load()
        ensure_chat_template(self.tokenizer)  # base models have none; the request is a user turn
        prompts = [self.prompt_ids(text, noun, k) for text, noun, k in requests]
        replies = generate_texts(
            self.model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size, desc="paraphrase"
        )
        return [reply.strip().strip('"“”').strip() for reply in replies]


# ---------------------------------------------------------------------------------------------- the file


def _chunks(
    rows: Iterable[tuple[int, dict[str, Any]]], size: int
) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def _check_args(n: int, ops: Sequence[str], rate: float) -> tuple[str, ...]:
    ops = tuple(dict.fromkeys(op.strip() for op in ops if op.strip()))
    unknown = [op for op in ops if op not in OPS]
    if unknown or not ops:
        raise DataError(f"unknown augmentation op(s) {unknown or list(ops)}; choose from {', '.join(OPS)}")
    if n < 1:
        raise DataError(f"--n must be at least 1, got {n}")
    if not 0.0 < rate < 1.0:
        raise DataError(f"the swap/delete rate must be between 0 and 1, got {rate}")
    return ops


class _Augmenter:
    """Makes the candidate rows for one chunk and decides which are kept."""

    def __init__(self, originals: set[str], n: int, ops: tuple[str, ...], seed: int, rate: float) -> None:
        self.seen = originals  # grows with every kept new row, so new rows are unique too
        self.n, self.ops, self.seed, self.rate = n, ops, seed, rate
        self.made: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def _edit(self, op: str, text: str, line: int, k: int) -> str:
        rng = random.Random(f"{self.seed}:{line}:{op}:{k}")  # str seeds are stable across processes
        edit: Callable[[str, random.Random, float], str] = random_swap if op == "swap" else random_delete
        return edit(text, rng, self.rate)

    def chunk(
        self, chunk: list[tuple[int, dict[str, Any]]], paraphrase: Paraphraser | None
    ) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Each original row with the new rows to write after it."""
        # New rows are made from originals only, so ``augment_source`` always names an original row.
        targets = [None if row.get("augmented") is True else augment_target(row) for _, row in chunk]
        requests, owners = [], []
        if paraphrase is not None:
            for j, target in enumerate(targets):
                if target is not None:
                    noun = "text" if target[0] == "text" else "question"
                    for k in range(self.n):
                        requests.append((target[1], noun, k))
                        owners.append((j, k))
        replies: dict[tuple[int, int], str] = (
            dict(zip(owners, paraphrase(requests), strict=True)) if paraphrase else {}
        )
        out = []
        for j, ((line, row), target) in enumerate(zip(chunk, targets, strict=True)):
            if target is None:
                self.dropped["already_augmented" if row.get("augmented") is True else "no_text"] += 1
                out.append((row, []))
                continue
            source = row_key(row)
            new_rows = []
            for op in self.ops:
                for k in range(self.n):
                    text = replies[(j, k)] if op == "paraphrase" else self._edit(op, target[1], line, k)
                    new_row = self._keep(op, row, target, text, source)
                    if new_row is not None:
                        new_rows.append(new_row)
            out.append((row, new_rows))
        return out

    def _keep(
        self, op: str, row: dict[str, Any], target: tuple[str, str], text: str, source: str
    ) -> dict[str, Any] | None:
        if not text.strip():
            self.dropped["empty"] += 1
            return None
        new_row = _replace(row, target[0], text)
        key = row_key(new_row)
        if key in self.seen:
            self.dropped["duplicate"] += 1
            return None
        self.seen.add(key)
        self.made[op] += 1
        return {**new_row, "augmented": True, "augment_op": op, "augment_source": source}


def augment_file(
    src: str | Path,
    dst: str | Path,
    *,
    n: int = 1,
    ops: Sequence[str] = OPS,
    seed: int = 0,
    rate: float = 0.1,
    paraphraser: Paraphraser | None = None,
    model_name: str = "default",
    on_bad_row: str = "stop",
) -> dict[str, Any]:
    """Write ``src`` plus augmented rows to ``dst`` (see the module docstring).

    Args:
        src: Training data file (never modified); not a validation/test file.
        dst: Output JSONL path.
        n: New rows per original row and operation (before deduplication).
        ops: Any of ``paraphrase``, ``swap``, ``delete``.
        seed: Seed of the word edits.
        rate: Fraction of words a swap/delete touches.
        paraphraser: What writes paraphrases; by default a :class:`Paraphraser` of ``model_name``, loaded
            only when ``paraphrase`` is among ``ops``.
        model_name: Model for paraphrases (``default``: the shipped default model; ``data.prepare`` passes
            the run's ``model.name``, the base model being tuned).
        on_bad_row: ``stop`` at an unreadable row (``path:line``), or ``skip`` and count it (``bad_rows``).

    Returns:
        ``step`` ("augment"), ``input``, ``output``, ``ops``, ``n``, ``seed``, ``rate``, ``model``,
        ``rows_in``, ``rows_out``, ``augmented_rows``, ``augmented`` (new rows per op), ``dropped``
        (candidates dropped: ``duplicate``, ``empty``; rows not augmented: ``no_text``, nothing to rewrite,
        and ``already_augmented``, rows that are themselves augmented), ``bad_rows`` and ``seconds``.

    Raises:
        DataError: a validation/test file name, bad arguments, ``dst`` equal to ``src``, or (with ``stop``)
            an unreadable row.
    """
    start = time.perf_counter()
    src = check_input(src)
    refuse_eval_file(src)
    check_outputs([src], [dst])
    ops = _check_args(n, ops, rate)
    if "paraphrase" in ops and paraphraser is None:
        paraphraser = Paraphraser(model_name)
    # Pass one: every original's identity, so a new row that repeats a *later* original is caught too.
    bad_rows = BadRows(on_bad_row)
    originals = {row_key(row) for _, row in bad_rows.rows(src, count=False)}
    augmenter = _Augmenter(originals, n, ops, seed, rate)
    rows_in = 0
    with AtomicJSONLWriter(dst) as out:
        for chunk in _chunks(bad_rows.rows(src), _CHUNK_ROWS):
            rows_in += len(chunk)
            for row, new_rows in augmenter.chunk(chunk, paraphraser if "paraphrase" in ops else None):
                out.write(row)
                for new_row in new_rows:
                    out.write(new_row)
    return {
        "step": "augment",
        "input": str(src),
        "output": str(dst),
        "ops": list(ops),
        "n": n,
        "seed": seed,
        "rate": rate,
        "model": paraphraser.model_name if "paraphrase" in ops and paraphraser is not None else None,
        "rows_in": rows_in,
        "rows_out": out.rows,
        "augmented_rows": out.rows - rows_in,
        "augmented": {op: augmenter.made[op] for op in ops},
        "dropped": dict(sorted(augmenter.dropped.items())),
        "bad_rows": bad_rows.as_dict(),
        "seconds": round(time.perf_counter() - start, 3),
    }


# ------------------------------------------------------------------------------------------------- split


def split_keeping_augmented(
    src: str | Path, out_dir: str | Path, *, on_bad_row: str = "stop", **split_args: Any
) -> dict[str, Any]:
    """:func:`split_file` for a file with augmented rows: only originals are split; new rows join train.

    Augmented rows (``"augmented": true``) never reach validation or test. One whose ``augment_source`` row
    went to validation or test is dropped instead of joining train, since it would leak that row.

    Args:
        src: Data file (never modified).
        out_dir: Directory for ``train.jsonl``, ``validation.jsonl`` (and ``test.jsonl``).
        on_bad_row: ``stop`` at an unreadable row (``path:line``), or ``skip`` and count it (``bad_rows``).
        **split_args: ``ratios``, ``seed``, ``stratify_by``, ``group_by`` for :func:`split_file`.

    Returns:
        The split report (``input`` is ``src``; ``rows["train"]`` includes the augmented rows) plus
        ``augmented``: ``{"to_train", "dropped_source_held_out"}``.
    """
    src = check_input(src)
    bad_rows = BadRows(on_bad_row)
    n_augmented = sum(1 for _, row in bad_rows.rows(src, count=False) if row.get("augmented") is True)
    if not n_augmented:
        return split_file(src, out_dir, on_bad_row=on_bad_row, **split_args) | {
            "augmented": {"to_train": 0, "dropped_source_held_out": 0}
        }
    out_dir = Path(out_dir)
    check_outputs([src], [out_dir / f"{name}.jsonl" for name in ("train", "validation", "test")])
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".originals.") as tmp:
        originals = Path(tmp) / "originals.jsonl"
        with AtomicJSONLWriter(originals) as writer:
            for _, row in bad_rows.rows(src):
                if row.get("augmented") is not True:
                    writer.write(row)
        report = split_file(originals, out_dir, **split_args)
    held_out = {
        row_key(row)
        for name, path in report["outputs"].items()
        if name != "train"
        for _, row in iter_rows(path)
    }
    train_path = Path(report["outputs"]["train"])
    to_train = dropped = 0
    with AtomicJSONLWriter(train_path) as writer:  # reads the old train file while writing its replacement
        for _, row in iter_rows(train_path):
            writer.write(row)
        for _, row in bad_rows.rows(src, count=False):
            if row.get("augmented") is not True:
                continue
            if row.get("augment_source") in held_out:
                dropped += 1
                continue
            writer.write(row)
            to_train += 1
    report["input"] = str(src)
    report["rows"] = {**report["rows"], "train": report["rows"]["train"] + to_train}
    report["augmented"] = {"to_train": to_train, "dropped_source_held_out": dropped}
    report["bad_rows"] = bad_rows.as_dict()
    return report
