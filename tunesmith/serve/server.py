"""Running the app: bind policy, API key files, and uvicorn in the foreground or in a background thread.

with ServerThread(create_app(registry)) as server:      # tests and bench: a real server on a free port
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
"""

from __future__ import annotations

import ipaddress
import os
import stat
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from tunesmith.errors import ConfigError

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_keys: tuple[str, ...]) -> None:
    """Refuse to listen beyond this machine without authentication.

    Raises:
        ConfigError: ``host`` is not a loopback address and no API key is configured.
    """
    if not is_loopback(host) and not api_keys:
        raise ConfigError(
            f"refusing to serve on {host} without authentication: anyone who can reach it could use the "
            "models. Pass --api-key-file FILE (one key per line), or keep the default --host 127.0.0.1"
        )


def read_api_keys(path: str | Path) -> tuple[str, ...]:
    """Keys from a file, one per line (blank lines and ``#`` comments ignored); warns if others can read it.

    Raises:
        ConfigError: the file is missing, unreadable, or holds no key.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read the API key file {path}: {err.strerror}") from None
    keys = tuple(s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#"))
    if not keys:
        raise ConfigError(f"the API key file {path} holds no key (one key per line)")
    if any(len(key) < 16 for key in keys):
        print("tunesmith: warning: API keys shorter than 16 characters are easy to guess", file=sys.stderr)
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"tunesmith: warning: {path} is readable by other users; chmod 600 it", file=sys.stderr)
    return keys


def serve_forever(app: Any, host: str, port: int) -> None:
    """Run uvicorn in the foreground until Ctrl-C."""
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)


class ServerThread:
    """A real uvicorn server on a background thread; port 0 picks a free port (read ``port`` after start).

    It applies the same bind policy as the CLI (:func:`check_bind`).
    """

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, api_keys: tuple[str, ...] = ()
    ) -> None:
        check_bind(host, api_keys)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", server_header=False)
        self.server = uvicorn.Server(config)
        self.host = host
        self.port = port
        self._thread = threading.Thread(target=self.server.run, name="tunesmith-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
