"""The UI's routes, mounted on the ``tunesmith serve`` app (same keys, limits, error shape).

    GET  /                        -> /ui (the page; static files under /ui/static/, no key needed)
    GET  /ui/api/runs             runs table (filters: kind, method, status, q)
    GET  /ui/api/runs/{name}      detail: row, summary, data report, config, checkpoints, ratings
    GET  /ui/api/runs/{name}/metrics          metrics.jsonl rows
    GET  /ui/api/runs/{name}/events           server-sent events: each new metrics row, then `end`
    GET  /ui/api/runs/{name}/report           report.html
    GET  /ui/api/runs/{name}/predictions      the tuned predictions (rating screen)
    POST /ui/api/runs  {recipe, overrides}    start a run; POST .../{name}/stop, .../{name}/resume
    GET  /ui/api/recipes, /ui/api/models, /ui/api/compare?runs=a&runs=b
    POST /ui/api/feedback/pairwise | ratings | labels; GET the same for progress / export
    GET  /ui/api/data/inspect?path=F[&run=NAME]   `tunesmith data inspect` findings as HTML

The playground calls the serving routes themselves (/v1/chat/completions, /v1/classify): a run's model is
loaded on first use (``<run>``; ``<run>@base`` is its base model without the adapter).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from tunesmith.errors import TunesmithError
from tunesmith.io import read_jsonl
from tunesmith.runs import RunDir
from tunesmith.serve import protocol as p
from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.http import EventStream
from tunesmith.serve.models import Registry, hot_load_model_dir, hot_load_run
from tunesmith.ui import catalog
from tunesmith.ui.control import Runner, StartRequest
from tunesmith.ui.feedback import Feedback, Judgement, Label, Rating

BASE_SUFFIX = "@base"
NO_RUNS: list[str] = []  # the compare route's default; never mutated
POLL_S = 0.25
"""How often the event stream looks for new metrics rows (a stat and a read of the new bytes)."""
PUBLIC_PATHS = ("/", "/ui")
PUBLIC_PREFIXES = ("/ui/static/",)


def _bad(err: TunesmithError, status: int = 400) -> p.APIError:
    """A tunesmith error as the API's JSON error (its message says what to do next)."""
    return p.APIError(status, str(err), code=type(err).__name__)


