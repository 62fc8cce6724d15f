"""Render examples through the model's chat template into token ids and loss labels.

Only what the tuned model should *say* is in the loss: the assistant turns, including the end-of-turn token
(``<|im_end|>`` for ChatML) so the model learns to stop, but not the newline the template writes after it.
The span of assistant turn ``i`` is the text between ``render(messages[:i], add_generation_prompt=True)``
and ``render(messages[:i+1])``; the full conversation is tokenized once and tokens are assigned to spans by
their character offsets, so BPE merges across turn boundaries cannot shift the mask::

    ids, labels = render_example(example, tokenizer, None, None, label_prompt)   # labels: -100 = no loss
    prompt_ids = render_prompt(example, tokenizer, None, label_prompt)           # for generation

Keys the template does not read (``weight``, ``name``, unknown ones) stay out of the text. Tool calls and
tool lists go to templates that read ``tool_calls`` / ``tools``; for others (the default model's ChatML)
they are written as text: ``<tool_call>[{"name": ..., "arguments": {...}}]</tool_call>`` in the assistant
turn and the tool list in the system turn, so the model sees the functions it is trained to call.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tunesmith.data.formats import Example
from tunesmith.errors import DataError

IGNORE_INDEX = -100
"""Label value that the loss skips (PyTorch's cross-entropy default)."""

# Plain ChatML; the turn ends with the tokenizer's own eos so generation stops where training taught it to.
CHATML_TEMPLATE = (
    "{% set eot = eos_token if eos_token else '<|im_end|>' %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eot + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TOOLS_INTRO = "You can call the following tools:\n<tools>\n"
_TOOLS_OUTRO = (
    '\n</tools>\nTo call tools, reply with <tool_call>[{"name": <function name>, "arguments": <arguments '
    "object>}]</tool_call>."
)
_HANDLED_KEYS = {"role", "content", "tool_calls", "weight"}


def ensure_chat_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template (base models) a plain ChatML one, in place."""
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = CHATML_TEMPLATE


def chat_prompt(tokenizer: Any, question: str, system_prompt: str | None) -> list[int]:
    """``question`` as one user turn (after the run's system prompt), ready for the assistant's answer."""
    ensure_chat_template(tokenizer)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _template_text(tokenizer: Any) -> str:
    template = tokenizer.chat_template
    return template if isinstance(template, str) else json.dumps(template)


def _reads(template: str, key: str) -> bool:
    return re.search(rf"\b{re.escape(key)}\b", template) is not None


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # keep what the data says; the model should learn it verbatim
    return value


def tool_calls_text(tool_calls: list[dict[str, Any]]) -> str:
    """The text form of an assistant's tool calls, for templates that do not render ``tool_calls``."""
    calls = [
        {"name": c["function"]["name"], "arguments": _arguments(c["function"].get("arguments", {}))}
        for c in tool_calls
    ]
    return "<tool_call>" + json.dumps(calls, ensure_ascii=False) + "</tool_call>"


def _assistant_text(message: dict[str, Any]) -> str:
    parts = [message.get("content") or ""]
    if message.get("tool_calls"):
        parts.append(tool_calls_text(message["tool_calls"]))
    return "\n".join(p for p in parts if p)


def _template_message(message: dict[str, Any], template: str) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message["role"], "content": message.get("content") or ""}
    if message.get("tool_calls"):
        if _reads(template, "tool_calls"):
            out["tool_calls"] = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": _arguments(c["function"].get("arguments", {})),
                    },
                }
                for c in message["tool_calls"]
            ]
        else:
            out["content"] = _assistant_text(message)
    for key, value in message.items():  # e.g. name, tool_call_id: only when the template reads them
        if key not in _HANDLED_KEYS and _reads(template, key):
            out[key] = value
    return out


