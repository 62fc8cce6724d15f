"""``tunesmith jobs``: the fine-tuning API from the terminal, for people without the ``openai`` SDK.

    tunesmith jobs create --model default --training-file train.jsonl --suffix support   # uploads the file
    tunesmith jobs list --metadata team=search
    tunesmith jobs show ftjob-...        # the job object, as JSON
    tunesmith jobs events ftjob-...      # oldest first: level, message, and the metrics of each step
    tunesmith jobs cancel ftjob-...      # also: pause, resume

It talks HTTP to a running ``tunesmith serve --jobs`` (``--base-url``, default http://127.0.0.1:8000/v1, or
``$TUNESMITH_BASE_URL``; ``--api-key`` or ``$TUNESMITH_API_KEY``) with the standard library only: the
``openai`` package is a test dependency, not a runtime one.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError, TunesmithError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier", "beta", "compute_multiplier")


class _Client:
    """Just enough of an HTTP client: JSON in and out, one multipart upload, the server's errors raised."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url, self.api_key = base_url.rstrip("/"), api_key

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        data, ctype = (json.dumps(body).encode(), "application/json") if body is not None else (None, None)
        return self._send(method, path, data, ctype, query)

    def upload(self, path: Path) -> dict[str, Any]:
        boundary = secrets.token_hex(16)
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        data = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        return self._send("POST", "/files", data, f"multipart/form-data; boundary={boundary}", None)

    def _send(self, method: str, path: str, data: bytes | None, ctype: str | None, query: Any) -> Any:
        url = self.base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(url, data=data, method=method)
        if ctype:
            request.add_header("Content-Type", ctype)
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            try:
                error = json.loads(err.read())["error"]
            except (ValueError, KeyError, TypeError):
                raise TunesmithError(f"{method} {url}: HTTP {err.code}") from None
            param = f" (param: {error['param']})" if error.get("param") else ""
            raise TunesmithError(f"{error['message']}{param}") from None
        except urllib.error.URLError as err:
            raise TunesmithError(
                f"cannot reach {self.base_url} ({err.reason}); start `tunesmith serve ... --jobs` or pass "
                "--base-url"
            ) from None


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _file_id(client: _Client, value: str) -> str:
    """A local file is uploaded first; anything else is taken as the id of an uploaded one."""
    path = Path(value)
    return client.upload(path)["id"] if path.is_file() else value


def _number(value: str) -> Any:
    if value == "auto":
        return value
    number = float(value)
    return int(number) if number.is_integer() and "." not in value else number


def _create(client: _Client, args: argparse.Namespace) -> dict[str, Any]:
    hyper = {k: _number(getattr(args, k)) for k in HYPERPARAMETERS if getattr(args, k) is not None}
    section: dict[str, Any] = {"hyperparameters": hyper}
    if args.grader:
        text = Path(args.grader[1:]).read_text() if args.grader.startswith("@") else args.grader
        section["grader"] = json.loads(text)
    body = {
        "model": args.model,
        "training_file": _file_id(client, args.training_file),
        "method": {"type": args.method, args.method: section},
        "metadata": _pairs(args.metadata, "--metadata") or None,
    }
    if args.validation_file:
        body["validation_file"] = _file_id(client, args.validation_file)
    for key in ("suffix", "seed"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    return client.call("POST", "/fine_tuning/jobs", body)


def _list_line(job: dict[str, Any]) -> str:
    return f"{job['id']}  {job['status']:<16} {job['model']}  {job.get('fine_tuned_model') or '-'}"


def _event_line(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    if event.get("type") == "metrics":
        losses = " ".join(f"{k}={v:.4f}" for k, v in data.items() if k != "step" and v is not None)
        return f"{event['created_at']}  {event['level']:<5} step {data.get('step')}: {losses}"
    return f"{event['created_at']}  {event['level']:<5} {event['message']}"


def _run(args: argparse.Namespace) -> int:
    client = _Client(args.base_url, args.api_key)
    if args.jobs_command == "create":
        print(json.dumps(_create(client, args), indent=2))
    elif args.jobs_command == "list":
        query = {
            "limit": args.limit,
            **{f"metadata[{k}]": v for k, v in _pairs(args.metadata, "--metadata").items()},
        }
        for job in client.call("GET", "/fine_tuning/jobs", query=query)["data"]:
            print(_list_line(job))
    elif args.jobs_command == "show":
        print(json.dumps(client.call("GET", f"/fine_tuning/jobs/{args.job_id}"), indent=2))
    elif args.jobs_command == "events":
        page = client.call("GET", f"/fine_tuning/jobs/{args.job_id}/events", query={"limit": args.limit})
        for event in reversed(page["data"]):  # the API lists newest first; a log reads oldest first
            print(_event_line(event))
    else:  # cancel, pause, resume
        print(_list_line(client.call("POST", f"/fine_tuning/jobs/{args.job_id}/{args.jobs_command}")))
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``jobs`` and its subcommands on ``parser.add_subparsers()``'s result."""
    p = subparsers.add_parser("jobs", help="create, list, show, follow and cancel fine-tuning jobs over HTTP")
    p.add_argument("--base-url", default=os.environ.get("TUNESMITH_BASE_URL", DEFAULT_BASE_URL))
    p.add_argument("--api-key", default=os.environ.get("TUNESMITH_API_KEY"), help="or $TUNESMITH_API_KEY")
    sub = p.add_subparsers(dest="jobs_command", required=True)
    c = sub.add_parser("create", help="start a job (a local --training-file is uploaded first)")
    c.add_argument("--model", required=True, help="a base the server serves, e.g. default")
    c.add_argument("--training-file", required=True, help="a local JSONL file or an uploaded file id")
    c.add_argument("--validation-file")
    c.add_argument("--method", choices=("supervised", "dpo", "reinforcement"), default="supervised")
    for name in HYPERPARAMETERS:
        c.add_argument(f"--{name.replace('_', '-')}", dest=name, help="a number or auto")
    c.add_argument("--grader", help="reinforcement: the grader as JSON, or @file.json")
    c.add_argument("--suffix")
    c.add_argument("--seed", type=int)
    c.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="repeatable")
    ls = sub.add_parser("list", help="newest first: id, status, base, fine-tuned model")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="only jobs with these")
    for name, text in (
        ("show", "the job object as JSON"),
        ("cancel", "cancel a job"),
        ("pause", "pause a job (a running one checkpoints at its next step)"),
        ("resume", "queue a paused job again; it continues from its checkpoint"),
    ):
        sub.add_parser(name, help=text).add_argument("job_id")
    ev = sub.add_parser("events", help="a job's events, oldest first, metrics as losses")
    ev.add_argument("job_id")
    ev.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=_run)
