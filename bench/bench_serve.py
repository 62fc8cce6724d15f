"""Throughput and latency of ``tunesmith serve`` under concurrent clients, with and without batching,
against a serial ``model.generate`` baseline on the same model, in the same process.

    .venv/bin/python bench/bench_serve.py                                  # 8 clients x 4 requests, 32 tokens
    .venv/bin/python bench/bench_serve.py --clients 16 --requests 4 --max-tokens 64
    .venv/bin/python bench/bench_serve.py --engines torch,llama.cpp --llama-server  # the llamacpp extra

The real default model (``default``) is loaded once. Phases: (1) ``serial``: each prompt through
``model.generate`` one after another (greedy, left as the model would be used without a server); (2)
``server_batched``: N concurrent ``AsyncOpenAI`` clients, each sending its requests one after another, to a
server on 127.0.0.1 with continuous batching; (3) ``server_unbatched``: the same load with batching off
(``max_batch_size=1``); (4) per engine in ``--engines``, ``tunesmith serve default --engine E`` started as
its own process, ``<engine>_process_single`` (one client, requests one after another: single-stream decode)
and ``<engine>_process_batched``; (5) with ``--llama-server``, llama-cpp-python's own OpenAI server on the
same GGUF file (a separate process; it runs one request at a time), single and concurrent. Every request
is greedy with the same ``max_tokens``; a request may stop earlier at
the end-of-turn token, so tokens/s counts the tokens actually generated (from ``usage``).

Clients and server share this interpreter (the client is light: a few JSON messages per request; the model
runs in the server's worker thread, outside the GIL for the heavy parts). Peak RSS is sampled per phase
(the model is already loaded, so it is the model plus what the phase adds). Results go to
``bench/results/serve.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import resource
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from tunesmith.io import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"
TOPICS = (
    "opening hours",
    "returns",
    "gift cards",
    "delivery",
    "loyalty points",
    "store pickup",
    "sizes",
    "repairs",
)


class PeakRss:
    """Samples this process's RSS every 20 ms on a thread while the block runs; ``peak_mb`` after."""

    def __enter__(self) -> PeakRss:
        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.stop.wait(0.02)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


POLICY = (
    "You are the assistant of a neighbourhood store. Answer in two sentences at most, quote opening hours,"
    " prices and dates exactly as the policy states them, and say so when the policy does not cover it."
)


