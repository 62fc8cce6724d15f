"""Where dedup and leakage keep what they have seen: in memory (fast, grows with the file) or in a temporary
SQLite database on disk (bounded RAM, slower).

Both stores hold the same things, so they give identical results: the exact digests (digest -> where first
seen) and a MinHash LSH band index whose candidates are verified against the stored signatures.

* :class:`NearIndex` (memory): about 1.7 KB of RAM per distinct row at 128 permutations.
* :class:`DiskNearIndex` / :class:`DiskDigests` (disk): RAM stays flat (SQLite's page cache, capped at
  :data:`_CACHE_KIB`, plus one batch); the database takes about 1 KB of disk per distinct row (the 512-byte
  signature, 14 band rows, the digest) and is deleted at the end, even on error.

:func:`open_index` picks one: ``IndexConfig(kind="auto")`` (the default) uses the disk when the input is
larger than ``disk_above_bytes`` (1 GiB).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from datasketch import MinHashLSH

from tunesmith.errors import DataError

_LSH_SLACK = 0.1
_SIG_BLOCK = 8192  # signatures per block: 4 MB at 128 permutations
_BATCH = 5000  # rows per SQLite transaction: one commit per batch instead of one per statement
_CACHE_KIB = 65536  # SQLite page cache (64 MiB): the disk index's RAM ceiling, beyond Python's own


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


_SCHEMA = """
PRAGMA journal_mode=OFF;
PRAGMA synchronous=OFF;
PRAGMA cache_size=-{cache};
CREATE TABLE digest (d BLOB PRIMARY KEY, a INTEGER NOT NULL, b INTEGER) WITHOUT ROWID;
CREATE TABLE band (b INTEGER, h INTEGER, k INTEGER, PRIMARY KEY (b, h, k)) WITHOUT ROWID;
CREATE TABLE sig (k INTEGER PRIMARY KEY, sig BLOB NOT NULL, file INTEGER NOT NULL, line INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class IndexConfig:
    """Where the dedup/leakage index lives."""

    kind: Literal["auto", "memory", "disk"] = "auto"
    """``memory`` is fastest; ``disk`` keeps RAM bounded; ``auto`` picks disk above ``disk_above_bytes``."""
    disk_above_bytes: int = 1 << 30
    """Input size (all indexed files together) above which ``auto`` uses the disk."""
    tmp_dir: str | Path | None = None
    """Folder for the temporary database (default: the output's folder, which must have room anyway)."""

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "memory", "disk"):
            raise DataError(f"index must be auto, memory or disk, got {self.kind!r}")

    def use_disk(self, inputs: Sequence[str | Path]) -> bool:
        if self.kind != "auto":
            return self.kind == "disk"
        return sum(Path(p).stat().st_size for p in inputs) > self.disk_above_bytes


class _Bands:
    """The banding shared by both indexes: datasketch chooses b bands of r values."""

    def __init__(self, config: NearDupConfig) -> None:
        self.config = config
        # Banding tuned *at* the threshold finds only ~40% of pairs lying exactly there; tuning it 0.1 lower
        # finds ~87% (at 0.8) and the exact signature check in best() removes the extra candidates.
        bands = MinHashLSH(threshold=max(0.1, config.threshold - _LSH_SLACK), num_perm=config.num_perm)
        self.ranges = [(4 * start, 4 * end) for start, end in bands.hashranges]  # byte offsets (uint32)
        self.size = 0

    def band_keys(self, sig: np.ndarray) -> list[int]:
        """One hash per band of a signature (Python's bytes hash: stable within the process, 64 bits)."""
        data = sig.tobytes()
        return [hash(data[start:end]) for start, end in self.ranges]

    def candidates(self, keys: list[int]) -> set[int]:
        raise NotImplementedError

    def signatures(self, found: list[int]) -> np.ndarray:
        """The stored signatures of ``found`` keys, one row each, in that order."""
        raise NotImplementedError

    def best(self, sig: np.ndarray, keys: list[int] | None = None) -> tuple[int, float] | None:
        """The most similar indexed key (the earliest on ties) whose estimated Jaccard similarity reaches the
        threshold, or None."""
        candidates = self.candidates(keys or self.band_keys(sig))
        if not candidates:
            return None
        found = sorted(candidates)
        sims = (self.signatures(found) == sig).mean(axis=1)
        i = int(sims.argmax())
        return (found[i], float(sims[i])) if sims[i] >= self.config.threshold else None


