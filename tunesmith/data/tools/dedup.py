"""Duplicates, near-duplicates, train/eval leakage and n-gram contamination, streamed with bounded memory.

* **Exact duplicates**: a row's text fields are normalised (NFKC, case-folded, whitespace collapsed) and
  hashed (BLAKE2b, 16 bytes). Only the digests are kept: about **100 bytes per distinct row** (a bytes object
  plus its set slot), so 10 M rows fit in about 1 GB.
* **Near-duplicates**: MinHash signatures (datasketch, 128 permutations over character 5-grams by default)
  indexed with datasketch's ``MinHashLSH``, banded for ``threshold - 0.1`` so pairs right at the threshold
  are still found (~87% at 0.8 instead of ~40%); a candidate counts only if the estimated Jaccard
  similarity of the signatures reaches ``threshold``, which removes the extra candidates. Each *kept* row
  costs its signature (``4 * num_perm`` = 512 bytes) plus its LSH entries (at threshold 0.8: 14 bands, each
  a dict entry, a set and a 69-byte key): **about 6 KB per distinct row** (measured: 577 MB for 95k rows),
  so about 6 GB for 1 M distinct rows. Pass ``near=False`` for exact-only deduplication when that is too
  much, or deduplicate shards first.
* **Leakage**: :func:`find_leakage` indexes the (small) validation/test files, streams the training file and
  writes a copy without the training rows that repeat or nearly repeat an evaluation row.
* **Contamination**: :func:`contamination` reports which evaluation rows share a word 8-gram with the training
  data; memory is bounded by the evaluation file's n-grams, the training file is streamed.

::

    report = dedup_file("train.jsonl", "train.dedup.jsonl")            # within one file
    report = find_leakage("train.jsonl", ["val.jsonl", "test.jsonl"], "train.noleak.jsonl")
    report = contamination("test.jsonl", "train.jsonl", n=8)
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from datasketch import MinHash, MinHashLSH

from tunesmith.data.formats import iter_rows
from tunesmith.data.tools.stream import check_input, check_outputs, transform_file
from tunesmith.data.tools.textfields import text_fields
from tunesmith.errors import DataError

MAX_PAIRS = 1000
"""Duplicate/leak pairs listed in a report; the counts are always complete."""

_LSH_SLACK = 0.1
_SPACE_RE = re.compile(r"\s+")
_WORD_RE = re.compile(r"\w+")


@dataclass(frozen=True)
class NearDupConfig:
    """How near-duplicates are found."""

    threshold: float = 0.8
    """Estimated Jaccard similarity of the shingle sets at or above which two rows are near-duplicates."""
    num_perm: int = 128
    """MinHash permutations: more is a sharper similarity estimate, more memory (4 bytes each per row)."""
    shingle: Literal["char", "word"] = "char"
    """Character n-grams survive one changed word even in a tweet; word n-grams are cheaper for long texts."""
    ngram: int = 5
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise DataError(f"near-duplicate threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 16 or self.ngram < 1:
            raise DataError("num_perm must be >= 16 and ngram >= 1")


def normalize_for_match(text: str) -> str:
    """Canonical form for duplicate checks: NFKC, case-folded, runs of whitespace as one space, stripped."""
    return _SPACE_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _row_texts(row: dict[str, Any]) -> list[str]:
    return [normalize_for_match(t) for _, t in text_fields(row)]


def row_digest(texts: Sequence[str]) -> bytes:
    """16-byte digest of a row's normalised texts (field order matters, field names do not, so a chat row and
    an instruction row with the same question and answer match)."""
    return hashlib.blake2b("\x1e".join(texts).encode("utf-8"), digest_size=16).digest()


class MinHasher:
    """Builds datasketch MinHash signatures of normalised text, reusing one set of permutations."""

    def __init__(self, config: NearDupConfig) -> None:
        self.config = config
        # crc32 is ~3x faster than datasketch's default SHA-1 and deterministic across runs; the affine32
        # scheme avalanches its output (MurmurHash3 finaliser) before permuting, so its linearity is harmless.
        self._template = MinHash(num_perm=config.num_perm, seed=config.seed, hashfunc=zlib.crc32)

    def shingles(self, text: str) -> set[bytes]:
        """The shingle set of a normalised text (a text shorter than one shingle is its own shingle)."""
        n = self.config.ngram
        if self.config.shingle == "word":
            words = text.split(" ")
            return {" ".join(words[i : i + n]).encode() for i in range(max(1, len(words) - n + 1))}
        return {text[i : i + n].encode() for i in range(max(1, len(text) - n + 1))}

    def signature(self, text: str) -> MinHash | None:
        """MinHash of ``text``'s shingles; None for empty text (it has no shingles to compare)."""
        if not text:
            return None
        m = self._template.copy()
        m.update_batch(self.shingles(text))
        return m


