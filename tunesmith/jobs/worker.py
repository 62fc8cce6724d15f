"""The worker: a process of its own that claims jobs one at a time and runs them through ``tunesmith.train``.

    python -m tunesmith.jobs.worker --root ~/.tunesmith/jobs      # started by `tunesmith serve --jobs`

A new job is ``validating_files`` until the worker has read its files as ``tunesmith data inspect`` does
(``queued`` when they are good, ``failed`` naming ``file:line`` when not); jobs queue while another trains,
because a watcher thread validates during a run. Several workers may share one jobs directory (``serve
--jobs-workers N``): each claims jobs atomically and beats on the one it runs. A job found ``running`` whose
worker is gone was cut off by a crash: it is resumed from its last checkpoint (``train(..., resume=True)``,
the loop's exact resume).

Cancel interrupts the main thread as Ctrl-C does (the loop saves a checkpoint and returns; no model is
registered). Pause is a handshake through the database and the run directory: the server sets the job's
``pause_requested``; the watcher writes the run's ``STOP`` file; the loop polls it between steps, saves a
checkpoint of the last completed step and returns; only then is the job ``paused``. Resume queues it again,
and the next claim continues from that checkpoint exactly. The watcher also copies new metrics.jsonl rows
into events and updates ``estimated_finish`` from the measured step time.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tunesmith.api import train
from tunesmith.config import load_config
from tunesmith.data.formats import read_source
from tunesmith.data.preference_formats import read_preference_source
from tunesmith.errors import DataError, TunesmithError
from tunesmith.jobs.checkpoints import checkpoint_steps, publish
from tunesmith.jobs.mapping import METHODS, method_of, to_overrides
from tunesmith.jobs.store import Store
from tunesmith.runs import RunDir

POLL_S = 0.2
BEAT_S = 5
"""How often a running job's worker renews its lease (``Store.beat``)."""
RATE_WINDOW = 5
"""Steps the estimated finish averages the step time over (the latest ones: a run speeds up after warm-up)."""


def model_name(request: dict[str, Any], job_id: str) -> str:
    """``ft:<base>:tunesmith:<suffix>:<id>``; a base given as a path is named by its directory."""
    base = Path(request["model"]).name or request["model"]
    return f"ft:{base}:tunesmith:{request.get('suffix') or ''}:{job_id}"


