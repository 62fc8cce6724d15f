"""``tunesmith data ...``: look at, check and fix a data file before training on it.

::

    tunesmith data inspect train.jsonl [--max-length 512] [--json inspect.json] [--html inspect.html]
    tunesmith data lint train.jsonl [--system-prompt "You are ..."]        # exit 1 on template errors
    tunesmith data clean raw.jsonl --out work/clean.jsonl
    tunesmith data dedup work/clean.jsonl --out work/dedup.jsonl
    tunesmith data dedup a.jsonl b.jsonl --out a.dedup.jsonl b.dedup.jsonl   # across files: b loses a's rows
    tunesmith data pii work/dedup.jsonl --out work/redacted.jsonl
    tunesmith data augment work/redacted.jsonl --out work/aug.jsonl --ops swap,delete
    tunesmith data split work/aug.jsonl --out splits/ --ratios 0.8,0.1,0.1  # augmented rows stay in train
    tunesmith data leakage splits/train.jsonl --eval splits/validation.jsonl --out splits/train.noleak.jsonl
    tunesmith data contamination splits/test.jsonl --train splits/train.jsonl
    tunesmith data from-feedback traffic/ --out feedback/   # served answers + ratings -> SFT, preference rows

Every step that writes a file takes ``--out`` and appends its report to ``--report`` (default:
``data_report.json`` beside the output), and ``--on-bad-row stop|skip`` (``data.on_bad_row``: stop at an
unreadable row with file:line, or skip it and count it under ``bad_rows`` in the report). Exit codes: 0 done,
1 a check failed (lint errors, contamination over ``--fail-above``), 2 tunesmith error
(``tunesmith: error: ...``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tunesmith.data.tools.synth import TASKS, write_task
from tunesmith.errors import DataError, guarded
from tunesmith.io import write_json_atomic, write_text_atomic


def _report_path(args: argparse.Namespace, beside: Path) -> Path:
    return Path(args.report) if args.report else beside / "data_report.json"


def _record(args: argparse.Namespace, report: dict[str, Any], beside: Path) -> Path:
    path = _report_path(args, beside)
    # deferred: keeps `tunesmith --help` fast (each tool loads on its command)
    from tunesmith.data.tools.stream import add_report_entry

    add_report_entry(path, report)
    return path


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or "none"


def _print_bad_rows(report: dict[str, Any]) -> None:
    bad = report["bad_rows"]
    if bad["skipped"]:
        print(f"  skipped unreadable rows: {bad['skipped']} (first: {bad['examples'][0]})")


def _print_transform(report: dict[str, Any], report_path: Path) -> None:
    """The short summary of a row step (clean, dedup, pii, leakage)."""
    print(
        f"tunesmith data {report['step']}: {report['rows_in']} rows in, {report['rows_out']} out -> "
        f"{report['output']}"
    )
    print(f"  dropped: {_counts(report['dropped'])}")
    if report["changed"]:
        print(f"  changed: {_counts(report['changed'])}")
    _print_bad_rows(report)
    print(f"  report: {report_path}")


def _tokenizer(args: argparse.Namespace) -> Any:
    # deferred: keeps `tunesmith --help` fast (each tool loads on its command)
    from tunesmith.data.render import ensure_chat_template

    # deferred: torch-free data tools until a tokenizer is needed
    from tunesmith.models.loading import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    if args.chat_template:
        path = Path(args.chat_template)
        if not path.is_file():
            raise DataError(f"chat template file {path} does not exist")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    ensure_chat_template(tokenizer)
    return tokenizer


def _color(choice: str) -> bool:
    return choice == "always" or (choice == "auto" and sys.stdout.isatty())


# ------------------------------------------------------------------------------------------- handlers


@guarded
def _inspect(args: argparse.Namespace) -> int:
    # deferred: keeps `tunesmith --help` fast (each tool loads on its command)
    from tunesmith.data.tools.inspect import format_inspect, inspect_file, inspect_html

    report = inspect_file(
        args.file,
        _tokenizer(args),
        max_length=args.max_length,
        fmt=args.format,
        system_prompt=args.system_prompt,
        label_prompt=args.label_prompt,
    )
    print(format_inspect(report, color=_color(args.color)))
    if args.json:
        write_json_atomic(args.json, report)
        print(f"  json report: {args.json}")
    if args.html:
        write_text_atomic(args.html, inspect_html(report))
        print(f"  html report: {args.html}")
    return 0


@guarded
def _lint(args: argparse.Namespace) -> int:
    # deferred: keeps `tunesmith --help` fast (each tool loads on its command)
    from tunesmith.data.tools.lint import format_lint, lint_file

    report = lint_file(
        args.file,
        _tokenizer(args),
        system_prompt=args.system_prompt,
        fmt=args.format,
        label_prompt=args.label_prompt,
    )
    print(format_lint(report))
    if args.json:
        write_json_atomic(args.json, report)
    return 0 if report["ok"] else 1


@guarded
def _clean(args: argparse.Namespace) -> int:
    # deferred: keeps `tunesmith --help` fast (each tool loads on its command)
    from tunesmith.data.tools.clean import CleanOptions, clean_file

    options = CleanOptions(
        unicode=args.unicode,
        strip_html=not args.keep_html,
        drop_empty=not args.keep_empty,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        missing=args.missing,
        format=args.format,
    )
    report = clean_file(args.file, args.out, options, on_bad_row=args.on_bad_row)
    _print_transform(report, _record(args, report, Path(args.out).parent))
    return 0


@guarded
def _dedup(args: argparse.Namespace) -> int:
    # deferred: keeps `tunesmith --help` fast (each tool loads on its command)
    from tunesmith.data.tools.dedup import dedup_file, dedup_files, near_settings

    config, index = near_settings(args.threshold, args.num_perm, args.index, args.tmp_dir)
    near, policy = not args.exact_only, args.on_bad_row
    if len(args.file) == 1 and len(args.out) == 1:
        report = dedup_file(
            args.file[0], args.out[0], near=near, config=config, on_bad_row=policy, index=index
        )
        _print_transform(report, _record(args, report, Path(args.out[0]).parent))
        return 0
    report = dedup_files(args.file, args.out, near=near, config=config, on_bad_row=policy, index=index)
    report_path = _record(args, report, Path(args.out[0]).parent)
    print(
        f"tunesmith data dedup: {len(args.file)} files, {report['rows_in']} rows in, {report['rows_out']} out"
    )
    for entry in report["files"]:
        print(
            f"  {entry['input']}: {entry['rows_in']} in, {entry['rows_out']} out -> {entry['output']}; "
            f"dropped: {_counts(entry['dropped'])}"
        )
    _print_bad_rows(report)
    print(f"  report: {report_path}")
    return 0


@guarded
def _leakage(args: argparse.Namespace) -> int:
    # deferred: keeps `tunesmith --help` fast (each tool loads on its command)
    from tunesmith.data.tools.dedup import find_leakage, near_settings

    config, index = near_settings(args.threshold, args.num_perm, args.index, args.tmp_dir)
    near = not args.exact_only
    report = find_leakage(
        args.file, args.eval, args.out, near=near, config=config, on_bad_row=args.on_bad_row, index=index
    )
    _print_transform(report, _record(args, report, Path(args.out).parent))
    per_file = report["details"]["per_eval_file"]
    if per_file:
        print(f"  leaks per eval file: {_counts(per_file)}")
    return 0


@guarded
def _contamination(args: argparse.Namespace) -> int:
    # deferred: keeps `tunesmith --help` fast (each tool loads on its command)
    from tunesmith.data.tools.dedup import contamination

    report = contamination(args.file, args.train, n=args.n)
    print(
        f"tunesmith data contamination: {report['contaminated_rows']} of {report['eval_rows']} rows of "
        f"{report['eval']} share a {report['n']}-gram with {report['train']} "
        f"({100 * report['fraction']:.2f}%)"
    )
    lines = ", ".join(str(r["line"]) for r in report["rows"][:10])
    if lines:
        print(f"  first contaminated lines: {lines}")
    if args.report:
        print(f"  report: {_record(args, report, Path(args.report).parent)}")
    if args.fail_above is not None and report["fraction"] > args.fail_above:
        print(f"  contamination {report['fraction']:.4f} is above --fail-above {args.fail_above}")
        return 1
    return 0


@guarded
def _pii(args: argparse.Namespace) -> int:
    # deferred: keeps `tunesmith --help` fast (each tool loads on its command)
    from tunesmith.data.tools.pii import redact_file

    report = redact_file(args.file, args.out, names=args.names, on_bad_row=args.on_bad_row)
    _print_transform(report, _record(args, report, Path(args.out).parent))
    print(f"  replacements: {_counts(report['details']['occurrences'])}; names: {report['details']['names']}")
    return 0


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"ratios must be numbers separated by commas, got {text!r}"
        ) from None


@guarded
def _split(args: argparse.Namespace) -> int:
    # deferred: keeps `tunesmith --help` fast (each tool loads on its command)
    from tunesmith.data.tools.augment import split_keeping_augmented

    report = split_keeping_augmented(
        args.file,
        args.out,
        ratios=args.ratios,
        seed=args.seed,
        stratify_by=args.stratify_by,
        group_by=args.group_by,
        on_bad_row=args.on_bad_row,
    )
    report_path = _record(args, report, Path(args.out))
    print(f"tunesmith data split: {_counts(report['rows'])} -> {args.out}")
    aug = report["augmented"]
    if aug["to_train"] or aug["dropped_source_held_out"]:
        print(
            f"  augmented rows: {aug['to_train']} to train, {aug['dropped_source_held_out']} dropped "
            "(their source row is in validation/test)"
        )
    _print_bad_rows(report)
    print(f"  report: {report_path}")
    return 0


@guarded
def _augment(args: argparse.Namespace) -> int:
    # deferred: keeps `tunesmith --help` fast (each tool loads on its command)
    from tunesmith.data.tools.augment import Paraphraser, augment_file

    ops = [op.strip() for op in args.ops.split(",")]
    paraphraser = Paraphraser(args.model, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    report = augment_file(
        args.file,
        args.out,
        n=args.n,
        ops=ops,
        seed=args.seed,
        rate=args.rate,
        paraphraser=paraphraser,
        on_bad_row=args.on_bad_row,
    )
    report_path = _record(args, report, Path(args.out).parent)
    print(
        f"tunesmith data augment: {report['rows_in']} rows in, {report['rows_out']} out "
        f"({report['augmented_rows']} new) -> {report['output']}"
    )
    print(f"  new rows per op: {_counts(report['augmented'])}; dropped: {_counts(report['dropped'])}")
    _print_bad_rows(report)
    print(f"  report: {report_path}")
    return 0


# ---------------------------------------------------------------------------------------------- parser


def _data_default(name: str) -> Any:
    """A ``data.*`` default from the config schema (light to import: building the parser stays fast)."""
    # deferred: keeps `tunesmith --help` fast (each tool loads on its command)
    from tunesmith.config import DataConfig

    return DataConfig.model_fields[name].default


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="model whose tokenizer renders the data")
    p.add_argument("--chat-template", help="file with a Jinja chat template to use instead of the model's")
    p.add_argument("--format", default="auto", help="row format (auto, chat, instruction, ...)")
    p.add_argument(
        "--system-prompt", help="data.system_prompt: the system turn used in training and inference"
    )
    p.add_argument("--label-prompt", default=_data_default("label_prompt"), help="data.label_prompt")


def _out_args(
    p: argparse.ArgumentParser, out_help: str = "output JSONL file", nargs: str | None = None
) -> None:
    p.add_argument("--out", required=True, nargs=nargs, help=out_help)
    p.add_argument("--report", help="report file to append to (default: data_report.json beside --out)")
    p.add_argument(
        "--on-bad-row",
        choices=["stop", "skip"],
        default=_data_default("on_bad_row"),
        help="data.on_bad_row: stop at an unreadable row (file:line), or skip it and count it in the report",
    )


def _near_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exact-only", action="store_true", help="only exact (normalised) duplicates")
    p.add_argument("--threshold", type=float, default=0.8, help="near-duplicate Jaccard threshold")
    p.add_argument(
        "--num-perm",
        type=int,
        default=128,
        help="MinHash permutations: fewer = less memory, rougher estimate",
    )
    p.add_argument(
        "--index",
        choices=["auto", "memory", "disk"],
        default="auto",
        help="keep seen rows in memory (fast) or in a temporary SQLite file (bounded RAM, slower); "
        "auto = disk above 1 GiB of input",
    )
    p.add_argument("--tmp-dir", help="folder for the disk index (default: beside --out)")


def _add_looking(sub: Any) -> None:
    p = sub.add_parser(
        "inspect", help="format, counts, bad rows, token lengths, labels, one rendered example"
    )
    p.add_argument("file")
    p.add_argument("--max-length", type=int, default=_data_default("max_length"), help="data.max_length")
    _model_args(p)
    p.add_argument("--json", help="also write the report as JSON here")
    p.add_argument("--html", help="also write a self-contained HTML page here")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("lint", help="check training renders match inference prompts (exit 1 on errors)")
    p.add_argument("file")
    _model_args(p)
    p.add_argument("--json", help="also write the report as JSON here")
    p.set_defaults(func=_lint)

    p = sub.add_parser("contamination", help="how many eval rows share a word n-gram with the train file")
    p.add_argument("file", help="evaluation file")
    p.add_argument("--train", required=True, help="training file")
    p.add_argument("--n", type=int, default=8, help="n-gram length in words")
    p.add_argument("--report", help="report file to append to (default: none)")
    p.add_argument("--fail-above", type=float, help="exit 1 when the contaminated fraction is above this")
    p.set_defaults(func=_contamination)


def _add_writing(sub: Any) -> None:
    p = sub.add_parser("clean", help="strip HTML, normalise Unicode/whitespace, drop empty or odd rows")
    p.add_argument("file")
    _out_args(p)
    p.add_argument("--unicode", choices=["NFC", "NFKC", "none"], default="NFC")
    p.add_argument("--keep-html", action="store_true", help="do not strip HTML remnants")
    p.add_argument("--keep-empty", action="store_true", help="do not drop rows with nothing to learn")
    p.add_argument("--min-chars", type=int, help="drop rows with fewer characters of text")
    p.add_argument("--max-chars", type=int, help="drop rows with more characters of text")
    p.add_argument(
        "--missing",
        choices=["drop", "fill"],
        default="drop",
        help='rows lacking a field: drop, or fill by field kind (prompt text "", metadata median / most '
        "common; a missing answer or label always drops the row)",
    )
    p.add_argument("--format", default="auto")
    p.set_defaults(func=_clean)

    p = sub.add_parser("dedup", help="drop exact and near-duplicate rows (first occurrence kept)")
    p.add_argument("file", nargs="+", help="one file, or several deduplicated against each other in order")
    _out_args(p, "output JSONL file, one per input", nargs="+")
    _near_args(p)
    p.set_defaults(func=_dedup)

    p = sub.add_parser("leakage", help="drop training rows that repeat validation/test rows")
    p.add_argument("file", help="training file")
    p.add_argument("--eval", nargs="+", required=True, help="validation/test files to protect")
    _out_args(p, "training rows without leaks (JSONL)")
    _near_args(p)
    p.set_defaults(func=_leakage)

    p = sub.add_parser("pii", help="replace e-mails, phones, cards, IBANs, IDs, IPs with placeholders")
    p.add_argument("file")
    _out_args(p)
    p.add_argument("--names", action="store_true", help="also person names (needs spaCy and a model)")
    p.set_defaults(func=_pii)

    p = sub.add_parser("split", help="seeded train/validation/test split; augmented rows stay in train")
    p.add_argument("file")
    _out_args(p, "directory for train.jsonl, validation.jsonl, test.jsonl")
    p.add_argument("--ratios", type=_ratios, default=(0.8, 0.1, 0.1), help="train,validation[,test]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stratify-by", help="row key (a label) whose proportions every split keeps")
    p.add_argument("--group-by", help="row key whose rows always share a split (user, document...)")
    p.set_defaults(func=_split)

    p = sub.add_parser("augment", help="add paraphrased / word-edited copies of training rows")
    p.add_argument("file", help="training file (not validation/test)")
    _out_args(p)
    p.add_argument("--n", type=int, default=1, help="new rows per row and op")
    p.add_argument("--ops", default="paraphrase,swap,delete", help="comma list of paraphrase, swap, delete")
    p.add_argument("--model", default="default", help="model that writes the paraphrases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.1, help="fraction of words swapped / deleted")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=_augment)


def _add_synth(sub: Any) -> None:
    p = sub.add_parser("synth", help="write a synthetic task file (arithmetic word problems for RL)")
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--n", type=int, default=400, help="rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output JSONL file")
    p.set_defaults(func=_synth)

    p = sub.add_parser(
        "from-feedback", help="captured answers + /v1/feedback -> SFT rows (corrections) and preference pairs"
    )
    p.add_argument("dir", help="the DIR of `tunesmith serve --capture DIR`")
    p.add_argument("--out", required=True, help="folder for sft.jsonl, preference.jsonl, from_feedback.json")
    p.set_defaults(func=_from_feedback)


def _from_feedback(args: argparse.Namespace) -> int:
    from tunesmith.data.traffic import from_feedback  # deferred: keeps `tunesmith --help` fast

    report = from_feedback(args.dir, args.out)
    print(
        f"tunesmith: {report['feedback']} rating(s) on {report['responses']} captured answer(s) -> "
        f"{report['sft_rows']} SFT row(s) in {args.out}/sft.jsonl, {report['preference_rows']} preference "
        f"row(s) in {args.out}/preference.jsonl"
    )
    if report["orphaned"]:
        print(f"  skipped {report['orphaned']} rating(s) of answers no longer in the capture (rotated away)")
    return 0


def _synth(args: argparse.Namespace) -> int:
    path = write_task(args.task, args.n, args.seed, args.out)
    print(f"wrote {args.n} {args.task} rows to {path}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``data`` and its subcommands on the ``tunesmith`` parser's subparsers.

    Each subcommand sets ``func(args) -> exit code``; TunesmithErrors are printed and give exit code 2.
    """
    data = subparsers.add_parser("data", help="inspect, lint, clean, dedup, split and augment data files")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="STEP")
    _add_looking(sub)
    _add_writing(sub)
    _add_synth(sub)
    # deferred: the RAFT builder needs bm25s, loaded only for `data raft`
    from tunesmith.rag.cli import add_raft_parser

    add_raft_parser(sub)


def main(argv: list[str] | None = None) -> int:
    """Run ``tunesmith data ...`` on its own (``python -m tunesmith.data.tools.cli inspect FILE``)."""
    parser = argparse.ArgumentParser(prog="tunesmith")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
