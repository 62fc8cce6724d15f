"""``init_from: runs/<name>``: a run starts from an earlier run's result (adapter merged into the base)."""

from __future__ import annotations

import json

import pytest

from tests.unit.methods.test_feature_extraction import _rows
from tunesmith.api import train
from tunesmith.config import load_config
from tunesmith.errors import ConfigError


def _cfg(tmp_path, model_dir, data, *extra):
    return load_config(
        None,
        [
            f"output_dir={tmp_path}",
            f"model.name={model_dir}",
            f"data.train={data}",
            "data.validation_fraction=0.25",
            "train.max_steps=3",
            "train.lr=1e-2",
            "eval.probes=false",
            "eval.icl_shots=[]",
            *extra,
        ],
    )


def test_second_run_starts_where_the_first_ended(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(16, 0)))
    first = train(_cfg(tmp_path, tiny_model_dir, data, "name=first", "method.r=4", "eval.compare_base=false"))
    second = train(
        _cfg(
            tmp_path,
            tiny_model_dir,
            data,
            "name=second",
            "method.name=full",
            f"init_from={tmp_path / 'first'}",
        )
    )
    tuned_first = first["eval"]["validation"]["tuned"]
    base_second = second["eval"]["validation"]["base"]
    # The second run's "base" is the first run's merged result: same validation loss and predictions.
    assert base_second["loss"] == pytest.approx(tuned_first["loss"], abs=1e-4)
    assert base_second["accuracy"] == tuned_first["accuracy"]
    assert second["eval"]["validation"]["tuned"]["loss"] != pytest.approx(tuned_first["loss"], abs=1e-4)
    with pytest.raises(ConfigError, match=r"init_from: .* cannot be combined with method qlora"):
        train(
            _cfg(
                tmp_path,
                tiny_model_dir,
                data,
                "name=third",
                "method.name=qlora",
                f"init_from={tmp_path}/first",
            )
        )
