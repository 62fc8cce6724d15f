"""Check that training renders examples the way inference will prompt the model: ``tunesmith data lint``.

A chat model is trained on ``render_example`` (the whole conversation) and prompted at inference with
``render_prompt`` (the conversation up to the reply, plus the template's generation prompt). When the two
disagree the model is trained on one text and served another, and nothing fails loudly: it just answers
worse. For every chat (and classification) row this checks, as **errors**:

* ``render_failed``: the template cannot render the row, or is not prefix-stable (its generation prompt is not
  what the training render has before the reply, so the loss mask cannot be placed);
* ``prompt_mismatch``: the inference prompt's text is not a prefix of the training text;
* ``prompt_token_mismatch``: the texts agree but the tokens do not (the reply starts with whitespace that
  merges with the generation prompt's last token, so at inference the model starts from a token it never saw
  there in training);
* ``eot_not_in_loss``: an assistant turn's trained tokens do not end with the end-of-turn token, so the model
  does not learn to stop (``no_end_of_turn`` when the template writes none at all);
* ``malformed_row``: the row cannot be read (training stops on it, or skips it).

And as **warnings** (training works, but inference will differ from what the model learnt):

* ``system_prompt_mismatch``: the row's system turn differs from the inference system prompt
  (``--system-prompt``, or the template's default when none is set);
* ``default_system_prompt``: the row has no system turn, none is configured, and the template injects its
  own default (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face") into both;
* ``eot_not_eos``: the end-of-turn token is not the tokenizer's eos token, where generation stops;
* ``empty_row``: training drops the row::

    report = lint_file("train.jsonl", tokenizer, system_prompt="You are a support agent.")
    report["error_count"], report["errors"]["eot_not_in_loss"]["lines"]
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from tunesmith.data.formats import Example
from tunesmith.data.render import IGNORE_INDEX, ensure_chat_template, render_example, render_prompt
from tunesmith.data.tools.inspect import DEFAULT_LABEL_PROMPT, MAX_LISTED, ExampleStream
from tunesmith.errors import DataError

_SENTINEL = "\x00tunesmith-system\x00"
_PING, _PONG = "ping", "pong"
_MAX_SYSTEM_PROMPTS = 10


def _render_text(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def default_system_prompt(tokenizer: Any) -> str | None:
    """The system prompt the chat template writes when a conversation has none, or None.

    Found by rendering a conversation with a placeholder system turn and one without: when the second is the
    first with some other text in the placeholder's place, that text is the default.
    """
    ensure_chat_template(tokenizer)
    user = [{"role": "user", "content": _PING}]
    try:
        with_system = _render_text(tokenizer, [{"role": "system", "content": _SENTINEL}, *user])
        without = _render_text(tokenizer, user)
    except Exception:  # a template that rejects system turns has no default either
        return None
    if _SENTINEL not in with_system:
        return None
    prefix, suffix = with_system.split(_SENTINEL, 1)
    if without.startswith(prefix) and without.endswith(suffix) and len(without) >= len(prefix) + len(suffix):
        return without[len(prefix) : len(without) - len(suffix)]
    return None


def end_of_turn_token(tokenizer: Any) -> int | None:
    """The token the template writes right after an assistant reply (``<|im_end|>`` for ChatML), or None.

    The reply is rendered mid-conversation (a user turn follows it), so a template that leaves the token off
    only after the *final* reply still shows it; the per-row check then catches the rows it is missing from.
    None means the template ends a reply with ordinary text (or nothing), so no token marks "stop here".
    """
    ensure_chat_template(tokenizer)
    user = {"role": "user", "content": _PING}
    text = _render_text(tokenizer, [user, {"role": "assistant", "content": _PONG}, user])
    after = text[text.index(_PONG) + len(_PONG) :] if _PONG in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    if ids and ids[0] in special:
        return ids[0]
    eos = tokenizer.eos_token
    if eos and after.lstrip().startswith(eos):
        return tokenizer.eos_token_id
    return None


class _Findings:
    """Errors and warnings by code: a count, the first lines and the first message of each."""

    def __init__(self, max_listed: int) -> None:
        self.max_listed = max_listed
        self.found: dict[str, dict[str, dict[str, Any]]] = {"errors": {}, "warnings": {}}

    def add(self, severity: str, code: str, line: int | None, message: str, count: int = 1) -> None:
        entry = self.found[severity].setdefault(code, {"count": 0, "lines": [], "message": message})
        entry["count"] += count
        if line is not None and len(entry["lines"]) < self.max_listed:
            entry["lines"].append(line)

    def count(self, severity: str) -> int:
        return sum(e["count"] for e in self.found[severity].values())


def _trained_runs(labels: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of consecutive positions that are in the loss."""
    runs: list[tuple[int, int]] = []
    start = None
    for k, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = k
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, k))
            start = None
    return runs


