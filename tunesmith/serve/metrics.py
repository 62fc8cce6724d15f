"""Server metrics in the Prometheus text format (``GET /metrics``), with no client library.

Counters and histograms are updated from the event loop (requests) and from the batching worker (tokens,
batch sizes), so every update takes one lock. Route labels are the fixed set of API routes (anything else
is ``other``) so a scanner hitting random paths cannot grow the label set without bound.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    """Cumulative-bucket histogram as Prometheus expects: ``_bucket{le=...}``, ``_sum``, ``_count``."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [
            f'{name}_bucket{{{labels}{sep}le="{_num(b)}"}} {c}'
            for b, c in zip(self.buckets, self.counts, strict=True)
        ]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.total:.6f}", f"{name}_count{suffix} {self.n}"]
        return out


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Everything ``/metrics`` reports; thread-safe."""

    def __init__(self, routes: Iterable[str]) -> None:
        self.routes = frozenset(routes)
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.prompt_tokens: dict[str, int] = defaultdict(int)
        self.generated_tokens: dict[str, int] = defaultdict(int)
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.in_flight = 0
        self.cancelled = 0
        self.responses = 0
        self.feedback = 0
        self.feedback_score_sum = 0.0
        self.queue_depth: Callable[[], int] = lambda: 0

    def route_label(self, path: str) -> str:
        return path if path in self.routes else "other"

    def count_request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(self.route_label(path), status)] += 1

    def observe_latency(self, path: str, seconds: float) -> None:
        """Time from request start to the end of the response (the whole stream, for streaming)."""
        with self._lock:
            self.latency.setdefault(self.route_label(path), Histogram(LATENCY_BUCKETS)).observe(seconds)

    def add_tokens(self, model: str, prompt: int, generated: int) -> None:
        with self._lock:
            self.prompt_tokens[model] += prompt
            self.generated_tokens[model] += generated

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batch_sizes.observe(size)

    def add_in_flight(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta

    def count_responses(self, n: int) -> None:
        """Answers finished (one per prompt): the denominator of the feedback rate."""
        with self._lock:
            self.responses += n

    def add_feedback(self, score: float) -> None:
        """One rating on the 0-1 scale (up = 1, down = 0, stars (n - 1) / 4)."""
        with self._lock:
            self.feedback += 1
            self.feedback_score_sum += score

    def _quality_lines(self) -> list[str]:
        rate = self.feedback / self.responses if self.responses else 0.0
        mean = self.feedback_score_sum / self.feedback if self.feedback else float("nan")
        lines = _block("tunesmith_responses_total", "counter", "Answers finished (one per prompt).")
        lines.append(f"tunesmith_responses_total {self.responses}")
        lines += _block("tunesmith_feedback_total", "counter", "Ratings received on /v1/feedback.")
        lines.append(f"tunesmith_feedback_total {self.feedback}")
        lines += _block("tunesmith_feedback_rate", "gauge", "Ratings per finished answer.")
        lines.append(f"tunesmith_feedback_rate {rate:.6f}")
        lines += _block("tunesmith_feedback_score_mean", "gauge", "Mean rating, 0-1 (up = 1, down = 0).")
        lines.append(f"tunesmith_feedback_score_mean {'NaN' if mean != mean else f'{mean:.6f}'}")
        return lines

    def add_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        with self._lock:
            lines = _block("tunesmith_requests_total", "counter", "HTTP requests by route and status.")
            lines += [
                f'tunesmith_requests_total{{route="{r}",status="{s}"}} {n}'
                for (r, s), n in sorted(self.requests.items())
            ]
            lines += _block("tunesmith_request_latency_seconds", "histogram", "Request latency by route.")
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines("tunesmith_request_latency_seconds", f'route="{route}"')
            for name, values, text in (
                ("tunesmith_prompt_tokens_total", self.prompt_tokens, "Prompt tokens processed by model."),
                ("tunesmith_generated_tokens_total", self.generated_tokens, "Tokens generated by model."),
            ):
                lines += _block(name, "counter", text)
                lines += [f'{name}{{model="{_escape(m)}"}} {n}' for m, n in sorted(values.items())]
            lines += _block(
                "tunesmith_batch_size", "histogram", "Rows in a decode batch right after requests joined it."
            )
            lines += self.batch_sizes.lines("tunesmith_batch_size")
            lines += _block("tunesmith_in_flight_requests", "gauge", "Requests holding a generation slot.")
            lines.append(f"tunesmith_in_flight_requests {self.in_flight}")
            lines += _block("tunesmith_queued_jobs", "gauge", "Jobs waiting for the model worker.")
            lines.append(f"tunesmith_queued_jobs {self.queue_depth()}")
            lines += _block("tunesmith_cancelled_total", "counter", "Generations stopped by a disconnect.")
            lines.append(f"tunesmith_cancelled_total {self.cancelled}")
            lines += self._quality_lines()
        return "\n".join(lines) + "\n"


def _block(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
