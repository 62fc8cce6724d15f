"""State of the fine-tuning API: one SQLite file (stdlib ``sqlite3``) and content-addressed file bytes.

    <home>/jobs/jobs.db      files, jobs, events, checkpoints
    <home>/jobs/blobs/<sha256>.jsonl    uploaded bytes, stored once per content
    <home>/jobs/runs/<job id>/          the run directory of each job

The HTTP server and the worker process open the same database; every write is one short transaction, and
SQLite's WAL mode lets the server read while the worker writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from tunesmith.io import write_bytes_atomic

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (id TEXT PRIMARY KEY, filename TEXT, purpose TEXT, bytes INTEGER,
  sha256 TEXT, created_at INTEGER, deleted INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, request TEXT,
  status TEXT, created_at INTEGER, finished_at INTEGER, fine_tuned_model TEXT, error TEXT,
  trained_tokens INTEGER, result_files TEXT DEFAULT '[]', hyperparameters TEXT, estimated_finish INTEGER,
  pause_requested INTEGER DEFAULT 0, worker_pid INTEGER, heartbeat INTEGER);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, job_id TEXT,
  created_at INTEGER, level TEXT, message TEXT, type TEXT, data TEXT);
CREATE TABLE IF NOT EXISTS checkpoints (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, job_id TEXT,
  created_at INTEGER, step_number INTEGER, fine_tuned_model_checkpoint TEXT, metrics TEXT);
"""

