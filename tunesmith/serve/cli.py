"""``tunesmith serve SOURCE... [--host 127.0.0.1] [--port 8000] [--api-key-file F]``.

tunesmith serve runs/support-bot runs/triage default          # two adapters and their base, one copy
curl -s localhost:8000/v1/models
tunesmith serve runs/support-bot --host 0.0.0.0 --api-key-file ~/.tunesmith-keys   # reachable by others
tunesmith serve runs/support-bot --capture traffic/     # keep answers (redacted) + POST /v1/feedback
TUNESMITH_SERVE_PORT=9000 TUNESMITH_SERVE_SOURCES="runs/a runs/b" tunesmith serve   # settings from the env

Every flag can come from an environment variable ``TUNESMITH_SERVE_<FLAG>`` (``--max-tokens-cap`` ->
``TUNESMITH_SERVE_MAX_TOKENS_CAP``; switches take 1/true/yes or 0/false/no; SOURCES is space-separated); a
flag on the command line wins. That is how a container (Dockerfile) is configured.

Registered on the main parser by ``tunesmith.cli`` with :func:`add_parser`; imports nothing heavy until a
server starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from tunesmith.serve.models import ServedModel

ENGINES = ("torch", "llama.cpp", "vllm")


def add_parser(subparsers: Any) -> None:
    """Register the ``serve`` subcommand on ``parser.add_subparsers()``'s result."""
    p = subparsers.add_parser(
        "serve",
        help="serve runs over an OpenAI-compatible HTTP API",
        description="Serve runs over an OpenAI-compatible API (/v1/models, /v1/chat/completions, "
        "/v1/completions, /v1/classify, /health, /metrics). Runs that share a base share one copy of it.",
    )
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="run dir, model dir, or `default`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; non-loopback needs --api-key-file")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-file", help="file with one API key per line; clients send `Bearer KEY`")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="torch",
        help="llama.cpp: generate on llama.cpp in this server ('llamacpp' extra); vllm: hand over to vLLM",
    )
    p.add_argument(
        "--gguf-type",
        choices=("f16", "q8_0", "f32"),
        default="f16",
        help="--engine llama.cpp's weights (q8_0: ~1.2x the tokens/s, answers drift from the model's)",
    )
    p.add_argument("--max-concurrent", type=int, default=16, help="requests in progress before 429")
    p.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens a request may ask")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument(
        "--max-batch-size", type=int, default=8, help="rows decoding together (continuous batching)"
    )
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--no-batching", action="store_true", help="one request per forward")
    p.add_argument(
        "--prefix-cache-mb",
        type=float,
        default=128.0,
        help="per model, keys/values of shared prompt heads kept (torch engine; 0: off)",
    )
    p.add_argument(
        "--jobs",
        action="store_true",
        help="also serve the OpenAI fine-tuning API (/v1/files, /v1/fine_tuning/jobs; docs/jobs.md)",
    )
    p.add_argument("--jobs-dir", help="database, uploads and job runs (default: <tunesmith home>/jobs)")
    p.add_argument("--jobs-workers", type=int, default=1, help="fine-tuning jobs trained at once")
    p.add_argument(
        "--index",
        help="a `tunesmith rag index`: chat answers of every model retrieve from it (ids in `retrieved`); "
        "default: each run's own rag.index, if its config names one",
    )
    p.add_argument(
        "--rag-k", type=int, help="chunks retrieved per chat question (default: the run's rag.k, 4)"
    )
    p.add_argument(
        "--no-index", action="store_true", help="do not retrieve from the index a run's rag.index names"
    )
    p.add_argument(
        "--capture",
        metavar="DIR",
        help="append every request and answer (redacted by `data pii`) to rotating JSONL files in DIR and "
        "accept POST /v1/feedback; off by default (docs/production.md)",
    )
    p.add_argument("--capture-max-mb", type=float, default=1024.0, help="capture size cap; oldest go first")
    p.add_argument("--capture-rotate-mb", type=float, default=8.0, help="start a new capture file past this")
    p.set_defaults(func=run_serve)
    _env_defaults(p)


