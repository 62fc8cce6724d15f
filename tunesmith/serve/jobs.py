"""The OpenAI fine-tuning API on the server (``tunesmith serve --jobs``): files, jobs, events, checkpoints.

    POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET /v1/files/{id}/content
    POST/GET /v1/fine_tuning/jobs, GET .../{id}, POST .../{id}/cancel|pause|resume, GET .../{id}/events,
    GET .../{id}/checkpoints

Handlers only read and write the database (:class:`tunesmith.jobs.store.Store`); training runs in a worker
process of its own (:mod:`tunesmith.jobs.worker`) so it never blocks serving. A succeeded job's model is
hot-loaded onto the shared base the first time a request names it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response

from tunesmith.jobs.checkpoints import served_dir
from tunesmith.jobs.mapping import (
    RequestError,
    check_request,
    check_shape,
    method_of,
    method_section,
    resolved_hyperparameters,
)
from tunesmith.jobs.store import Store
from tunesmith.serve import protocol as p
from tunesmith.serve.models import Registry, hot_load_run


def _file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
    }


def _job_object(row: dict[str, Any]) -> dict[str, Any]:
    request = json.loads(row["request"])
    kind, _ = method_of(request)
    hyper = json.loads(row["hyperparameters"] or "{}")
    return {
        "id": row["id"],
        "object": "fine_tuning.job",
        "model": request["model"],
        "status": row["status"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "fine_tuned_model": row["fine_tuned_model"],
        "organization_id": "tunesmith",
        "training_file": request["training_file"],
        "validation_file": request.get("validation_file"),
        "trained_tokens": row["trained_tokens"],
        "error": json.loads(row["error"]) if row["error"] else None,
        "result_files": json.loads(row["result_files"] or "[]"),
        "estimated_finish": row["estimated_finish"],
        "hyperparameters": hyper,
        "method": {"type": kind, kind: {**method_section(request), "hyperparameters": hyper}},
        "seed": int(request.get("seed") or 0),
        "metadata": request.get("metadata"),
        "suffix": request.get("suffix"),
        "integrations": [],
    }


def _event_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.event",
        "created_at": row["created_at"],
        "level": row["level"],
        "message": row["message"],
        "type": row["type"],
        "data": json.loads(row["data"]) if row["data"] else None,
    }


def _checkpoint_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.checkpoint",
        "created_at": row["created_at"],
        "fine_tuning_job_id": row["job_id"],
        "fine_tuned_model_checkpoint": row["fine_tuned_model_checkpoint"],
        "step_number": row["step_number"],
        "metrics": json.loads(row["metrics"] or "{}"),
    }


def _page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor pagination: the items after the one with id ``after``, ``has_more`` when cut."""
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}


def _metadata_filter(params: list[tuple[str, str]]) -> dict[str, str] | None:
    """``metadata[k]=v`` query pairs as {k: v}; ``metadata=null`` (jobs without metadata) as None."""
    wanted: dict[str, str] = {}
    for key, value in params:
        if key == "metadata" and value == "null":
            return None
        if key.startswith("metadata[") and key.endswith("]"):
            wanted[key[len("metadata[") : -1]] = value
    return wanted


def _matches(metadata: dict[str, str] | None, wanted: dict[str, str] | None) -> bool:
    if wanted is None:
        return not metadata
    return all((metadata or {}).get(k) == v for k, v in wanted.items())


