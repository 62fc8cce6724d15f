"""The worker: a process of its own that claims jobs one at a time and runs them through ``tunesmith.train``.

    python -m tunesmith.jobs.worker --root ~/.tunesmith/jobs      # started by `tunesmith serve --jobs`

A job found ``running`` when the worker starts was cut off by a crash: it is resumed from its last checkpoint
(``train(..., resume=True)``, the loop's exact resume). Cancel is cooperative: a watcher thread reads the
job's status; when it turns ``cancelled`` it interrupts the main thread as Ctrl-C does, the loop saves a
checkpoint and returns, and no model is registered. The watcher also copies new metrics.jsonl rows into
events (a training row: step and train_loss; an evaluation row: step and valid_loss).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from tunesmith.api import train
from tunesmith.config import load_config
from tunesmith.errors import DataError, TunesmithError
from tunesmith.jobs.checkpoints import checkpoint_steps, publish
from tunesmith.jobs.mapping import to_overrides
from tunesmith.jobs.store import Store
from tunesmith.runs import RunDir

POLL_S = 0.2


def model_name(request: dict[str, Any], job_id: str) -> str:
    """``ft:<base>:tunesmith:<suffix>:<id>``; a base given as a path is named by its directory."""
    base = Path(request["model"]).name or request["model"]
    return f"ft:{base}:tunesmith:{request.get('suffix') or ''}:{job_id}"


class _Watcher(threading.Thread):
    """Streams metrics rows into events and interrupts the run when the job is cancelled."""

    def __init__(self, store: Store, job_id: str, metrics: Path) -> None:
        super().__init__(daemon=True)
        self.store, self.job_id, self.metrics = store, job_id, metrics
        self.seen = sum(1 for e in store.events(job_id) if e["type"] == "metrics")
        self.done = threading.Event()
        self.interrupted = False

    def copy_metrics(self) -> None:
        if not self.metrics.exists():
            return
        rows = [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
        for row in rows[self.seen :]:
            data = {
                "step": row.get("step"),
                "train_loss": row.get("train_loss"),
                "valid_loss": row.get("val_loss"),
            }
            self.store.add_event(self.job_id, "info", f"Step {row.get('step')}", "metrics", data)
        self.seen = max(self.seen, len(rows))

    def run(self) -> None:
        while not self.done.wait(POLL_S):
            self.copy_metrics()
            job = self.store.job(self.job_id)
            if job and job["status"] == "cancelled" and not self.interrupted:
                self.interrupted = True
                os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt in the loop: checkpoint and return


def _record_checkpoints(store: Store, jid: str, run_dir: Path, name: str, final_step: int) -> None:
    """List each checkpoint on disk (and the final model) with the losses logged at its step."""
    metrics: dict[int, dict[str, Any]] = {}
    for event in store.events(jid)[::-1]:
        if event["type"] == "metrics":
            data = json.loads(event["data"])
            row = metrics.setdefault(data["step"], {"step": data["step"]})
            row.update({k: v for k, v in data.items() if v is not None})
    for step in sorted(set(checkpoint_steps(run_dir)) | {final_step}):
        if step != final_step and publish(run_dir, step) is None:
            continue  # not a LoRA run: only the final model is servable
        store.add_checkpoint(jid, step, f"{name}:ckpt-step-{step}", metrics.get(step, {"step": step}))


def run_job(store: Store, job: dict[str, Any]) -> None:
    """Run one claimed job to succeeded / failed (cancelled stays cancelled)."""
    jid, request = job["id"], json.loads(job["request"])
    run_dir = store.runs / jid
    resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step-*"))
    store.add_event(jid, "info", "Fine-tuning job resumed" if resume else "Fine-tuning job started")
    watcher = _Watcher(store, jid, RunDir(run_dir).metrics)
    try:
        paths = {}
        for key in ("training_file", "validation_file"):
            fid = request.get(key)
            if fid:
                record = store.file(fid)
                if record is None:
                    raise TunesmithError(f"{key} {fid} was deleted before the job ran; upload it again")
                paths[key] = str(store.blob_path(record["sha256"]))
        overrides = to_overrides(
            request, paths["training_file"], paths.get("validation_file"), jid, str(store.runs)
        )
        cfg = load_config(None, overrides)
        watcher.start()
        summary = train(cfg, resume=resume)
    except (TunesmithError, ValueError, KeyboardInterrupt) as err:
        watcher.done.set()
        if store.job(jid)["status"] == "cancelled":
            store.add_event(jid, "info", "Fine-tuning job cancelled")
            return
        message = str(err) or type(err).__name__
        store.set_status(
            jid,
            "failed",
            only_from=("running",),
            error={
                "code": "invalid_training_file" if isinstance(err, DataError) else "job_failed",
                "message": message,
                "param": "training_file" if isinstance(err, DataError) else None,
            },
        )
        store.add_event(jid, "error", message)
        return
    watcher.done.set()
    watcher.join()
    watcher.copy_metrics()
    if store.job(jid)["status"] == "cancelled" or summary.get("status") == "interrupted":
        store.add_event(jid, "info", "Fine-tuning job cancelled")
        return
    name = model_name(request, jid)
    steps = int((summary.get("train") or {}).get("steps") or 0)
    tokens = int((summary.get("train") or {}).get("tokens") or 0)
    _record_checkpoints(store, jid, run_dir, name, steps)
    store.set_status(jid, "succeeded", only_from=("running",), fine_tuned_model=name, trained_tokens=tokens)
    store.add_event(jid, "info", "The job has successfully completed")


def work(root: str | Path, once: bool = False) -> None:
    """Claim and run jobs until killed (``once``: until none is left)."""
    store = Store(root)
    while True:
        job = store.claim()
        if job is None:
            if once:
                return
            time.sleep(POLL_S)
            continue
        try:
            run_job(store, job)
        except Exception as err:  # a bug must fail its job, not leave it running for every restart to retry
            message = f"internal error: {type(err).__name__}: {err}"
            store.set_status(
                job["id"],
                "failed",
                only_from=("running",),
                error={"code": "server_error", "message": message, "param": None},
            )
            store.add_event(job["id"], "error", message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, help="the jobs directory (database, blobs, runs)")
    parser.add_argument("--once", action="store_true", help="exit when no job is left")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    work(args.root, args.once)


if __name__ == "__main__":
    main()