ENV_PREFIX = "TUNESMITH_SERVE_"
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _env_defaults(p: argparse.ArgumentParser) -> None:
    """Defaults from ``TUNESMITH_SERVE_<DEST>`` variables, converted as the flag would convert them.

    A bad value is reported when ``serve`` runs (as a ConfigError), not while the parser is built: a broken
    variable must not break ``tunesmith --help`` or other commands.
    """
    for action in list(p._actions):  # argparse has no public iterator over its arguments
        value = os.environ.get(ENV_PREFIX + action.dest.upper())
        if value is None or action.dest in ("help", "func"):
            continue
        name = ENV_PREFIX + action.dest.upper()
        try:
            if action.nargs == "*":
                action.default = value.split()
            elif isinstance(action, argparse._StoreTrueAction):
                if value.strip().lower() not in TRUE + FALSE:
                    raise ValueError(value)
                action.default = value.strip().lower() in TRUE
            else:
                action.default = action.type(value) if action.type else value
                if action.choices is not None and action.default not in action.choices:
                    raise ValueError(value)  # argparse checks choices on the command line only
        except ValueError:
            flag = "/".join(action.option_strings) or "SOURCE"
            p.set_defaults(env_error=f"{name}={value!r} is not a valid value for {flag}")


def _check_numbers(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0-65535, got {args.port}")
    for name in ("max_concurrent", "max_tokens_cap", "max_body_bytes", "max_batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.capture_max_mb <= 0 or args.capture_rotate_mb <= 0:
        raise ConfigError("--capture-max-mb and --capture-rotate-mb must be positive")
    if args.prefix_cache_mb < 0:
        raise ConfigError(f"--prefix-cache-mb must be >= 0, got {args.prefix_cache_mb}")
    if args.batch_wait_ms < 0:
        raise ConfigError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")


def run_serve(args: argparse.Namespace) -> int:
    """Check the bind policy and limits, load the sources, serve until Ctrl-C."""
    # deferred: `tunesmith --help` loads no command
    from tunesmith.serve.server import check_bind, read_api_keys

    if getattr(args, "env_error", None):
        raise ConfigError(args.env_error)
    if not args.sources:
        raise ConfigError(
            "serve needs at least one SOURCE (a run dir, a model dir or `default`), on the command line or "
            f"in {ENV_PREFIX}SOURCES"
        )
    keys = read_api_keys(args.api_key_file) if args.api_key_file else ()
    check_bind(args.host, keys)  # before loading anything: a refused bind should fail in milliseconds
    _check_numbers(args)
    if args.engine == "llama.cpp":
        from tunesmith.serve.llamacpp import import_llama_cpp  # deferred: an optional extra

        import_llama_cpp()  # before loading any model: a missing extra should fail in milliseconds
    if args.engine == "vllm":
        from tunesmith.serve.vllm import exec_vllm  # deferred: `tunesmith --help` loads no command

        exec_vllm(args.sources, args.host, args.port, keys)
    # Progress bars (weight loading, label scoring) would print on every request of a long-running server.
    os.environ.setdefault("TQDM_DISABLE", "1")
    from tunesmith.serve.app import ServeSettings, create_app  # deferred: `tunesmith --help` loads no command
    from tunesmith.serve.models import load_registry  # deferred: `--help` starts no server stack
    from tunesmith.serve.server import serve_forever

    if args.jobs and args.jobs_workers < 1:
        raise ConfigError(f"--jobs-workers must be at least 1, got {args.jobs_workers}")
    index = None
    if args.index:  # loaded before the models: a wrong path should fail in milliseconds
        from tunesmith.rag.index import RetrievalIndex  # deferred: bm25s loads only with --index

        index = RetrievalIndex.load(args.index)
    capture = None
    if args.capture:
        from tunesmith.serve.capture import Capture  # deferred: `tunesmith --help` loads no command

        capture = Capture(args.capture, int(args.capture_rotate_mb * 2**20), int(args.capture_max_mb * 2**20))
        print(f"tunesmith: capturing requests and answers (redacted) to {args.capture}; POST /v1/feedback on")
    registry = load_registry(args.sources, use_run_index=not args.no_index)
    if args.engine == "llama.cpp":
        from tunesmith.serve.llamacpp import attach_engines  # deferred: an optional extra

        models = list(registry.models.values())
        files = llama_cpp_files(models, args.gguf_type)
        attach_engines(files, models, 1 if args.no_batching else args.max_batch_size)
    settings = ServeSettings(
        api_keys=keys,
        max_body_bytes=args.max_body_bytes,
        max_tokens_cap=args.max_tokens_cap,
        max_concurrent=args.max_concurrent,
        max_batch_size=1 if args.no_batching else args.max_batch_size,
        batch_wait_ms=0.0 if args.no_batching else args.batch_wait_ms,
        prefix_cache_mb=args.prefix_cache_mb,
        index=index,
        rag_k=args.rag_k,
        jobs_workers=args.jobs_workers,
        capture=capture,
    )
    for served in registry.models.values():
        extra = " (retrieves from its rag.index)" if served.index is not None and index is None else ""
        extra += " on llama.cpp" if served.engine is not None else ""
        extra += " (a GGUF LoRA adapter on its base's model)" if served.lora is not None else ""
        print(f"tunesmith: serving {served.id!r} ({served.kind}, {served.task}) from {served.source}{extra}")
    print(f"tunesmith: {len(registry.bases)} model(s) in memory; API at http://{args.host}:{args.port}/v1")
    if args.engine == "torch" and importlib.util.find_spec("llama_cpp") is not None:
        print("tunesmith: llama-cpp-python is installed: --engine llama.cpp decodes faster on a CPU")
    jobs_root = None
    if args.jobs:
        from tunesmith.models.loading import tunesmith_home  # deferred: `--help` starts no server stack

        jobs_root = Path(args.jobs_dir) if args.jobs_dir else tunesmith_home() / "jobs"
        print(f"tunesmith: fine-tuning API on, state in {jobs_root}")
    serve_forever(create_app(registry, settings, jobs_root), args.host, args.port)
    return 0


def llama_cpp_files(models: list[ServedModel], gguf_type: str) -> dict[str, tuple[Path, Path | None]]:
    """``{model id: (GGUF, GGUF LoRA adapter or None)}`` for ``--engine llama.cpp``, exported once and cached.

    LoRA runs whose base serves another id too (the base itself, or other runs on it) apply a GGUF adapter
    on the base's GGUF: one model and one KV cache for them all. A LoRA run alone on its base is merged
    (no adapter cost per step), as is one whose adapter GGUF cannot express (DoRA, ...). Classification
    ids stay on torch (label scoring).
    """
    from tunesmith.export.gguf_export import cached_gguf  # deferred: gguf loads for this engine only
    from tunesmith.export.gguf_lora import cached_gguf_lora

    generating = [m for m in models if m.task != "classification"]
    sharing = Counter(m.base.key for m in generating)

    def base_gguf(served: ServedModel) -> Path:  # named by the base's folder: every id on it finds one file
        return cached_gguf(Path(served.base.key).name, served.base.key, gguf_type)

    files: dict[str, tuple[Path, Path | None]] = {}
    for served in generating:
        if served.kind == "base":
            files[served.id] = (base_gguf(served), None)
        elif served.kind == "adapter" and sharing[served.base.key] > 1:
            try:
                adapter = cached_gguf_lora(served.id, Path(served.source), Path(served.base.key))
                files[served.id] = (base_gguf(served), adapter)
            except ModelError as err:
                print(f"tunesmith: {served.id!r} runs merged on llama.cpp: {err}")
        if served.id not in files:
            files[served.id] = (cached_gguf(served.id, served.source, gguf_type), None)
    return files