def _file_paths(store: Store, request: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    """``training_file`` / ``validation_file`` -> (stored bytes, the name the user uploaded them as)."""
    paths = {}
    for key in ("training_file", "validation_file"):
        fid = request.get(key)
        if fid:
            record = store.file(fid)
            if record is None:
                raise DataError(f"{key} {fid} was deleted before the job ran; upload it again")
            paths[key] = (store.blob_path(record["sha256"]), f"{record['filename']} ({fid})")
    return paths


def _fail(store: Store, jid: str, err: BaseException, only_from: tuple[str, ...]) -> None:
    message = str(err) or type(err).__name__
    bad_data = isinstance(err, DataError)
    error = {
        "code": "invalid_training_file" if bad_data else "job_failed",
        "message": message,
        "param": "training_file" if bad_data else None,
    }
    if store.set_status(jid, "failed", only_from=only_from, error=error, estimated_finish=None):
        store.add_event(jid, "error", message)


def _fail_internal(store: Store, jid: str, err: Exception, only_from: tuple[str, ...]) -> None:
    message = f"internal error: {type(err).__name__}: {err}"
    error = {"code": "server_error", "message": message, "param": None}
    if store.set_status(jid, "failed", only_from=only_from, error=error, estimated_finish=None):
        store.add_event(jid, "error", message)


def validate_files(store: Store, job: dict[str, Any]) -> None:
    """Read a ``validating_files`` job's files in its method's shape: ``queued`` if good, else ``failed``."""
    jid, request = job["id"], json.loads(job["request"])
    shape = METHODS[method_of(request)[0]].shape
    try:
        for path, shown in _file_paths(store, request).values():
            try:
                if shape == "sft":
                    read_source(path)
                else:
                    read_preference_source(path, shape)
            except DataError as err:  # name the upload, not the blob it is stored as
                raise DataError(str(err).replace(str(path), shown)) from None
    except DataError as err:
        _fail(store, jid, err, only_from=("validating_files",))
        return
    except Exception as err:  # a reader bug fails this job; left validating, it would stop every worker
        _fail_internal(store, jid, err, only_from=("validating_files",))
        return
    if store.set_status(jid, "queued", only_from=("validating_files",)):
        store.add_event(jid, "info", "Files validated; job queued")


def validate_pending(store: Store) -> None:
    for job in store.jobs(status="validating_files"):
        validate_files(store, job)


def estimated_finish(rows: list[dict[str, Any]], now: float) -> int | None:
    """Unix time the run should end: the mean step time of the latest steps x the steps left."""
    timed = [r for r in rows if r.get("step_s") is not None and r.get("total_steps")]
    if not timed:
        return None
    recent = timed[-RATE_WINDOW:]
    per_step = sum(r["step_s"] for r in recent) / len(recent)
    return int(now + per_step * max(0, recent[-1]["total_steps"] - recent[-1]["step"]))


class _Watcher(threading.Thread):
    """Streams metrics rows into events, validates new jobs, and passes cancel and pause on to the run."""

    def __init__(self, store: Store, job_id: str, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.store, self.job_id, self.run_dir = store, job_id, RunDir(run_dir)
        self.seen = sum(1 for e in store.events(job_id) if e["type"] == "metrics")
        self.done = threading.Event()
        self.interrupted = False
        self.last_beat = 0.0

    def copy_metrics(self) -> None:
        if not self.run_dir.metrics.exists():
            return
        rows = [json.loads(line) for line in self.run_dir.metrics.read_text().splitlines() if line.strip()]
        for row in rows[self.seen :]:
            data = {
                "step": row.get("step"),
                "train_loss": row.get("train_loss"),
                "valid_loss": row.get("val_loss"),
            }
            self.store.add_event(self.job_id, "info", f"Step {row.get('step')}", "metrics", data)
        if len(rows) > self.seen:
            finish = estimated_finish(rows, time.time())
            self.store.set_status(self.job_id, "running", only_from=("running",), estimated_finish=finish)
        self.seen = max(self.seen, len(rows))

    def poll(self) -> None:
        if time.monotonic() - self.last_beat > BEAT_S:
            self.store.beat(self.job_id, os.getpid())
            self.last_beat = time.monotonic()
        self.copy_metrics()
        job = self.store.job(self.job_id)
        if job and job["pause_requested"] and not self.run_dir.stop_request.exists():
            self.run_dir.stop_request.parent.mkdir(parents=True, exist_ok=True)
            self.run_dir.stop_request.touch()  # the loop stops at its next step boundary, checkpointed
        if job and job["status"] == "cancelled" and not self.interrupted:
            self.interrupted = True
            os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt in the loop: checkpoint and return
        validate_pending(self.store)

    def run(self) -> None:
        while not self.done.wait(POLL_S):
            self.poll()


def _record_checkpoints(store: Store, jid: str, run_dir: Path, name: str, final_step: int) -> None:
    """List each checkpoint on disk (and the final model) with the losses logged at its step."""
    metrics = _step_metrics(store, jid)
    for step in sorted(set(checkpoint_steps(run_dir)) | {final_step}):
        if step != final_step and publish(run_dir, step) is None:
            continue  # not a LoRA run: only the final model is servable
        store.add_checkpoint(jid, step, f"{name}:ckpt-step-{step}", metrics.get(step, {"step": step}))


def _step_metrics(store: Store, jid: str) -> dict[int, dict[str, Any]]:
    """Per step, the losses its metrics events logged (a training row and an evaluation row merge)."""
    metrics: dict[int, dict[str, Any]] = {}
    for event in store.events(jid)[::-1]:
        if event["type"] == "metrics":
            data = json.loads(event["data"])
            row = metrics.setdefault(data["step"], {"step": data["step"]})
            row.update({k: v for k, v in data.items() if v is not None})
    return metrics


def _result_file(store: Store, jid: str) -> str:
    """The metrics CSV (step, train_loss, valid_loss) as a ``fine-tune-results`` file; its id."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", "train_loss", "valid_loss"])
    for step, row in sorted(_step_metrics(store, jid).items()):
        writer.writerow([step, row.get("train_loss", ""), row.get("valid_loss", "")])
    return store.add_file(f"{jid}_metrics.csv", out.getvalue().encode(), "fine-tune-results")["id"]


def _trained_tokens(job: dict[str, Any], summary: dict[str, Any]) -> int:
    """The tokens of this run segment plus those of the segments a pause ended (each resume counts anew)."""
    return (job["trained_tokens"] or 0) + int((summary.get("train") or {}).get("tokens") or 0)


def _stopped(store: Store, jid: str, run_dir: Path, summary: dict[str, Any] | None) -> bool:
    """Settle a run the loop ended early (cancel or pause); False when it ran to the end (or failed)."""
    job = store.job(jid)
    RunDir(run_dir).stop_request.unlink(missing_ok=True)
    if job["status"] == "cancelled":
        store.add_event(jid, "info", "Fine-tuning job cancelled")
        return True
    if summary is None or summary.get("status") != "interrupted":
        return False
    if job["pause_requested"]:
        steps = checkpoint_steps(run_dir)
        tokens = _trained_tokens(job, summary)
        fields = {"pause_requested": 0, "estimated_finish": None, "trained_tokens": tokens}
        store.set_status(jid, "paused", only_from=("running",), **fields)
        store.add_event(jid, "info", f"Fine-tuning job paused at step {steps[-1] if steps else 0}")
    return True


def run_job(store: Store, job: dict[str, Any]) -> None:
    """Run one claimed job to succeeded / failed / paused (cancelled stays cancelled)."""
    jid, request = job["id"], json.loads(job["request"])
    run_dir = store.runs / jid
    RunDir(run_dir).stop_request.unlink(missing_ok=True)  # a stale request of a crashed run
    resume = bool(checkpoint_steps(run_dir))
    store.add_event(jid, "info", "Fine-tuning job resumed" if resume else "Fine-tuning job started")
    watcher = _Watcher(store, jid, run_dir)
    try:
        paths = {k: str(path) for k, (path, _) in _file_paths(store, request).items()}
        overrides = to_overrides(
            request, paths["training_file"], paths.get("validation_file"), jid, str(store.runs)
        )
        cfg = load_config(None, overrides)
        watcher.poll()  # a pause asked for before the run started stops it after its first step
        watcher.start()
        summary = train(cfg, resume=resume)
    except (TunesmithError, ValueError, KeyboardInterrupt) as err:
        watcher.done.set()
        if not _stopped(store, jid, run_dir, None):
            _fail(store, jid, err, only_from=("running",))
        return
    watcher.done.set()
    watcher.join()
    watcher.copy_metrics()
    if _stopped(store, jid, run_dir, summary):
        return
    name = model_name(request, jid)
    steps = int((summary.get("train") or {}).get("steps") or 0)
    tokens = _trained_tokens(store.job(jid), summary)
    _record_checkpoints(store, jid, run_dir, name, steps)
    store.set_status(
        jid,
        "succeeded",
        only_from=("running",),
        fine_tuned_model=name,
        trained_tokens=tokens,
        result_files=[_result_file(store, jid)],
        estimated_finish=None,
        pause_requested=0,
    )
    store.add_event(jid, "info", "The job has successfully completed")


def work(root: str | Path, once: bool = False) -> None:
    """Validate, claim and run jobs until killed (``once``: until none is left)."""
    store = Store(root)
    while True:
        try:
            validate_pending(store)
            job = store.claim(os.getpid())
        except sqlite3.OperationalError as err:  # "database is locked" past the timeout: try again
            print(f"tunesmith: jobs worker: {err}; retrying", file=sys.stderr)
            time.sleep(1)
            continue
        if job is None:
            if once:
                return
            time.sleep(POLL_S)
            continue
        try:
            run_job(store, job)
        except Exception as err:  # a bug must fail its job, not leave it running for every restart to retry
            _fail_internal(store, job["id"], err, only_from=("running",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, help="the jobs directory (database, blobs, runs)")
    parser.add_argument("--once", action="store_true", help="exit when no job is left")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    work(args.root, args.once)


if __name__ == "__main__":
    main()
