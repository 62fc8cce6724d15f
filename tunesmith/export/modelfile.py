"""The Ollama ``Modelfile`` written next to a GGUF export.

Ollama formats chats with a Go template, not the Jinja chat template the tokenizer carries. For ChatML
templates (SmolLM2's) we write the equivalent Go template; we first prove the tokenizer's template *is*
ChatML by rendering probe conversations, and read its built-in default system prompt from the same probe,
so ``ollama run`` sees exactly the prompts transformers would build. Other templates get a Modelfile
without TEMPLATE (Ollama then falls back to the template stored in the GGUF).
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import ConfigError

# Go template equivalent of ChatML: the system turn (Modelfile SYSTEM or the chat's system message, which
# Ollama passes as .System), then each user/assistant turn, then the open assistant turn to generate.
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n"
    "{{ .System }}<|im_end|>\n"
    "{{ end }}"
    '{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n'
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}{{- end }}"
    "<|im_start|>assistant\n"
)

_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
_PROBE = [("user", "\x01U1"), ("assistant", "\x01A1"), ("user", "\x01U2")]


def _render(tokenizer: Any, messages: list[tuple[str, str]]) -> str | None:
    try:
        return tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in messages], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # no template, or one that rejects the probe: not something we can translate
        return None


def chatml_default_system(tokenizer: Any) -> tuple[bool, str | None]:
    """(is the chat template ChatML, the system prompt it inserts when a chat has none).

    ChatML means: rendering any conversation gives ``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n`` per turn,
    then ``<|im_start|>assistant\\n``, optionally preceded by one default system turn.
    """
    body = "".join(_TURN.format(role=r, content=c) for r, c in _PROBE) + "<|im_start|>assistant\n"
    plain = _render(tokenizer, _PROBE)
    with_system = _render(tokenizer, [("system", "\x01S"), *_PROBE])
    if plain is None or with_system is None or not plain.endswith(body):
        return False, None
    if with_system != _TURN.format(role="system", content="\x01S") + body:
        return False, None
    prefix = plain[: -len(body)]
    if not prefix:
        return True, None
    head, tail = "<|im_start|>system\n", "<|im_end|>\n"
    if prefix.startswith(head) and prefix.endswith(tail):
        return True, prefix[len(head) : -len(tail)]
    return False, None


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ConfigError(f'the {what} contains """, which an Ollama Modelfile cannot hold; rephrase it')
    return f'"""{text}"""'


def render_modelfile(tokenizer: Any, system_prompt: str | None, gguf_path: str) -> tuple[str, bool]:
    """(Modelfile text, whether a ChatML TEMPLATE was written).

    SYSTEM is the run's ``data.system_prompt`` when set (the one it trained with), otherwise the chat
    template's own default, so a chat without a system message is formatted as in training.
    """
    chatml, default_system = chatml_default_system(tokenizer)
    lines = ["# Written by tunesmith. Use: ollama create NAME -f Modelfile", f"FROM {gguf_path}", ""]
    if chatml:
        lines.append(f"TEMPLATE {_quoted(CHATML_TEMPLATE, 'chat template')}")
        system = system_prompt if system_prompt is not None else default_system
        if system:
            lines.append(f"SYSTEM {_quoted(system, 'system prompt')}")
        lines.append('PARAMETER stop "<|im_end|>"')
    else:
        lines.append("# The chat template is not ChatML: Ollama uses the template stored in the GGUF.")
        if system_prompt:
            lines.append(f"SYSTEM {_quoted(system_prompt, 'system prompt')}")
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos != "<|im_end|>":
        lines.append(f'PARAMETER stop "{eos}"')
    return "\n".join(lines) + "\n", chatml