class NearIndex:
    """MinHash LSH index plus the signatures of what it holds, to verify candidates exactly."""

    def __init__(self, config: NearDupConfig) -> None:
        self.config = config
        # Banding tuned *at* the threshold finds only ~40% of pairs lying exactly there; tuning it 0.1 lower
        # finds ~87% (at 0.8) and the exact signature check below removes the extra candidates.
        lsh_threshold = max(0.1, config.threshold - _LSH_SLACK)
        self.lsh = MinHashLSH(threshold=lsh_threshold, num_perm=config.num_perm)
        self._sigs = np.empty((1024, config.num_perm), dtype=np.uint32)
        self.size = 0

    def add(self, m: MinHash) -> int:
        """Insert a signature; returns its key (0, 1, 2... in insertion order)."""
        if self.size == len(self._sigs):  # amortised doubling: 512 B per row, no per-row Python object
            self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
        key = self.size
        self._sigs[key] = m.hashvalues
        self.lsh.insert(key, m, check_duplication=False)
        self.size += 1
        return key

    def best(self, m: MinHash) -> tuple[int, float] | None:
        """The most similar indexed key whose estimated Jaccard similarity reaches the threshold, or None."""
        candidates = self.lsh.query(m)
        if not candidates:
            return None
        keys = np.fromiter(candidates, dtype=np.int64, count=len(candidates))
        sims = (self._sigs[keys] == m.hashvalues).mean(axis=1)
        i = int(sims.argmax())
        return (int(keys[i]), float(sims[i])) if sims[i] >= self.config.threshold else None


class _DedupStep:
    """Row step: drop rows whose normalised text was seen before (exactly or nearly)."""

    def __init__(self, near: bool, config: NearDupConfig) -> None:
        self.seen: set[bytes] = set()
        self.hasher = MinHasher(config) if near else None
        self.index = NearIndex(config) if near else None
        self.kept_lines = array("q")  # index key -> line of the kept row, for "duplicate_of" in reports
        self.pairs: list[dict[str, Any]] = []

    def __call__(self, row: dict[str, Any], line: int) -> tuple[dict[str, Any] | None, list[str]]:
        texts = _row_texts(row)
        digest = row_digest(texts)
        if digest in self.seen:
            return None, ["exact_duplicate"]
        self.seen.add(digest)
        if self.hasher is None or self.index is None:
            return row, []
        m = self.hasher.signature(" ".join(texts))
        if m is None:
            return row, []
        hit = self.index.best(m)
        if hit is not None:
            if len(self.pairs) < MAX_PAIRS:
                self.pairs.append(
                    {"line": line, "duplicate_of": self.kept_lines[hit[0]], "similarity": round(hit[1], 4)}
                )
            return None, ["near_duplicate"]
        self.index.add(m)
        self.kept_lines.append(line)
        return row, []


