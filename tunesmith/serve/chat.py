"""Interactive chat with a run's model in the terminal (``tunesmith chat RUN_DIR``)."""

from __future__ import annotations

from pathlib import Path

from tunesmith.infer.generate import generate_texts
from tunesmith.methods import load_trained
from tunesmith.rag.retrieve import run_index
from tunesmith.runs import read_run_config


def chat_loop(
    run_dir: str | Path,
    max_new_tokens: int = 128,
    index: str | Path | None = None,
    k: int | None = None,
    use_run_index: bool = True,
) -> None:
    """Read a line, answer with the tuned model, keep the conversation; ``/reset`` forgets it (the system
    prompt stays); an empty line or Ctrl-D ends.

    With ``index`` (default: the run's ``rag.index`` unless ``use_run_index`` is False) each question is
    asked in the retrieval prompt over its top-``k`` (default ``rag.k``) chunks (the shape ``data raft``
    trains on) and the chunk ids are printed with the answer.
    """
    index, k = run_index(read_run_config(run_dir), index, k, use_run_index)
    loaded = None
    if index is not None:  # loaded before the model: a wrong path should fail in milliseconds
        from tunesmith.rag.index import RetrievalIndex  # deferred: bm25s loads only with an index

        loaded = RetrievalIndex.load(index)
    model, tokenizer, cfg = load_trained(run_dir)
    start: list[dict[str, str]] = []
    if cfg.data.system_prompt is not None:  # "" is a real (empty) system turn, as in training
        start.append({"role": "system", "content": cfg.data.system_prompt})
    messages = list(start)
    print(f"tunesmith chat with {run_dir} — /reset forgets the conversation, empty line or Ctrl-D quits")
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not line:
            return
        if line == "/reset":
            messages = list(start)
            print("(conversation forgotten)")
            continue
        retrieved: list[str] = []
        if loaded is not None:
            from tunesmith.rag.index import retrieve_prompt

            line, retrieved = retrieve_prompt(loaded, line, k)
        messages.append({"role": "user", "content": line})
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        reply = generate_texts(model, tokenizer, [ids], max_new_tokens=max_new_tokens, desc="thinking")[0]
        print(f"model> {reply}" + (f"\n  [retrieved: {', '.join(retrieved)}]" if loaded is not None else ""))
        messages.append({"role": "assistant", "content": reply})
