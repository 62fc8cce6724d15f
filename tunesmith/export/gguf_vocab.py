"""Tokenizer metadata for a GGUF file: a byte-level (gpt2-style) BPE vocabulary in llama.cpp's keys.

llama.cpp rebuilds the tokenizer from ``tokenizer.ggml.*``: the token strings in id order, a type per token,
the merges, the special ids, and ``tokenizer.ggml.pre`` naming the pre-tokenizer regex it should split text
with. We only write a ``pre`` we can prove from ``tokenizer.json``; anything else is refused rather than
exported with a tokenizer that silently splits text differently.
"""

from __future__ import annotations

import json
from typing import Any

from gguf import TokenType

from tunesmith.errors import ModelError

_UNSUPPORTED = (
    "GGUF export writes byte-level BPE tokenizers (gpt2-style, e.g. SmolLM2); {why}. "
    "Export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py instead"
)


def _pre_tokenizers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    pre = spec.get("pre_tokenizer") or {}
    return list(pre.get("pretokenizers", [])) if pre.get("type") == "Sequence" else [pre]


def detect_pre(spec: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer a ``tokenizer.json`` describes.

    ``gpt-2``: plain ByteLevel with GPT-2's split regex. ``smollm``: digits split one by one, then the GPT-2
    regex (SmolLM's original tokenizer.json).
    """
    steps = _pre_tokenizers(spec)
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
    ):
        return "smollm"
    raise ModelError(
        _UNSUPPORTED.format(why=f"this one pre-tokenizes with {kinds}, which has no known llama.cpp name")
    )


def token_table(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types for ids ``0..vocab_size-1``.

    Added special tokens are CONTROL (matched whole, never produced by splitting text), other added tokens
    USER_DEFINED, the rest NORMAL. Embedding rows without a token (a vocabulary padded to a round size) get
    a ``[PAD<id>]`` placeholder marked UNUSED, as llama.cpp's converter writes them.
    """
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if by_id and max(by_id) >= vocab_size:
        raise ModelError(
            f"the tokenizer has ids up to {max(by_id)} but the model embeds only {vocab_size}; "
            "resize the embeddings (model.resize_token_embeddings) before exporting"
        )
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _adds_special(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding adds BOS at the start / EOS at the end (the tokenizer's post-processor decides)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    extra = len(full) - len(plain)
    add_bos = extra > 0 and tokenizer.bos_token_id is not None and full[0] == tokenizer.bos_token_id
    add_eos = extra > 0 and tokenizer.eos_token_id is not None and full[-1] == tokenizer.eos_token_id
    return add_bos, add_eos


def chat_template_text(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: llama.cpp reads the default one
        template = template.get("default")
    return template or None


def add_vocab(writer: Any, tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Write the ``tokenizer.*`` keys; returns what was written, for the manifest."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            _UNSUPPORTED.format(why="this tokenizer has no tokenizer.json (not a fast tokenizer)")
        )
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        why = f"this one is {model.get('type')} with a {(spec.get('decoder') or {}).get('type')} decoder"
        raise ModelError(_UNSUPPORTED.format(why=why))
    pre = detect_pre(spec)
    tokens, types = token_table(tokenizer, vocab_size)
    # tokenizers >= 0.20 stores merges as [left, right] pairs, older files as "left right" strings
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    special = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
    }
    adders = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
    }
    for key, token_id in special.items():
        if token_id is not None:
            adders[key](int(token_id))
    add_bos, add_eos = _adds_special(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    template = chat_template_text(tokenizer)
    if template:
        writer.add_chat_template(template)
    return {
        "tokenizer_model": "gpt2",
        "tokenizer_pre": pre,
        "tokens": len(tokens),
        "merges": len(merges),
        "special_ids": special,
        "add_bos": add_bos,
        "chat_template": template is not None,
    }