def dedup_file(
    src: str | Path, dst: str | Path, *, near: bool = True, config: NearDupConfig | None = None
) -> dict[str, Any]:
    """Write ``src`` without exact (and, with ``near``, near-) duplicate rows; the first occurrence is kept.

    Args:
        src: Input data file (never modified).
        dst: Output JSONL path.
        near: Also drop near-duplicates (MinHash LSH); costs about 4 KB of memory per distinct row.
        config: Near-duplicate settings (threshold, permutations, shingles).

    Returns:
        The :func:`~tunesmith.data.tools.stream.transform_file` report; ``dropped`` has
        ``exact_duplicate`` and ``near_duplicate`` counts, ``details.near_pairs`` lists up to 1000
        ``{line, duplicate_of, similarity}``.
    """
    config = config or NearDupConfig()
    step = _DedupStep(near, config)

    def details() -> dict[str, Any]:
        out: dict[str, Any] = {"near": near, "distinct_rows": len(step.seen)}
        if near:
            out |= {"threshold": config.threshold, "num_perm": config.num_perm, "shingle": config.shingle}
            out |= {"ngram": config.ngram, "near_pairs": step.pairs}
        return out

    return transform_file(src, dst, step, name="dedup", details=details)


class _LeakStep:
    """Row step over the training file: drop rows that repeat an indexed evaluation row."""

    def __init__(self, eval_paths: Sequence[Path], near: bool, config: NearDupConfig) -> None:
        self.eval_paths = [str(p) for p in eval_paths]
        self.exact: dict[bytes, tuple[int, int]] = {}  # digest -> (eval file index, line)
        self.hasher = MinHasher(config) if near else None
        self.index = NearIndex(config) if near else None
        self.where: list[tuple[int, int]] = []  # index key -> (eval file index, line)
        self.per_file: Counter[str] = Counter()
        self.pairs: list[dict[str, Any]] = []
        for f, path in enumerate(eval_paths):
            for line, row in iter_rows(path):
                texts = _row_texts(row)
                self.exact.setdefault(row_digest(texts), (f, line))
                m = self.hasher.signature(" ".join(texts)) if self.hasher else None
                if m is not None and self.index is not None:
                    self.index.add(m)
                    self.where.append((f, line))

    def _leak(self, line: int, where: tuple[int, int], kind: str, sim: float) -> tuple[None, list[str]]:
        path = self.eval_paths[where[0]]
        self.per_file[path] += 1
        if len(self.pairs) < MAX_PAIRS:
            self.pairs.append(
                {
                    "train_line": line,
                    "eval_file": path,
                    "eval_line": where[1],
                    "kind": kind,
                    "similarity": sim,
                }
            )
        return None, [f"leak_{kind}"]

    def __call__(self, row: dict[str, Any], line: int) -> tuple[dict[str, Any] | None, list[str]]:
        texts = _row_texts(row)
        where = self.exact.get(row_digest(texts))
        if where is not None:
            return self._leak(line, where, "exact", 1.0)
        if self.hasher is not None and self.index is not None:
            m = self.hasher.signature(" ".join(texts))
            hit = self.index.best(m) if m is not None else None
            if hit is not None:
                return self._leak(line, self.where[hit[0]], "near", round(hit[1], 4))
        return row, []


def find_leakage(
    train_path: str | Path,
    eval_paths: Sequence[str | Path],
    dst: str | Path,
    *,
    near: bool = True,
    config: NearDupConfig | None = None,
) -> dict[str, Any]:
    """Find training rows that duplicate or nearly duplicate validation/test rows; write train without them.

    Evaluation files are held in memory as digests and signatures (they are the small side); the training
    file is streamed.

    Args:
        train_path: Training data file (never modified).
        eval_paths: Validation/test files to protect.
        dst: Output JSONL path for the training rows that do not leak.
        near: Also catch near-duplicates (MinHash LSH), not only exact repeats.
        config: Near-duplicate settings.

    Returns:
        The transform report; ``dropped`` has ``leak_exact`` / ``leak_near``, ``details.per_eval_file`` the
        leaks per evaluation file and ``details.pairs`` up to 1000 ``{train_line, eval_file, eval_line, kind,
        similarity}``.

    Raises:
        DataError: a path is missing, or ``dst`` names one of the inputs.
    """
    paths = [check_input(p) for p in eval_paths]
    if not paths:
        raise DataError("find_leakage needs at least one validation or test file")
    check_outputs([train_path, *paths], [dst])
    config = config or NearDupConfig()
    step = _LeakStep(paths, near, config)

    def details() -> dict[str, Any]:
        return {
            "eval_files": step.eval_paths,
            "eval_rows_indexed": len(step.exact),
            "near": near,
            "threshold": config.threshold if near else None,
            "per_eval_file": dict(step.per_file),
            "pairs": step.pairs,
        }

    return transform_file(train_path, dst, step, name="leakage", details=details)