FINAL = ("succeeded", "failed", "cancelled")
LEASE_S = 120
"""A running job whose worker has not beaten for this long is taken over even if its pid still exists (a
crashed worker left as a zombie, or a pid reused by another process)."""
ADDED_COLUMNS = {
    "estimated_finish": "INTEGER",
    "pause_requested": "INTEGER DEFAULT 0",
    "worker_pid": "INTEGER",
    "heartbeat": "INTEGER",
}
"""Job columns newer than the first release: added to a database created before them."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class Store:
    """Files, jobs, events and checkpoints under ``root`` (created on first use)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.runs = self.root / "runs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "jobs.db"
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
            have = {row[1] for row in con.execute("PRAGMA table_info(jobs)")}
            for column, kind in ADDED_COLUMNS.items():
                if column not in have:
                    con.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    def _connect(self) -> sqlite3.Connection:
        # One connection per call: the server's handlers run on several threads; timeout rides out the
        # worker's short write transactions instead of failing with "database is locked".
        con = sqlite3.connect(self.db, timeout=30)
        con.row_factory = sqlite3.Row
        return con

    def _query(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._connect() as con:
            return [dict(r) for r in con.execute(sql, args).fetchall()]

    def _exec(self, sql: str, args: tuple = ()) -> int:
        with self._connect() as con:
            return con.execute(sql, args).rowcount

    # files
    def add_file(self, filename: str, data: bytes, purpose: str) -> dict[str, Any]:
        sha = hashlib.sha256(data).hexdigest()
        blob = self.blob_path(sha)
        if not blob.exists():
            write_bytes_atomic(blob, data)
        fid = new_id("file")
        self._exec(
            "INSERT INTO files VALUES (?,?,?,?,?,?,0)",
            (fid, filename, purpose, len(data), sha, int(time.time())),
        )
        return self.file(fid) or {}

    def blob_path(self, sha: str) -> Path:
        return self.blobs / f"{sha}.jsonl"

    def file(self, fid: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM files WHERE id=? AND deleted=0", (fid,))
        return rows[0] if rows else None

    def files(self) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM files WHERE deleted=0 ORDER BY created_at DESC, id")

    def delete_file(self, fid: str) -> bool:
        # The bytes stay: a job that used them may still be read back, and another upload may share them.
        return self._exec("UPDATE files SET deleted=1 WHERE id=? AND deleted=0", (fid,)) > 0

    # jobs
    def add_job(self, request: dict[str, Any], hyperparameters: dict[str, Any]) -> dict[str, Any]:
        jid = new_id("ftjob")
        self._exec(
            "INSERT INTO jobs (id, request, status, created_at, hyperparameters) VALUES (?,?,?,?,?)",
            (jid, json.dumps(request), "validating_files", int(time.time()), json.dumps(hyperparameters)),
        )
        self.add_event(jid, "info", f"Created fine-tuning job: {jid}")
        return self.job(jid) or {}

    def job(self, jid: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM jobs WHERE id=?", (jid,))
        return rows[0] if rows else None

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        """Newest first, as the API lists them; with ``status``: only those, oldest first."""
        if status is not None:
            return self._query("SELECT * FROM jobs WHERE status=? ORDER BY seq", (status,))
        return self._query("SELECT * FROM jobs ORDER BY seq DESC")

    def set_status(self, jid: str, status: str, only_from: tuple[str, ...] = (), **fields: Any) -> bool:
        """Move a job to ``status`` (only from one of ``only_from`` when given); True when it moved."""
        cols = {
            "status": status,
            **{k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in fields.items()},
        }
        if status in FINAL:
            cols.setdefault("finished_at", int(time.time()))
        sql = "UPDATE jobs SET " + ", ".join(f"{k}=?" for k in cols) + " WHERE id=?"
        args: tuple = (*cols.values(), jid)
        if only_from:
            sql += " AND status IN (" + ",".join("?" * len(only_from)) + ")"
            args += only_from
        return self._exec(sql, args) > 0

    def request_pause(self, jid: str) -> bool:
        """Ask the worker to pause a running job at its next step boundary; True when it was running."""
        return self._exec("UPDATE jobs SET pause_requested=1 WHERE id=? AND status='running'", (jid,)) > 0

    def claim(self, pid: int) -> dict[str, Any] | None:
        """The oldest job for worker ``pid`` to run: a ``running`` one whose worker died first (it crashed
        mid-job), else a queued one. Atomic: of several workers, one gets each job."""
        now = int(time.time())
        for row in self.jobs(status="running"):
            if _alive(row["worker_pid"]) and now - (row["heartbeat"] or 0) < LEASE_S:
                continue  # another worker is on it
            taken = self._exec(
                "UPDATE jobs SET worker_pid=?, heartbeat=? WHERE id=? AND status='running' AND "
                "worker_pid IS ? AND heartbeat IS ?",
                (pid, now, row["id"], row["worker_pid"], row["heartbeat"]),
            )
            if taken:
                return row
        for row in self.jobs(status="queued"):
            if self.set_status(row["id"], "running", only_from=("queued",), worker_pid=pid, heartbeat=now):
                return row
        return None

    def beat(self, jid: str, pid: int) -> None:
        """Worker ``pid`` is still on job ``jid`` (see :data:`LEASE_S`)."""
        self._exec("UPDATE jobs SET heartbeat=? WHERE id=? AND worker_pid=?", (int(time.time()), jid, pid))

    # events and checkpoints
    def add_event(self, jid: str, level: str, message: str, type_: str = "message", data: Any = None) -> None:
        self._exec(
            "INSERT INTO events (id, job_id, created_at, level, message, type, data) VALUES (?,?,?,?,?,?,?)",
            (new_id("ftevent"), jid, int(time.time()), level, message, type_, json.dumps(data)),
        )

    def events(self, jid: str) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM events WHERE job_id=? ORDER BY seq DESC", (jid,))

    def add_checkpoint(self, jid: str, step: int, name: str, metrics: dict[str, Any]) -> None:
        self._exec(
            "INSERT INTO checkpoints (id, job_id, created_at, step_number, fine_tuned_model_checkpoint, "
            "metrics) VALUES (?,?,?,?,?,?)",
            (new_id("ftckpt"), jid, int(time.time()), step, name, json.dumps(metrics)),
        )

    def checkpoints(self, jid: str) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM checkpoints WHERE job_id=? ORDER BY step_number DESC", (jid,))
