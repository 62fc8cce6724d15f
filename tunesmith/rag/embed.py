"""Dense retrieval without a separate embedding model: a causal LM's own hidden state, prompted to sum a
passage up in one word (PromptEOL, Jiang et al. 2023), as the passage's vector.

No sentence-embedding model ships inside a package that installs offline here, so the vectors come from the
model tunesmith already has (the default model unless ``--embed-model`` names another). Measured with the
default model (docs/raft.md; ``python -m bench.rag_bench retrieval``), the answer's chunk in the top 3:
docs corpus (605 chunks, 50 questions) BM25 68 %, this 42 %, hybrid 58 % (mean-pooled last-layer states,
tried first: 24 %); store corpus (120 pages, 240 questions) BM25 100 %, this 73 %, hybrid 91 %. So BM25 stays
the default; ``embedding`` / ``hybrid`` are for corpora where words differ between questions and passages
(paraphrase, other languages) and for larger embedding models (``--embed-model``). Cost: one forward pass
per chunk at indexing (0.66 s per 128-token chunk on one loaded core of a 2-core Xeon) and per query, and
the model in memory (~540 MB for the default).
"""

from __future__ import annotations

from typing import Any

import torch

PROMPT = 'This passage: "{text}" means in one word:"'
"""Ends where the model is about to name the passage's gist: that position's state summarises it."""

LAYER = -4
"""Hidden state read (a negative index counts from the last layer): -4 retrieved best of the layers tried."""


class Embedder:
    """Unit vectors for texts: the state at the prompt's last token, ``layer`` of ``model``."""

    def __init__(
        self, model: str = "default", layer: int = LAYER, max_tokens: int = 256, batch_size: int = 16
    ) -> None:
        self.model_name, self.layer, self.max_tokens, self.batch_size = model, layer, max_tokens, batch_size
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        from tunesmith.models.loading import load_causal_lm, load_tokenizer

        self._tokenizer = load_tokenizer(self.model_name)
        self._tokenizer.padding_side = "left"  # every row's last token sits at position -1
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = load_causal_lm(self.model_name, dtype="float32").eval()

    @torch.no_grad()
    def encode(self, texts: list[str], progress: bool = False) -> torch.Tensor:
        """``[len(texts), hidden]`` float32 rows of norm 1. The passage is cut to ``max_tokens`` tokens
        before it goes into the prompt, so the prompt's closing words are never truncated away."""
        if self._model is None:
            self._load()
        from tqdm import tqdm

        tok, rows = self._tokenizer, []
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="embed", unit="batch", disable=not progress):
            batch = [self._clip(t) for t in texts[start : start + self.batch_size]]
            enc = tok([PROMPT.format(text=t) for t in batch], return_tensors="pt", padding=True)
            out = self._model.model(**enc, output_hidden_states=True)
            states = out.hidden_states[self._layer_index(len(out.hidden_states))]
            rows.append(torch.nn.functional.normalize(states[:, -1].float(), dim=-1))
        return torch.cat(rows) if rows else torch.zeros(0, self._model.config.hidden_size)

    def _layer_index(self, n_states: int) -> int:
        """``layer`` within the model's depth: a shallower model than ``layer`` asks for gives its first
        block's output (never the token embeddings, which see no context)."""
        if self.layer < 0:
            return max(self.layer, -(n_states - 1))
        return min(max(self.layer, 1), n_states - 1)

    def _clip(self, text: str) -> str:
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.max_tokens else self._tokenizer.decode(ids[: self.max_tokens])


def fuse_rankings(rankings: list[list[int]], k: int = 60) -> list[int]:
    """Reciprocal rank fusion: items ordered by the sum of ``1 / (k + rank)`` over the rankings that hold
    them (rank from 1; k = 60 as in Cormack et al. 2009, which damps the weight of any one top rank). Ties
    keep the order of first appearance, so the result is deterministic."""
    score: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            score[item] = score.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(score, key=lambda item: -score[item])