class UiApi:
    """Route logic over one runs directory."""

    def __init__(self, runs_root: Path, registry: Registry, recipes: Path | None) -> None:
        self.root, self.registry = runs_root, registry
        self.feedback = Feedback(runs_root)
        self.runner = Runner(runs_root, recipes)

    def run(self, name: str) -> RunDir:
        try:
            return catalog.resolve_run(self.root, name)
        except TunesmithError as err:
            raise _bad(err, 404) from None

    def resolve_model(self, model_id: str) -> None:
        """Load ``<run>`` or ``<run>@base`` for the serving routes (called off the event loop)."""
        name = model_id.removesuffix(BASE_SUFFIX)
        try:
            run = catalog.resolve_run(self.root, name)
        except TunesmithError:
            return  # not a run: the serving route answers 404 model_not_found
        try:
            if model_id.endswith(BASE_SUFFIX):
                hot_load_model_dir(self.registry, run.read_config().model.name, model_id)
            else:
                hot_load_run(self.registry, run.path, model_id)
        except TunesmithError as err:
            raise _bad(err) from None

    def models(self) -> list[dict[str, Any]]:
        """Playground choices: every run with a saved model, and each one's base."""
        out = []
        for row in catalog.list_runs(self.root):
            if RunDir(self.root / row["name"]).saved() is not None:
                out.append({"id": row["name"], "task": row["kind"], "of": row["name"]})
                out.append({"id": row["name"] + BASE_SUFFIX, "task": row["kind"], "of": row["name"]})
        return out

    async def events(self, run: RunDir, offset: int) -> AsyncIterator[bytes]:
        """Each metrics row as it is written (``data:``), then ``event: end`` once the run has finished."""
        while True:
            rows, offset = catalog.read_metrics_from(run, offset)
            for row in rows:
                yield f"id: {offset}\ndata: {json.dumps(row)}\n\n".encode()
            if not rows and catalog.settled(run):
                status = catalog.status_of(run, catalog.read_json(run.summary))
                yield f"event: end\ndata: {json.dumps({'status': status})}\n\n".encode()
                return
            if not rows:
                yield b": waiting\n\n"  # a comment: proves the connection is alive, ignored by clients
            await asyncio.sleep(POLL_S)

    def predictions(self, run: RunDir, split: str) -> list[dict[str, Any]]:
        path = Path(f"{run.predictions('tuned')}_{split}.jsonl")
        if not path.exists():
            raise p.APIError(404, f"{run.path.name} has no tuned predictions for split {split!r}")
        rows = read_jsonl(path)
        source = ((catalog.read_json(run.data_report).get("files") or {}).get(split) or {}).get("path")
        inputs = _inputs_of(Path(source)) if source and Path(source).is_file() else []
        if len(inputs) == len(rows):  # predictions are in input order: show each beside its input
            rows = [{**row, "input": text} for row, text in zip(rows, inputs, strict=True)]
        return rows

    def data_file(self, path: str) -> Path:
        """A data file the UI may read: under the working directory or the runs directory."""
        target = Path(path).resolve()
        allowed = (Path.cwd().resolve(), self.root.resolve())
        if not any(target.is_relative_to(a) for a in allowed):
            raise p.APIError(403, f"{path} is outside the working directory and the runs directory")
        if not target.is_file():
            raise p.APIError(404, f"no data file {path}", param="path")
        return target

    def rows(self, path: str, limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` JSON rows of a JSONL file (the labelling screen's rows)."""
        rows = []
        with open(self.data_file(path), encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if len(rows) >= limit:
                    break
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        raise p.APIError(400, f"{path}:{number}: not a JSON line", param="path") from None
        return rows

    def inspect(self, path: str, run_name: str | None) -> str:
        """``data inspect`` of a data file under the working directory, rendered with a run's tokenizer."""
        from tunesmith.data.tools.inspect import inspect_file, inspect_html  # deferred: the data screen only
        from tunesmith.models.loading import load_tokenizer  # deferred: the data screen only

        target = self.data_file(path)
        cfg = self.run(run_name).read_config() if run_name else None
        try:
            tokenizer = load_tokenizer(cfg.model.name if cfg else "default")
            report = inspect_file(target, tokenizer, system_prompt=cfg.data.system_prompt if cfg else None)
        except TunesmithError as err:
            raise _bad(err) from None
        return inspect_html(report)


def _inputs_of(path: Path) -> list[str]:
    """What a person reads as each row's input: the last user turn, or the prompt or text field."""
    out = []
    for row in read_jsonl(path) if path.suffix == ".jsonl" else []:
        users = [m.get("content") for m in row.get("messages") or [] if m.get("role") == "user"]
        out.append(str(users[-1] if users else row.get("prompt") or row.get("text") or ""))
    return out


def _add_run_routes(app: FastAPI, ui: UiApi) -> None:
    @app.get("/ui/api/runs")
    async def runs(
        kind: str | None = None, method: str | None = None, status: str | None = None, q: str | None = None
    ) -> dict[str, Any]:
        rows = catalog.list_runs(ui.root)
        for row in rows:  # a run this server started that has not logged a step yet is running too
            if row["status"] in ("new", "stopped", "interrupted") and ui.runner.running(row["name"]):
                row["status"] = "running"
        return {"runs": catalog.filter_rows(rows, kind=kind, method=method, status=status, q=q)}

    @app.get("/ui/api/runs/{name}")
    async def run_detail(name: str) -> dict[str, Any]:
        run = ui.run(name)
        return {**catalog.run_detail(run), "ratings": ui.feedback.rating_summary(name)}

    @app.get("/ui/api/runs/{name}/metrics")
    async def metrics(name: str) -> dict[str, Any]:
        return {"rows": catalog.read_metrics_from(ui.run(name), 0)[0]}

    @app.get("/ui/api/runs/{name}/events")
    async def events(name: str, offset: int = Query(0, ge=0)) -> EventStream:
        return EventStream(ui.events(ui.run(name), offset), lambda: None)

    @app.get("/ui/api/runs/{name}/report")
    async def report(name: str) -> HTMLResponse:
        run = ui.run(name)
        if not run.report.exists():
            raise p.APIError(404, f"{name} has no report.html yet (written when the run finishes)")
        return HTMLResponse(run.report.read_text(encoding="utf-8"))

    @app.get("/ui/api/runs/{name}/predictions")
    async def predictions(name: str, split: str = "validation") -> dict[str, Any]:
        return {"rows": ui.predictions(ui.run(name), split)}

    @app.post("/ui/api/runs")
    async def start(req: StartRequest) -> dict[str, Any]:
        try:
            return ui.runner.start(req)
        except TunesmithError as err:
            raise _bad(err, 409 if "exists" in str(err) else 400) from None

    @app.post("/ui/api/runs/{name}/stop")
    async def stop(name: str) -> dict[str, Any]:
        try:
            return ui.runner.stop(ui.run(name))
        except TunesmithError as err:
            raise _bad(err, 409) from None

    @app.post("/ui/api/runs/{name}/resume")
    async def resume(name: str) -> dict[str, Any]:
        try:
            return ui.runner.resume(ui.run(name))
        except TunesmithError as err:
            raise _bad(err, 409) from None


def _add_other_routes(app: FastAPI, ui: UiApi) -> None:
    @app.get("/ui/api/recipes")
    async def recipes() -> dict[str, Any]:
        return {"recipes": ui.runner.list_recipes()}

    @app.get("/ui/api/models")
    async def models() -> dict[str, Any]:
        return {"models": ui.models()}

    @app.get("/ui/api/compare")
    async def compare(runs: Annotated[list[str], Query()] = NO_RUNS) -> dict[str, Any]:
        chosen = [ui.run(name) for name in runs]
        try:
            result = catalog.compare(chosen)
        except TunesmithError as err:
            raise _bad(err) from None
        result["metrics"] = [catalog.read_metrics_from(r, 0)[0] for r in chosen]
        return result

    @app.post("/ui/api/feedback/pairwise")
    async def judge(j: Judgement) -> dict[str, Any]:
        return ui.feedback.judge(j)

    @app.get("/ui/api/feedback/pairwise")
    async def pairwise_progress() -> dict[str, Any]:
        return {**ui.feedback.progress(), "file": str(ui.feedback.preferences)}

    @app.post("/ui/api/feedback/ratings")
    async def rate(r: Rating) -> dict[str, Any]:
        ui.run(r.run)
        ui.feedback.rate(r)
        return ui.feedback.rating_summary(r.run)

    @app.post("/ui/api/feedback/labels")
    async def label(lab: Label) -> dict[str, Any]:
        return {"labelled": ui.feedback.label(lab)}

    @app.get("/ui/api/feedback/labels")
    async def export_labels() -> PlainTextResponse:
        rows = ui.feedback.labelled()
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return PlainTextResponse(body, media_type="application/jsonl")

    @app.get("/ui/api/data/rows")
    async def data_rows(path: str = Query(min_length=1), limit: int = Query(500, ge=1, le=10_000)) -> dict:
        return {"rows": ui.rows(path, limit)}

    @app.get("/ui/api/data/inspect")
    async def inspect(path: str = Query(min_length=1), run: str | None = None) -> HTMLResponse:
        return HTMLResponse(await asyncio.to_thread(ui.inspect, path, run))


def _add_pages(app: FastAPI) -> None:
    static = resources.files("tunesmith.ui") / "static"

    @app.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui")

    @app.get("/ui")
    async def index() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    app.mount("/ui/static", StaticFiles(directory=str(static)), name="ui-static")


def create_ui_app(
    runs_root: str | Path, settings: ServeSettings | None = None, recipes: str | Path | None = "recipes"
) -> FastAPI:
    """The serving app with the UI on it, over the run directories in ``runs_root``.

    Args:
        runs_root: the folder of run directories (``output_dir`` of the configs).
        settings: the server's keys and limits (as ``tunesmith serve``); the page and static files are
            public, every data route needs the key when keys are set.
        recipes: the folder the start form lists recipes from.
    """
    root = catalog.require_dir(Path(runs_root))
    settings = settings or ServeSettings()
    settings = replace(
        settings,
        public_paths=(*settings.public_paths, *PUBLIC_PATHS),
        public_prefixes=(*settings.public_prefixes, *PUBLIC_PREFIXES),
    )
    registry = Registry()
    app = create_app(registry, settings)
    ui = UiApi(root, registry, Path(recipes) if recipes else None)
    app.state.api.resolve = ui.resolve_model
    app.state.ui = ui
    serving_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[None]:
        async with serving_lifespan(app_):
            try:
                yield
            finally:
                ui.runner.close()  # runs this server started stop at a checkpoint, resumable later

    app.router.lifespan_context = lifespan
    _add_run_routes(app, ui)
    _add_other_routes(app, ui)
    _add_pages(app)
    return app
