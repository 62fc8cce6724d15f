"""QLoRA gradient parity: LoRA on the 4-bit base gets the same loss and gradients as the same LoRA on the
*dequantized* base in fp32, on this machine, for every bitsandbytes path training can take.

The gradient that matters flows *through* the frozen 4-bit layers (d loss / d input of each ``Linear4bit``):
LoRA matrices in lower layers get their gradient only that way. bitsandbytes 0.50.2 on CPU takes
  * ``MatMul4Bit`` (dequantize + matmul, with a backward) when the input needs grad: any batch shape;
  * ``gemv_4bit`` (packed bf16 kernel, no backward) on CPUs with AVX512-BF16 once a layer has run in eval
    mode without grad, e.g. after ``evaluate_loss``: any batch shape, one token included. It dropped the
    gradient through the base (worst relative LoRA-gradient error 0.99 to 5.95 per batch shape here);
    ``qlora.keep_differentiable_kernels`` routes training around it, and the ``after_eval`` cases check that.
So the cases are: several rows x many tokens, one row, one token (1 x 1), each on a fresh model and after an
eval pass. On CPUs without AVX512-BF16 the after-eval cases take the same path as the fresh ones.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_tiny_llama
from tests.unit.methods.test_methods import PAD, VOCAB, _data
from tests.unit.methods.test_qlora import dequantized_base
from tunesmith.config import LoraMethod, QloraMethod
from tunesmith.methods import load_options, prepare_model
from tunesmith.models.loading import load_causal_lm
from tunesmith.train.loop import evaluate_loss

bnb = pytest.importorskip("bitsandbytes")
# torch's only sign of the gemv_4bit path in training: "an autograd kernel was not registered ..."
pytestmark = pytest.mark.filterwarnings("error:bitsandbytes::gemv_4bit")

GRAD_RTOL = 1e-4
"""Per LoRA tensor, ||g_4bit - g_ref|| / ||g_ref||. Both sides dequantize to the same fp32 weights and run
fp32 matmuls, so only summation order can differ (measured: 0, bit-identical, on an AVX512 Xeon; fp32
reordering would be ~1e-6). A gradient that misses the path through the base is off by 0.17 to 6
(test_tolerance_catches_...), and so was every gradient below a gemv_4bit layer (0.99 to 5.95 worst)."""
LOSS_ATOL = 1e-5

SHAPES = {"4x12": (4, 12), "1x12": (1, 12), "1x1": (1, 1)}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qlora-grads-base")
    make_tiny_llama(VOCAB).save_pretrained(path, safe_serialization=True)
    return path


def lora_pair(base_dir, after_eval: bool = False):
    """(QLoRA model on the 4-bit base, LoRA model on the dequantized fp32 base), with the same random non-zero
    LoRA weights (B too, so every A gets a gradient); both in train mode."""
    method = QloraMethod(r=4, alpha=8, double_quant=True)
    quantized = load_causal_lm(str(base_dir), **load_options(method))
    reference = dequantized_base(quantized, base_dir)
    layers = {name: m for name, m in quantized.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    quantized = prepare_model(quantized, method)
    reference = prepare_model(reference, LoraMethod(r=4, alpha=8))
    generator = torch.Generator().manual_seed(1)
    reference_params = dict(reference.named_parameters())
    for name, param in quantized.named_parameters():
        if param.requires_grad:
            value = torch.randn(param.shape, generator=generator) * 0.1
            param.data.copy_(value)
            reference_params[name].data.copy_(value)
    if after_eval:  # eval mode, no grad: what made bitsandbytes repack for gemv_4bit on AVX512-BF16 CPUs
        evaluate_loss(quantized, _data(8), 8, PAD, "cpu")
        packed = [
            n for n, m in layers.items() if getattr(m.weight.quant_state, "packing_format_for_cpu", False)
        ]
        assert not packed
    quantized.train()
    reference.train()
    return quantized, reference


def loss_and_grads(model, ids: torch.Tensor, targets: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """Cross-entropy of every position against ``targets`` (so a 1 x 1 batch has a loss too)."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(loss.detach()), grads


