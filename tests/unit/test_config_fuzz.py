"""Fuzzing the config loader and the ``--set key.path=value`` parser: any YAML file and any overrides give a
validated RunConfig or a ConfigError naming the file, the override or the key path, never another exception;
a config that validates survives ``dump_config`` -> ``load_config`` unchanged.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import CASES, FAST, LONG, OUTCOMES, run_counted
from tunesmith.config import ConfigError, RunConfig, dump_config, load_config, reference_markdown, set_path


def _key_paths() -> list[str]:
    """Every documented key path (``method (lora).r`` -> ``method.r``, list items -> the list's key)."""
    keys = re.findall(r"^\| `([^`]+)` \|", reference_markdown(), re.MULTILINE)
    return sorted({re.sub(r" \([^)]*\)", "", key).split("[]")[0] for key in keys})


KEY_PATHS = _key_paths()
ODD_VALUES = [
    "", "[", "{a", "a: b", "2024-13-01", "1e-4", "-1", "0", "1e999", "nan", "true", "null", "[1, 2]",
    "{name: x}", "!!python/object/apply:os.system [ls]", "&a [*a]", "- x", "'", "\t", "~", "!!binary x!",
    "9" * 5000, "[" * 5000, "lora", "dpo", "../etc", "a/b", ".hidden",
]  # fmt: skip
keys = st.sampled_from(KEY_PATHS) | st.text(max_size=10) | st.sampled_from(["", ".", "a..b", "train.", "=x"])
values = st.sampled_from(ODD_VALUES) | st.text(max_size=12) | st.integers().map(str)
overrides = st.lists(st.tuples(keys, values).map("=".join) | st.text(max_size=10), max_size=4)
yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(ODD_VALUES),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=5), inner, max_size=2),
    max_leaves=4,
)


@st.composite
def yaml_files(draw: st.DrawFn) -> bytes | None:
    """None (no file), a mapping over real key paths dumped as YAML, or raw text and bytes."""
    kind = draw(st.sampled_from(["none", "defaults", "defaults", "mapping", "text", "bytes"]))
    if kind == "none":
        return None
    if kind == "defaults":  # the full default config with 0-3 values changed: mostly valid, near misses
        raw = yaml.safe_load(dump_config(RunConfig()))
        for key in draw(st.lists(st.sampled_from(KEY_PATHS), max_size=3)):
            value = draw(st.sampled_from(ODD_VALUES) | yaml_values | st.integers(-2, 100) | st.floats(-1, 2))
            with contextlib.suppress(ConfigError):  # a scalar already sits where this key needs a section
                set_path(raw, key, value)
        return yaml.safe_dump(raw).encode()
    if kind == "mapping":
        raw: dict[str, Any] = {}
        for key, value in draw(st.lists(st.tuples(st.sampled_from(KEY_PATHS), yaml_values), max_size=5)):
            with contextlib.suppress(ConfigError):
                set_path(raw, key, value)
        return yaml.safe_dump(raw).encode()
    if kind == "text":
        return draw(st.sampled_from(["- a\n", "a: [\n", "x: 2024-13-01\n", "\t:\n", "[" * 3000]) | st.text())
    return draw(st.binary(max_size=40))


def _check(directory: Path, content: bytes | str | None, sets: list[str]) -> None:
    path = None
    if content is not None:
        path = directory / "config.yaml"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    try:
        cfg = load_config(path, sets)
    except ConfigError as err:
        OUTCOMES["config ConfigError"] += 1
        message = str(err)
        # The message points at what to fix: the file (with the key path), or the override as typed.
        assert (path is not None and str(path) in message) or "override" in message or "<defaults>" in message
        return
    OUTCOMES["config valid"] += 1
    again = directory / "dumped.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def _fuzz(tmp_path: Path, n: int) -> int:
    @given(content=yaml_files(), sets=overrides)
    def prop(content: bytes | None, sets: list[str]) -> None:
        CASES["config + --set"] += 1
        _check(tmp_path, content, sets)

    return run_counted("config + --set", n, prop)


def test_config_loader_raises_only_config_errors(tmp_path):
    assert _fuzz(tmp_path, FAST) >= FAST


@pytest.mark.chaos
def test_config_loader_fuzz_long(tmp_path):
    assert _fuzz(tmp_path, LONG) >= LONG


@pytest.mark.parametrize(
    ("content", "sets", "needle"),
    [
        (None, ["train.lr=["], "override 'train.lr=[': the value is not valid YAML"),
        (None, ["name=2024-13-01"], "override 'name=2024-13-01': the value is not valid YAML: month must be"),
        (None, ["data.labels=" + "[" * 5000], "the value is not valid YAML"),
        (b"seed: 2024-13-01\n", [], "config.yaml: not valid YAML: month must be in 1..12"),
        (b"\xff\xfe: 1\n", [], "config.yaml: not UTF-8 text"),
    ],
)
def test_crashes_found_by_fuzzing_are_config_errors(tmp_path, content, sets, needle):
    """Each of these once escaped as yaml.YAMLError, ValueError, RecursionError or UnicodeDecodeError."""
    path = None
    if content is not None:
        path = tmp_path / "config.yaml"
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(path, sets)


def test_a_directory_as_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path)
