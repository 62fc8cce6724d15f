"""Sequence-classification heads (``model.head: classification``): the model side.

The LLM is loaded as transformers' ``AutoModelForSequenceClassification`` (Llama:
``LlamaForSequenceClassification``): the decoder's hidden state at the last non-pad token goes through
``score``, a new linear layer (hidden -> one logit per label, no bias) initialised at random from the run
seed; the vocabulary head is not loaded.
It trains with method ``full``, ``freeze`` (``score`` is the head: ``train_last_n_blocks: 0`` = head only),
``lora`` / ``qlora`` (PEFT task ``SEQ_CLS``, which trains ``score`` in full and saves it via
``modules_to_save``; qlora on a 4-bit body, ``score`` kept in full precision) or ``adapter`` (bottleneck
adapters + ``score``, both saved in ``bottleneck.safetensors``).
The run directory holds ``model/`` or ``adapter/``, loadable with no tunesmith installed::

    model = AutoModelForSequenceClassification.from_pretrained("runs/x/model")
    base = AutoModelForSequenceClassification.from_pretrained(BASE_DIR, num_labels=4, pad_token_id=2)
    model = PeftModel.from_pretrained(base, "runs/x/adapter")
    logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits

Inputs are the texts alone (:func:`tunesmith.data.render.head_input_ids`), right-padded with the
tokenizer's pad id, which is also the config's ``pad_token_id`` (the model pools the rightmost non-pad token).
The training/evaluation flow is the ``head`` run kind: :mod:`tunesmith.pipelines.head`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from tunesmith.errors import ConfigError
from tunesmith.methods.registry import prepare_model
from tunesmith.models.loading import hub_error, load_tokenizer, resolve_model_path
from tunesmith.runs import RunDir, load_options, load_trained

HEAD_METHODS = ("full", "freeze", "lora", "qlora", "adapter")
"""Methods that train a classification head; the others wrap or quantize the LM in ways not wired here."""


def check_supported(cfg: Any) -> None:
    """Fail before any work when ``model.head: classification`` meets a setting it cannot honour."""
    if cfg.method.name not in HEAD_METHODS:
        raise ConfigError(
            f"model.head: classification trains with method {', '.join(HEAD_METHODS)}; got method "
            f"{cfg.method.name!r}. Use one of those, or model.head: lm"
        )
    if cfg.method.name == "freeze" and not cfg.method.train_head:
        raise ConfigError(
            "model.head: classification with method.train_head: false would leave the new (random) "
            "score head untrained; set method.train_head: true"
        )
    for key, value in (
        ("data.tasks", getattr(cfg.data, "tasks", None)),
        ("stages", getattr(cfg, "stages", None)),
    ):
        if value:
            raise ConfigError(f"model.head: classification does not support {key} yet; use model.head: lm")


def load_sequence_classifier(
    name: str,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    *,
    label_names: list[str],
    pad_id: int,
    **options: Any,
) -> Any:
    """An ``AutoModelForSequenceClassification`` from a causal-LM checkpoint (``score`` new) or a saved head.

    ``num_labels``, ``id2label``/``label2id`` (so stock pipelines print label names) and ``pad_token_id``
    (Llama configs have none; without it the model cannot find the last real token of padded rows) are set
    on the config, and so saved with ``model/``.
    """
    source = resolve_model_path(name)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={label: i for i, label in enumerate(label_names)},
            pad_token_id=pad_id,
            dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **options,
        )
    except OSError as err:
        raise hub_error(name, err) from None


def _decoder(model: Any) -> Any:
    """The transformer body (``model.model`` on Llama) of a causal LM or a sequence classifier."""
    return getattr(model, model.base_model_prefix)


def start_model(cfg: Any, label_names: list[str], tokenizer: Any) -> Any:
    """The model training starts from: ``model.name`` with a new head, or with ``init_from`` an earlier run.

    An earlier head run continues as it is (same labels required); an earlier LM run (its adapter merged)
    lends its transformer body and the head starts new. A new head starts random (run seed) or, with
    ``model.head_init: label_words``, from the vocabulary rows of the body it sits on.
    """
    model = load_sequence_classifier(
        cfg.model.name,
        cfg.model.dtype,
        cfg.model.trust_remote_code,
        label_names=label_names,
        pad_id=tokenizer.pad_token_id,
        **load_options(cfg.method),  # qlora: the body quantized to 4 bits while loading
    )
    if cfg.init_from is not None:
        earlier, _, earlier_cfg = load_trained(cfg.init_from, merge=True)
        if earlier_cfg.model.head == "classification":
            earlier_labels = [earlier.config.id2label[i] for i in range(earlier.config.num_labels)]
            if earlier_labels != label_names:
                raise ConfigError(
                    f"init_from: {cfg.init_from} was trained on labels {earlier_labels}, this run has "
                    f"{label_names}; a head continues only on the same labels"
                )
            return earlier.train()  # a trained head keeps its weights: head_init is for new heads
        _decoder(model).load_state_dict(_decoder(earlier).state_dict())
    if cfg.model.head_init == "label_words":
        init_head_from_label_words(model, tokenizer, label_names)
    return model


@torch.no_grad()
def init_head_from_label_words(model: Any, tokenizer: Any, label_names: list[str]) -> None:
    """``model.head_init: label_words``: ``score`` row i = the vocabulary-head row of label i's first token.

    The decoder's last hidden state (after the final norm) is what both heads read, so the new head starts
    out computing the zero-shot verbaliser's logits over the label words instead of noise. The vocabulary
    head is not loaded with a sequence classifier; with tied embeddings it is the input embedding matrix.
    """
    if not getattr(model.config, "tie_word_embeddings", False):
        raise ConfigError(
            "model.head_init: label_words needs a model with tied input/output embeddings (the vocabulary "
            "head is not loaded with a sequence classifier); use model.head_init: random"
        )
    rows = [tokenizer(" " + name, add_special_tokens=False)["input_ids"][0] for name in label_names]
    if len(set(rows)) < len(rows):
        raise ConfigError(
            f"model.head_init: label_words: labels {label_names} share a first token; rename them or use "
            "model.head_init: random"
        )
    score = model.score.weight
    score.copy_(model.get_input_embeddings().weight[rows].to(score.dtype))


def prepare_head(model: Any, method_cfg: Any) -> Any:
    """The method applied to a sequence classifier: :func:`~tunesmith.methods.registry.prepare_model` with
    ``head="classification"`` (lora/qlora: PEFT ``SEQ_CLS``; adapter: ``score`` trains beside the
    bottlenecks; full/freeze as usual, freeze finding ``score`` through ``output_head``)."""
    return prepare_model(model, method_cfg, "classification")


def label_names_of(run_dir: str | Path) -> list[str]:
    """The run's label names in id order (from its data_report.json)."""
    return RunDir(run_dir).require_label_names()


def head_loader(run_dir: str | Path) -> Callable[..., Any]:
    """A drop-in for ``load_causal_lm`` that loads this head run's model (``runs.load_trained`` uses it)."""
    run = RunDir(run_dir)
    pad_id = load_tokenizer(str(run.saved() or run.adapter)).pad_token_id
    return functools.partial(load_sequence_classifier, label_names=run.require_label_names(), pad_id=pad_id)
