"""A finished reward run as a scorer: what ``score_model`` graders call, and the judge of a model-judged
win rate (tuned vs base answers to the same prompts; ``eval.judge``).

    score = reward_scorer("runs/reward-orca")
    score(["Paris."], [{"messages": [{"role": "user", "content": "Capital of France?"}]}])   # [1.73]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import ConfigError
from tunesmith.evaluate.bootstrap import wilson_interval
from tunesmith.infer.batching import collate, model_device
from tunesmith.methods import load_trained
from tunesmith.objective import RewardObjective
from tunesmith.train.preference import last_token_scores

ScoreFn = Callable[[list[str], list[dict[str, Any]]], list[float]]


def reward_scorer(run_dir: str | Path, batch_size: int = 8) -> ScoreFn:
    """Rewards of completions from a reward run (the ``score_model`` grader's model).

    Each completion is scored as the answer to its row's prompt (``item["messages"]``, rendered with the
    chat template the reward model was trained with); a row without messages scores the completion alone.
    """
    model, tokenizer, cfg = load_trained(run_dir)
    if not isinstance(cfg.objective, RewardObjective):
        raise ConfigError(f"{run_dir} is not a reward model run (objective: {cfg.objective.name})")
    device = model_device(model)

    def score(texts: list[str], items: list[dict[str, Any]]) -> list[float]:
        rows = []
        for text, item in zip(texts, items, strict=True):
            chat = [*item.get("messages", []), {"role": "assistant", "content": text}]
            rows.append(list(tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)))
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = collate(rows[start : start + batch_size], None, tokenizer.pad_token_id)
                out += last_token_scores(
                    model, batch["input_ids"].to(device), batch["attention_mask"].to(device)
                ).tolist()
        return out

    return score


def judged_win_rate(
    judge: str | Path, items: list[dict[str, Any]], base: list[str], tuned: list[str]
) -> dict[str, Any]:
    """Share of prompts where the judge rewards the tuned answer above the base one (ties count half), with
    a 95 % Wilson interval over the decided prompts. Model-judged: it says what the reward model prefers."""
    score = reward_scorer(judge)
    base_scores, tuned_scores = score(base, items), score(tuned, items)
    wins = sum(t > b for b, t in zip(base_scores, tuned_scores, strict=True))
    losses = sum(t < b for b, t in zip(base_scores, tuned_scores, strict=True))
    ties = len(items) - wins - losses
    low, high = wilson_interval(wins, wins + losses)
    return {
        "judge": str(judge),
        "model_judged": True,
        "n": len(items),
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "win_rate": round((wins + ties / 2) / max(len(items), 1), 4),
        "win_rate_decided_95ci": [round(low, 4), round(high, 4)],
        "mean_reward_base": round(sum(base_scores) / max(len(items), 1), 4),
        "mean_reward_tuned": round(sum(tuned_scores) / max(len(items), 1), 4),
    }
