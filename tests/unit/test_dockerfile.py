"""The Dockerfile installs exactly what ``make`` installs: the same pip commands, pins and extras, in the
same order (a Docker build may add flags, e.g. the torch wheel index). Docker itself is not needed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _makefile_installs() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("$(STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    return [
        line.strip().removeprefix("$(BIN)/") for line in recipe.splitlines() if "$(BIN)/pip install" in line
    ]


def _dockerfile_installs() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        line.strip().removeprefix("RUN ").strip()
        for line in text.splitlines()
        if re.match(r"RUN pip install", line)
    ]


def test_dockerfile_installs_what_the_makefile_installs():
    make, docker = _makefile_installs(), _dockerfile_installs()
    assert len(make) == 4 and make[1] == "pip install -q torch==2.13.0"  # the parser found the recipe
    assert len(docker) == len(make)
    for ours, theirs in zip(docker, make, strict=True):
        assert ours == theirs or ours.startswith(theirs + " --index-url "), (ours, theirs)


def test_dockerfile_serves_with_settings_from_the_environment():
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["tunesmith", "serve"]' in text
    # A public bind needs a key file (check_bind): the image names one, so it never serves unauthenticated.
    assert "TUNESMITH_SERVE_HOST=0.0.0.0" in text and "TUNESMITH_SERVE_API_KEY_FILE=" in text
