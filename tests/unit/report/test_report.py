"""The run report and its plots, on synthetic run directories written into tmp_path."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from tunesmith.errors import RunError
from tunesmith.report.html import write_report
from tunesmith.report.plots import (
    comparison_bar_png,
    confusion_matrix_png,
    ema_smooth,
    loss_curve_png,
    validation_scores,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_MAGIC)
    return struct.unpack(">II", png[16:24])  # IHDR width, height


def _metrics_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"step": s, "epoch": s / 40, "train_loss": 3.0 - 0.01 * s, "lr": 2e-4, "tokens_per_s": 160.2}
        for s in range(10, 161, 10)
    ]
    rows += [{"step": 40, "val_loss": 2.1, "val_ppl": 8.17}, {"step": 120, "val_loss": 0.41}]
    rows.append({"step": 160, "val_loss": 0.55})
    return rows


def _generation_summary(name: str = "demo") -> dict[str, Any]:
    return {
        "name": name,
        "status": "completed",
        "method": "lora",
        "model": "default",
        "task": "generation",
        "trainable_params": 4884480,
        "total_params": 139399488,
        "eval": {
            "validation": {
                "base": {"exact_match": 0.0, "token_f1": 0.1, "rouge_l": 0.1, "n": 200},
                "tuned": {"exact_match": 0.5, "token_f1": 0.8125, "rouge_l": 0.8, "n": 200},
            }
        },
        "best": {"step": 120, "val_loss": 0.41},
        "timings": {"train_s": 300.1, "eval_s": 40.2, "total_s": 350.0},
        "peak_memory_mb": 2100.5,
        "versions": {"torch": "2.13.0", "transformers": "5.23.0"},
        "data_hashes": {"train": "sha256:abc123"},
        "general_knowledge": {"questions": 20, "base": {"accuracy": 0.6}, "tuned": {"accuracy": 0.55}},
        "forgetting": {"base": {"hellaswag_acc": 0.31}, "tuned": {"hellaswag_acc": 0.29}},
    }


def _write_run(run_dir: Path, summary: dict[str, Any] | None, metrics: bool = True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("name: demo\nmethod:\n  name: lora\n  r: 16\n", encoding="utf-8")
    data_report = {"train": {"rows_read": 1000, "dropped_empty": 3}, "validation": {"rows_read": 111}}
    (run_dir / "data_report.json").write_text(json.dumps(data_report), encoding="utf-8")
    if metrics:
        lines = "".join(json.dumps(r) + "\n" for r in _metrics_rows())
        (run_dir / "metrics.jsonl").write_text(lines, encoding="utf-8")
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return run_dir


def _assert_offline(page: str) -> None:
    lowered = page.lower()
    assert "http://" not in lowered
    assert "https://" not in lowered
    assert "<script" not in lowered
    assert "<link" not in lowered


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


# ----------------------------------------------------------------------------- plots


def test_ema_smooth_bias_corrected_by_hand() -> None:
    # beta 0.5: m1 = 0.5*2 = 1 -> 1 / (1 - 0.5) = 2; m2 = 0.5*1 + 0.5*4 = 2.5 -> 2.5 / 0.75 = 10/3
    assert ema_smooth([2.0, 4.0], 0.5) == pytest.approx([2.0, 10 / 3])
    assert ema_smooth([1.0, 5.0, 2.0], 0.0) == [1.0, 5.0, 2.0]
    with pytest.raises(ValueError, match="beta"):
        ema_smooth([1.0], 1.0)


def test_loss_curve_png_is_png() -> None:
    png = loss_curve_png(_metrics_rows())
    assert png is not None and png.startswith(b"\x89PNG")
    width, height = _png_size(png)
    assert width > 300 and height > 200


def test_loss_curve_png_handles_partial_data() -> None:
    assert loss_curve_png([]) is None
    assert loss_curve_png([{"step": 1, "lr": 0.1}, {"train_loss": 2.0}]) is None  # no step / no loss
    assert loss_curve_png([{"step": 1, "train_loss": float("nan")}]) is None  # diverged step skipped
    only_val = loss_curve_png([{"step": 5, "val_loss": 1.0}])
    assert only_val is not None and only_val.startswith(PNG_MAGIC)


def test_confusion_matrix_png() -> None:
    png = confusion_matrix_png([[3, 1], [0, 4]], ["neg", "pos"], "validation — tuned")
    assert png.startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="2x2"):
        confusion_matrix_png([[1, 2, 3]], ["a", "b"], "bad")


def test_comparison_bar_png() -> None:
    rows = {"base": {"exact_match": 0.1, "token_f1": 0.3}, "tuned": {"exact_match": 0.5}}
    assert comparison_bar_png(rows, ["exact_match", "token_f1"]).startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="at least one"):
        comparison_bar_png({}, ["exact_match"])


# ----------------------------------------------------------------------------- report


def test_report_generation_run(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "demo", _generation_summary())
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    for title in [
        "Evaluation: base vs tuned",
        "Training curves",
        "Data",
        "Run details",
        "General knowledge",
        "Forgetting",
        "Configuration",
    ]:
        assert f"<h2>{title}</h2>" in page
    assert "Confusion matrices" not in page  # generation run: nothing to draw
    # base vs tuned table: values, the delta column, the example count
    assert "Δ tuned − base" in page
    assert re.search(r"<th>token_f1</th><td class=\"num\">0.1</td><td class=\"num\">0.8125</td>"
                     r"<td class=\"num\">\+0.7125</td>", page)  # fmt: skip
    assert re.search(r"<th>n</th><td class=\"num\">200</td><td class=\"num\">200</td>", page)
    # header, run details, data report, generic sections
    assert "<h1>demo</h1>" in page and "completed" in page and "lora" in page
    assert "4,884,480 (3.50% of 139,399,488)" in page
    assert "300.1 s (5m 00s)" in page and "2,100.5 MB" in page and "5.23.0" in page
    assert "sha256:abc123" in page and "step 120, val_loss 0.41" in page
    assert "rows_read" in page and "1,000" in page and "111" in page
    assert "hellaswag_acc" in page and "0.31" in page and "0.55" in page
    images = _embedded_pngs(page)
    assert len(images) == 2  # loss curve + base/tuned bar chart
    assert all(img.startswith(PNG_MAGIC) for img in images)
    _assert_offline(page)
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_report_escapes_strings_from_data(tmp_path: Path) -> None:
    summary = _generation_summary(name="<b>x</b>")
    summary["status"] = "<script>alert(1)</script>"
    summary["eval"]["validation"]["tuned"]["<i>evil</i>"] = 1.0
    page = write_report(_write_run(tmp_path / "run", summary)).read_text(encoding="utf-8")
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<b>x</b>" not in page
    assert "&lt;i&gt;evil&lt;/i&gt;" in page and "<i>evil</i>" not in page
    _assert_offline(page)


def test_report_without_metrics_jsonl(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run", _generation_summary(), metrics=False)
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "Training curves" not in page
    assert "<h2>Evaluation: base vs tuned</h2>" in page
    assert len(_embedded_pngs(page)) == 1  # only the bar chart


def test_report_classification_run(tmp_path: Path) -> None:
    labels = ["neg", "pos"]
    base = {"accuracy": 0.5, "f1_macro": 0.333, "per_class_f1": {"neg": 0.667, "pos": 0.0},
            "confusion_matrix": [[2, 0], [2, 0]], "labels": labels, "n": 4}  # fmt: skip
    tuned = {"accuracy": 1.0, "f1_macro": 1.0, "per_class_f1": {"neg": 1.0, "pos": 1.0},
             "confusion_matrix": [[2, 0], [0, 2]], "labels": labels, "n": 4}  # fmt: skip
    summary = {"name": "cls", "status": "completed", "task": "classification",
               "eval": {"test": {"base": base, "tuned": tuned}}}  # fmt: skip
    page = write_report(_write_run(tmp_path / "cls", summary)).read_text(encoding="utf-8")
    assert "<h2>Confusion matrices</h2>" in page
    assert 'alt="test — base"' in page and 'alt="test — tuned"' in page
    assert "<h4>Per-class F1</h4>" in page
    assert re.search(r"<th>pos</th><td class=\"num\">0</td><td class=\"num\">1</td>", page)
    assert re.search(r"<th>accuracy</th><td class=\"num\">0.5</td><td class=\"num\">1</td>"
                     r"<td class=\"num\">\+0.5</td>", page)  # fmt: skip
    assert "[[2, 0]" not in page  # matrices are drawn, not dumped as metric rows
    # loss curve + bar chart + two confusion matrices
    assert len(_embedded_pngs(page)) == 4
    _assert_offline(page)


def test_report_notes_bad_files_and_keeps_going(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run", None)
    with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"step": 170, "train_lo')  # a line cut off mid-write
    (run_dir / "summary.json").write_text("{not json", encoding="utf-8")
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "metrics.jsonl: skipped 1 malformed line(s): 20." in page
    assert "summary.json could not be read" in page
    assert "<h2>Training curves</h2>" in page  # the good lines still plot
    assert "<h1>demo</h1>" in page  # name falls back to config.yaml
    assert "unknown (no summary.json)" in page


def test_report_empty_and_missing_run_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    page = write_report(tmp_path / "empty").read_text(encoding="utf-8")
    assert "<h1>empty</h1>" in page and "holds none of summary.json" in page
    with pytest.raises(RunError, match="does not exist"):
        write_report(tmp_path / "missing")


def test_head_scores_logged_during_training_join_the_loss_plot() -> None:
    rows = [*_metrics_rows(), {"step": 2, "val_loss": 0.9, "val_macro_f1": 0.4, "val_accuracy": 0.6}]
    rows.append({"step": 4, "val_loss": 0.7, "val_macro_f1": 0.55})
    assert validation_scores(rows) == {"macro_f1": ([2.0, 4.0], [0.4, 0.55]), "accuracy": ([2.0], [0.6])}
    assert validation_scores(_metrics_rows()) == {}
    png = loss_curve_png(rows)
    assert png is not None and png.startswith(b"\x89PNG") and png != loss_curve_png(_metrics_rows())
