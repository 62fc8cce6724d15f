"""Split documents into token-bounded, sentence-aware chunks with overlap.

Chunks end on sentence boundaries where they can (a retrieved chunk that stops mid-sentence wastes prompt
tokens and can cut the answer in half); a sentence longer than the budget is split on words. Token counts
come from a callable, normally the model tokenizer's, so a chunk's size is what the prompt will pay for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tunesmith.errors import DataError

TokenCounter = Callable[[str], int]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


@dataclass(frozen=True)
class Chunk:
    """One retrievable passage: ``id`` is ``"{doc_id}#{n}"``, unique in an index."""

    id: str
    doc_id: str
    text: str


def word_count(text: str) -> int:
    """The fallback token counter: whitespace words (used when no tokenizer is given, and in tests)."""
    return len(text.split())


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after ``.!?`` + whitespace, and at blank lines), stripped, none empty."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _split_long(sentence: str, max_tokens: int, count: TokenCounter) -> list[str]:
    """Split one over-budget sentence on words into pieces of at most ``max_tokens``."""
    pieces: list[str] = []
    current: list[str] = []
    for word in sentence.split():
        if current and count(" ".join([*current, word])) > max_tokens:
            pieces.append(" ".join(current))
            current = []
        current.append(word)
    if current:
        pieces.append(" ".join(current))
    return pieces


def chunk_text(
    text: str, max_tokens: int = 128, overlap: int = 32, count: TokenCounter = word_count
) -> list[str]:
    """Pack whole sentences into chunks of at most ``max_tokens``; each chunk after the first starts with
    the previous chunk's last sentences, up to ``overlap`` tokens of them.

    Raises:
        DataError: ``overlap`` is not below ``max_tokens``.
    """
    if not 0 <= overlap < max_tokens:
        raise DataError(f"chunk overlap {overlap} must be >= 0 and below max_tokens {max_tokens}")
    units: list[str] = []
    for sentence in split_sentences(text):
        units.extend(
            [sentence] if count(sentence) <= max_tokens else _split_long(sentence, max_tokens, count)
        )
    chunks: list[str] = []
    current: list[str] = []
    fresh = 0  # sentences in `current` not carried over from the previous chunk
    for unit in units:
        if current and count(" ".join([*current, unit])) > max_tokens:
            chunks.append(" ".join(current))
            carried: list[str] = []
            for prev in reversed(current):
                if count(" ".join([prev, *carried])) > overlap:
                    break
                carried.insert(0, prev)
            # the carried sentences plus the new one must fit, else carry less
            while carried and count(" ".join([*carried, unit])) > max_tokens:
                carried.pop(0)
            current, fresh = carried, 0
        current.append(unit)
        fresh += 1
    if current and fresh:
        chunks.append(" ".join(current))
    return chunks


class _TextOfHTML(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "tr"):
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def read_documents(paths: Iterable[str | Path]) -> list[tuple[str, str]]:
    """``(doc_id, text)`` for each document: a .txt/.md/.html file is one document (id: the file stem);
    each line of a .jsonl file is one (``{"id": ..., "text": ...}``).

    Raises:
        DataError: a file is missing, or a JSONL line lacks ``id``/``text`` (file:line), or an id repeats.
    """
    docs: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise DataError(f"{path}: no such document file")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    docs.append((str(row["id"]), str(row["text"])))
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise DataError(
                        f'{path}:{n}: a document line must be {{"id": ..., "text": ...}} ({err})'
                    ) from err
        elif path.suffix in (".html", ".htm"):
            parser = _TextOfHTML()
            parser.feed(text)
            docs.append((path.stem, "".join(parser.parts)))
        else:
            docs.append((path.stem, text))
    seen: set[str] = set()
    for doc_id, _ in docs:
        if doc_id in seen:
            raise DataError(f"document id {doc_id!r} appears twice; give each document a unique id or name")
        seen.add(doc_id)
    return docs


def chunk_documents(
    docs: Iterable[tuple[str, str]],
    max_tokens: int = 128,
    overlap: int = 32,
    count: TokenCounter = word_count,
) -> list[Chunk]:
    """Chunk every document; chunk ids are ``"{doc_id}#{n}"`` counting from 0."""
    return [
        Chunk(f"{doc_id}#{n}", doc_id, piece)
        for doc_id, text in docs
        for n, piece in enumerate(chunk_text(text, max_tokens, overlap, count))
    ]
