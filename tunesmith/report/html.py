"""The run report: one self-contained HTML page, readable offline, written next to the run's files.

    from tunesmith.report.html import write_report
    write_report("runs/demo")   # -> runs/demo/report.html

It reads whatever the run directory holds (``summary.json``, ``metrics.jsonl``, ``data_report.json``,
``config.yaml``) and shows a section for each piece of data that exists, so it also works on a run that is
still going or that crashed. Plots are PNGs embedded as ``data:`` URIs; the page has no scripts, fonts or
links to fetch, and a Content-Security-Policy that forbids them, so it renders the same with no network.

Summary keys this module knows get tailored sections; every other top-level key gets a section of its own,
rendered generically (nested dicts become headings and tables), so new results show up without code here.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import yaml

from tunesmith.errors import RunError
from tunesmith.io import write_text_atomic
from tunesmith.report.objective import objective_section
from tunesmith.report.plots import comparison_bar_png, confusion_matrix_png, loss_curve_png
from tunesmith.report.tasks import forgetting_matrix_section, tasks_section
from tunesmith.runs import RunDir

# Titles for summary keys that other parts of tunesmith write; any other key is titled from its name.
SECTION_TITLES: dict[str, str] = {
    "general_knowledge": "General knowledge",
    "baseline": "Baselines",
    "baselines": "Baselines",
    "forgetting": "Forgetting",
    "bias": "Bias",
    "drift": "Drift",
}

# Summary keys rendered by the tailored sections below (and therefore not again generically).
_CONSUMED = {
    "name", "status", "method", "model", "task", "eval", "best", "timings",
    "peak_memory_mb", "versions", "data_hashes", "trainable_params", "total_params",
    "tasks", "mixing", "stages", "forgetting_matrix",  # multi-task / sequential: report/tasks.py
}  # fmt: skip
# Inside one split's variant dict: shown as plots / their own table rather than as metric rows.
_VARIANT_SPECIAL = {"confusion_matrix", "labels", "per_class_f1"}
_MAX_LIST_ITEMS = 20
_MAX_TEXT = 300

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 980px; padding: 1.5rem; color: #1d2330; line-height: 1.45; }
h1 { margin-bottom: .3rem; } h2 { border-bottom: 2px solid #e3e7ee; padding-bottom: .2rem; margin-top: 2rem; }
h3 { margin-bottom: .4rem; } .meta span { margin-right: 1.2rem; color: #4a5468; }
.badge { display: inline-block; padding: .05rem .55rem; border-radius: .7rem; font-size: .85rem;
         background: #e3e7ee; color: #1d2330; }
.badge.ok { background: #d5f2dc; color: #14532d; } .badge.bad { background: #fbd9d9; color: #7f1d1d; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: .92rem; }
th, td { border: 1px solid #d8dde6; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f3f5f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #e3e7ee; margin: .3rem 0; }
.notes { background: #fff7e0; border: 1px solid #f1d18a; padding: .5rem 1rem; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .85rem; }
code { font-size: .85rem; word-break: break-all; } .muted { color: #6b7386; }
"""
# Blocks anything the page might try to fetch: only inline styles and data: images are allowed.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# ----------------------------------------------------------------------------- reading the run directory


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        notes.append(f"{path.name} could not be read ({err}); its sections are left out.")
        return None


