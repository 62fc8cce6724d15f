"""bench/gpu_check.sh runs only when a GPU machine is lent, rarely: keep it from rotting in between."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [ROOT / "bench" / "gpu_check.sh", ROOT / "bench" / "gpu_prep.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_the_tests_it_names_exist_and_carry_the_gpu_marker():
    text = SCRIPTS[0].read_text()
    named = set(re.findall(r"\btests/[\w/]+(?:\.py)?", text))
    assert "tests/gpu" in named
    for path in named:
        assert (ROOT / path).exists(), path
    assert "pytest.mark.gpu" in (ROOT / "tests" / "gpu" / "test_cuda.py").read_text()


def test_the_bench_command_it_runs_parses():
    from bench.bench_sft import _parse

    joined = SCRIPTS[0].read_text().replace("\\\n", " ")  # continuation lines as one
    line = next(x for x in joined.splitlines() if x.startswith("timeout") and "bench_sft.py" in x)
    words = shlex.split(line.split("bench/bench_sft.py", 1)[1].split("2>&1")[0])
    args = _parse(words)
    assert args.model == "llama-1b" and args.sides == "tunesmith,trl"