class _Linter:
    def __init__(self, tokenizer: Any, system_prompt: str | None, label_prompt: str, max_listed: int) -> None:
        ensure_chat_template(tokenizer)
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.label_prompt = label_prompt
        self.default_system = default_system_prompt(tokenizer)
        self.inference_system = system_prompt if system_prompt is not None else self.default_system
        self.eot = end_of_turn_token(tokenizer)
        self.findings = _Findings(max_listed)
        self.row_systems: Counter[str] = Counter()
        self.checked = 0

    def template_checks(self) -> None:
        """File-level findings about the template itself."""
        eos = self.tokenizer.eos_token_id
        if self.eot is None:
            self.findings.add(
                "errors",
                "no_end_of_turn",
                None,
                "the chat template writes no end-of-turn token after an assistant reply, so the model cannot "
                "learn where to stop; use a template that ends each turn with a special token (e.g. ChatML)",
            )
        elif eos is not None and self.eot != eos:
            name = self.tokenizer.convert_ids_to_tokens(self.eot)
            self.findings.add(
                "warnings",
                "eot_not_eos",
                None,
                f"replies end with {name!r} but generation stops at the eos token "
                f"{self.tokenizer.eos_token!r}; add {name!r} to the generation stop tokens",
            )

    def check(self, line: int, ex: Example, label_names: list[str] | None) -> None:
        self.checked += 1
        self._system(line, ex)
        try:
            ids, labels = render_example(
                ex, self.tokenizer, self.system_prompt, label_names, self.label_prompt
            )
            prompt = render_prompt(ex, self.tokenizer, self.system_prompt, self.label_prompt)
        except DataError as err:
            self.findings.add("errors", "render_failed", line, str(err))
            return
        self._prefix(line, ids, prompt)
        self._end_of_turn(line, ex, ids, labels)

    def _prefix(self, line: int, ids: list[int], prompt: list[int]) -> None:
        if ids[: len(prompt)] == prompt:
            return
        decode = self.tokenizer.decode
        full, head = decode(ids, skip_special_tokens=False), decode(prompt, skip_special_tokens=False)
        if not full.startswith(head):
            at = next((k for k, (a, b) in enumerate(zip(head, full, strict=False)) if a != b), len(full))
            self.findings.add(
                "errors",
                "prompt_mismatch",
                line,
                f"the inference prompt differs from the training text at character {at}: "
                f"{head[at : at + 40]!r} (inference) vs {full[at : at + 40]!r} (training)",
            )
            return
        k = next(k for k, (a, b) in enumerate(zip(prompt, ids, strict=False)) if a != b) if ids else 0
        self.findings.add(
            "errors",
            "prompt_token_mismatch",
            line,
            f"same text, different tokens at token {k}: the inference prompt ends with "
            f"{decode(prompt[k:])!r} but training has {decode(ids[k : k + 2])!r} there (the reply starts "
            "with whitespace that merges with the generation prompt); strip leading whitespace from replies",
        )

    def _end_of_turn(self, line: int, ex: Example, ids: list[int], labels: list[int]) -> None:
        if self.eot is None:
            return
        runs = _trained_runs(labels)
        if ex.kind == "chat" and ex.messages is not None:
            turns = sum(1 for m in ex.messages if m["role"] == "assistant" and m.get("weight", 1) != 0)
        else:
            turns = 1
        missing = sum(1 for _, end in runs if ids[end - 1] != self.eot) + max(0, turns - len(runs))
        if missing:
            name = self.tokenizer.convert_ids_to_tokens(self.eot)
            self.findings.add(
                "errors",
                "eot_not_in_loss",
                line,
                f"{missing} of {turns} trained assistant turns do not end with {name!r} in the loss mask, so "
                "the model does not learn to stop there",
            )

    def _system(self, line: int, ex: Example) -> None:
        first = ex.messages[0] if ex.kind == "chat" and ex.messages else None
        row_system = first.get("content") if first is not None and first["role"] == "system" else None
        if row_system is not None:
            if len(self.row_systems) < _MAX_SYSTEM_PROMPTS or row_system in self.row_systems:
                self.row_systems[row_system] += 1
            if row_system != self.inference_system:
                served = repr(self.inference_system[:80]) if self.inference_system is not None else "none"
                self.findings.add(
                    "warnings",
                    "system_prompt_mismatch",
                    line,
                    f"the row's system prompt {row_system[:80]!r} differs from the inference system prompt "
                    f"({served}); set --system-prompt / data.system_prompt to the one you will serve with",
                )
        elif self.system_prompt is None and self.default_system is not None:
            self.findings.add(
                "warnings",
                "default_system_prompt",
                line,
                f"the row has no system turn, so the template injects its default {self.default_system!r} "
                "in training and at inference; set data.system_prompt to choose one deliberately",
            )


