"""What the server serves: sources (run directories, exported model directories, ``default``) loaded into a
registry in which runs that share a base model share ONE copy of it.

registry = load_registry(["runs/support-bot", "runs/triage", "default"])
registry.models["triage"].task          # "classification"
registry.models["support-bot"].base is registry.models["default"].base   # one base, two adapters on it

LoRA runs become named PEFT adapters on their base (``load_adapter``); a request picks one with
:func:`activate`, which the batching worker calls before each forward. Full-model runs and exported (merged)
model directories are loaded as models of their own.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft import PeftModel

from tunesmith.errors import ConfigError, RunError
from tunesmith.models.loading import DEFAULT_MODEL, load_causal_lm, load_tokenizer, resolve_model_path
from tunesmith.objective import RewardObjective
from tunesmith.pipelines.scoring import ScoreFn, reward_scorer
from tunesmith.runs import RunDir, read_run_config
from tunesmith.serve.prefix import PrefixStore


@dataclass
class LoadedBase:
    """One model in memory; ``model`` becomes a ``PeftModel`` once an adapter is attached to it."""

    key: str
    model: Any
    adapters: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Held by the worker for each forward and by an adapter load: attaching an adapter rewrites
    the model's modules in place (PEFT injects LoRA layers), which a generation in flight must not see."""


@dataclass
class ServedModel:
    """A model id the API answers to, and how to run it."""

    id: str
    kind: str
    """``base`` (a model directory or ``default``, no adapter), ``adapter`` (a LoRA run) or ``full`` (a
    full-model run's ``model/``)."""
    base: LoadedBase
    tokenizer: Any
    source: str
    adapter_name: str | None = None
    task: str = "generation"
    """``generation``, ``classification`` or ``language_modeling`` (from the run's summary.json)."""
    label_names: list[str] | None = None
    system_prompt: str | None = None
    label_prompt: str = "Classify the text.\nText: {text}\nLabel:"
    context_length: int = 2048
    index: Any = None
    """The run's ``rag.index`` loaded (a ``RetrievalIndex``): chat questions retrieve from it unless the
    server was given ``--index`` (which wins) or ``--no-index``."""
    rag_k: int = 4
    """The run's ``rag.k``: chunks per question unless ``--rag-k`` is given."""
    engine: Any = None
    """A ``LlamaCppEngine`` when ``--engine llama.cpp`` generates for this id; None: the torch model does."""
    lora: Any = None
    """The llama.cpp LoRA adapter this id applies on its engine's model (None: the model as it is)."""
    prefixes: PrefixStore | None = None
    """The torch engine's cached prompt heads for this id (set by the batcher; None: not cached)."""
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Registry:
    """Served models by id, and the distinct models in memory by their resolved location."""

    models: dict[str, ServedModel] = field(default_factory=dict)
    bases: dict[str, LoadedBase] = field(default_factory=dict)
    scorers: dict[str, ScoreFn] = field(default_factory=dict)
    """Reward-model runs by id (``/v1/score``): their own model each, not on a shared base."""
    loading: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """One hot-load at a time: two requests naming a new model load it once."""

    def add(self, served: ServedModel) -> None:
        if served.id in self.models:
            raise ConfigError(
                f"two sources are both named {served.id!r} ({self.models[served.id].source} and "
                f"{served.source}); model ids are directory names, so rename one of them"
            )
        self.models[served.id] = served
        self.bases.setdefault(served.base.key, served.base)


