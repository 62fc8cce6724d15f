"""Continued pre-training trained end to end: the shipped recipe (``recipes/continued_pretraining.yaml``) on a
tiny model and raw domain text; the held-out domain perplexity must fall well below the base model's."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tunesmith.api import train
from tunesmith.config import load_config

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "continued_pretraining.yaml"


def _domain_lines(seed: int, n: int) -> list[str]:
    """Kitchen-appliance manual sentences from one small grammar: a domain with its own words and shapes."""
    rng = random.Random(seed)
    things = ["kettle", "toaster", "blender", "mixer", "grinder", "steamer"]
    verbs = ["descale", "rinse", "unplug", "dry", "wipe", "check"]
    parts = ["lid", "filter", "base", "jug", "blade", "cord"]
    return [
        f"{rng.choice(verbs).capitalize()} the {rng.choice(things)} {rng.choice(parts)} every "
        f"{rng.randint(2, 9)} weeks before use."
        for _ in range(n)
    ]


def test_continued_pretraining_lowers_held_out_domain_perplexity(tmp_path, tiny_model_dir):
    (tmp_path / "train.txt").write_text("\n".join(_domain_lines(0, 96)) + "\n")
    (tmp_path / "held_out.txt").write_text("\n".join(_domain_lines(1, 24)) + "\n")
    overrides = [
        f"output_dir={tmp_path}",
        f"model.name={tiny_model_dir}",
        f"data.train={tmp_path / 'train.txt'}",
        f"data.validation={tmp_path / 'held_out.txt'}",
        "train.max_steps=24",
        "train.batch_size=8",
        "train.lr=5e-3",
        "train.warmup_steps=2",
        "train.precision=fp32",
        "train.eval_every=1000",
        "train.save_every=1000",
    ]
    summary = train(load_config(str(RECIPE), overrides))
    assert summary["status"] == "completed" and summary["train"]["steps"] == 24
    val = summary["eval"]["validation"]
    base, tuned = val["base"]["perplexity"], val["tuned"]["perplexity"]
    # A random 2-layer model starts near uniform over the 49k-token vocabulary (perplexity ~51,500 here);
    # 24 LoRA steps on the domain text more than halve it (~23,300). The bound leaves room for other CPUs.
    assert base > 40_000 and tuned < 0.6 * base, (base, tuned)
    report = json.loads((tmp_path / "cpt-tweets" / "data_report.json").read_text())
    assert report["splits"]["train"]["kept"] == 96