def _tokens(row: dict[str, Any]) -> list[str]:
    return _WORD_RE.findall(" ".join(_row_texts(row)))


def _ngram_hashes(tokens: list[str], n: int) -> set[int]:
    # Python's tuple hash is salted per process but stable within it, which is all this pass needs.
    return {hash(tuple(tokens[i : i + n])) for i in range(len(tokens) - n + 1)}


def contamination(
    eval_path: str | Path, train_path: str | Path, n: int = 8, *, max_rows: int = MAX_PAIRS
) -> dict[str, Any]:
    """Measure how many evaluation rows share a word n-gram with the training data.

    Words are ``\\w+`` runs of the normalised text. An evaluation row shorter than ``n`` words is matched only
    against whole training rows with the same words (a 3-word question inside a long training text is not
    evidence of contamination).
    Evaluation rows without any word are not counted.

    Args:
        eval_path: Evaluation file; its n-grams are held in memory.
        train_path: Training file; streamed.
        n: n-gram length in words (8 is a common choice; 13 is stricter).
        max_rows: Contaminated rows listed in the report (the counts are always complete).

    Returns:
        ``{"n", "eval_rows", "train_rows", "contaminated_rows", "fraction", "short_eval_rows", "rows"}`` where
        ``rows`` holds ``{line, shared_ngrams, ngrams, overlap}`` per contaminated evaluation row.
    """
    if n < 1:
        raise DataError(f"contamination n-gram length must be >= 1, got {n}")
    eval_path, train_path = check_input(eval_path), check_input(train_path)
    eval_rows: list[tuple[int, set[int], bool]] = []  # (line, n-gram hashes or {whole-row hash}, is_short)
    wanted: set[int] = set()
    short: set[int] = set()
    for line, row in iter_rows(eval_path):
        toks = _tokens(row)
        if len(toks) >= n:
            grams = _ngram_hashes(toks, n)
            wanted |= grams
            eval_rows.append((line, grams, False))
        elif toks:
            key = hash(tuple(toks))
            short.add(key)
            eval_rows.append((line, {key}, True))
    hits: set[int] = set()
    train_rows = 0
    for _, row in iter_rows(train_path):
        train_rows += 1
        toks = _tokens(row)
        if len(toks) < n:
            key = hash(tuple(toks))
            if key in short:
                hits.add(key)
        if wanted:
            hits |= _ngram_hashes(toks, n) & wanted
    listed: list[dict[str, Any]] = []
    contaminated = 0
    for line, grams, _ in eval_rows:
        shared = len(grams & hits)
        if shared:
            contaminated += 1
            if len(listed) < max_rows:
                row_info = {"line": line, "shared_ngrams": shared, "ngrams": len(grams)}
                listed.append(row_info | {"overlap": round(shared / len(grams), 4)})
    return {
        "step": "contamination",
        "eval": str(eval_path),
        "train": str(train_path),
        "n": n,
        "eval_rows": len(eval_rows),
        "train_rows": train_rows,
        "contaminated_rows": contaminated,
        "fraction": round(contaminated / len(eval_rows), 6) if eval_rows else 0.0,
        "short_eval_rows": sum(1 for *_, is_short in eval_rows if is_short),
        "rows": listed,
    }