def context_length(model: Any, tokenizer: Any) -> int:
    """The longest sequence the model was built for (prompt and completion together)."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (1e30); fall back to a conservative 2048.
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else 2048


@contextmanager
def activate(served: ServedModel) -> Iterator[Any]:
    """The model to run for ``served``, with its adapter switched on (or all adapters off for the base).

    Only the batching worker calls this, one batch at a time, so switching adapters cannot race a forward;
    the base's lock keeps a hot-load (another thread) from attaching an adapter while the batch runs.
    """
    with served.base.lock:
        model = served.base.model
        if served.adapter_name is not None:
            model.set_adapter(served.adapter_name)
            yield model
        elif served.base.adapters:  # other runs put adapters on this model: switch them all off
            with model.disable_adapter():
                yield model
        else:
            yield model


def base_key(name: str) -> str:
    """Where a base model lives, so ``default``, ``./base`` and ``/abs/base`` share one copy."""
    location = resolve_model_path(name)
    return str(Path(location).resolve()) if isinstance(location, Path) else str(location)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunError(f"{path} is not valid JSON ({err}); re-run the step that wrote it") from None


def _adapter_name(run_id: str, taken: list[str]) -> str:
    # PEFT keeps adapters in ModuleDicts, whose keys may not contain '.'; keep names readable and unique.
    name = re.sub(r"\W", "_", run_id) or "adapter"
    while name in taken:
        name += "_"
    return name


def _attach_adapter(base: LoadedBase, adapter_dir: Path, run_id: str) -> str:
    with base.lock:  # waits for a batch in flight on this base to finish
        name = _adapter_name(run_id, base.adapters)
        if base.adapters:
            base.model.load_adapter(str(adapter_dir), adapter_name=name)
        else:
            base.model = PeftModel.from_pretrained(base.model, str(adapter_dir), adapter_name=name)
        base.adapters.append(name)
        base.model.eval()
        return name


class _Loader:
    """Loads sources one by one, reusing bases already in memory; ``use_run_index``: load the index a run's
    ``rag.index`` names."""

    def __init__(self, registry: Registry, use_run_index: bool = True) -> None:
        self.registry = registry
        self.tokenizers: dict[str, Any] = {}
        self.use_run_index = use_run_index

    def base(self, name: str, dtype: str = "auto", trust_remote_code: bool = False) -> LoadedBase:
        key = base_key(name)
        if key not in self.registry.bases:
            model = load_causal_lm(name, dtype, trust_remote_code)
            model.eval()
            self.registry.bases[key] = LoadedBase(key, model)
            self.tokenizers[key] = load_tokenizer(name, trust_remote_code)
        return self.registry.bases[key]

    def add_model_dir(self, served_id: str, name: str) -> None:
        """``default``, an exported merged model, or any transformers model directory, without adapters."""
        base = self.base(name)
        tokenizer = self.tokenizers[base.key]
        length = context_length(base.model, tokenizer)
        self.registry.add(ServedModel(served_id, "base", base, tokenizer, name, context_length=length))

    def add_run(self, run_dir: Path, served_id: str | None = None) -> None:
        cfg = read_run_config(run_dir)
        if isinstance(cfg.objective, RewardObjective):
            if run_dir.name in self.registry.models or run_dir.name in self.registry.scorers:
                raise ConfigError(f"two sources are both named {run_dir.name!r}; rename one of them")
            self.registry.scorers[run_dir.name] = reward_scorer(run_dir)
            return
        if cfg.model.head == "classification":
            raise RunError(
                f"{run_dir} is a classification-head run, which the server does not serve yet (served "
                "runs share one causal-LM base); label files with "
                f"`tunesmith predict {run_dir} --data FILE`, or serve a model.head: lm run, whose "
                "/v1/classify scores the label words"
            )
        run = RunDir(run_dir)
        summary = _read_json(run.summary)
        report = _read_json(run.data_report)
        trust = cfg.model.trust_remote_code
        if run.adapter.is_dir():
            base = self.base(cfg.model.name, cfg.model.dtype, trust)
            adapter_name = _attach_adapter(base, run.adapter, run_dir.name)
            has_tokenizer = (run.adapter / "tokenizer_config.json").exists()
            tokenizer = (
                load_tokenizer(str(run.adapter), trust) if has_tokenizer else self.tokenizers[base.key]
            )
            kind = "adapter"
        elif run.model.is_dir():
            base = self.base(str(run.model), cfg.model.dtype, trust)
            adapter_name, tokenizer, kind = None, self.tokenizers[base.key], "full"
        else:
            raise RunError(f"{run_dir} has no adapter/ or model/: the run did not finish (try --resume)")
        task = summary.get("task") or (cfg.task if cfg.task != "auto" else "generation")
        served = ServedModel(
            id=served_id or run_dir.name,
            kind=kind,
            base=base,
            tokenizer=tokenizer,
            source=str(run_dir),
            adapter_name=adapter_name,
            task=task,
            label_names=report.get("label_names") or cfg.data.labels,
            system_prompt=cfg.data.system_prompt,
            label_prompt=cfg.data.label_prompt,
            context_length=context_length(base.model, tokenizer),
            rag_k=cfg.rag.k,
        )
        if cfg.rag.index and self.use_run_index:
            # deferred: bm25s loads only for runs that retrieve
            from tunesmith.rag.index import RetrievalIndex

            served.index = RetrievalIndex.load(cfg.rag.index)
        if task == "classification" and not served.label_names:
            raise RunError(f"{run_dir} is a classification run but data_report.json lists no label_names")
        self.registry.add(served)


def hot_load_run(registry: Registry, run_dir: Path, served_id: str) -> None:
    """Serve a finished run as ``served_id`` on a running server, sharing a base already in memory.

    Thread-safe: call it off the event loop; it waits for a batch running on that base (its lock).
    """
    with registry.loading:
        if served_id in registry.models:
            return  # another request loaded it while this one waited
        loader = _Loader(registry)
        for served in registry.models.values():
            loader.tokenizers.setdefault(served.base.key, served.tokenizer)
        loader.add_run(run_dir, served_id)


def hot_load_model_dir(registry: Registry, name: str, served_id: str) -> None:
    """Serve a model directory (a run's base, ``default``) as ``served_id`` on a running server, without
    adapters; shares the copy in memory when a run on it is already served. Thread-safe, as
    :func:`hot_load_run`."""
    with registry.loading:
        if served_id in registry.models:
            return
        loader = _Loader(registry)
        for served in registry.models.values():
            loader.tokenizers.setdefault(served.base.key, served.tokenizer)
        loader.add_model_dir(served_id, name)


def load_registry(sources: list[str], use_run_index: bool = True) -> Registry:
    """Load every source once; runs on the same base share it (one copy in memory, one adapter each).

    Args:
        sources: run directories (``config.yaml`` + ``adapter/`` or ``model/``), exported model directories
            (``config.json`` + safetensors), or ``default``.
        use_run_index: load the index each run's ``rag.index`` names (False: ``--no-index``).

    Raises:
        ConfigError: no sources, a missing path, or two sources with the same directory name.
        RunError: an unfinished run directory.
    """
    if not sources:
        raise ConfigError("give at least one model to serve: a run directory, a model directory or `default`")
    registry = Registry()
    loader = _Loader(registry, use_run_index)
    for source in sources:
        path = Path(source).expanduser()
        if source == DEFAULT_MODEL:
            loader.add_model_dir(DEFAULT_MODEL, DEFAULT_MODEL)
        elif RunDir(path).config.is_file():
            loader.add_run(path)
        elif (path / "config.json").is_file():
            loader.add_model_dir(path.resolve().name, str(path))
        else:
            raise ConfigError(
                f"{source} is not a run directory (config.yaml), a model directory (config.json) or `default`"
            )
    return registry
