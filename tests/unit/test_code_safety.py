"""Code safety, checked on the package's syntax tree (stdlib ``ast``): nothing in tunesmith/ unpickles, calls
``torch.load`` without ``weights_only=True``, runs ``eval``/``exec`` on strings, loads YAML with a full
loader, or turns on ``trust_remote_code`` by itself; run names and served file ids cannot leave their roots.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tunesmith.config import ModelConfig, load_config
from tunesmith.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[2] / "tunesmith"

ALLOWED = {
    # The python grader's child process: exec-ing the user's grader source is its whole job; it runs in a
    # separate process with a timeout, a memory limit and no network (tunesmith/evaluate/python_grader.py).
    ("evaluate/_grader_runner.py", "exec"),
}


def _dotted(node: ast.AST) -> str:
    """``torch.load`` for ``torch.load(...)``'s func; ``''`` for anything that is not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _true(call: ast.Call, keyword: str) -> bool:
    return any(
        k.arg == keyword and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def findings(source: str) -> list[tuple[int, str]]:
    """(line, what) for each unsafe call in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load"):
            found.append((node.lineno, name))
        elif name == "torch.load" and not _true(node, "weights_only"):
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            found.append((node.lineno, name.removeprefix("builtins.")))
        elif name == "yaml.load" and not any(
            k.arg == "Loader" and "Safe" in _dotted(k.value) for k in node.keywords
        ):
            found.append((node.lineno, "yaml.load without a SafeLoader"))
        if _true(node, "trust_remote_code"):
            found.append((node.lineno, "trust_remote_code=True"))
    return found


def test_the_scanner_finds_each_unsafe_call():
    bad = """
import pickle, torch, yaml
pickle.loads(b"")
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
torch.load("x.pt", weights_only=True)
eval("1 + 1")
exec("x = 1")
yaml.load("a: 1", Loader=yaml.Loader)
yaml.load("a: 1", Loader=yaml.SafeLoader)
AutoModel.from_pretrained("m", trust_remote_code=True)
AutoModel.from_pretrained("m", trust_remote_code=cfg.trust)
model.eval()
"""
    assert [what for _, what in findings(bad)] == [
        "pickle.loads",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "eval",
        "exec",
        "yaml.load without a SafeLoader",
        "trust_remote_code=True",
    ]


def test_the_package_has_no_unsafe_calls():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for line, what in findings(path.read_text(encoding="utf-8")):
            if (rel, what) not in ALLOWED:
                problems.append(f"tunesmith/{rel}:{line}: {what}")
    assert problems == []


def test_trust_remote_code_is_never_implied():
    assert ModelConfig().trust_remote_code is False
    assert load_config(None, []).model.trust_remote_code is False


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "/abs"])
def test_a_run_name_cannot_leave_output_dir(name):
    with pytest.raises(ConfigError, match="must be a plain directory name"):
        load_config(None, [f"name={name}"])


def test_served_files_and_jobs_are_looked_up_by_id_not_by_path(tmp_path):
    from tunesmith.jobs.store import Store

    store = Store(tmp_path)
    row = store.add_file("x.jsonl", b"{}\n", "fine-tune")
    assert store.blob_path(row["sha256"]).parent == store.blobs  # the name on disk is the content's hash
    for probe in ("../../etc/passwd", "/etc/passwd", row["id"] + "/../x"):
        assert store.file(probe) is None and store.job(probe) is None


def test_importing_tunesmith_quiets_the_bitsandbytes_hub_kernel_warning() -> None:
    # On AVX512-BF16 CPUs bitsandbytes warns at import that it could not fetch a kernel from the hub; every
    # command would print it. On other CPUs it never fires, so the logger's level is what is checked.
    import logging

    import tunesmith  # noqa: F401

    assert logging.getLogger("bitsandbytes.backends.cpu.ops").getEffectiveLevel() >= logging.ERROR
