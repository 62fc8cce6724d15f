"""K-fold cross-validation of a run config: how much do the metrics move with the split?

``tunesmith cv CONFIG --folds K [--group-column COL]`` splits the *training file* (a validation file in the
config is not used) into K folds with scikit-learn — ``StratifiedKFold`` for classification,
``StratifiedGroupKFold`` when a group column is named (no group in two folds), ``KFold`` / ``GroupKFold``
otherwise — trains one run per fold (validation = the held-out fold) and writes to
``<output_dir>/<name>-cv<K>/``: ``fold<i>/`` run directories, ``cv_summary.json`` (per-fold table,
mean ± sample std of every numeric metric) and ``cv_plot.png``. Cost: K full training runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.config import RunConfig, apply_overrides, config_from_dict, load_config
from tunesmith.data.formats import Example, read_source
from tunesmith.errors import ConfigError, DataError
from tunesmith.io import write_bytes_atomic, write_json_atomic, write_jsonl_atomic
from tunesmith.pipelines.registry import train
from tunesmith.report.plots import figure, png


def _row(ex: Example, label_names: list[str] | None) -> dict[str, Any]:
    """An example back as a data row in the format it came from (extra columns kept)."""
    if ex.kind == "classification":
        label = label_names[ex.label] if label_names and ex.label is not None else ex.label
        return {**ex.extra, "text": ex.text, "label": label}
    if ex.kind == "chat":
        return {**ex.extra, "messages": ex.messages}
    return {**ex.extra, "text": ex.text}


def fold_indices(
    examples: list[Example], folds: int, seed: int, group_column: str | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train_idx, val_idx)`` per fold, stratified by label for classification, grouped when asked.

    Raises:
        DataError: Too few examples (or per-class examples) for ``folds`` folds, or a missing group value.
    """
    # deferred: scikit-learn (~1 s to import) loads only for cross-validation
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    n = len(examples)
    if folds < 2 or folds > n:
        raise DataError(f"--folds must be between 2 and the number of training examples ({n}), got {folds}")
    groups = None
    if group_column is not None:
        missing = [ex.line for ex in examples if group_column not in ex.extra]
        if missing:
            raise DataError(
                f"{examples[0].source}:{missing[0]}: no {group_column!r} column; name an existing column "
                "with --group-column"
            )
        groups = [str(ex.extra[group_column]) for ex in examples]
    x = np.zeros(n)
    if examples[0].kind == "classification":
        y = np.array([ex.label for ex in examples])
        smallest = int(np.bincount(y).min(initial=n)) if len(y) else 0
        if smallest < folds:
            raise DataError(f"a class has only {smallest} examples: too few for {folds} stratified folds")
        splitter = (
            StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
            if groups
            else StratifiedKFold(folds, shuffle=True, random_state=seed)
        )
        return list(splitter.split(x, y, groups))
    splitter = GroupKFold(folds) if groups else KFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(x, None, groups))


def _fold_config(cfg: RunConfig, cv_dir: Path, i: int, train: Path, val: Path, labels: Any) -> RunConfig:
    raw = cfg.model_dump(mode="json")
    overrides = [f"name=fold{i}", f"output_dir={cv_dir}", f"data.train={train}", f"data.validation={val}"]
    raw = apply_overrides(raw, overrides)
    raw["data"].update({"test": None, "labels": labels})
    return config_from_dict(raw, f"<cv fold {i}>")


def aggregate(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std"}}`` over folds; std is the sample std (ddof=1), 0.0 for one fold."""
    metrics = list(dict.fromkeys(k for row in per_fold for k in row))
    out = {}
    for metric in metrics:
        values = np.array([row[metric] for row in per_fold if metric in row], dtype=float)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[metric] = {"mean": round(float(values.mean()), 6), "std": round(std, 6)}
    return out


def cv_plot_png(per_fold: list[dict[str, float]], metrics: list[str]) -> bytes:
    """Each fold's value as a dot and the mean ± std as a bar with error whiskers, one column per metric."""
    fig = figure(max(5.0, 1.3 * len(metrics) + 2), 3.8)
    ax = fig.add_subplot()
    for m, metric in enumerate(metrics):
        values = [row[metric] for row in per_fold if metric in row]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        ax.bar(m, float(np.mean(values)), yerr=std, capsize=6, color="#9ecae1", width=0.6)
        ax.scatter([m] * len(values), values, color="#08519c", zorder=3, s=18)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("value (dots: folds; bar: mean ± std)")
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def cross_validate(
    config: str | Path | None, folds: int, overrides: list[str] | None = None, group_column: str | None = None
) -> dict[str, Any]:
    """Train one run per fold and summarise; returns (and writes) ``cv_summary.json``'s content."""
    cfg = load_config(config, overrides)
    if cfg.data.train is None:
        raise ConfigError("data.train is not set: cross-validation splits the training file")
    source = read_source(cfg.data.train, cfg.data.format, cfg.data.on_bad_row, cfg.data.labels)
    cv_dir = Path(cfg.output_dir) / f"{cfg.name}-cv{folds}"
    per_fold, statuses = [], []
    for i, (tr, va) in enumerate(fold_indices(source.examples, folds, cfg.seed, group_column)):
        paths = [cv_dir / "folds" / f"fold{i}_{part}.jsonl" for part in ("train", "validation")]
        for path, idx in zip(paths, (tr, va), strict=True):
            write_jsonl_atomic(path, [_row(source.examples[j], source.label_names) for j in idx])
        print(f"tunesmith: cv fold {i + 1}/{folds}: {len(tr)} train, {len(va)} validation")
        summary = train(_fold_config(cfg, cv_dir, i, paths[0], paths[1], source.label_names))
        tuned = summary.get("eval", {}).get("validation", {}).get("tuned") or {}
        per_fold.append({k: v for k, v in tuned.items() if isinstance(v, float) and not isinstance(v, bool)})
        statuses.append(summary["status"])
    metrics = aggregate(per_fold)
    result = {
        "folds": folds,
        "group_column": group_column,
        "splitter": _splitter_name(source.examples[0].kind, group_column),
        "mean_std": metrics,
        "per_fold": per_fold,
        "status": statuses,
    }
    write_json_atomic(cv_dir / "cv_summary.json", result)
    rates = [m for m in metrics if all(0 <= row.get(m, 0) <= 1 for row in per_fold)]
    if rates:
        write_bytes_atomic(cv_dir / "cv_plot.png", cv_plot_png(per_fold, rates))
    return result


def _splitter_name(kind: str, group_column: str | None) -> str:
    if kind == "classification":
        return "StratifiedGroupKFold" if group_column else "StratifiedKFold"
    return "GroupKFold" if group_column else "KFold"
