"""``tunesmith serve``: an OpenAI-compatible HTTP server for finished runs (see :mod:`tunesmith.serve.app`).

Kept import-light: the CLI imports :mod:`tunesmith.serve.cli` at start-up, and torch is imported only when
a server actually starts.
"""
