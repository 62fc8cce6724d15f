"""The ``lm`` run kind: the training loop on the LLM's own vocabulary head (SFT, continued pre-training, and
classification by label word), with the base evaluated first so the summary reports base vs tuned.

    tunesmith train recipes/lora.yaml
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.data.formats import Example
from tunesmith.data.mixing import with_prefix
from tunesmith.data.prepare import PreparedData, Split, prepare_data
from tunesmith.data.prompts import read_prompts
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate.evidence import after_training, before_training
from tunesmith.evaluate.runner import classify, evaluate_split, predict_texts, resolve_task
from tunesmith.infer.batching import RetainData, TokenData
from tunesmith.infer.loss import LossFn, causal_lm_loss
from tunesmith.io import write_json_atomic, write_jsonl_atomic
from tunesmith.methods import load_options, load_trained, optimizer_for, prepare_model
from tunesmith.models.loading import load_causal_lm
from tunesmith.pipelines.base import (
    LABELS_NEED_CLASSIFICATION,
    Fit,
    Pipeline,
    Run,
    apply_prepare_steps,
    loop_summary,
    print_data_report,
    seed_everything,
    write_predictions,
)
from tunesmith.rag.retrieve import given_chunks
from tunesmith.runs import RunDir, Summary, save_trained
from tunesmith.train.loop import train_loop
from tunesmith.train.losses import RetainLoss


def eval_splits(data: PreparedData) -> dict[str, Split]:
    return {name: s for name, s in (("validation", data.validation), ("test", data.test)) if s is not None}


def evaluate_all(
    model: Any, tokenizer: Any, data: PreparedData, task: str, cfg: RunConfig, save_as: Path | None = None
) -> dict[str, Any]:
    """Metrics per evaluation split; with ``save_as``, predictions go to ``<save_as>_<split>.jsonl``."""
    results = {}
    for name, split in eval_splits(data).items():
        metrics, predictions = evaluate_split(model, tokenizer, split, task, data.label_names, cfg)
        results[name] = metrics
        if save_as is not None and predictions:
            key = "label" if task == "classification" else "prediction"
            write_jsonl_atomic(f"{save_as}_{name}.jsonl", [{key: p} for p in predictions])
    return results


def base_eval(
    run_dir: RunDir | Path, model: Any, tokenizer: Any, data: PreparedData, task: str, cfg: RunConfig
):
    """Base-model metrics, cached in the run dir so --resume (or a re-run) does not recompute them.

    The cache is keyed by what the numbers depend on (model, data settings and hashes, eval settings, task),
    so a re-run with other data or settings in the same run directory evaluates afresh.
    """
    run_dir = RunDir(run_dir)  # also a plain path
    path = run_dir.base_eval
    key = hashlib.sha256(
        json.dumps(
            [cfg.model.model_dump(), cfg.data.model_dump(), cfg.eval.model_dump(), task, data.report],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached["metrics"]
    print("tunesmith: evaluating the base model")
    result = evaluate_all(model, tokenizer, data, task, cfg, save_as=run_dir.predictions("base"))
    write_json_atomic(path, {"key": key, "metrics": result})
    return result


def load_start_model(cfg: RunConfig) -> Any:
    """The weights training starts from: ``model.name`` (with the method's load options, e.g. qlora's 4-bit
    quantization), or with ``init_from`` an earlier run's result with its adapter merged in."""
    options = load_options(cfg.method)
    if cfg.init_from is None:
        return load_causal_lm(cfg.model.name, cfg.model.dtype, cfg.model.trust_remote_code, **options)
    if options:
        raise ConfigError(
            f"init_from: {cfg.init_from} cannot be combined with method {cfg.method.name} (it re-loads the "
            "base quantized); start from the run with method lora, or export it and set model.name"
        )
    model, _, _ = load_trained(cfg.init_from, merge=True)
    return model


def prepare_file(cfg: RunConfig, tokenizer: Any, path: str | Path) -> PreparedData:
    """Prepare an arbitrary file with a run's data settings, as its validation split."""
    data_cfg = cfg.data.model_copy(
        update={"train": str(path), "validation": None, "test": None, "validation_fraction": 0.0}
    )
    prepared = prepare_data(data_cfg, tokenizer, cfg.seed)
    return PreparedData(
        train=prepared.train,
        validation=prepared.train,
        test=None,
        kind=prepared.kind,
        label_names=prepared.label_names,
        report=prepared.report,
    )