class JobsApi:
    """Route logic over one jobs directory; ``resolve`` hot-loads succeeded jobs' models into ``registry``."""

    def __init__(self, root: str | Path, registry: Registry, workers: int = 1) -> None:
        self.store, self.registry, self.workers = Store(root), registry, workers

    def start_workers(self) -> list[subprocess.Popen]:
        """The worker processes (same interpreter and environment), each training one job at a time; they
        resume jobs a crash left running."""
        command = [sys.executable, "-m", "tunesmith.jobs.worker", "--root", str(self.store.root)]
        return [subprocess.Popen(command) for _ in range(self.workers)]

    @staticmethod
    def stop_workers(workers: list[subprocess.Popen]) -> None:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)

    def resolve(self, model_id: str) -> None:
        """Hot-load a succeeded job's model or one of its checkpoints; unknown names are left to 404."""
        parts = model_id.split(":")
        if parts[0] != "ft" or len(parts) not in (5, 6):
            return
        job = self.store.job(parts[4])
        if job is None or job["status"] != "succeeded" or job["fine_tuned_model"] != ":".join(parts[:5]):
            return  # unknown, unfinished or cancelled: the caller answers 404
        run_dir = self.store.runs / job["id"]
        if len(parts) == 6:
            listed = {
                c["fine_tuned_model_checkpoint"]: c["step_number"] for c in self.store.checkpoints(job["id"])
            }
            if model_id not in listed:
                return
            step = listed[model_id]
            final = json.loads((run_dir / "summary.json").read_text()).get("train", {}).get("steps")
            run_dir = run_dir if step == final else served_dir(run_dir, step)
        hot_load_run(self.registry, run_dir, model_id)

    def _job(self, jid: str) -> dict[str, Any]:
        row = self.store.job(jid)
        if row is None:
            raise p.APIError(404, f"No fine-tuning job with id {jid}", param="fine_tuning_job_id")
        return row

    def create_job(self, body: Any) -> dict[str, Any]:
        try:
            check_shape(body)
        except RequestError as err:
            raise p.APIError(400, str(err), param=err.param) from None
        model = body.get("model")
        bases = {s.id: s.source for s in self.registry.models.values() if s.kind == "base"}
        if model not in bases:
            raise p.APIError(
                400,
                f"Model {model!r} is not available for fine-tuning; this server tunes the bases it serves: "
                f"{', '.join(sorted(bases))}",
                param="model",
                code="model_not_available",
            )
        for key in ("training_file", "validation_file"):
            if (body.get(key) or key == "training_file") and self.store.file(body.get(key) or "") is None:
                raise p.APIError(400, f"{key} {body.get(key)!r} does not exist; upload it first", param=key)
        try:
            check_request(body)
        except RequestError as err:
            raise p.APIError(400, str(err), param=err.param) from None
        request = {
            k: body.get(k)
            for k in (
                "model",
                "training_file",
                "validation_file",
                "suffix",
                "seed",
                "metadata",
                "method",
                "hyperparameters",
            )
        }
        request["base_source"] = bases[model]  # where the worker loads the base from
        return _job_object(self.store.add_job(request, resolved_hyperparameters(request)))

    def add_routes(self, app: FastAPI) -> None:
        store = self.store

        @app.post("/v1/files")
        async def upload(request: Request) -> dict[str, Any]:
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise p.APIError(400, "send the file as multipart field `file`", param="file")
            purpose = str(form.get("purpose") or "")
            if purpose != "fine-tune":
                raise p.APIError(400, "purpose must be `fine-tune`", param="purpose")
            return _file_object(
                store.add_file(upload.filename or "upload.jsonl", await upload.read(), purpose)
            )

        @app.get("/v1/files")
        async def list_files() -> dict[str, Any]:
            return {"object": "list", "data": [_file_object(r) for r in store.files()], "has_more": False}

        def one_file(fid: str) -> dict[str, Any]:
            row = store.file(fid)
            if row is None:
                raise p.APIError(404, f"No such File object: {fid}", param="id")
            return row

        @app.get("/v1/files/{fid}")
        async def get_file(fid: str) -> dict[str, Any]:
            return _file_object(one_file(fid))

        @app.get("/v1/files/{fid}/content")
        async def file_content(fid: str) -> Response:
            row = one_file(fid)
            return Response(
                store.blob_path(row["sha256"]).read_bytes(), media_type="application/octet-stream"
            )

        @app.delete("/v1/files/{fid}")
        async def delete_file(fid: str) -> dict[str, Any]:
            one_file(fid)
            store.delete_file(fid)
            return {"id": fid, "object": "file", "deleted": True}

        @app.post("/v1/fine_tuning/jobs")
        async def create(request: Request) -> dict[str, Any]:
            try:
                body = json.loads(await request.body())
            except (ValueError, RecursionError):  # ValueError: bad JSON, bad UTF-8, an integer too long
                raise p.APIError(400, "the request body is not valid JSON", param="body") from None
            return self.create_job(body)

        @app.get("/v1/fine_tuning/jobs")
        async def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> dict[str, Any]:
            wanted = _metadata_filter(request.query_params.multi_items())
            rows = [r for r in store.jobs() if _matches(json.loads(r["request"]).get("metadata"), wanted)]
            return _page([_job_object(r) for r in rows], after, limit)

        @app.get("/v1/fine_tuning/jobs/{jid}")
        async def get_job(jid: str) -> dict[str, Any]:
            return _job_object(self._job(jid))

        @app.post("/v1/fine_tuning/jobs/{jid}/cancel")
        async def cancel(jid: str) -> dict[str, Any]:
            self._job(jid)
            active = ("validating_files", "queued", "running", "paused")
            if not store.set_status(jid, "cancelled", only_from=active):
                raise p.APIError(400, f"Job {jid} has already finished and cannot be cancelled", param="id")
            return _job_object(self._job(jid))

        @app.post("/v1/fine_tuning/jobs/{jid}/pause")
        async def pause(jid: str) -> dict[str, Any]:
            self._job(jid)
            # queued: nothing trained yet, paused at once; running: the worker checkpoints, then pauses it.
            if not (store.set_status(jid, "paused", only_from=("queued",)) or store.request_pause(jid)):
                raise p.APIError(
                    400,
                    f"Job {jid} is {self._job(jid)['status']}; only a queued or running job pauses",
                    param="id",
                )
            return _job_object(self._job(jid))

        @app.post("/v1/fine_tuning/jobs/{jid}/resume")
        async def resume(jid: str) -> dict[str, Any]:
            self._job(jid)
            if not store.set_status(jid, "queued", only_from=("paused",)):
                raise p.APIError(
                    400,
                    f"Job {jid} is {self._job(jid)['status']}, not paused; only a paused job resumes",
                    param="id",
                )
            store.add_event(jid, "info", "Fine-tuning job resumed by request; queued")
            return _job_object(self._job(jid))

        @app.get("/v1/fine_tuning/jobs/{jid}/events")
        async def events(jid: str, after: str | None = None, limit: int = 20) -> dict[str, Any]:
            self._job(jid)
            return _page([_event_object(r) for r in store.events(jid)], after, limit)

        @app.get("/v1/fine_tuning/jobs/{jid}/checkpoints")
        async def checkpoints(jid: str, after: str | None = None, limit: int = 10) -> dict[str, Any]:
            self._job(jid)
            return _page([_checkpoint_object(r) for r in store.checkpoints(jid)], after, limit)
