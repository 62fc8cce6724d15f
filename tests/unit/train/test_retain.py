"""``data.retain``: retain rows train towards the base's next-token distribution (KL), others on text."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from tests.conftest import make_tiny_llama
from tunesmith.api import train
from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.infer.batching import RetainData
from tunesmith.train.losses import RetainLoss

VOCAB = 300


def _lora_model() -> torch.nn.Module:
    """A tiny LoRA model whose adapter already moves the output (B random, not zero), so KL > 0."""
    model = make_tiny_llama(VOCAB)
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, config)


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    lengths = [9, 12, 7, 11]
    ids = [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in lengths]
    labels = [[-100] * 4 + row[4:] for row in ids]  # a 4-token prompt, the rest is the answer
    data = RetainData(ids, labels, retain=[False, True, False, True])
    return data.collate([0, 1, 2, 3], pad_id=2)


def _reference(model, batch, weight):
    """Plain PyTorch: full logits with the adapter on and off, CE on training rows, KL on retain rows."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    logits = model(**inputs).logits[:, :-1].float()
    with torch.no_grad(), model.disable_adapter():
        base = model(**inputs).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    keep = batch["retain"][:, None] & mask
    learn = ~batch["retain"][:, None] & mask
    ce = F.cross_entropy(logits[learn], targets[learn], reduction="sum")
    p_base = base[keep].log_softmax(-1)
    kl = (p_base.exp() * (p_base - logits[keep].log_softmax(-1))).sum()
    return ce + weight * kl, mask.sum(), kl / keep.sum()


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_retain_loss_and_gradient_equal_a_plain_reference():
    model, batch, weight = _lora_model(), _batch(), 0.7
    loss_fn = RetainLoss(weight)
    loss, units = loss_fn(model, batch)
    loss.backward()
    ours = _grads(model)
    model.zero_grad()
    ref_loss, ref_units, ref_kl = _reference(model, batch, weight)
    ref_loss.backward()
    assert int(units) == int(ref_units) == 5 + 8 + 3 + 7  # every answer token is one unit
    assert float(ref_kl) > 1e-3  # the adapter moved the model: the KL term is really there
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    for a, b in zip(ours, _grads(model), strict=True):  # float rounding, at the gradient's own scale
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))
    assert loss_fn.pop_stats()["retain_kl"] == pytest.approx(float(ref_kl), abs=1e-6)  # logged rounded


def test_batches_without_retain_rows_are_plain_cross_entropy():
    model, batch = _lora_model(), _batch()
    batch["retain"][:] = False
    with torch.no_grad():
        loss, units = RetainLoss(5.0)(model, batch)
    targets = batch["labels"][:, 1:]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    expected = F.cross_entropy(logits[targets != -100].float(), targets[targets != -100], reduction="sum")
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert int(units) == int((targets != -100).sum())


def _chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def _cfg(tmp_path, model_dir, *extra):
    train_file, retain_file = tmp_path / "train.jsonl", tmp_path / "retain.jsonl"
    rows = [_chat(f"Item {i}?", f"It costs ${i}.") for i in range(12)]
    train_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    general = [_chat(f"What is {i} + 1?", f"{i + 1}.") for i in range(4)]
    retain_file.write_text("".join(json.dumps(row) + "\n" for row in general))
    return load_config(
        None,
        [
            f"output_dir={tmp_path}",
            f"model.name={model_dir}",
            f"data.train={train_file}",
            f"data.retain={retain_file}",
            "data.validation_fraction=0.25",
            "train.max_steps=8",
            "train.batch_size=4",
            "train.lr=1e-2",
            "train.precision=fp32",
            "train.log_every=1",
            "eval.probes=false",
            "eval.icl_shots=[]",
            "eval.safety_probe=false",
            *extra,
        ],
    )


def test_a_run_trains_with_retain_rows_and_logs_their_kl(tmp_path, tiny_model_dir):
    train(_cfg(tmp_path, tiny_model_dir, "name=keep"))
    run = tmp_path / "keep"
    report = json.loads((run / "data_report.json").read_text())
    assert report["splits"]["retain"]["kept"] == 4 and report["splits"]["retain"]["target_tokens"] > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train_loss" in r]
    assert len(steps) == 8
    # 9 training rows + 4 retain rows in batches of 4, two epochs: every retain row is seen twice. KL is 0
    # while LoRA is still the base (B = 0) and positive once the adapter has moved the model.
    kls = [r["retain_kl"] for r in steps if "retain_kl" in r]
    assert len(kls) >= 2 and all(k >= 0 for k in kls) and max(kls) > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["method.name=full"], r"data\.retain: .* needs an adapter method \(lora, qlora, dora, ia3\)"),
        (["train.packing=true"], r"data\.retain: .* cannot be combined with train\.packing"),
        (["objective.name=dpo"], r"data\.retain: .* applies to sft runs"),
        (["stages=[{name: a}]"], r"data\.retain is not supported in staged runs"),
    ],
)
def test_retain_config_errors_name_the_key(tmp_path, tiny_model_dir, extra, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, tiny_model_dir, *extra)