def system_prompt(words: int) -> str | None:
    """A shared system prompt of about ``words`` words (the store policy repeated); None for 0."""
    if words <= 0:
        return None
    text = (POLICY + " ") * (words // len(POLICY.split()) + 1)
    return " ".join(text.split()[:words])


def chat(text: str, system: str | None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": text}]


def questions(n: int) -> list[str]:
    return [f"Customer {i}: can you explain your policy on {TOPICS[i % len(TOPICS)]}?" for i in range(n)]


def summarize(latencies: list[float], tokens: int, wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    p99_index = min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    return {
        "requests": len(latencies),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 3),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "latency_p50_s": round(statistics.median(ordered), 3),
        "latency_p99_s": round(ordered[p99_index], 3),
    }


@torch.no_grad()
def serial_baseline(served: Any, texts: list[str], max_tokens: int, system: str | None) -> dict[str, Any]:
    """Each prompt through ``model.generate`` alone, one after another: no server, no batching."""
    model, tokenizer = served.base.model, served.tokenizer
    latencies, tokens = [], 0
    start = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        prompt = tokenizer.apply_chat_template(chat(text, system), add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = out[0, ids.shape[1] :].tolist()
        tokens += len(new) - (1 if new and new[-1] == tokenizer.eos_token_id else 0)  # as usage counts them
        latencies.append(time.perf_counter() - t0)
    return summarize(latencies, tokens, time.perf_counter() - start)


async def client_load(
    url: str, texts: list[str], clients: int, max_tokens: int, system: str | None = None
) -> tuple[list[float], int, float]:
    """``clients`` concurrent clients splitting ``texts``; each sends its share one request at a time."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    latencies: list[float] = []
    tokens = 0

    async def one_client(share: list[str]) -> None:
        nonlocal tokens
        for text in share:  # bounded: exactly len(share) requests
            t0 = time.perf_counter()
            resp = await client.chat.completions.create(
                model="default",
                messages=chat(text, system),
                max_tokens=max_tokens,
                temperature=0,
            )
            latencies.append(time.perf_counter() - t0)
            tokens += resp.usage.completion_tokens

    start = time.perf_counter()
    await asyncio.gather(*(one_client(texts[i::clients]) for i in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    return latencies, tokens, wall


def batch_sizes(metrics_text: str) -> dict[str, float]:
    total = float(re.search(r"^tunesmith_batch_size_sum (\S+)$", metrics_text, re.M).group(1))
    count = float(re.search(r"^tunesmith_batch_size_count (\S+)$", metrics_text, re.M).group(1))
    return {"batches": int(count), "mean_batch_size": round(total / count, 2) if count else 0.0}


def server_phase(
    registry: Any, texts: list[str], args: argparse.Namespace, batching: bool, prefix_cache: bool = True
) -> dict[str, Any]:
    from urllib.request import urlopen

    from tunesmith.serve.app import ServeSettings, create_app
    from tunesmith.serve.server import ServerThread

    settings = ServeSettings(
        max_concurrent=args.clients * 2,
        max_tokens_cap=max(args.max_tokens, 64),
        max_batch_size=args.max_batch if batching else 1,
        batch_wait_ms=args.wait_ms if batching else 0.0,
        prefix_cache_mb=ServeSettings.prefix_cache_mb if prefix_cache else 0.0,
    )
    for served in registry.models.values():
        served.prefixes = None  # each phase starts with an empty prefix cache
    system = system_prompt(args.system_words)
    with PeakRss() as rss, ServerThread(create_app(registry, settings)) as server:
        latencies, tokens, wall = asyncio.run(
            client_load(server.url, texts, args.clients, args.max_tokens, system)
        )
        with urlopen(server.url + "/metrics", timeout=30) as resp:  # loopback only
            metrics = resp.read().decode()
    return {**summarize(latencies, tokens, wall), **batch_sizes(metrics), "peak_rss_mb": rss.peak_mb}


def process_phases(name: str, cmd: list[str], texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """A server started as its own process (``cmd`` + ``--port P``), as users run it: one client, then all.

    The in-process phases above share this interpreter with the clients and with the serial baseline's
    ``model.generate``; measured here, after that baseline had run in the same process, llama.cpp decoded at
    half its speed (22 vs 44 tokens/s single stream), so the engines are compared as separate processes.
    """
    import socket
    import subprocess
    from urllib.request import urlopen

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(3000):  # a first llama.cpp start exports the GGUF: give it minutes
            try:
                urlopen(url + "/v1/models", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        system = system_prompt(args.system_words)
        asyncio.run(client_load(url, texts[:1], 1, 4, system))  # warm-up
        phases = {}
        for phase, clients, share in (("single", 1, texts[: args.clients]), ("batched", args.clients, texts)):
            latencies, tokens, wall = asyncio.run(client_load(url, share, clients, args.max_tokens, system))
            rss_mb = round(psutil.Process(server.pid).memory_info().rss / 2**20, 1)  # the server process
            phases[f"{name}_{phase}"] = {**summarize(latencies, tokens, wall), "peak_rss_mb": rss_mb}
        return phases
    finally:
        server.terminate()
        server.wait(30)


def engine_phases(registry: Any, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``tunesmith serve default --engine E`` per engine; llama-cpp-python's own server on the same GGUF."""
    import sys

    phases: dict[str, Any] = {}
    batch = ["--max-batch-size", str(args.max_batch), "--batch-wait-ms", str(args.wait_ms)]
    for engine in filter(None, args.engines.split(",")):
        cmd = [sys.executable, "-m", "tunesmith.cli", "serve", "default", "--engine", engine, *batch]
        phases |= process_phases(f"{engine}_process", [*cmd, "--gguf-type", args.gguf_type], texts, args)
    if args.llama_server:
        from tunesmith.export.gguf_export import cached_gguf

        gguf = cached_gguf("default", "default", args.gguf_type)
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "default"]
        cmd += ["--n_ctx", "4096", "--n_threads", str(torch.get_num_threads()), "--verbose", "0"]
        phases |= process_phases("llama_cpp_server", cmd, texts, args)
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--engines", default="", help="comma list of torch,llama.cpp: single + batched phases"
    )
    parser.add_argument("--gguf-type", default="f16", help="the GGUF encoding llama.cpp runs")
    parser.add_argument("--llama-server", action="store_true", help="also llama-cpp-python's own server")
    parser.add_argument(
        "--system-words", type=int, default=0, help="a shared system prompt of N words in every request"
    )
    args = parser.parse_args()
    os.environ.setdefault("TUNESMITH_HOME", str(Path(__file__).resolve().parents[1] / ".tunesmith"))
    from tunesmith.serve.models import load_registry

    registry = load_registry(["default"])
    served = registry.models["default"]
    texts = questions(args.clients * args.requests)
    system = system_prompt(args.system_words)
    serial_baseline(served, texts[:1], 4, system)  # warm-up: first-call allocations out of the timings
    with PeakRss() as rss:
        serial = {**serial_baseline(served, texts, args.max_tokens, system), "peak_rss_mb": rss.peak_mb}
    results = {
        "config": vars(args) | {"model": "default", "torch_threads": torch.get_num_threads()},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "serial": serial,
        "server_batched": server_phase(registry, texts, args, batching=True),
        "server_batched_no_prefix_cache": server_phase(
            registry, texts, args, batching=True, prefix_cache=False
        ),
        "server_unbatched": server_phase(registry, texts, args, batching=False),
        **engine_phases(registry, texts, args),
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    batched, unbatched = results["server_batched"], results["server_unbatched"]
    results["speedup_batched_vs_unbatched"] = round(batched["tokens_per_s"] / unbatched["tokens_per_s"], 2)
    results["speedup_batched_vs_serial"] = round(batched["tokens_per_s"] / serial["tokens_per_s"], 2)
    write_json_atomic(RESULTS, results)
    print(f"{'phase':18} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p99 s':>7} {'batch':>6} {'RSS MB':>8}")
    for name, r in results.items():
        if not isinstance(r, dict) or "tokens_per_s" not in r:
            continue
        print(
            f"{name:18} {r['requests_per_s']:7.2f} {r['tokens_per_s']:7.1f} {r['latency_p50_s']:7.2f} "
            f"{r['latency_p99_s']:7.2f} {r.get('mean_batch_size', 1.0):6.2f} {r['peak_rss_mb']:8.0f}"
        )
    print(f"batched vs unbatched: {results['speedup_batched_vs_unbatched']}x tokens/s; written to {RESULTS}")


if __name__ == "__main__":
    main()