def prepare_retain(cfg: RunConfig, tokenizer: Any) -> tuple[Split, dict[str, Any]]:
    """``data.retain``'s rows, read and rendered with the run's data settings, and their report counts."""
    assert cfg.data.retain is not None
    prepared = prepare_file(cfg, tokenizer, cfg.data.retain)
    retain = prepared.train
    if not retain.input_ids:
        raise DataError(f"{cfg.data.retain}: no rows to retain (data.retain)")
    if not any(label != -100 for row in retain.labels for label in row[1:]):
        raise DataError(f"{cfg.data.retain}: no answer tokens to keep close to the base (data.retain)")
    return retain, prepared.report["splits"]["train"]


def training_rows(data: PreparedData, cfg: RunConfig) -> tuple[TokenData, LossFn]:
    """The loop's training rows and loss: the train split with next-token loss, plus ``data.retain``'s rows
    marked for :class:`~tunesmith.train.losses.RetainLoss` when the run has them."""
    train = data.train
    if data.retain is None:
        return TokenData(train.input_ids, train.labels), causal_lm_loss
    rows = RetainData(
        train.input_ids + data.retain.input_ids,
        train.labels + data.retain.labels,
        retain=[False] * len(train) + [True] * len(data.retain),
    )
    return rows, RetainLoss(cfg.data.retain_weight)


