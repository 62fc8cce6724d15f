"""Split one data file into train/validation/test: seeded, stratified by a label, grouped by a key.

Two streaming passes: the first reads only the label and group key of each row (kept as small integer
arrays: about 9 bytes per row, plus one dict entry per distinct label/group), the second writes every row to
its split. Memory is bounded by that index, never by the rows themselves::

    report = split_file("data.jsonl", "splits/", ratios=(0.8, 0.1, 0.1), seed=0,
                        stratify_by="label", group_by="user_id")
    report["rows"]   # {"train": 800, "validation": 100, "test": 100}

* Counts are exact: each stratum is apportioned by the largest-remainder method, so 60 rows of a label at
  0.8/0.1/0.1 give 48/6/6.
* Grouped splits never put one group in two splits. Groups are shuffled and dealt in order so the row counts
  track the ratios (a large group can overshoot its split's share). With both keys, a group's stratum is the
  label of its first row.
* The same file, ratios and seed always give the same split (NumPy PCG64, stable across platforms).
"""

from __future__ import annotations

import json
import math
import time
from array import array
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.tools.stream import AtomicJSONLWriter, BadRows, check_input, check_outputs
from tunesmith.errors import DataError

SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")


def _key(value: Any) -> str:
    """A label or group value as a dict key: its JSON, so 1 and "1" stay different and lists are hashable."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _display(key: str) -> str:
    """The report name of a key: strings without their JSON quotes."""
    return json.loads(key) if key.startswith('"') else key


def apportion(n: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n`` items into integer counts proportional to ``ratios`` (largest remainder, ties to earlier).

    >>> apportion(5, (0.8, 0.1, 0.1))
    [4, 1, 0]
    """
    raw = [n * r for r in ratios]
    counts = [math.floor(x + 1e-9) for x in raw]  # 1e-9: 100 * 0.29 is 28.999999999999996, not 28
    order = sorted(range(len(ratios)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: max(0, n - sum(counts))]:
        counts[i] += 1
    return counts


def _check_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    ratios = tuple(float(r) for r in ratios)
    if not 2 <= len(ratios) <= len(SPLIT_NAMES):
        raise DataError(f"give 2 or 3 split ratios (train, validation[, test]), got {len(ratios)}")
    if any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise DataError(f"split ratios must be >= 0 and sum to 1, got {list(ratios)}")
    if ratios[0] == 0:
        raise DataError("the train ratio must be > 0")
    return ratios


class _Index:
    """Pass one: per row only a stratum id and a group id (int32 each)."""

    def __init__(self, src: Path, stratify_by: str | None, group_by: str | None, bad_rows: BadRows) -> None:
        self.labels: dict[str, int] = {}
        self.groups: dict[str, int] = {}
        row_label, row_group = array("i"), array("i")
        for line, row in bad_rows.rows(src):
            if stratify_by is not None:
                row_label.append(self._id(self.labels, row, stratify_by, src, line))
            if group_by is not None:
                row_group.append(self._id(self.groups, row, group_by, src, line))
            if stratify_by is None and group_by is None:
                row_label.append(0)
        self.row_label = np.frombuffer(row_label, dtype=np.int32) if stratify_by else None
        self.row_group = np.frombuffer(row_group, dtype=np.int32) if group_by else None
        self.n = len(row_group) if group_by else len(row_label)

    @staticmethod
    def _id(ids: dict[str, int], row: dict[str, Any], key: str, src: Path, line: int) -> int:
        if row.get(key) is None:
            raise DataError(f"{src}:{line}: row has no {key!r} (keys: {', '.join(sorted(map(str, row)))})")
        return ids.setdefault(_key(row[key]), len(ids))


def _assign_rows(strata: np.ndarray, ratios: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    assign = np.empty(len(strata), dtype=np.int8)
    for s in range(int(strata.max()) + 1 if len(strata) else 0):
        idx = np.flatnonzero(strata == s)
        rng.shuffle(idx)
        start = 0
        for k, count in enumerate(apportion(len(idx), ratios)):
            assign[idx[start : start + count]] = k
            start += count
    return assign


def _assign_groups(index: _Index, ratios: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    assert index.row_group is not None
    n_groups = len(index.groups)
    sizes = np.bincount(index.row_group, minlength=n_groups)
    if index.row_label is not None:
        first_row = np.full(n_groups, len(index.row_group), dtype=np.int64)
        np.minimum.at(first_row, index.row_group, np.arange(len(index.row_group)))
        group_stratum = index.row_label[first_row]
    else:
        group_stratum = np.zeros(n_groups, dtype=np.int32)
    group_split = np.empty(n_groups, dtype=np.int8)
    last = max(k for k, r in enumerate(ratios) if r > 0)
    for s in range(int(group_stratum.max()) + 1 if n_groups else 0):
        members = np.flatnonzero(group_stratum == s)
        rng.shuffle(members)
        bounds = np.cumsum(apportion(int(sizes[members].sum()), ratios))
        done = 0
        for g in members:
            # The group goes where the middle of its rows falls on the cumulative target line.
            mid = done + sizes[g] / 2
            group_split[g] = next((k for k, b in enumerate(bounds) if mid < b), last)
            done += int(sizes[g])
    return group_split[index.row_group]


def _summary(assign: np.ndarray, names: Sequence[str], index: _Index) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": {name: int((assign == k).sum()) for k, name in enumerate(names)}}
    if index.row_label is not None:
        label_names = [_display(k) for k in index.labels]
        out["label_counts"] = {
            name: {
                label_names[i]: int(c)
                for i, c in enumerate(np.bincount(index.row_label[assign == k], minlength=len(label_names)))
            }
            for k, name in enumerate(names)
        }
    if index.row_group is not None:
        out["groups"] = {name: len(np.unique(index.row_group[assign == k])) for k, name in enumerate(names)}
    return out


def split_file(
    src: str | Path,
    out_dir: str | Path,
    *,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratify_by: str | None = None,
    group_by: str | None = None,
    on_bad_row: str = "stop",
) -> dict[str, Any]:
    """Split ``src`` into ``train.jsonl``, ``validation.jsonl`` (and ``test.jsonl``) under ``out_dir``.

    Args:
        src: Input data file (never modified).
        out_dir: Directory for the split files; a split with ratio 0 gets no file.
        ratios: Fractions for train, validation and optionally test; must sum to 1.
        seed: Shuffle seed; the same seed and file give the same split.
        stratify_by: Row key whose value (a label) keeps its proportion in every split.
        group_by: Row key (user, document, conversation id) whose rows always land in the same split.
        on_bad_row: ``stop`` at an unreadable row (``path:line``), or ``skip`` and count it (``bad_rows``).

    Returns:
        ``{"step", "input", "outputs", "ratios", "seed", "stratify_by", "group_by", "rows", "bad_rows",
        "seconds"}`` plus ``label_counts`` per split when stratified and ``groups`` per split when grouped.

    Raises:
        DataError: bad ratios, an unreadable row (with ``stop``), a row without the stratify/group key, an
            output equal to the input, or the file changing between the two passes.
    """
    start = time.perf_counter()
    src = check_input(src)
    ratios = _check_ratios(ratios)
    names = SPLIT_NAMES[: len(ratios)]
    outputs = {name: Path(out_dir) / f"{name}.jsonl" for name, r in zip(names, ratios, strict=True) if r > 0}
    check_outputs([src], outputs.values())
    bad_rows = BadRows(on_bad_row)
    index = _Index(src, stratify_by, group_by, bad_rows)
    rng = np.random.default_rng(seed)
    if group_by is not None:
        assign = _assign_groups(index, ratios, rng)
    else:
        strata = index.row_label if index.row_label is not None else np.zeros(index.n, dtype=np.int32)
        assign = _assign_rows(strata, ratios, rng)
    changed = DataError(
        f"{src} changed while it was being split (rows differ between passes); run split again"
    )
    seen = 0
    with ExitStack() as stack:  # an error inside discards every temporary split file
        writers = [
            stack.enter_context(AtomicJSONLWriter(outputs[n])) if n in outputs else None for n in names
        ]
        for _, row in bad_rows.rows(src, count=False):
            if seen == index.n:
                raise changed
            writer = writers[assign[seen]]
            assert writer is not None  # apportion never gives rows to a zero-ratio split
            writer.write(row)
            seen += 1
        if seen != index.n:
            raise changed
    return {
        "step": "split",
        "input": str(src),
        "outputs": {name: str(path) for name, path in outputs.items()},
        "ratios": dict(zip(names, ratios, strict=True)),
        "seed": seed,
        "stratify_by": stratify_by,
        "group_by": group_by,
        **_summary(assign, names, index),
        "bad_rows": bad_rows.as_dict(),
        "seconds": round(time.perf_counter() - start, 3),
    }