def _conversation(
    ex: Example, tokenizer: Any, system_prompt: str | None, label_names: list[str] | None, label_prompt: str
) -> tuple[list[dict[str, Any]], list[bool], list[dict] | None]:
    """Messages to render, whether each is trained on, and the ``tools`` argument for the template."""
    ensure_chat_template(tokenizer)
    template = _template_text(tokenizer)
    if ex.kind == "classification":
        name = label_names[ex.label] if label_names and ex.label is not None else str(ex.label)
        source = [
            {"role": "user", "content": _label_prompt(label_prompt, ex)},
            {"role": "assistant", "content": name},
        ]
    elif ex.kind == "chat" and ex.messages:
        source = ex.messages
    else:
        raise DataError(f"{ex.source}:{ex.line}: a {ex.kind!r} example has no conversation to render")
    messages = [_template_message(m, template) for m in source]
    trained = [m["role"] == "assistant" and m.get("weight", 1) != 0 for m in source]
    if system_prompt is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
        trained.insert(0, False)
    tools = ex.extra.get("tools") or None
    if tools is not None and not _reads(template, "tools"):
        listing = _TOOLS_INTRO + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools) + _TOOLS_OUTRO
        if messages[0]["role"] == "system":
            messages[0]["content"] = messages[0]["content"] + "\n\n" + listing
        else:
            messages.insert(0, {"role": "system", "content": listing})
            trained.insert(0, False)
        tools = None
    return messages, trained, tools


def _label_prompt(label_prompt: str, ex: Example) -> str:
    try:
        return label_prompt.format(text=ex.text)
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(
            f"data.label_prompt {label_prompt!r} cannot be filled in ({err!r}): it must contain {{text}} and "
            "no other {...} fields (write {{ and }} for literal braces)"
        ) from None


def _render(tokenizer: Any, ex: Example, messages: list[dict], tools: list | None, gen_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=gen_prompt
        )
    except Exception as err:  # jinja errors, TypeErrors inside templates: all mean "this row cannot render"
        raise DataError(f"{ex.source}:{ex.line}: the chat template failed on this example: {err}") from None


