"""The plan as a person reads it: a table and a one-paragraph recommendation."""

from __future__ import annotations

from tunesmith.plan.estimate import Calibration, DataShape, Estimate

PREFERENCE = {"lora": 3, "full": 2, "qlora": 1, "head": 0}
"""Among the methods that fit one model: LoRA first (near full fine-tuning's quality at a fraction of the
memory), then full, then QLoRA (slower on CPU: it dequantizes per matmul), then a head alone."""


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def table(rows: list[Estimate]) -> str:
    """A Markdown table: one row per (model, method)."""
    lines = [
        "| model | params | method | peak memory | fits | tokens/s | time |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for r in rows:
        speed = f"{r.tokens_per_s:.2g}" if r.tokens_per_s < 10 else f"{r.tokens_per_s:,.0f}"
        lines.append(
            f"| {r.model} | {r.params / 1e6:,.0f}M | {r.method} | {r.peak_mb:,.0f} MB | "
            f"{'yes' if r.fits else 'no'} | {speed} | {duration(r.seconds)} |"
        )
    return "\n".join(lines)


def recommend(
    rows: list[Estimate],
    shape: DataShape,
    cal: Calibration,
    budget: float,
    budget_name: str,
    max_hours: float,
) -> str:
    """One paragraph: the largest model with a method that fits and finishes within ``max_hours``."""
    feasible = [r for r in rows if r.fits and r.seconds <= max_hours * 3600]
    basis = (
        f"Speeds are a scaling estimate: {cal.tokens_per_s:,.0f} tokens/s measured over {cal.seconds:.0f} s "
        f"of full forward+backward steps of the default model ({cal.width}-token rows; a loaded machine "
        "measures less), scaled by FLOPs per token (6N full, 4N LoRA/QLoRA, 2N head). Memory is the "
        "planner's estimate plus this process's runtime; see docs/planning.md for its measured error."
    )
    work = f"{shape.tokens:,} training tokens ({shape.steps} steps)"
    if not feasible:
        smallest = min(rows, key=lambda r: r.peak_mb)
        return (
            f"Nothing fits {budget:,.0f} MB ({budget_name}) and finishes {work} within {max_hours:g} h. "
            f"The lightest option is {smallest.model} with {smallest.method} ({smallest.peak_mb:,.0f} MB, "
            f"{duration(smallest.seconds)}): lower train.batch_size or data.max_length, set "
            f"train.gradient_checkpointing, or allow more time with --max-hours. {basis}"
        )
    best = max(feasible, key=lambda r: (r.params, PREFERENCE[r.method]))
    text = (
        f"Recommendation: {best.model} with {best.method} — about {best.peak_mb:,.0f} MB of "
        f"{budget:,.0f} MB ({budget_name}) and {duration(best.seconds)} for {work}."
    )
    larger = [r for r in rows if r.params > best.params]
    if larger:
        nearest = min(larger, key=lambda r: (r.params, -PREFERENCE[r.method]))
        reason = "does not fit" if not nearest.fits else f"needs {duration(nearest.seconds)}"
        text += f" The next larger option, {nearest.model} with {nearest.method}, {reason}."
    full = next((r for r in rows if r.model == best.model and r.method == "full"), None)
    if best.method != "full" and full is not None and full.fits:
        text += (
            f" Full fine-tuning of {best.model} also fits ({full.peak_mb:,.0f} MB, {duration(full.seconds)})."
        )
    return f"{text} {basis}"
