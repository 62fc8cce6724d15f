"""``tunesmith ui``: a local web app over a folder of run directories (runs, compare, playground, feedback).

It mounts on the same FastAPI app as ``tunesmith serve`` (same API keys, same loopback default), so the
playground talks to ``/v1/chat/completions`` and ``/v1/classify`` of the process that serves the pages.
"""
