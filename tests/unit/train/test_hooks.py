"""Loop hooks: every metrics row and validation pass reaches them, and a validation hook can stop the run."""

from __future__ import annotations

from tunesmith.train.hooks import LoopHooks

from .test_train_loop import _cfg, _losses, _run


def test_hooks_see_each_row_and_pass_and_a_stop_ends_the_run_pruned(tmp_path):
    rows, passes = [], []

    def stop_at_4(step: int, scores: dict[str, float]) -> bool:
        passes.append((step, scores["val_loss"]))
        return step == 4

    hooks = LoopHooks(on_log=[rows.append], on_validation=[stop_at_4])
    _, res, run_dir = _run(tmp_path, "a", _cfg(eval_every=2, save_every=2), hooks=hooks)
    assert res.pruned and res.interrupted and not res.stopped_early and res.steps == 4
    assert [s for s, _ in passes] == [2, 4]
    # the hooks saw exactly what metrics.jsonl holds, in order
    assert [r.get("train_loss") for r in rows if "train_loss" in r] == _losses(run_dir)
    assert [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r] == passes
    # pruning saves nothing: the checkpoints are the periodic ones only (steps 2 and 4 from save_every)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_a_stop_at_the_last_pass_does_not_prune_a_finished_run(tmp_path):
    hooks = LoopHooks(on_validation=[lambda step, scores: True])
    _, res, _ = _run(tmp_path, "b", _cfg(), hooks=hooks)  # one pass, at the end (step 6)
    assert res.steps == 6 and not res.pruned and not res.interrupted


def test_every_validation_hook_votes_and_any_one_stops():
    seen: list[str] = []
    hooks = LoopHooks(
        on_validation=[lambda s, v: seen.append("a") or True, lambda s, v: seen.append("b") or False]
    )
    assert hooks.should_stop(1, {"val_loss": 1.0}) and seen == ["a", "b"]
    merged = LoopHooks(on_log=[print]).plus(LoopHooks(on_validation=[lambda s, v: False]))
    assert len(merged.on_log) == 1 and len(merged.on_validation) == 1
