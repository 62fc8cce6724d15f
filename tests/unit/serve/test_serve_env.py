"""``tunesmith serve`` settings from ``TUNESMITH_SERVE_*`` environment variables; a flag still wins."""

from __future__ import annotations

import pytest

from tunesmith.cli import build_parser, main
from tunesmith.errors import ConfigError
from tunesmith.serve.cli import run_serve


def test_environment_sets_defaults_and_flags_win(monkeypatch):
    monkeypatch.setenv("TUNESMITH_SERVE_SOURCES", "runs/a runs/b")
    monkeypatch.setenv("TUNESMITH_SERVE_PORT", "9001")
    monkeypatch.setenv("TUNESMITH_SERVE_BATCH_WAIT_MS", "2.5")
    monkeypatch.setenv("TUNESMITH_SERVE_NO_BATCHING", "yes")
    monkeypatch.setenv("TUNESMITH_SERVE_CAPTURE", "/srv/traffic")
    args = build_parser().parse_args(["serve"])
    assert (args.sources, args.port, args.batch_wait_ms) == (["runs/a", "runs/b"], 9001, 2.5)
    assert args.no_batching is True and args.capture == "/srv/traffic"
    flags = build_parser().parse_args(["serve", "runs/c", "--port", "8123"])
    assert (flags.sources, flags.port) == (["runs/c"], 8123)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TUNESMITH_SERVE_PORT", "eighty", "TUNESMITH_SERVE_PORT='eighty' is not a valid value for --port"),
        ("TUNESMITH_SERVE_JOBS", "maybe", "TUNESMITH_SERVE_JOBS='maybe' is not a valid value for --jobs"),
        ("TUNESMITH_SERVE_ENGINE", "tgi", "TUNESMITH_SERVE_ENGINE='tgi' is not a valid value for --engine"),
    ],
)
def test_bad_environment_value_is_a_config_error_when_serving(monkeypatch, capsys, name, value, message):
    monkeypatch.setenv(name, value)
    assert main(["serve", "default"]) == 2  # reported before anything loads, not while the parser is built
    assert message in capsys.readouterr().err
    assert build_parser().parse_args(["eval", "runs/x"]).run_dir == "runs/x"  # other commands unaffected


def test_no_source_anywhere_is_an_error(monkeypatch):
    monkeypatch.delenv("TUNESMITH_SERVE_SOURCES", raising=False)
    with pytest.raises(ConfigError, match="serve needs at least one SOURCE"):
        run_serve(build_parser().parse_args(["serve"]))
