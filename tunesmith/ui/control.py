"""Start, stop and resume runs from the UI, through the same pipeline as ``tunesmith train``.

A run trains in a process of its own (``python -m tunesmith.cli train CONFIG --set ...``), so the server
keeps answering while it trains and a crash of one cannot take down the other. Stop is the jobs API's
handshake: write the run's ``STOP`` file; the loop saves a checkpoint at its next step boundary and
returns. Resume is ``tunesmith train <run>/config.yaml --resume`` (the loop's exact resume).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tunesmith.config import load_config
from tunesmith.errors import ConfigError, RunError
from tunesmith.runs import RunDir

LOGS = ".logs"
"""``<runs>/.logs/<name>.log``: what each started run printed."""


def _read_status(run: RunDir) -> str | None:
    return run.read_summary().get("status")


class StartRequest(BaseModel):
    recipe: str = Field(min_length=1, max_length=1_000)
    overrides: list[str] = Field(default_factory=list, max_length=100)


class Runner:
    """Training processes started by this server, by run name."""

    def __init__(self, runs_root: Path, recipes: Path | None = None) -> None:
        self.runs_root, self.recipes = runs_root, recipes
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def recipe_path(self, recipe: str) -> Path:
        """A recipe by file name (in the recipes folder) or path.

        Raises:
            ConfigError: no such file.
        """
        for candidate in ([self.recipes / recipe] if self.recipes else []) + [Path(recipe)]:
            if candidate.is_file():
                return candidate
        raise ConfigError(f"no recipe {recipe!r}; GET /ui/api/recipes lists them")

    def list_recipes(self) -> list[str]:
        if self.recipes is None or not self.recipes.is_dir():
            return []
        return sorted(p.name for p in self.recipes.glob("*.yaml"))

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def _spawn(self, name: str, args: list[str]) -> None:
        log_dir = self.runs_root / LOGS
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "tunesmith.cli", "train", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def start(self, req: StartRequest) -> dict[str, Any]:
        """Validate the config (a bad override is a 400 now, not a dead process later) and start it.

        Raises:
            ConfigError: an unknown recipe or a bad override.
            RunError: a run of that name exists (resume it, or pick another ``name=``).
        """
        recipe = self.recipe_path(req.recipe)
        overrides = [*req.overrides, f"output_dir={self.runs_root}"]
        cfg = load_config(recipe, overrides)
        if RunDir(cfg.run_dir).config.exists():
            raise RunError(f"a run named {cfg.name!r} exists; resume it or pass the override name=NEW")
        self._spawn(cfg.name, [str(recipe), *[a for o in overrides for a in ("--set", o)]])
        return {"name": cfg.name, "status": "started"}

    def stop(self, run: RunDir) -> dict[str, Any]:
        """Ask the run to stop at its next step boundary (it saves a checkpoint first)."""
        if not self.running(run.path.name) and run.summary.exists():
            raise RunError(f"{run.path.name} has ended; there is nothing to stop")
        run.stop_request.touch()
        return {"name": run.path.name, "status": "stopping"}

    def resume(self, run: RunDir) -> dict[str, Any]:
        """Continue a stopped run from its latest checkpoint.

        Raises:
            RunError: the run is still training, has finished, or has no checkpoint.
        """
        name = run.path.name
        if self.running(name):
            raise RunError(f"{name} is still training; stop it first")
        if run.summary.exists() and _read_status(run) != "interrupted":
            raise RunError(f"{name} has finished; start a new run to train more")
        if not run.checkpoints.is_dir() or not any(run.checkpoints.iterdir()):
            raise RunError(f"{name} has no checkpoint to resume from; start it again instead")
        run.stop_request.unlink(missing_ok=True)
        self._spawn(name, [str(run.config), "--resume"])
        return {"name": name, "status": "resumed"}

    def close(self) -> None:
        """Stop the runs this server started (checkpointed) when the server stops."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                RunDir(self.runs_root / name).stop_request.touch()