def lint_file(
    path: str | Path,
    tokenizer: Any,
    *,
    system_prompt: str | None = None,
    fmt: str = "auto",
    label_prompt: str = DEFAULT_LABEL_PROMPT,
    label_names: list[str] | None = None,
    max_listed: int = MAX_LISTED,
) -> dict[str, Any]:
    """Check every row of ``path`` for train/inference template mismatches (see the module docstring).

    Args:
        path: Data file in any format :func:`tunesmith.data.formats.iter_rows` reads.
        tokenizer: The tokenizer (and chat template) training and inference will use.
        system_prompt: The inference system prompt (``data.system_prompt``); None means the template's own.
        fmt: ``auto`` or a format name.
        label_prompt: ``data.label_prompt`` for classification rows.
        label_names: Classification label names; inferred from the file when None.
        max_listed: Lines listed per finding.

    Returns:
        ``step`` ("lint"), ``input``, ``format``, ``rows``, ``checked``, ``errors`` and ``warnings`` (code ->
        ``{"count", "lines", "message"}``), ``error_count``, ``warning_count``, ``ok`` (no errors),
        ``template`` (``default_system_prompt``, ``inference_system_prompt``, ``end_of_turn``),
        ``row_system_prompts`` (the first distinct system prompts with their counts), ``note`` and
        ``seconds``.

    Raises:
        DataError: the file is missing or of an unsupported type.
    """
    start = time.perf_counter()
    linter = _Linter(tokenizer, system_prompt, label_prompt, max_listed)
    stream = ExampleStream(path, fmt, label_names, max_listed)
    note = None
    for line, _, example in stream:
        if example is None:
            linter.findings.add("warnings", "empty_row", line, "nothing to learn: training drops this row")
        elif example.kind == "text":
            note = "text rows are trained as raw text with no chat template: nothing to check"
        else:
            linter.check(line, example, stream.label_names)
    for row in stream.malformed_rows:
        linter.findings.add("errors", "malformed_row", row["line"], row["error"])
    unlisted = stream.malformed - len(stream.malformed_rows)
    if unlisted:  # the stream lists only the first few; the count must still be complete
        linter.findings.add("errors", "malformed_row", None, "rows that cannot be read", count=unlisted)
    if stream.stopped:
        linter.findings.add("errors", "unreadable", None, stream.stopped)
    if linter.checked:
        linter.template_checks()
    eot = linter.eot
    return {
        "step": "lint",
        "input": str(stream.path),
        "format": stream.format,
        "rows": stream.rows,
        "checked": linter.checked,
        **linter.findings.found,
        "error_count": linter.findings.count("errors"),
        "warning_count": linter.findings.count("warnings"),
        "ok": linter.findings.count("errors") == 0,
        "template": {
            "default_system_prompt": linter.default_system,
            "inference_system_prompt": linter.inference_system,
            "end_of_turn": tokenizer.convert_ids_to_tokens(eot) if eot is not None else None,
        },
        "row_system_prompts": dict(linter.row_systems.most_common()),
        "note": note,
        "seconds": round(time.perf_counter() - start, 3),
    }


def format_lint(report: dict[str, Any]) -> str:
    """The lint report as text: one line per finding code with its count, first lines and message."""
    out = [
        f"{report['input']}: {report['checked']} of {report['rows']} rows checked, "
        f"{report['error_count']} errors, {report['warning_count']} warnings"
    ]
    for severity in ("errors", "warnings"):
        for code, entry in report[severity].items():
            lines = ", ".join(map(str, entry["lines"][:8]))
            more = ", ..." if entry["count"] > min(8, len(entry["lines"])) and entry["lines"] else ""
            where = f" (lines {lines}{more})" if lines else ""
            out.append(f"  {severity[:-1]} {code} x{entry['count']}{where}: {entry['message']}")
    if report["note"]:
        out.append(f"  note: {report['note']}")
    return "\n".join(out)