class LMPipeline(Pipeline):
    """SFT / CPT / label-word classification through the one loop."""

    name = "lm"
    distributes = True

    def prepare(self, run: Run) -> PreparedData:
        cfg = run.cfg
        data_cfg, prepare_reports = apply_prepare_steps(cfg, run.dir)
        data = prepare_data(data_cfg, run.tokenizer, cfg.seed)
        if prepare_reports:
            data.report["prepare"] = prepare_reports
        if cfg.data.retain is not None:
            data.retain, counts = prepare_retain(cfg, run.tokenizer)
            data.report["splits"]["retain"] = counts
        run.dir.write_data_report(data.report)
        print_data_report(data.report)
        if not data.train.input_ids:
            raise DataError(
                f"{cfg.data.train}: no training examples left after validation (see data_report.json)"
            )
        run.task = resolve_task(cfg, data.kind)
        return data

    def start_model(self, run: Run, data: PreparedData) -> Any:
        return load_start_model(run.cfg)

    def baselines(self, run: Run, model: Any, data: PreparedData) -> dict[str, Any]:
        cfg = run.cfg
        base = base_eval(run.dir, model, run.tokenizer, data, run.task, cfg) if cfg.eval.compare_base else {}
        before = before_training(run.dir.path, model, run.tokenizer, data, run.task, cfg)  # ICL + probes
        return {"base": base, "evidence": before}

    def fit(self, run: Run, model: Any, data: PreparedData) -> Fit:
        cfg = run.cfg
        seed_everything(cfg.seed)  # training randomness must not depend on whether the base was evaluated
        model = prepare_model(model, cfg.method)
        val = data.validation
        train_data, loss_fn = training_rows(data, cfg)
        result = train_loop(
            model,
            train_data,
            TokenData(val.input_ids, val.labels) if val is not None else None,
            cfg.train,
            loss_fn=loss_fn,
            seed=cfg.seed,
            run_dir=run.dir.path,
            pad_id=run.tokenizer.pad_token_id,
            resume=run.resume,
            make_optimizer=optimizer_for(cfg.method),
            hooks=run.hooks,
        )
        run.timings["train_s"] = result.train_seconds
        return Fit(model, result, result.interrupted)

    def save(self, run: Run, fit: Fit) -> None:
        save_trained(fit.model, run.tokenizer, run.dir.path)

    def evaluate(self, run: Run, fit: Fit, data: PreparedData, before: dict[str, Any]) -> dict[str, Any]:
        t_eval = time.perf_counter()
        save_as = run.dir.predictions("tuned")
        tuned = evaluate_all(fit.model, run.tokenizer, data, run.task, run.cfg, save_as=save_as)
        run.timings["tuned_eval_s"] = time.perf_counter() - t_eval
        base = before["base"]
        return {s: {"base": base.get(s), "tuned": m} if base else {"tuned": m} for s, m in tuned.items()}

    def summarise(self, run: Run, fit: Fit, data: PreparedData, evals: dict[str, Any]) -> Summary:
        assert fit.result is not None
        return loop_summary(run, fit.model, run.task, fit.result, evals, data)

    def evidence(self, run: Run, fit: Fit, data: PreparedData, before: Any, evals: dict[str, Any]) -> Any:
        """Baselines, forgetting, overfitting and gates."""
        tuned_evals = {split: v["tuned"] for split, v in evals.items()}
        return after_training(
            run.dir.path,
            fit.model,
            run.tokenizer,
            data,
            run.task,
            run.cfg,
            before["evidence"],
            tuned_evals,
            fit.result,
        )


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a finished lm run on ``data`` (default: the run's own validation/test splits)."""
    model, tokenizer, cfg = load_trained(run_dir)
    if data is not None:
        prepared = prepare_file(cfg, tokenizer, data)
        if prepared.label_names is None:
            prepared.label_names = RunDir(run_dir).label_names()
    else:
        prepared = prepare_data(cfg.data, tokenizer, cfg.seed)
    task = resolve_task(cfg, prepared.kind)
    return evaluate_all(model, tokenizer, prepared, task, cfg)


def predict(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    fmt: str = "auto",
    index: str | Path | None = None,
    k: int = 4,
) -> Path:
    """One prediction per input row, in input order: generated text, or the label for classification.

    With ``index`` (a ``tunesmith rag index`` directory) each question is first replaced by the retrieval
    prompt over its top-``k`` chunks (:func:`tunesmith.rag.retrieve.with_retrieval`, the shape ``data raft``
    trains on) and JSONL rows also carry ``retrieved`` (the chunk ids).

    A generation run answers questions: chat rows ending with the user's turn, ``prompt`` rows,
    ``instruction`` (+``input``) rows without ``output``, a ``.txt`` with one question per line (a blank line
    gets an empty answer), and training rows (their answer is not read). Each prompt is rendered as training
    rendered it (chat template, ``data.system_prompt``, ``data.prefix``) plus the generation prompt.

    ``fmt``: ``jsonl`` (``{"prediction": ...}`` or label rows with probabilities), ``text`` (one answer per
    line, see :func:`write_predictions`), ``labels`` (classification runs: one label id per line, the format
    benchmarks read), or ``auto``: ``.txt`` outputs get ``labels`` (classification) or ``text``
    (generation), anything else JSONL.
    """
    label_names = RunDir(run_dir).read_data_report().get("label_names")
    if not label_names:  # a generation run: the inputs are prompts
        return _predict_answers(run_dir, data, out, fmt, index, k)
    if index is not None:
        raise ConfigError("--index retrieves context for generation runs; this run is a classifier")
    model, tokenizer, cfg = load_trained(run_dir)
    if Path(data).suffix == ".txt":  # a classification run reads plain text: one input a line
        split, task = _plain_text_split(data), "classification"
    else:
        prepared = prepare_file(cfg, tokenizer, data)
        split, task = prepared.train, resolve_task(cfg, prepared.kind)
    if task == "classification":
        predicted, probs = classify(model, tokenizer, split, label_names, cfg)
        rows = [
            {"label": int(p), "label_name": label_names[p], "probs": [round(x, 6) for x in pr]}
            for p, pr in zip(predicted, probs, strict=True)
        ]
    else:
        rows = [{"prediction": text} for text in predict_texts(model, tokenizer, split, cfg)]
    return write_predictions(out, rows, fmt)


def _predict_answers(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    fmt: str,
    index: str | Path | None = None,
    k: int = 4,
) -> Path:
    """A generation run's answers to the prompts in ``data`` (see :func:`predict`), in input order."""
    if fmt == "labels":  # before loading and generating anything
        raise ConfigError(LABELS_NEED_CLASSIFICATION)
    inputs = read_prompts(data)  # bad rows stop here, before the model loads
    # Inputs that already are retrieval prompts (`rag contexts`) name their chunks: rows report them too.
    retrieved = [None if ex is None else given_chunks(ex) for ex in inputs]
    if index is not None:  # retrieval before the prefix: training rendered the RAFT prompt, then prefixed it
        # deferred: bm25s loads only for predictions that retrieve
        from tunesmith.rag.index import RetrievalIndex
        from tunesmith.rag.retrieve import with_retrieval

        loaded = RetrievalIndex.load(index)
        for i, ex in enumerate(inputs):
            if ex is not None:
                inputs[i], retrieved[i] = with_retrieval(ex, loaded, k)
    model, tokenizer, cfg = load_trained(run_dir)
    if cfg.data.prefix:  # training put it before every input; so must prediction
        inputs = [ex if ex is None else with_prefix(ex, cfg.data.prefix) for ex in inputs]
    asked = [ex for ex in inputs if ex is not None]
    answers = iter(predict_texts(model, tokenizer, Split(asked, [], []), cfg) if asked else [])
    rows: list[dict[str, Any]] = [{"prediction": "" if ex is None else next(answers)} for ex in inputs]
    if index is not None or any(ids is not None for ids in retrieved):
        for row, ids in zip(rows, retrieved, strict=True):
            row["retrieved"] = ids or []
    return write_predictions(out, rows, fmt)


def _plain_text_split(path: str | Path) -> Split:
    """Every line of ``path`` (blank ones too, so output line i answers input line i) as an unlabeled
    classification example; the label 0 is a placeholder that prompts never include."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    examples = [Example(str(path), i, "classification", text=t, label=0) for i, t in enumerate(lines, 1)]
    return Split(examples, [], [])
