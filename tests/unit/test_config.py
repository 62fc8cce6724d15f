"""The config schema: defaults, overrides, and error messages that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.config import RunConfig, dump_config, load_config
from tunesmith.errors import ConfigError

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_defaults_are_lora_on_default_model():
    cfg = load_config()
    assert cfg.model.name == "default" and cfg.method.name == "lora" and cfg.train.lr == 2e-4


def test_overrides_parse_types():
    cfg = load_config(None, ["train.lr=1e-4", "method.r=8", "data.labels=[a, b]", "train.max_steps=3"])
    assert cfg.train.lr == 1e-4 and cfg.method.r == 8 and cfg.data.labels == ["a", "b"]
    assert cfg.train.max_steps == 3


def test_switching_method_by_override():
    cfg = load_config(None, ["method.name=freeze", "method.train_last_n_blocks=1"])
    assert cfg.method.name == "freeze" and cfg.method.train_last_n_blocks == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "train.lrr: unknown key"),
        ("train.scheduler=foo", "train.scheduler: Input should be 'cosine', 'linear' or 'constant'"),
        ("method.name=magic", "unknown value 'magic'; allowed: 'full', 'freeze', 'lora'"),
        ("train.batch_size=zero", "train.batch_size: Input should be a valid integer"),
        ("method.rank=8", "method.lora.rank: unknown key"),
        ("name=a/b", "name: Value error, must be a plain directory name"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_yaml_unknown_key_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 1\n  lrate: 3\n")
    with pytest.raises(
        ConfigError, match=r"invalid configuration in .*bad.yaml:\n  train.lrate: unknown key"
    ):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match=r"must look like key\.path=value"):
        load_config(None, ["train.lr"])


def test_dump_round_trips():
    cfg = load_config(None, ["method.name=full", "train.epochs=2"])
    import yaml

    again = RunConfig.model_validate(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_validates(recipe):
    text = recipe.read_text()
    assert text.startswith("#"), "a recipe opens with a comment saying what it does"
    assert "tunesmith train" in text.split("\n\n")[0] or "tunesmith" in text.splitlines()[2]
    cfg = load_config(recipe)
    # demo.yaml's data is written by `tunesmith demo`; tests/unit/demo/test_demo_run.py checks the rest
    if recipe.name == "demo.yaml":
        assert cfg.data.train == "runs/demo/data/train.jsonl"
        return
    if cfg.data.train and cfg.data.train.startswith("data/"):  # written by the command the header gives
        assert "tunesmith data synth" in text and cfg.data.train in text.split("\n\n")[0]
        return
    assert cfg.data.train is None or cfg.data.train.startswith("../shared/datasets")
    if cfg.data.train:
        assert (Path(__file__).resolve().parents[2] / cfg.data.train).exists()


def test_docs_config_reference_is_current():
    from tunesmith.config import reference_markdown

    docs = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    assert reference_markdown() in docs, (
        "regenerate the table in docs/config.md from tunesmith.config.reference_markdown()"
    )


def test_the_rag_section_records_the_index_and_checks_k():
    cfg = load_config(None, ["rag.index=work/idx", "rag.k=2"])
    assert (cfg.rag.index, cfg.rag.k) == ("work/idx", 2)
    assert load_config(None, []).rag.model_dump() == {"index": None, "k": 4}
    with pytest.raises(ConfigError, match=r"rag\.k: Input should be greater than or equal to 1 \(got 0\)"):
        load_config(None, ["rag.k=0"])