def _read_metrics(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a malformed line (e.g. cut off by a crash mid-append) is skipped and noted."""
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    if bad:
        notes.append(f"metrics.jsonl: skipped {len(bad)} malformed line(s): {_short_list(bad)}.")
    return rows


def _read_config(path: Path, notes: list[str]) -> tuple[str | None, dict[str, Any]]:
    if not path.is_file():
        return None, {}
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        notes.append("config.yaml is not valid YAML; it is shown as text only.")
        parsed = None
    return text, parsed if isinstance(parsed, dict) else {}


# ----------------------------------------------------------------------------- formatting helpers


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt_number(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value) or value == 0:
        return str(value) if value != 0 else "0"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if abs(value) >= 1e-3:
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def _short_list(items: list[Any]) -> str:
    shown = ", ".join(str(v) for v in items[:_MAX_LIST_ITEMS])
    return shown + (f", … ({len(items)} in all)" if len(items) > _MAX_LIST_ITEMS else "")


def _fmt(value: object) -> str:
    """One value as escaped HTML text: numbers readable, short lists inline, anything else as JSON."""
    if value is None:
        return '<span class="muted">—</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if _is_number(value):
        return _fmt_number(value)  # type: ignore[arg-type]
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return _esc(_short_list([_fmt_number(v) if _is_number(v) else v for v in value]))
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > _MAX_TEXT:
        text = text[:_MAX_TEXT] + f"… ({len(text):,} characters)"
    return _esc(text)


def _inline(values: dict[str, Any]) -> str:
    """``{"step": 120, "val_loss": 0.41}`` -> ``step 120, val_loss 0.41`` (plain text, escaped later)."""
    return ", ".join(f"{k} {_fmt_number(v) if _is_number(v) else v}" for k, v in values.items())


def _cell(value: object) -> str:
    return f'<td class="num">{_fmt(value)}</td>' if _is_number(value) else f"<td>{_fmt(value)}</td>"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A table from escaped header texts and rows of ready ``<td>`` cells."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(f"<tr>{''.join(cells)}</tr>" for cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(values: dict[str, Any], key_header: str = "", value_header: str = "") -> str:
    rows = [[f"<th>{_esc(k)}</th>", _cell(v)] for k, v in values.items()]
    if key_header or value_header:
        return _table([_esc(key_header), _esc(value_header)], rows)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _grid(columns: dict[str, dict[str, Any]], corner: str = "") -> str:
    """Rows = the union of inner keys (first-seen order), one column per outer key."""
    keys = list(dict.fromkeys(k for inner in columns.values() for k in inner))
    rows = [[f"<th>{_esc(k)}</th>", *(_cell(inner.get(k)) for inner in columns.values())] for k in keys]
    return _table([_esc(corner), *(_esc(c) for c in columns)], rows)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_esc(title)}</h2>{body}</section>" if body else ""


def _title_for(key: str) -> str:
    return SECTION_TITLES.get(key, key.replace("_", " ").capitalize())


def _generic(value: Any, level: int = 3) -> str:
    """Render any JSON value: scalars in a key/value table, comparable dicts side by side, else nested.

    Several flat dicts with mostly the same keys (``{"base": {...}, "tuned": {...}}``, or per-split counts)
    become one grid so values line up for comparison; dicts with unrelated keys get a heading each.
    """
    if not isinstance(value, dict):
        return f"<p>{_fmt(value)}</p>"
    scalars = {k: v for k, v in value.items() if not isinstance(v, dict)}
    nested = {k: v for k, v in value.items() if isinstance(v, dict) and v}
    parts = [_kv_table(scalars)] if scalars else []
    flat = all(not isinstance(x, dict) for inner in nested.values() for x in inner.values())
    union = {k for inner in nested.values() for k in inner}
    if len(nested) > 1 and flat and len(union) <= 2 * max(len(v) for v in nested.values()):
        parts.append(_grid(nested))
    else:
        tag = f"h{min(level, 6)}"
        for key, inner in nested.items():
            parts.append(f"<{tag}>{_esc(key)}</{tag}>{_generic(inner, level + 1)}")
    return "".join(parts)


# ----------------------------------------------------------------------------- sections


def _header(name: str, summary: dict[str, Any], config: dict[str, Any]) -> str:
    method = summary.get("method", config.get("method"))
    if isinstance(method, dict):
        method = method.get("name", method)
    model = summary.get("model", config.get("model"))
    if isinstance(model, dict):
        model = model.get("name", model)
    task = summary.get("task", config.get("task"))
    status = summary.get("status", "unknown (no summary.json)" if not summary else "unknown")
    css = {"completed": "ok", "failed": "bad", "error": "bad", "interrupted": "bad"}.get(str(status), "")
    meta = [("method", method), ("model", model), ("task", task)]
    spans = "".join(f"<span>{k}: <b>{_fmt(v)}</b></span>" for k, v in meta if v is not None)
    return (
        f"<header><h1>{_esc(name)}</h1><p class='meta'>{spans}"
        f"<span>status: <span class='badge {css}'>{_esc(status)}</span></span></p></header>"
    )


def _rate_metrics(variants: dict[str, dict[str, Any]], metrics: list[str]) -> list[str]:
    """Metrics whose every value lies in [0, 1] (rates and scores), so they share one bar-chart axis."""
    chosen = []
    for metric in metrics:
        values = [v.get(metric) for v in variants.values() if metric in v]
        if metric != "n" and values and all(_is_number(x) and 0 <= x <= 1 for x in values):
            chosen.append(metric)
    return chosen


def _split_block(split: str, entries: dict[str, Any]) -> str:
    """One split's base-vs-tuned table, bar chart, per-class F1 and any further nested results."""
    variants = {k: v for k, v in entries.items() if isinstance(v, dict)}
    parts = [f"<h3>{_esc(split)}</h3>"]
    metrics = list(
        dict.fromkeys(k for v in variants.values() for k, x in v.items() if _is_number(x) and k != "n")
    )
    if any("n" in v for v in variants.values()):
        metrics.append("n")  # example count last: it qualifies the numbers above it
    if metrics:
        delta = "base" in variants and "tuned" in variants
        headers = ["metric", *(_esc(v) for v in variants), *(["Δ tuned − base"] if delta else [])]
        rows = []
        for metric in metrics:
            cells = [f"<th>{_esc(metric)}</th>", *(_cell(v.get(metric)) for v in variants.values())]
            if delta:
                base, tuned = variants["base"].get(metric), variants["tuned"].get(metric)
                change = tuned - base if metric != "n" and _is_number(base) and _is_number(tuned) else None
                text = _fmt(None) if change is None else ("+" if change > 0 else "") + _fmt_number(change)
                cells.append(f'<td class="num">{text}</td>')
            rows.append(cells)
        parts.append(_table(headers, rows))
    rates = _rate_metrics(variants, metrics)
    if rates:
        parts.append(_img(comparison_bar_png(variants, rates), f"{split}: metrics by model"))
    per_class = {k: v["per_class_f1"] for k, v in variants.items() if isinstance(v.get("per_class_f1"), dict)}
    if per_class:
        parts.append("<h4>Per-class F1</h4>" + _grid(per_class, corner="class"))
    scalars = {k: v for k, v in entries.items() if not isinstance(v, dict)}
    if scalars:
        parts.append(_kv_table(scalars))
    for variant, values in variants.items():
        extra = {k: v for k, v in values.items() if k not in _VARIANT_SPECIAL and isinstance(v, dict | list)}
        if extra:
            parts.append(f"<h4>{_esc(variant)}: more results</h4>{_generic(extra, 5)}")
    return "".join(parts)


def _eval_section(summary: dict[str, Any]) -> str:
    evals = summary.get("eval")
    if not isinstance(evals, dict) or not evals:
        return ""
    blocks = [
        _split_block(split, entries) if isinstance(entries, dict) else _generic({split: entries})
        for split, entries in evals.items()
    ]
    return _section("Evaluation: base vs tuned", "".join(blocks))


def _curves_section(metrics: list[dict[str, Any]]) -> str:
    png = loss_curve_png(metrics)
    if png is None:
        return ""
    body = _img(png, "training and validation loss by step")
    steps = [r["step"] for r in metrics if _is_number(r.get("step"))]
    if steps:
        body += f"<p class='muted'>{len(metrics):,} logged rows, last step {_fmt(max(steps))}.</p>"
    return _section("Training curves", body)


def _confusion_section(summary: dict[str, Any], notes: list[str]) -> str:
    evals = summary.get("eval")
    if not isinstance(evals, dict):
        return ""
    images = []
    for split, entries in evals.items():
        if not isinstance(entries, dict):
            continue
        for variant, values in entries.items():
            if not isinstance(values, dict) or not isinstance(values.get("confusion_matrix"), list):
                continue
            matrix = values["confusion_matrix"]
            labels = values.get("labels") or summary.get("labels") or [str(i) for i in range(len(matrix))]
            title = f"{split} — {variant}"
            try:
                images.append(_img(confusion_matrix_png(matrix, [str(x) for x in labels], title), title))
            except (ValueError, TypeError) as err:
                notes.append(f"confusion matrix for {title} not drawn: {err}")
    note = "<p class='muted'>Rows are the true label, columns the predicted one.</p>" if images else ""
    return _section("Confusion matrices", note + "".join(images))


def _fmt_seconds(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    clock = f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {int(secs):02d}s"
    return (
        f"{_fmt_number(float(seconds))} s ({clock})" if seconds >= 60 else f"{_fmt_number(float(seconds))} s"
    )


def _details_section(summary: dict[str, Any]) -> str:
    facts: dict[str, Any] = {}
    trainable, total = summary.get("trainable_params"), summary.get("total_params")
    if _is_number(trainable):
        share = f" ({100 * trainable / total:.2f}% of {total:,})" if _is_number(total) and total else ""
        facts["trainable parameters"] = f"{trainable:,}{share}"
    elif _is_number(total):
        facts["total parameters"] = total
    if isinstance(summary.get("best"), dict):
        facts["best checkpoint"] = _inline(summary["best"])
    timings = summary.get("timings")
    if isinstance(timings, dict):
        for key, value in timings.items():
            label = key[:-2].replace("_", " ") + " time" if key.endswith("_s") else key.replace("_", " ")
            facts[label] = _fmt_seconds(value) if _is_number(value) else value
    if _is_number(summary.get("peak_memory_mb")):
        facts["peak memory"] = f"{_fmt_number(float(summary['peak_memory_mb']))} MB"
    leftovers = {k: v for k, v in summary.items() if k not in _CONSUMED and not isinstance(v, dict)}
    facts.update(leftovers)
    body = _kv_table(facts) if facts else ""
    if isinstance(summary.get("versions"), dict) and summary["versions"]:
        body += "<h3>Versions</h3>" + _kv_table(summary["versions"], "package", "version")
    hashes = summary.get("data_hashes")
    if isinstance(hashes, dict) and hashes:
        rows = [[f"<th>{_esc(k)}</th>", f"<td><code>{_esc(v)}</code></td>"] for k, v in hashes.items()]
        body += "<h3>Data hashes</h3>" + _table(["split", "sha256"], rows)
    return _section("Run details", body)


def _extra_sections(summary: dict[str, Any]) -> str:
    """A section per unknown dict-valued summary key, in the order the summary lists them."""
    return "".join(
        _section(_title_for(key), _generic(value))
        for key, value in summary.items()
        if key not in _CONSUMED and isinstance(value, dict) and value
    )


def _baseline_plots(summary: dict[str, Any]) -> str:
    """Per split: zero-shot / k-shot / tuned bars on the primary metric, the gain and its 95% CI below."""
    baselines = summary.get("baselines")
    if not isinstance(baselines, dict):
        return ""
    parts = []
    for split, table in baselines.items():
        systems, metric = table.get("systems"), table.get("metric")
        if not isinstance(systems, dict) or not systems or not metric:
            continue
        parts.append(_img(comparison_bar_png(systems, [metric]), f"{split}: in-context baselines vs tuned"))
        parts.append(
            f"<p>{_esc(split)}: gain of tuned over {_esc(table.get('best_baseline'))} = "
            f"<b>{_fmt(table.get('gain'))}</b> {_esc(metric)} (paired bootstrap 95% CI "
            f"{_fmt(table.get('gain_ci95_low'))} … {_fmt(table.get('gain_ci95_high'))})</p>"
        )
    return _section("Should I fine-tune? In-context baselines vs tuned", "".join(parts))


def _config_section(text: str | None) -> str:
    if text is None:
        return ""
    return _section(
        "Configuration", f"<details><summary>config.yaml</summary><pre>{_esc(text)}</pre></details>"
    )


def render_report(run_dir: str | Path) -> str:
    """Build the report page for a run directory (see :func:`write_report`) and return the HTML text."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist; pass runs/<name> of a started run")
    notes: list[str] = []
    run = RunDir(run_dir)
    summary = _read_json(run.summary, notes)
    if summary is not None and not isinstance(summary, dict):
        notes.append("summary.json is not a JSON object; its sections are left out.")
    summary = summary if isinstance(summary, dict) else {}
    data_report = _read_json(run.data_report, notes)
    metrics = _read_metrics(run.metrics, notes)
    config_text, config = _read_config(run.config, notes)
    name = str(summary.get("name") or config.get("name") or run_dir.resolve().name)

    # Sections fill ``notes`` as they go, so the notes box is assembled last but shown first.
    body = "".join(
        [
            tasks_section(summary),
            forgetting_matrix_section(summary),
            _eval_section(summary),
            _baseline_plots(summary),
            _curves_section(metrics),
            objective_section(metrics, run_dir),
            _confusion_section(summary, notes),
            _section("Data", _generic(data_report)) if data_report not in (None, {}, []) else "",
            _details_section(summary),
            _extra_sections(summary),
            _config_section(config_text),
        ]
    )
    if not body:
        notes.append(f"{run_dir} holds none of summary.json, metrics.jsonl, data_report.json, config.yaml.")
    notes_html = (
        "<div class='notes'><ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul></div>"
        if notes
        else ""
    )
    return page(name, f"{_header(name, summary, config)}{notes_html}{body}")


# ----------------------------------------------------------------------------- for other pages (sweeps)


def page(title: str, body: str) -> str:
    """A self-contained page (this report's style and Content-Security-Policy) around ready ``body`` HTML."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>tunesmith report — {_esc(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"{body}</body></html>\n"
    )


def html_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A table of plain values (escaped and formatted as in the run report; numbers right-aligned)."""
    return _table([_esc(h) for h in headers], [[_cell(v) for v in row] for row in rows])


def html_section(title: str, body: str) -> str:
    return _section(title, body)


def html_image(png: bytes, alt: str) -> str:
    return _img(png, alt)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from whatever run files exist there.

    Args:
        run_dir: A run directory, ``runs/<name>``.

    Returns:
        The path of the written report.

    Raises:
        RunError: ``run_dir`` does not exist.
    """
    path = RunDir(run_dir).report
    write_text_atomic(path, render_report(run_dir))
    return path
