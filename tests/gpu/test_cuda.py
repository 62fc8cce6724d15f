"""The CUDA path on small random models: ``bench/gpu_check.sh`` runs these on a lent GPU; skipped elsewhere.

No GPU has been available to this project while writing these, so each tolerance below is argued, not
measured; the first run's figures (``bench/gpu_check.sh`` prints them) replace the arguments.
What they check: the loop trains on the GPU and matches the CPU-computed fp32 reference; a bf16 LoRA run stays
within bf16's rounding of the fp32 one; QLoRA gradients on CUDA bitsandbytes equal LoRA's on the dequantized
base; packed rows (SDPA with restarted position ids) give the unpacked losses; the memory planner's figure
against ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_tiny_llama
from tests.reference import reference_losses
from tests.unit.train.test_train_loop import PAD, VOCAB, _cfg, _data, _losses, _run
from tunesmith.config import LoraMethod
from tunesmith.infer.batching import collate
from tunesmith.models.memory import plan_memory
from tunesmith.train.batching import collate_packed
from tunesmith.train.losses import causal_lm_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh)"),
]

GPU_VS_CPU = 1e-4
"""fp32 on the GPU against the fp32 reference on the CPU: other kernels sum in another order (~1e-6 per
op), compounded over 6 AdamW steps at lr 1e-2; TF32 is off for matmuls by default in torch."""
BF16_RTOL = 3e-2
"""bf16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.4 % per op); over 6 steps of a 2-layer model the
losses drift a few tenths of a percent. 3 % catches a wrong cast (a loss in the wrong dtype, a skipped
autocast), not rounding."""


def test_loop_trains_on_the_gpu_and_matches_the_cpu_reference(tmp_path):
    cfg = _cfg()
    model, res, run_dir = _run(tmp_path, "gpu", cfg)
    assert next(model.parameters()).device.type == "cuda"
    expected = reference_losses(make_tiny_llama(VOCAB), _data(), cfg, seed=0, pad_id=PAD, steps=6)
    assert _losses(run_dir) == pytest.approx(expected, abs=GPU_VS_CPU)
    assert res.final_val_loss is not None


def test_bf16_lora_stays_within_rounding_of_fp32(tmp_path):
    method = LoraMethod(r=4, alpha=8)
    _, _, fp32 = _run(tmp_path, "fp32", _cfg(), method=method)
    _, _, bf16 = _run(tmp_path, "bf16", _cfg(precision="bf16"), method=method)
    reference, losses = _losses(fp32), _losses(bf16)
    assert losses == pytest.approx(reference, rel=BF16_RTOL)
    assert losses[-1] < losses[0]


def test_packed_rows_give_the_unpacked_losses_on_the_gpu():
    torch.manual_seed(0)
    model = make_tiny_llama(VOCAB).eval().cuda()
    data = _data(8, seed=3)

    def on_gpu(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.cuda() for k, v in batch.items()}

    with torch.no_grad():
        total_p, n_p = causal_lm_loss(model, on_gpu(collate_packed(data.input_ids, data.labels, PAD)))
        total_u, n_u = causal_lm_loss(model, on_gpu(collate(data.input_ids, data.labels, PAD)))
    assert int(n_p) == int(n_u)
    assert float(total_p) == pytest.approx(float(total_u), rel=1e-4)


def test_qlora_gradients_on_cuda_equal_lora_on_the_dequantized_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    from tests.unit.methods.test_qlora_grads import SHAPES, batch, lora_pair, loss_and_grads, relative_errors

    base_dir = tmp_path / "base"
    make_tiny_llama(VOCAB).save_pretrained(base_dir, safe_serialization=True)
    quantized, reference = lora_pair(base_dir)  # 4-bit weights load straight onto GPU 0
    reference = reference.cuda()
    for shape in [SHAPES["4x12"], SHAPES["1x12"]]:
        ids, targets = (t.cuda() for t in batch(shape))
        loss, grads = loss_and_grads(quantized, ids, targets)
        ref_loss, ref_grads = loss_and_grads(reference, ids, targets)
        assert loss == pytest.approx(ref_loss, abs=1e-4)
        errors = relative_errors(grads, ref_grads)
        worst = max(errors, key=errors.get)
        # A gradient missing the path through the base is off by 0.17 or more (test_qlora_grads).
        assert errors[worst] < 1e-3, f"{shape} {worst}: relative gradient error {errors[worst]:.2e}"


def test_memory_plan_against_the_cuda_peak(capsys):
    """Full fine-tuning of a ~170M-parameter Llama, one step of 8 x 256 tokens: weights, AdamW states and
    the larger of the activations (with the loss's logits) and the gradients count, as in the planner."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, num_key_value_heads=4, **shape)).cuda()
    ids = torch.randint(3, 32000, (8, 256), device="cuda")
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    plan = plan_memory(model, ids.numel(), ids.numel())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    total, n = causal_lm_loss(model, batch)
    (total / n).backward()
    optimizer.step()
    torch.cuda.synchronize()
    peak_mb = torch.cuda.max_memory_allocated() / 2**20
    with capsys.disabled():
        ratio = plan.total_mb / peak_mb
        print(f"\n{plan.line()} vs CUDA peak {peak_mb:,.0f} MB (ratio {ratio:.2f})")
    # The plan adds 10 % slack on top of its parts; within 30 % either way it sizes batches usefully.
    assert 0.7 < ratio < 1.3
