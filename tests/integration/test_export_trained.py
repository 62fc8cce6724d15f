"""Every export format of a real (short) LoRA run on the default model, read back by its users' loaders.

The run is ``recipes/demo.yaml`` (LoRA r 32 on every linear layer of SmolLM2-135M) for 2 steps on 16 store
questions, no warm-up. Reference: the run as tunesmith loads it -- base plus the *unmerged* adapter -- on
the fixed chats of ``bench/export_roundtrip.py`` (every position scored; one base load for the module).
Errors are relative: max |logits - reference| / max |reference logit|.

Measured here (CPU, fp32, 1 thread; the whole module ~85 s): the 2 steps move the logits by up to 18
(top-1 changes at 22 % of positions), so the adapter is far from zero. merged (stock transformers)
2.1e-6, asserted < 1e-5 with top-1 100 %; adapter (stock PEFT on the manifest's base) bit-identical,
asserted equal; GGUF f16 (transformers ``gguf_file=``) 1.9e-3 with top-1 100 %, asserted < 4e-3 and
>= 98 %; int8 (``load_int8``) 7.1e-2 with top-1 95.2 %, asserted < 0.15 and >= 90 %.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.export_roundtrip import all_logits, chat_ids, compare
from tunesmith.export import MANIFEST, export
from tunesmith.runs import file_sha256, load_trained

pytestmark = pytest.mark.integration

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"
PRODUCTS = ["travel mug", "desk lamp", "wool scarf", "canvas tote"]


def _write_data(folder: Path) -> tuple[Path, Path, Path]:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{q} the {p}?"},
                {"role": "assistant", "content": f"The {p} {a}."},
            ]
        }
        for p in PRODUCTS
        for q, a in [
            ("What does it cost,", "costs 19.90 EUR"),
            ("What is the warranty on", "has a 3-year warranty"),
            ("Which colours are there for", "comes in teal and sand"),
            ("What is the material of", "is made of recycled PET"),
        ]
    ]
    general = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in [("What is the capital of Italy?", "Rome."), ("How many legs does a dog have?", "Four.")]
    ]
    train, validation, retain = (folder / f"{n}.jsonl" for n in ("train", "validation", "retain"))
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    validation.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    retain.write_text("".join(json.dumps(r) + "\n" for r in general))  # data.retain on the real model
    return train, validation, retain


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    import tunesmith.api as ts

    root = tmp_path_factory.mktemp("trained")
    train, validation, retain = _write_data(root)
    overrides = [
        "name=smol-trained",
        f"output_dir={root}",
        f"data.train={train}",
        f"data.validation={validation}",
        f"data.retain={retain}",
        "train.max_steps=2",
        # The lr the bounds below were measured at (the demo's until 2026-12-06): the demo's 2e-3 moves the
        # logits further in 2 steps and int8's top-1 agreement then measured 86 %, a different test.
        "train.lr=1.5e-3",
        "train.batch_size=4",
        "train.warmup_steps=0",
        "train.log_every=1",
        "eval.compare_base=false",
        "eval.icl_shots=[]",
        "eval.max_examples=2",
        "eval.max_new_tokens=4",
    ]
    summary = ts.train(RECIPE, overrides=overrides)
    assert summary["train"]["steps"] == 2 and summary["method"] == "lora"
    return root / "smol-trained"


@pytest.fixture(scope="module")
def ref(run_dir, default_tokenizer) -> SimpleNamespace:
    """Logits of the unmerged run and, from the same load with the adapter switched off, of the base."""
    model, _, _ = load_trained(run_dir, merge=False)
    ids = chat_ids(default_tokenizer)
    tuned = all_logits(model, ids)
    with model.disable_adapter():
        base = all_logits(model, ids)
    return SimpleNamespace(ids=ids, tuned=tuned, base=base)


def test_the_short_run_changed_the_model(ref):
    assert compare(ref.base, ref.tuned)["max_abs_err"] > 1.0


def test_merged_matches_the_unmerged_run(run_dir, ref, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export(run_dir, "merged", tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in key for key in model.state_dict())
    got = compare(ref.tuned, all_logits(model, ref.ids))
    assert got["max_rel_err"] < 1e-5 and got["top1_agreement"] == 1.0, got
    manifest = json.loads((out / MANIFEST).read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert manifest["data_hashes"] == summary["data_hashes"] and manifest["data_hashes"]


def test_adapter_loads_in_stock_peft_and_equals_the_run(run_dir, ref, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = export(run_dir, "adapter", tmp_path / "adapter")
    for src in (run_dir / "adapter").iterdir():
        assert file_sha256(out / src.name) == file_sha256(src)
    base_dir = json.loads((out / MANIFEST).read_text())["base_model"]["path"]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out)
    got = all_logits(model.eval(), ref.ids)
    assert all(torch.equal(g, r) for g, r in zip(got, ref.tuned, strict=True))


def test_gguf_f16_round_trip(run_dir, ref, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunesmith.export.gguf_export import GGUF_NAME

    out = export(run_dir, "gguf", tmp_path / "f16", gguf_type="f16")
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=GGUF_NAME, dtype=torch.float32)
    got = compare(ref.tuned, all_logits(model, ref.ids))
    assert got["max_rel_err"] < 4e-3 and got["top1_agreement"] >= 0.98, got
    assert (out / "Modelfile").exists()


def test_int8_round_trip(run_dir, ref, tmp_path):
    from tunesmith.export.int8 import load_int8

    out = export(run_dir, "int8", tmp_path / "int8")
    model, _ = load_int8(out)
    got = compare(ref.tuned, all_logits(model, ref.ids))
    assert got["max_rel_err"] < 0.15 and got["top1_agreement"] >= 0.9, got
