"""``tunesmith serve ... --engine llama.cpp``: generation runs on llama.cpp, behind the same server.

The routes, API keys, limits, model ids, chat templates, tokenizer and sampler stay tunesmith's: prompts are
rendered and tokenized as with the torch engine, each row draws its tokens with its own temperature, top-p and
seed (:class:`~tunesmith.serve.work.Row`) from logits llama.cpp computes. What changes is the forward: each
served model is exported once to a GGUF file (cached under ``<tunesmith home>/cache/gguf``; a LoRA run is
merged first, as ``tunesmith export --format gguf`` does) and decoded by llama.cpp (``llama-cpp-python``'s C
API; ``pip install 'tunesmith[llamacpp]'`` builds it with this machine's compiler).

Continuous batching carries over: every row has its own llama.cpp sequence (a *slot*); newcomers are
prefilled together and join at a token boundary, rows leave as they end, and each step decodes one token
for every row in one ``llama_decode``. Prefix caching: a slot keeps its tokens' keys and values after its row
ends; a new prompt starts from the longest prefix it shares with any slot (a shared system prompt or
few-shot header is computed once) and only the rest is prefilled. With ``kv_unified`` the slots share one
cache, so copying a prefix to another slot only tags the cells, it copies nothing.

LoRA: model ids that share a base (LoRA runs on it, and the base itself) share one engine: the base's GGUF
and one GGUF adapter per run (:mod:`tunesmith.export.gguf_lora`), which llama.cpp applies per batch (the
server decodes one model id's rows at a time, so the context's adapter is set when the id changes). One copy
of the weights and one KV cache instead of one per id; a slot's cached prefix is reused by rows of the same
adapter only. A lone LoRA run is merged instead: applying an adapter costs ~5 ms a step (default model, r 32
all-linear: 20.5 -> 24.6 ms single stream, 47 -> 53 ms for 8 rows).

Left out: classification (``/v1/classify`` scores label words with the torch model, which stays loaded),
models hot-loaded after start (the jobs API's fine-tuned models): they generate with torch.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from tunesmith.errors import ConfigError, ModelError
from tunesmith.serve.decode import eos_ids
from tunesmith.serve.models import ServedModel
from tunesmith.serve.prefix import shared_length
from tunesmith.serve.work import Finished, Job, Row, fail_rows

PREFILL_CHUNK = 512
"""Tokens per ``llama_decode`` call while prefilling (llama.cpp's n_batch)."""
FLASH_ATTENTION_ON = 1
"""llama.cpp's ``LLAMA_FLASH_ATTN_TYPE_ENABLED`` (-1 auto, 0 off)."""
MAX_CACHE_CELLS = 16384
"""KV cells across all slots: slots x the model's context, capped so an 8k-context model with 8 slots does
not reserve 64k cells (23 KB a cell for the default model in f16: 16k cells = 377 MB, 64k = 1.5 GB). Slots
share the cells (any one row may use its whole context); a full cache evicts idle slots, then fails a row."""


def import_llama_cpp() -> ModuleType:
    """``llama_cpp`` with its C library's log lines off (they would print on every model load)."""
    try:
        import llama_cpp  # deferred: an optional extra, built from source on install
    except ImportError:
        raise ConfigError(
            "--engine llama.cpp needs llama-cpp-python, which is not installed: "
            "`pip install 'tunesmith[llamacpp]'` (pip builds llama.cpp from source with this machine's "
            "compiler; cmake and a C++ compiler needed; ~10 min on 2 cores), or serve with --engine torch"
        ) from None
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:  # kept referenced: llama.cpp calls it for as long as the process lives
        _LOG_CALLBACK = llama_cpp.llama_log_callback(_log_errors_only)
        llama_cpp.llama_log_set(_LOG_CALLBACK, None)
    return llama_cpp


_LOG_CALLBACK: Any = None
_GGML_LOG_ERROR = 4
"""ggml's enum: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (llama-cpp-python's own logger comments
an older numbering, in which 3 was ERROR: that passes the warnings printed on every context creation)."""


def _log_errors_only(level: int, text: bytes, user_data: Any) -> None:
    if level == _GGML_LOG_ERROR:
        logging.getLogger("tunesmith.llama_cpp").error(text.decode("utf-8", "replace").rstrip())


class LlamaCppEngine:
    """One GGUF model in llama.cpp with ``slots`` sequences in one context; every forward of one model id.

    Args:
        path: the GGUF file.
        slots: sequences decoding together at most (the server's ``--max-batch-size``).
        context_length: the longest prompt + completion one row may reach.
        threads: CPU threads for llama.cpp (default: torch's intra-op thread count).
    """

    def __init__(self, path: Path, slots: int, context_length: int, threads: int | None = None) -> None:
        self.ll = ll = import_llama_cpp()
        ll.llama_backend_init()
        model_params = ll.llama_model_default_params()
        # No repacked/AMX weight buffers: on an AMX Xeon they crash q8_0 files in llama.cpp 0.3.36's ggml
        # (a segfault in the first decode; the issue saw it in prompt processing too) and made f16 decode no
        # faster (8 rows: 56.7 ms a step with them, 47.1 without). Plain CPU buffers run every type.
        model_params.use_extra_bufts = False
        self.model = ll.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise ModelError(f"llama.cpp could not load {path} (is it a GGUF file this llama.cpp knows?)")
        params = ll.llama_context_default_params()
        params.n_ctx = min(slots * context_length, MAX_CACHE_CELLS)
        params.n_batch = params.n_ubatch = PREFILL_CHUNK
        params.n_seq_max = slots
        # Flash attention: "auto" leaves it off on a CPU; on, the 8-client server ran 1.07x the tokens/s
        # (q8_0, AMX Xeon: 171 -> 184 tok/s), the keys and values staying f16 as before.
        params.flash_attn_type = FLASH_ATTENTION_ON
        params.kv_unified = True  # one pool of cells: a prefix copied to another slot is shared, not copied
        params.n_threads = params.n_threads_batch = threads or torch.get_num_threads()
        self.ctx = ll.llama_init_from_model(self.model, params)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise ModelError(f"llama.cpp could not create a context for {path} ({params.n_ctx} cells)")
        self.memory = ll.llama_get_memory(self.ctx)
        self.chunk = ll.llama_n_batch(self.ctx)  # llama.cpp lowers n_batch to n_ctx when the cache is smaller
        self.vocab_size = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.batch = ll.llama_batch_init(PREFILL_CHUNK, 0, 1)
        self.cached: list[list[int]] = [[] for _ in range(slots)]
        """Per slot: the tokens whose keys and values are in the cache, in order (kept after its row ends)."""
        self.owner: list[Any] = [None] * slots
        """Per slot: the adapter its cached keys and values were computed with (None: the base)."""
        self.active: Any = None
        """The adapter the context applies now."""
        self.busy = [False] * slots
        self.last_used = [0] * slots
        self.clock = 0
        self.reused_tokens = 0
        """Prompt tokens not prefilled because a slot already held them (prefix caching)."""

    def load_adapter(self, path: Path) -> Any:
        """A GGUF LoRA adapter for this engine's model (pass it to :meth:`prefill` / :meth:`step`)."""
        adapter = self.ll.llama_adapter_lora_init(self.model, str(path).encode())
        if not adapter:
            raise ModelError(f"llama.cpp could not load the LoRA adapter {path} for this model")
        return adapter  # freed with the model

    def _use(self, adapter: Any) -> None:
        if adapter == self.active:
            return
        handles = (self.ll.llama_adapter_lora_p_ctypes * 1)(adapter) if adapter is not None else None
        scales = (ctypes.c_float * 1)(1.0) if adapter is not None else None
        if self.ll.llama_set_adapters_lora(self.ctx, handles, 0 if adapter is None else 1, scales) != 0:
            raise RuntimeError("llama.cpp could not set the LoRA adapter")
        self.active = adapter

    def close(self) -> None:
        if self.ctx:
            self.ll.llama_batch_free(self.batch)
            self.ll.llama_free(self.ctx)
            self.ll.llama_model_free(self.model)
            self.ctx = self.model = None

    def _seq_rm(self, slot: int, start: int) -> None:
        self.ll.llama_memory_seq_rm(self.memory, slot, start, -1)
        del self.cached[slot][start:]

    def _claim(self, prompt: list[int], adapter: Any) -> tuple[int, int]:
        """A free slot for ``prompt`` holding its longest cached prefix; returns (slot, tokens to skip)."""
        free = [s for s, busy in enumerate(self.busy) if not busy]
        if not free:
            raise RuntimeError("no free llama.cpp slot: more rows than --max-batch-size")

        def shared(slot: int) -> int:  # at least the last prompt token is computed: its logits draw
            return shared_length(self.cached[slot], prompt[:-1]) if self.owner[slot] == adapter else 0

        best = max(range(len(self.cached)), key=shared)
        reuse = shared(best)
        if best in free:
            slot = best
        else:  # the prefix is in a running row's slot: share its cells with the least recently used free one
            slot = min(free, key=lambda s: self.last_used[s])
            self._seq_rm(slot, 0)
            if reuse:
                self.ll.llama_memory_seq_cp(self.memory, best, slot, 0, reuse)
                self.cached[slot] = prompt[:reuse]
        self._seq_rm(slot, reuse)
        self.owner[slot] = adapter
        self.busy[slot] = True
        self.clock += 1
        self.last_used[slot] = self.clock
        self.reused_tokens += reuse
        return slot, reuse

    def release(self, slot: int) -> None:
        """The slot's row ended: its cache stays for prefix reuse until the slot is claimed again."""
        self.busy[slot] = False

    def _evict_idle(self) -> bool:
        idle = [s for s, busy in enumerate(self.busy) if not busy and self.cached[s]]
        for slot in idle:
            self._seq_rm(slot, 0)
        return bool(idle)

    def _run(self, pieces: list[tuple[int, list[int]]], adapter: Any) -> list[torch.Tensor]:
        """Append each ``(slot, tokens)`` to its slot's sequence; the logits after each piece's last token.

        Packed into ``llama_decode`` calls of at most the context's batch size (:data:`PREFILL_CHUNK`).
        """
        self._use(adapter)
        flat = [
            (p, slot, token, i == len(tokens) - 1)
            for p, (slot, tokens) in enumerate(pieces)
            for i, token in enumerate(tokens)
        ]
        logits: list[torch.Tensor | None] = [None] * len(pieces)
        for start in range(0, len(flat), self.chunk):
            chunk = flat[start : start + self.chunk]
            batch = self.batch
            batch.n_tokens = len(chunk)
            for j, (_, slot, token, wants) in enumerate(chunk):
                batch.token[j], batch.pos[j] = token, len(self.cached[slot])
                batch.n_seq_id[j], batch.seq_id[j][0], batch.logits[j] = 1, slot, wants
                self.cached[slot].append(token)
            self._decode(chunk)
            for j, (p, _, _, wants) in enumerate(chunk):
                if wants:
                    row = self.ll.llama_get_logits_ith(self.ctx, j)
                    logits[p] = torch.from_numpy(np.ctypeslib.as_array(row, shape=(self.vocab_size,)).copy())
        return [x for x in logits if x is not None]

    def _decode(self, chunk: list[tuple[int, int, int, bool]]) -> None:
        code = self.ll.llama_decode(self.ctx, self.batch)
        if code == 1 and self._evict_idle():  # 1: no room in the KV cache; idle slots' prefixes make room
            code = self.ll.llama_decode(self.ctx, self.batch)
        if code != 0:
            for _, slot, _, _ in chunk:  # the tokens did not enter the cache: forget them
                self.cached[slot].pop()
            raise RuntimeError(
                f"llama_decode returned {code} (1: the KV cache is full; lower --max-batch-size)"
            )

    def prefill(
        self, prompts: list[list[int]], running: list[tuple[int, int]] = (), adapter: Any = None
    ) -> tuple[list[int], list[torch.Tensor]]:
        """Claim a slot per prompt and compute what its cached prefix lacks; (slots, next-token logits).

        ``running``: ``(slot, token)`` of rows already decoding, stepped in the same forward (one pass over
        the weights instead of two); their logits come first in the list, the prompts' after. ``adapter``:
        from :meth:`load_adapter`, or None for the base model.
        """
        claims = [self._claim(prompt, adapter) for prompt in prompts]
        slots = [slot for slot, _ in claims]
        pieces = [(slot, [token]) for slot, token in running]
        pieces += [(slot, p[skip:]) for (slot, skip), p in zip(claims, prompts, strict=True)]
        try:
            logits = self._run(pieces, adapter)
        except Exception:
            for slot in slots:
                self._seq_rm(slot, 0)
                self.release(slot)
            raise
        return slots, logits

    def step(self, slots: list[int], tokens: list[int], adapter: Any = None) -> list[torch.Tensor]:
        """One token for each slot, in one forward; the next-token logits of each."""
        return self._run([(slot, [token]) for slot, token in zip(slots, tokens, strict=True)], adapter)


class LlamaCppBatch:
    """:class:`~tunesmith.serve.decode.DecodeBatch`'s interface over a :class:`LlamaCppEngine`: the rows of
    one model id, one token per :meth:`step`, joining and leaving at token boundaries."""

    def __init__(self, served: ServedModel, on_done: Callable[[str, Finished], None]) -> None:
        self.served, self.on_done = served, on_done
        self.engine: LlamaCppEngine = served.engine
        self.rows: list[Row] = []
        self.slots: list[int] = []
        self.last: list[int] = []

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def key(self) -> tuple[str, bool]:
        return self.served.id, False

    def admit(self, model: Any, jobs: list[Job]) -> int:
        """Prefill ``jobs`` (each from its longest cached prefix) in the same forward as the running rows'
        next token; everyone draws, the newcomers join the batch."""
        ends = eos_ids(model, self.served.tokenizer)
        rows = [Row(job, ends, self.on_done) for job in jobs]
        running = list(zip(self.slots, self.last, strict=True))
        slots, logits = self.engine.prefill([job.prompt_ids for job in jobs], running, self.served.lora)
        self.rows, self.slots = self.rows + rows, self.slots + slots
        joined = len(self.rows)
        self._draw(logits)
        return joined

    def step(self, model: Any) -> None:
        """One decode forward for every row: each row draws, streams and maybe ends with its next token."""
        if self.rows:
            self._draw(self.engine.step(self.slots, self.last, self.served.lora))

    def _draw(self, logits: list[torch.Tensor]) -> None:
        self.last = [row.pick(x) for row, x in zip(self.rows, logits, strict=True)]
        for row, token in zip(self.rows, self.last, strict=True):
            row.push(token)
        self._drop_ended()

    def fail(self, message: str) -> None:
        fail_rows(self.rows, message)
        for slot in self.slots:
            self.engine.release(slot)
        self.rows, self.slots, self.last = [], [], []

    def _drop_ended(self) -> None:
        for row, slot in zip(self.rows, self.slots, strict=True):
            if row.done is not None:
                self.engine.release(slot)
        keep = [i for i, row in enumerate(self.rows) if row.done is None]
        self.rows = [self.rows[i] for i in keep]
        self.slots = [self.slots[i] for i in keep]
        self.last = [self.last[i] for i in keep]


def attach_engines(ggufs: dict[str, tuple[Path, Path | None]], models: list[ServedModel], slots: int) -> None:
    """Give each model id in ``ggufs`` (``id: (model GGUF, GGUF LoRA adapter or None)``) its llama.cpp engine;
    ids on the same model GGUF share one engine. The others keep torch."""
    engines: dict[Path, LlamaCppEngine] = {}
    for path in {model for model, _ in ggufs.values()}:
        length = max(m.context_length for m in models if m.id in ggufs and ggufs[m.id][0] == path)
        engines[path] = LlamaCppEngine(path, slots, length)
    for served in models:
        if served.id in ggufs:
            path, adapter = ggufs[served.id]
            served.engine = engines[path]
            served.lora = engines[path].load_adapter(adapter) if adapter is not None else None