def _token_spans(
    tokenizer: Any, text: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[list[int]]]:
    """Token ids of ``text`` and, per character span, the indices of the tokens that start inside it."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        return ids, [[k for k, (a, _) in enumerate(offsets) if start <= a < end] for start, end in spans]
    # Slow tokenizers have no offsets: count the tokens of each text prefix and check they agree.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    result = []
    for start, end in spans:
        head = tokenizer(text[:start], add_special_tokens=False)["input_ids"]
        upto = tokenizer(text[:end], add_special_tokens=False)["input_ids"]
        if ids[: len(upto)] != upto or upto[: len(head)] != head:
            raise DataError("the tokenizer splits turn boundaries differently in the full conversation")
        result.append(list(range(len(head), len(upto))))
    return ids, result


def _strip_trailing_space(tokenizer: Any, ids: list[int], indices: list[int]) -> list[int]:
    """Drop tokens after the end-of-turn token that are only whitespace (the template's newline)."""
    while indices and not tokenizer.decode([ids[indices[-1]]]).strip():
        indices = indices[:-1]
    return indices


def _not_prefix_stable(ex: Example, prefix: str, full: str) -> DataError:
    at = next(
        (k for k, (a, b) in enumerate(zip(prefix, full, strict=False)) if a != b), min(len(prefix), len(full))
    )
    return DataError(
        f"{ex.source}:{ex.line}: the chat template is not prefix-stable: rendering the conversation up to an "
        f"assistant turn gives text that the full conversation does not start with (they differ at character "
        f"{at}: {prefix[at : at + 40]!r} vs {full[at : at + 40]!r}), so the loss mask cannot be placed. "
        "Use a template that renders earlier turns the same way whatever follows (e.g. set "
        "tokenizer.chat_template to ChatML)"
    )


def render_example(
    ex: Example,
    tokenizer: Any,
    system_prompt: str | None,
    label_names: list[str] | None,
    label_prompt: str,
) -> tuple[list[int], list[int]]:
    """Token ids and loss labels for one training example.

    Args:
        ex: The example. ``chat`` renders through the chat template; ``classification`` becomes a user turn
            ``label_prompt.format(text=...)`` answered by the label name; ``text`` is raw text plus eos.
        tokenizer: A Hugging Face tokenizer (given a ChatML template if it has none).
        system_prompt: Added as the first turn when the example has no system turn; None keeps the
            template's own default.
        label_names: Classification label names in id order.
        label_prompt: The classification user-turn template with a ``{text}`` field.

    Returns:
        ``(input_ids, labels)`` of equal length; labels are the token ids on assistant tokens (end-of-turn
        token included) and :data:`IGNORE_INDEX` elsewhere. For ``text`` every token is a label.

    Raises:
        DataError: The template fails on the example or is not prefix-stable.
    """
    if ex.kind == "text":
        ids = list(tokenizer(ex.text or "", add_special_tokens=True)["input_ids"])
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids.append(tokenizer.eos_token_id)  # so a text model learns where documents end
        return ids, list(ids)
    messages, trained, tools = _conversation(ex, tokenizer, system_prompt, label_names, label_prompt)
    full = _render(tokenizer, ex, messages, tools, False)
    spans = []
    for i, is_trained in enumerate(trained):
        if not is_trained:
            continue
        head = _render(tokenizer, ex, messages[:i], tools, True)
        upto = _render(tokenizer, ex, messages[: i + 1], tools, False)
        for prefix, longer in ((head, upto), (upto, full)):
            if not longer.startswith(prefix):
                raise _not_prefix_stable(ex, prefix, longer)
        spans.append((len(head), len(upto)))
    ids, token_spans = _token_spans(tokenizer, full, spans)
    labels = [IGNORE_INDEX] * len(ids)
    for indices in token_spans:
        for k in _strip_trailing_space(tokenizer, ids, indices):
            labels[k] = ids[k]
    return ids, labels


def render_prompt(ex: Example, tokenizer: Any, system_prompt: str | None, label_prompt: str) -> list[int]:
    """The inference-time prompt: the conversation before the last assistant turn plus the generation prompt.

    A conversation that does not end with an assistant turn (a question to answer: the user's, or a tool
    result) is rendered whole, plus the generation prompt: the same ids as the same conversation with an
    answer appended would get here. For classification it is the label prompt as a user turn; the model's
    answer should be the label name.

    Raises:
        DataError: ``text`` examples have no prompt to complete.
    """
    if ex.kind == "text":
        raise DataError(f"{ex.source}:{ex.line}: a 'text' example has no prompt; evaluate it by loss instead")
    messages, _, tools = _conversation(ex, tokenizer, system_prompt, None, label_prompt)
    last = len(messages) - 1 if messages[-1]["role"] == "assistant" else len(messages)
    text = _render(tokenizer, ex, messages[:last], tools, True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def reference_text(ex: Example, label_names: list[str] | None) -> str:
    """What a perfect model answers.

    The final assistant turn (tool calls in their text form), the label name, or the text itself.
    """
    if ex.kind == "chat" and ex.messages:
        return _assistant_text(ex.messages[-1])
    if ex.kind == "classification":
        return label_names[ex.label] if label_names and ex.label is not None else str(ex.label)
    return ex.text or ""


def head_input_ids(text: str, tokenizer: Any, suffix: str = "", max_length: int | None = None) -> list[int]:
    """Input of a sequence-classification head: the text, encoded as the tokenizer does by default, then
    ``suffix`` (``data.suffix``), cut to ``max_length`` from the text's end so the suffix always survives.

    No chat template: it would cost ~40 tokens per example with SmolLM2's template (more than a whole
    tweet). A short suffix is another matter: the head reads the last token's hidden state, and after
    ``"\nEmotion:"`` that state is the model about to name the emotion rather than continue the tweet
    (frozen last-token features on TweetEval emotion: logistic-regression macro-F1 0.578 -> 0.670, for 4
    tokens more per tweet). Without a suffix this is what a stock user feeds
    ``AutoModelForSequenceClassification`` (``tokenizer(texts)``). Inputs shorter than two tokens get the bos
    (else eos) token in front, so the class position is never position 0, where the training loop (which
    counts next-token targets from position 1) would not count it.
    """
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    tail = list(tokenizer(suffix, add_special_tokens=False)["input_ids"]) if suffix else []
    if max_length is not None:
        ids = ids[: max(1, max_length - len(tail))]
    ids = ids + tail
    filler = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if len(ids) < 2 and filler is not None:
        ids = [filler, *ids]
    return ids


def class_target_labels(n_tokens: int, class_id: int) -> list[int]:
    """Labels for a head example: the class id at the last position (the token the head pools), -100 else.

    Carrying the class id inside the usual ``labels`` row keeps one batch layout for every loss: padding,
    packing, length grouping, gradient accumulation (one target per example) and resume need no new path.
    """
    return [IGNORE_INDEX] * (n_tokens - 1) + [int(class_id)]