def relative_errors(grads: dict, reference: dict) -> dict[str, float]:
    assert grads.keys() == reference.keys()
    return {n: float((grads[n] - reference[n]).norm() / reference[n].norm()) for n in reference}


def batch(shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return (
        torch.randint(3, VOCAB, shape, generator=generator),
        torch.randint(3, VOCAB, shape, generator=generator),
    )


@pytest.mark.parametrize("after_eval", [False, True], ids=["fresh", "after_eval"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_qlora_gradients_equal_lora_on_the_dequantized_base(base_dir, shape, after_eval):
    quantized, reference = lora_pair(base_dir, after_eval)
    ids, targets = batch(shape)
    loss, grads = loss_and_grads(quantized, ids, targets)
    ref_loss, ref_grads = loss_and_grads(reference, ids, targets)
    assert len(ref_grads) == 2 * 14  # A and B of the 14 adapted projections
    if shape[1] == 1:
        # One token: attention over a single key is 1 whatever q.k, so q_proj and k_proj get no gradient
        # (float noise, ~1e-9 here): check it is negligible on both sides rather than compare the noise.
        largest = max(float(g.norm()) for g in ref_grads.values())
        for name in [n for n in ref_grads if ".q_proj." in n or ".k_proj." in n]:
            assert max(float(grads.pop(name).norm()), float(ref_grads.pop(name).norm())) < 1e-6 * largest
    assert min(float(g.norm()) for g in ref_grads.values()) > 0
    assert loss == pytest.approx(ref_loss, abs=LOSS_ATOL)
    errors = relative_errors(grads, ref_grads)
    worst = max(errors, key=errors.get)
    assert errors[worst] < GRAD_RTOL, f"{worst}: relative gradient error {errors[worst]:.2e}"


def test_tolerance_catches_a_gradient_missing_through_the_base(base_dir):
    """Negative check: cut d loss / d input of every 4-bit layer (what gemv_4bit did) and every LoRA gradient
    with a 4-bit layer above it misses the tolerance by orders of magnitude (measured: relative error 0.17 to
    1.0); only the top block's down_proj, which has none above it, still matches."""
    quantized, reference = lora_pair(base_dir)
    for module in quantized.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.register_forward_pre_hook(lambda _module, args: (args[0].detach(), *args[1:]))
    ids, targets = batch(SHAPES["4x12"])
    _, grads = loss_and_grads(quantized, ids, targets)
    _, ref_grads = loss_and_grads(reference, ids, targets)
    errors = relative_errors(grads, ref_grads)
    top = {n for n in errors if ".layers.1.mlp.down_proj." in n}
    assert len(top) == 2 and all(errors[n] < GRAD_RTOL for n in top)
    assert min(e for n, e in errors.items() if n not in top) > 100 * GRAD_RTOL


def test_a_base_evaluated_before_prepare_is_unpacked(base_dir):
    """The repacking is real on AVX512-BF16 CPUs (so the after_eval cases above take that path without the
    fix), and ``prepare`` undoes one that already happened: each 4-bit layer then passes d loss / d input."""
    method = QloraMethod(r=4, alpha=8, double_quant=True)
    model = load_causal_lm(str(base_dir), **load_options(method))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 50, 60]]))
    packed = [getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers]
    assert sum(packed) == (len(layers) if bnb.functional.has_avx512bf16() else 0)
    model = prepare_model(model, method)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    model.train()
    generator = torch.Generator().manual_seed(3)
    for layer in layers:
        weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        x = torch.randn(3, weight.shape[1], generator=generator, requires_grad=True)
        upstream = torch.randn(3, weight.shape[0], generator=generator)
        (grad,) = torch.autograd.grad(layer(x), x, upstream)
        expected = upstream @ weight
        assert float((grad - expected).norm() / expected.norm()) < GRAD_RTOL
