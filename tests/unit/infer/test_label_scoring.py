"""Label scoring by log-likelihood: the KV-cached shared-prefix path equals one plain forward per
(prompt, label) pair, computed here independently on unpadded sequences."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model

from tests.conftest import make_tiny_llama
from tunesmith.infer.generate import label_log_likelihoods

VOCAB = 96
PAD = 2
PROMPTS = [[5, 9, 11], [7, 8, 9, 10, 11, 12, 13], [40], [3, 4, 5, 6, 7]]
LABELS = [[20, 2], [21, 22, 23, 2], [30], [24, 25, 2]]  # lengths 2, 4, 1 and 3


def _reference(model, prompts, labels) -> torch.Tensor:
    """Each pair alone, no padding, no cache: sum of log p(label token | everything before it)."""
    out = torch.zeros(len(prompts), len(labels))
    for i, prompt in enumerate(prompts):
        for j, label in enumerate(labels):
            ids = torch.tensor([prompt + label])
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            out[i, j] = sum(logprobs[len(prompt) - 1 + k, tok] for k, tok in enumerate(label))
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_shared_prefix_scores_equal_one_pass_per_pair(batch_size):
    model = make_tiny_llama(VOCAB).eval()
    with torch.no_grad():
        expected = _reference(model, PROMPTS, LABELS)
        got = label_log_likelihoods(model, PROMPTS, LABELS, PAD, batch_size=batch_size)
    assert got.shape == (4, 4)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_shared_prefix_through_a_lora_model():
    model = make_tiny_llama(VOCAB)
    torch.nn.init.normal_(model.model.layers[0].self_attn.q_proj.weight)  # something for LoRA to sit on
    peft = get_peft_model(
        model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():
        expected = _reference(peft.eval(), PROMPTS, LABELS)
        got = label_log_likelihoods(peft, PROMPTS, LABELS, PAD, batch_size=2)
    assert torch.allclose(got, expected, atol=1e-4)


def test_prompt_tuning_takes_the_per_pair_path_and_keeps_its_virtual_tokens():
    peft = get_peft_model(
        make_tiny_llama(VOCAB), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    ).eval()
    with torch.no_grad():
        got = label_log_likelihoods(peft, PROMPTS, LABELS, PAD, batch_size=2)
        plain = label_log_likelihoods(peft.get_base_model(), PROMPTS, LABELS, PAD, batch_size=2)
        expected = torch.zeros(len(PROMPTS), len(LABELS))
        for i, prompt in enumerate(PROMPTS):
            for j, label in enumerate(LABELS):
                logits = peft(input_ids=torch.tensor([prompt + label])).logits[0, 3:]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                expected[i, j] = sum(logprobs[len(prompt) - 1 + k, t] for k, t in enumerate(label))
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)  # the virtual tokens change the scores


def _cue_word_model(tokenizer, cues: dict[str, str], label_ids: list[list[int]]):
    """A 1-block Llama that answers with the label whose cue word is in the prompt, by construction.

    Only the cue tokens have embeddings (one direction per label); attention is uniform (q = k = 0) and
    v/o copy, so the last position holds the mean of the cue directions seen; the LM head maps direction
    i to label i's tokens. Label tokens embed to zero, so every later label token sees the same context.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False, pad_token_id=PAD,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        layer = model.model.layers[0]
        for norm in (model.model.norm, layer.input_layernorm):
            norm.weight.fill_(1.0)
        layer.self_attn.v_proj.weight.copy_(torch.eye(64))
        layer.self_attn.o_proj.weight.copy_(torch.eye(64))
        for direction, (cue, tokens) in enumerate(zip(cues.values(), label_ids, strict=True)):
            for token in tokenizer.encode(cue) + tokenizer.encode(" " + cue):
                model.model.embed_tokens.weight[token, direction] = 1.0
            for token in tokens:
                model.lm_head.weight[token, direction] = 4.0
    return model


def test_a_model_that_maps_cue_words_to_labels_scores_accuracy_one(tmp_path, default_tokenizer):
    from tunesmith.config import config_from_dict
    from tunesmith.data.prepare import prepare_data
    from tunesmith.evaluate.runner import evaluate_split, label_token_ids

    cues = {"anger": "furious", "joy": "delighted", "sadness": "grieving"}
    rows = [(f"so {cue} about the {thing}", label) for label, cue in cues.items() for thing in "abcd"]
    data = tmp_path / "val.jsonl"
    data.write_text("".join(f'{{"text": "{t}", "label": "{lab}"}}\n' for t, lab in rows))
    labels = list(cues)
    cfg = config_from_dict(
        {"data": {"train": str(data), "validation": str(data), "labels": labels, "system_prompt": ""}}
    )
    split = prepare_data(cfg.data, default_tokenizer, cfg.seed).validation
    model = _cue_word_model(default_tokenizer, cues, label_token_ids(default_tokenizer, labels))
    metrics, predicted = evaluate_split(model, default_tokenizer, split, "classification", labels, cfg)
    assert predicted == [labels.index(lab) for _, lab in rows]
    assert metrics["accuracy"] == 1.0 and metrics["f1_macro"] == 1.0
