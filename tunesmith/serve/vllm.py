"""``tunesmith serve --engine vllm``: hand the same sources over to vLLM's OpenAI server.

vLLM (https://docs.vllm.ai) serves one base model and applies LoRA adapters per request with batched
kernels on a GPU, which is what to use when a GPU is available and throughput matters. tunesmith's runs
are stock PEFT adapters and transformers directories, so the hand-over is a command line::

    vllm serve /path/to/base --host 127.0.0.1 --port 8000 --served-model-name default \\
        --enable-lora --max-loras 2 --max-lora-rank 16 \\
        --lora-modules support-bot=runs/support-bot/adapter triage=runs/triage/adapter

Requests then pick ``model="support-bot"`` exactly as with the built-in server. What carries over: the
model ids (run directory names), ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, streaming
and sampling. What does not: ``/v1/classify`` (label scoring is tunesmith's; ask the model with a chat
request instead) and tunesmith's ``/metrics`` names (vLLM exports its own). The API key, if any, is passed
in the ``VLLM_API_KEY`` environment variable, not on the command line where ``ps`` would show it.

vLLM needs a CUDA (or ROCm/TPU) build and is not installable on the CPU-only machines tunesmith targets
by default; without it importable, ``--engine vllm`` stops with an error saying so. On a GPU machine:
``pip install vllm`` and run the same ``tunesmith serve ... --engine vllm`` command.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

from tunesmith.errors import ConfigError, RunError
from tunesmith.models.loading import DEFAULT_MODEL
from tunesmith.runs import RunDir, read_run_config
from tunesmith.serve.models import base_key

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def _lora_rank(adapter_dir: Path) -> int:
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    return int(config.get("r", 8))


def vllm_command(sources: list[str], host: str, port: int) -> list[str]:
    """The ``vllm serve`` command serving ``sources`` (one base, its LoRA runs as named modules).

    Raises:
        ConfigError: the sources need more than one base model (vLLM serves one per process), or a
            source is not a run directory, a model directory or ``default``.
    """
    bases: dict[str, str] = {}
    served_name: str | None = None
    loras: list[tuple[str, Path]] = []
    for source in sources:
        path = Path(source).expanduser()
        if source == DEFAULT_MODEL or (path / "config.json").is_file():
            key = base_key(source)
            served_name = DEFAULT_MODEL if source == DEFAULT_MODEL else path.resolve().name
        elif RunDir(path).config.is_file():
            run = RunDir(path)
            if run.adapter.is_dir():
                key = base_key(read_run_config(path).model.name)
                loras.append((path.name, run.adapter.resolve()))
            elif run.model.is_dir():
                key, served_name = str(run.model.resolve()), path.name
            else:
                raise RunError(f"{path} has no adapter/ or model/: the run did not finish (try --resume)")
        else:
            raise ConfigError(f"{source} is not a run directory, a model directory or `default`")
        bases.setdefault(key, source)
    if len(bases) != 1:
        raise ConfigError(
            "vLLM serves one base model per server, but these sources need "
            f"{len(bases)}: {', '.join(bases)}; start one `tunesmith serve --engine vllm` per base"
        )
    command = ["vllm", "serve", next(iter(bases)), "--host", host, "--port", str(port)]
    if served_name is not None:
        command += ["--served-model-name", served_name]
    if loras:
        rank = max(_lora_rank(adapter) for _, adapter in loras)
        max_rank = next((r for r in VLLM_LORA_RANKS if r >= rank), rank)
        command += ["--enable-lora", "--max-loras", str(len(loras)), "--max-lora-rank", str(max_rank)]
        command += ["--lora-modules", *(f"{name}={adapter}" for name, adapter in loras)]
    return command


def exec_vllm(sources: list[str], host: str, port: int, api_keys: tuple[str, ...]) -> NoReturn:
    """Replace this process with vLLM's OpenAI server for ``sources``.

    Raises:
        ConfigError: vLLM is not installed (it is not installable on CPU-only machines), more than one
            API key was given (vLLM takes one), or the sources need several bases.
    """
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "--engine vllm needs vLLM, which is not installed here (it requires a CUDA/ROCm GPU build and "
            "cannot be installed on this CPU-only machine). Use the built-in server (--engine torch, the "
            "default), or `pip install vllm` on a GPU machine"
        )
    if len(api_keys) > 1:
        raise ConfigError("vLLM accepts a single API key; put only one key in --api-key-file")
    command = vllm_command(sources, host, port)
    env = dict(os.environ)
    if api_keys:
        env["VLLM_API_KEY"] = api_keys[0]
    executable = shutil.which("vllm")
    if executable is None:  # installed as a package without its console script on PATH
        command = [sys.executable, "-m", "vllm.entrypoints.cli.main", *command[1:]]
        executable = sys.executable
    print(f"tunesmith: handing over to: {' '.join(command)}", flush=True)
    os.execve(executable, command, env)
