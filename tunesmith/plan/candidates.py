"""Candidate models for ``tunesmith plan``, built from their configuration alone: no weights, no download.

A candidate is ``default`` (the embedded SmolLM2-135M-Instruct), a local Hugging Face directory (its
``config.json``), or a hub id from ``known_models.json``: the config fields of a few public models, shipped
so a machine without network can still plan for them. The model itself is instantiated on torch's ``meta``
device: every parameter has its real shape and dtype and no storage, so counting parameters and running the
memory planner over a 3B model costs milliseconds and no memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.models.loading import DEFAULT_MODEL, DEFAULT_MODEL_ID, resolve_model_path


@dataclass
class Candidate:
    """One model to plan for."""

    name: str  # as the user wrote it (``default``, a directory, a hub id)
    config: Any  # transformers.PretrainedConfig
    source: str  # default | local | known

    @property
    def label(self) -> str:
        return DEFAULT_MODEL_ID.split("/")[-1] if self.name == DEFAULT_MODEL else self.name


def known_models() -> dict[str, dict[str, Any]]:
    """The shipped table: hub id -> config.json fields (model_type, sizes, vocabulary, tied embeddings)."""
    text = resources.files("tunesmith.plan").joinpath("known_models.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _known(name: str) -> tuple[str, dict[str, Any]] | None:
    """A known id by its full name or its part after the ``/`` (``Qwen2.5-1.5B-Instruct``), any case."""
    for hub_id, fields in known_models().items():
        if name.lower() in (hub_id.lower(), hub_id.split("/")[-1].lower()):
            return hub_id, fields
    return None


def resolve_candidate(name: str) -> Candidate:
    """``default``, a local model directory or a known hub id -> its Candidate; anything else is an error
    that lists what is known."""
    from transformers import AutoConfig  # deferred: `tunesmith --help` loads no model stack

    if name == DEFAULT_MODEL or Path(name).expanduser().is_dir():
        path = Path(resolve_model_path(name))
        if not (path / "config.json").exists():
            raise ModelError(f"{path} has no config.json; a model directory saved by save_pretrained has one")
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        return Candidate(name, config, "default" if name == DEFAULT_MODEL else "local")
    found = _known(name)
    if found is None:
        raise ModelError(
            f"{name!r} is neither a local model directory nor a known config (known: "
            f"{', '.join(known_models())}); download it and pass its directory"
        )
    hub_id, fields = found
    fields = dict(fields)
    return Candidate(hub_id, AutoConfig.for_model(fields.pop("model_type"), **fields), "known")


def meta_model(candidate: Candidate, num_labels: int | None = None) -> Any:
    """The candidate on the meta device: a causal LM, or with ``num_labels`` a sequence classifier."""
    import torch  # deferred: `tunesmith --help` loads no model stack
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # deferred: as above

    config = candidate.config
    with torch.device("meta"):
        if num_labels is None:
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        labels = {i: f"LABEL_{i}" for i in range(num_labels)}
        config = type(config).from_dict({**config.to_dict(), "id2label": labels, "num_labels": num_labels})
        return AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)


def parameter_count(candidate: Candidate) -> int:
    """Parameters of the causal LM (tied embeddings counted once)."""
    return sum(p.numel() for p in meta_model(candidate).parameters())