class NearIndex(_Bands):
    """MinHash LSH with datasketch's banding and a compact in-memory store, plus the signatures to verify
    candidates and each row's origin (file, line).

    ``MinHashLSH``'s dict storage would keep, per row, a list of b byte-string band keys and, per bucket, a
    set: about 6 KB per row at 128 permutations. Here each band is one dict from the band's 64-bit hash to the
    first row key in that bucket (later keys of a shared bucket go to a small overflow dict), all b dicts
    sharing one int per row: about 1 KB per row, plus the signature in one uint32 array (``4 * num_perm``
    bytes). The candidates are the same as ``MinHashLSH.query``'s.
    """

    def __init__(self, config: NearDupConfig) -> None:
        super().__init__(config)
        self.buckets: list[dict[int, int]] = [{} for _ in self.ranges]
        self.overflow: list[dict[int, list[int]]] = [{} for _ in self.ranges]
        self._sigs: list[np.ndarray] = []  # blocks of _SIG_BLOCK rows: no over-allocation, no copy on growth
        self._files, self._lines = array("i"), array("q")  # 12 bytes per row, no object each

    def add(self, sig: np.ndarray, keys: list[int] | None = None, origin: tuple[int, int] = (0, 0)) -> int:
        """Insert a signature (and its ``band_keys`` if already computed); returns its key 0, 1, 2..."""
        key = self.size
        if key % _SIG_BLOCK == 0:
            self._sigs.append(np.empty((_SIG_BLOCK, self.config.num_perm), dtype=np.uint32))
        self._sigs[-1][key % _SIG_BLOCK] = sig
        for bucket, more, h in zip(self.buckets, self.overflow, keys or self.band_keys(sig), strict=True):
            if bucket.setdefault(h, key) != key:
                more.setdefault(h, []).append(key)
        self._files.append(origin[0])
        self._lines.append(origin[1])
        self.size += 1
        return key

    def origin(self, key: int) -> tuple[int, int]:
        """The (file, line) given when ``key`` was added."""
        return self._files[key], self._lines[key]

    def candidates(self, keys: list[int]) -> set[int]:
        """Keys sharing at least one band with ``keys`` (a signature's ``band_keys``)."""
        found: set[int] = set()
        for bucket, more, h in zip(self.buckets, self.overflow, keys, strict=True):
            key = bucket.get(h)
            if key is not None:
                found.add(key)
                found.update(more.get(h, ()))
        return found

    def signatures(self, found: list[int]) -> np.ndarray:
        return np.stack([self._sigs[k // _SIG_BLOCK][k % _SIG_BLOCK] for k in found])


class _Batcher:
    """Commits the open transaction every ``_BATCH`` writes: per-statement commits would be ~10x slower, and
    a batch's uncommitted pages stay in the bounded page cache (or spill to the file)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.writes = 0

    def wrote(self) -> None:
        self.writes += 1
        if self.writes % _BATCH == 0:
            self.conn.commit()


class DiskNearIndex(_Bands):
    """:class:`NearIndex` in SQLite tables ``band (b, h) -> k`` and ``sig k -> (signature, file, line)``;
    same keys and candidates, so the same results, at the cost of a few indexed lookups per row."""

    def __init__(self, config: NearDupConfig, conn: sqlite3.Connection, batcher: _Batcher) -> None:
        super().__init__(config)
        self.conn, self.batcher = conn, batcher
        # One statement for all bands (a UNION ALL of primary-key lookups) instead of b round trips.
        self._query = " UNION ALL ".join(["SELECT k FROM band WHERE b = ? AND h = ?"] * len(self.ranges))

    def add(self, sig: np.ndarray, keys: list[int] | None = None, origin: tuple[int, int] = (0, 0)) -> int:
        key = self.size
        self.conn.execute("INSERT INTO sig VALUES (?, ?, ?, ?)", (key, sig.tobytes(), *origin))
        rows = [(b, h, key) for b, h in enumerate(keys or self.band_keys(sig))]
        self.conn.executemany("INSERT INTO band VALUES (?, ?, ?)", rows)
        self.size += 1
        self.batcher.wrote()
        return key

    def origin(self, key: int) -> tuple[int, int]:
        file, line = self.conn.execute("SELECT file, line FROM sig WHERE k = ?", (key,)).fetchone()
        return int(file), int(line)

    def candidates(self, keys: list[int]) -> set[int]:
        params = [v for b, h in enumerate(keys) for v in (b, h)]
        return {k for (k,) in self.conn.execute(self._query, params)}

    def signatures(self, found: list[int]) -> np.ndarray:
        marks = ",".join("?" * len(found))
        rows = self.conn.execute(f"SELECT sig FROM sig WHERE k IN ({marks}) ORDER BY k", found).fetchall()
        return np.stack([np.frombuffer(blob, dtype=np.uint32) for (blob,) in rows])


class DiskDigests:
    """The part of ``dict[bytes, int | tuple[int, int]]`` that dedup and leakage use, in a SQLite table."""

    def __init__(self, conn: sqlite3.Connection, batcher: _Batcher) -> None:
        self.conn, self.batcher = conn, batcher
        self.count = 0

    def get(self, digest: bytes) -> Any:
        row = self.conn.execute("SELECT a, b FROM digest WHERE d = ?", (digest,)).fetchone()
        return None if row is None else (row[0] if row[1] is None else (row[0], row[1]))

    def __setitem__(self, digest: bytes, value: int | tuple[int, int]) -> None:
        a, b = value if isinstance(value, tuple) else (value, None)
        self.conn.execute("INSERT INTO digest VALUES (?, ?, ?)", (digest, a, b))
        self.count += 1
        self.batcher.wrote()

    def setdefault(self, digest: bytes, value: int | tuple[int, int]) -> Any:
        found = self.get(digest)
        if found is None:
            self[digest] = value
            return value
        return found

    def __len__(self) -> int:
        return self.count


@contextlib.contextmanager
def open_index(
    config: NearDupConfig | None, disk: bool, tmp_dir: str | Path
) -> Iterator[tuple[Any, NearIndex | DiskNearIndex | None]]:
    """Yield ``(digests, near index or None)``: a dict and a :class:`NearIndex`, or both in a temporary SQLite
    file in ``tmp_dir`` that is removed on exit, error or not. ``config`` None means exact duplicates only."""
    if not disk:
        yield {}, (NearIndex(config) if config else None)
        return
    Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=".tunesmith-dedup-", suffix=".sqlite")
    os.close(fd)
    conn = sqlite3.connect(name)
    try:
        conn.executescript(_SCHEMA.format(cache=_CACHE_KIB))
        batcher = _Batcher(conn)
        yield DiskDigests(conn, batcher), (DiskNearIndex(config, conn, batcher) if config else None)
    finally:
        conn.close()
        Path(name).unlink(missing_ok=True)
