"""``tunesmith ui [--runs runs/] [--port 7860] [--host 127.0.0.1] [--api-key-file F]``.

tunesmith ui                                   # http://127.0.0.1:7860: runs, compare, playground, feedback
tunesmith ui --runs experiments/ --host 0.0.0.0 --api-key-file ~/.tunesmith-keys   # reachable by others

The same server stack as ``tunesmith serve`` (its bind policy, API keys and limits); the playground's models
load on first use. Imports nothing heavy until the server starts.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register the ``ui`` subcommand on ``parser.add_subparsers()``'s result."""
    p = subparsers.add_parser(
        "ui",
        help="a local web app: runs, live curves, compare, playground, human feedback",
        description="A local web app over a folder of run directories (docs/ui.md). Works offline.",
    )
    p.add_argument("--runs", default="runs", help="folder of run directories (default: runs)")
    p.add_argument("--recipes", default="recipes", help="folder the start form lists recipes from")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; non-loopback needs --api-key-file")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--api-key-file", help="file with one API key per line; the page asks for one")
    p.set_defaults(func=run_ui)


def run_ui(args: argparse.Namespace) -> int:
    """Check the bind policy, build the app, serve until Ctrl-C."""
    from pathlib import Path  # deferred with the rest: `tunesmith --help` loads no command

    from tunesmith.errors import ConfigError
    from tunesmith.serve.server import check_bind, read_api_keys

    keys = read_api_keys(args.api_key_file) if args.api_key_file else ()
    check_bind(args.host, keys)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0-65535, got {args.port}")
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)  # a fresh project has no runs yet; the start form makes them
    os.environ.setdefault("TQDM_DISABLE", "1")
    from tunesmith.serve.app import ServeSettings  # deferred: `--help` starts no server stack
    from tunesmith.serve.server import serve_forever
    from tunesmith.ui.app import create_ui_app

    app = create_ui_app(runs, ServeSettings(api_keys=keys), args.recipes)
    print(f"tunesmith: ui for {runs.resolve()} at http://{args.host}:{args.port}/ui")
    serve_forever(app, args.host, args.port)
    return 0
