"""The preference and RL formulas against values computed by hand (math module, not torch), and the losses in
the loop on a tiny model: DPO resume equality, the cached reference equals a live forward, a GRPO step with a
grader that rewards one token raises that token's probability, GRPO resume equality."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext

import pytest
import torch

from tests.conftest import make_tiny_llama
from tunesmith.config import FullMethod, TrainConfig
from tunesmith.infer.batching import PairData, PromptData
from tunesmith.infer.logprobs import logps_of_rows, sequence_logps
from tunesmith.methods import prepare_model
from tunesmith.objective import DPOObjective, GRPOObjective, StringCheckGrader
from tunesmith.train.grpo import GRPOLoss, completion_mask, group_advantages, policy_loss
from tunesmith.train.loop import train_loop
from tunesmith.train.preference import PreferenceLoss, bradley_terry_losses, dpo_losses, kto_losses

T = torch.tensor


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def _dpo(loss: str, **kw) -> float:
    cfg = DPOObjective(loss=loss, beta=0.1, **kw)
    refs = (T([-11.0]), T([-11.0])) if loss not in ("simpo", "orpo") else (None, None)
    losses, _, _ = dpo_losses(cfg, T([-10.0]), T([-12.0]), T([5]), T([4]), *refs)
    return float(losses[0])


def test_dpo_family_equals_hand_computed_values():
    # h = (-10 + 11) - (-12 + 11) = 2; per-token means: chosen -2, rejected -3.
    assert _dpo("sigmoid") == pytest.approx(-logsig(0.2), abs=1e-6)
    assert _dpo("sigmoid", label_smoothing=0.1) == pytest.approx(-0.9 * logsig(0.2) - 0.1 * logsig(-0.2))
    assert _dpo("ipo") == pytest.approx((0.2 + 0.25 - 1 / 0.2) ** 2, abs=1e-5)  # per-token h' = 0.45
    assert _dpo("hinge") == pytest.approx(0.8, abs=1e-6)
    assert _dpo("simpo", simpo_gamma=0.5) == pytest.approx(-logsig(0.1 * 1 - 0.5), abs=1e-6)

    def log_odds(m: float) -> float:
        return m - math.log1p(-math.exp(m))

    assert _dpo("orpo") == pytest.approx(2 - 0.1 * logsig(log_odds(-2) - log_odds(-3)), abs=1e-6)


def test_dpo_rewards_and_reference_requirement():
    cfg = DPOObjective(beta=0.5)
    _, r_c, r_r = dpo_losses(cfg, T([-10.0]), T([-12.0]), T([5]), T([4]), T([-11.0]), T([-11.0]))
    assert (float(r_c[0]), float(r_r[0])) == pytest.approx((0.5, -0.5))
    with pytest.raises(ValueError, match="needs the reference"):
        dpo_losses(cfg, T([-10.0]), T([-12.0]), T([5]), T([4]))


def test_kto_equals_hand_computed_values():
    cfg = DPOObjective(loss="kto", beta=0.1, undesirable_weight=2.0)
    losses, rewards = kto_losses(cfg, T([-10.0, -12.0]), T([-11.0, -11.0]), T([True, False]))
    # log-ratios +1 and -1: their mean 0 is the reference point z0.
    good = 1 - 1 / (1 + math.exp(-0.1))
    assert losses.tolist() == pytest.approx([good, 2 * good], abs=1e-6)
    assert rewards.tolist() == pytest.approx([0.1, -0.1])


def test_bradley_terry_with_centring():
    losses = bradley_terry_losses(T([2.0, 0.0]), T([0.5, 1.0]), center=0.01)
    assert losses.tolist() == pytest.approx([-logsig(1.5) + 0.01 * 2.5**2, -logsig(-1.0) + 0.01], abs=1e-6)


def test_group_advantages_on_a_known_group():
    rewards = T([[1.0, 0.0, 0.0, 1.0]])
    std = math.sqrt(4 * 0.25 / 3)  # unbiased, as torch.std
    assert group_advantages(rewards, "grpo")[0].tolist() == pytest.approx(
        [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 1 + [-0.5 / (std + 1e-4), 0.5 / (std + 1e-4)], abs=1e-6
    )
    assert group_advantages(rewards, "grpo", scale=False)[0].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])
    assert group_advantages(rewards, "rloo")[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])


def test_policy_loss_normalisations():
    logps = T([[-1.0, -2.0, 0.0], [-1.0, 0.0, 0.0]])
    mask = T([[True, True, False], [True, False, False]])
    adv = T([1.0, -2.0])
    # ratio 1 everywhere: each token's term is -advantage.
    kw = dict(max_new_tokens=3)
    dapo = policy_loss(logps, logps, adv, mask, GRPOObjective(grader={"type": "python", "source": ""}, **kw))
    assert float(dapo) == pytest.approx((-1 - 1 + 2) / 3)
    grpo = GRPOObjective(grader={"type": "python", "source": ""}, loss_type="grpo", **kw)
    assert float(policy_loss(logps, logps, adv, mask, grpo)) == pytest.approx((-1 + 2) / 2)
    dr = GRPOObjective(grader={"type": "python", "source": ""}, loss_type="dr_grpo", **kw)
    assert float(policy_loss(logps, logps, adv, mask, dr)) == pytest.approx(0 / 6)


def test_completion_mask_stops_after_the_first_eos():
    mask = completion_mask(T([[5, 2, 7, 2], [5, 5, 5, 5]]), eos_id=2)
    assert mask.tolist() == [[True, True, False, False], [True, True, True, True]]


# --- the losses in the loop, tiny model -------------------------------------------------------------

VOCAB = 64


def _pairs(n: int = 12, seed: int = 0) -> PairData:
    g = torch.Generator().manual_seed(seed)
    rows: dict[str, list] = {"c": [], "cl": [], "r": [], "rl": []}
    for _ in range(n):
        prompt = torch.randint(3, VOCAB, (4,), generator=g).tolist()
        for key in ("c", "r"):
            answer = torch.randint(
                3, VOCAB, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g
            ).tolist()
            rows[key].append(prompt + answer)
            rows[key + "l"].append([-100] * 4 + answer)
    return PairData(rows["c"], rows["cl"], rows["r"], rows["rl"])


def _cfg(**kw) -> TrainConfig:
    base = dict(max_steps=6, batch_size=4, lr=1e-2, scheduler="constant", log_every=1, precision="fp32")
    return TrainConfig(**{**base, **kw})


def _losses(run_dir) -> list[float]:
    return [json.loads(x)["train_loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cached_reference_equals_a_live_forward():
    model, data = make_tiny_llama(VOCAB), _pairs()
    cached, counts = logps_of_rows(model, data.input_ids, data.labels, pad_id=0, batch_size=5)
    for i in (0, 7):
        batch = data.collate([i], 0)
        live, n = sequence_logps(model, batch)
        assert float(live[0].detach()) == pytest.approx(cached[i], abs=1e-6) and int(n[0]) == counts[i]


def _dpo_run(tmp_path, name, pair_backward="split", **kw):
    model = prepare_model(make_tiny_llama(VOCAB), FullMethod())
    data = _pairs()
    data.ref_chosen, _ = logps_of_rows(model, data.input_ids, data.labels, 0)
    data.ref_rejected, _ = logps_of_rows(model, data.rejected_ids, data.rejected_labels, 0)
    (tmp_path / name).mkdir(exist_ok=True)
    loss = PreferenceLoss(DPOObjective(beta=0.5, pair_backward=pair_backward))
    return train_loop(model, data, None, _cfg(save_every=100), 0, tmp_path / name, 0, loss_fn=loss, **kw)


def test_dpo_trains_and_resumes_exactly(tmp_path):
    full = _dpo_run(tmp_path, "full")
    losses = _losses(tmp_path / "full")
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: -log s(0)
    assert losses[-1] < losses[0] - 0.05
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["reward_accuracy"] > 0.5 and "reward_margin" in rows[-1]

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    _dpo_run(tmp_path, "cut", on_step=stop_at_2)
    _dpo_run(tmp_path, "cut", resume=True)
    assert full.steps == 6 and _losses(tmp_path / "cut") == pytest.approx(losses, abs=1e-6)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "simpo", "orpo"])
def test_split_backward_gives_the_joint_gradient_with_one_half_in_the_graph(loss):
    model, data = make_tiny_llama(VOCAB), _pairs()
    data.ref_chosen, _ = logps_of_rows(model, data.input_ids, data.labels, 0)
    data.ref_rejected, _ = logps_of_rows(model, data.rejected_ids, data.rejected_labels, 0)
    batch = data.collate(list(range(6)), 0)
    with torch.no_grad():  # move the policy off the reference, so the weights differ between pairs
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))

    def grads(**kw) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        loss_fn = PreferenceLoss(DPOObjective(loss=loss, beta=0.5, **kw))
        if loss_fn.backward_in_parts:
            total = loss_fn.backward_parts(model, batch, lambda t: t.backward(), nullcontext)
        else:
            total = loss_fn(model, batch)[0]
            total.backward()
        return float(total.detach()), [p.grad.clone() for p in model.parameters()]

    rows_with_grad: list[int] = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda _m, args, _o: rows_with_grad.append(args[0].shape[0]) if torch.is_grad_enabled() else None
    )
    split_loss, split = grads()
    hook.remove()
    joint_loss, joint = grads(pair_backward="joint")
    assert split_loss == pytest.approx(joint_loss, rel=1e-6)
    for a, b in zip(split, joint, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert rows_with_grad == [6, 6]  # chosen, then rejected: never a graph over both halves (12 rows)


def test_split_and_joint_dpo_train_the_same_losses(tmp_path):
    _dpo_run(tmp_path, "split")
    _dpo_run(tmp_path, "joint", pair_backward="joint")
    assert _losses(tmp_path / "split") == pytest.approx(_losses(tmp_path / "joint"), abs=1e-5)


class TinyTokenizer:
    """Token i decodes to "t<i> "; no eos, so every completion has max_new_tokens tokens."""

    pad_token_id, eos_token_id = 0, None

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(f"t{int(t)}" for t in row) for row in rows]


def _rewarded_share(text: str) -> float:
    words = text.split()
    return sum(w == "t7" for w in words) / max(len(words), 1)


def _grpo_run(tmp_path, name, steps=6, **kw):
    torch.manual_seed(0)
    model = prepare_model(make_tiny_llama(VOCAB), FullMethod())
    prompts = [[3 + i, 10 + i, 20 + i] for i in range(8)]
    objective = GRPOObjective(
        grader=StringCheckGrader(reference="t7"), num_generations=8, max_new_tokens=3, temperature=1.0
    )
    grade = lambda texts, items: [_rewarded_share(t) for t in texts]  # noqa: E731
    loss = GRPOLoss(objective, grade, [{} for _ in prompts], TinyTokenizer())
    (tmp_path / name).mkdir(exist_ok=True)
    cfg = _cfg(max_steps=steps, batch_size=4, lr=3e-2, save_every=100)
    data = PromptData(prompts, [], completions_per_prompt=8, max_new_tokens=3)
    train_loop(model, data, None, cfg, 0, tmp_path / name, 0, loss_fn=loss, **kw)
    return model, prompts


def _p_token(model, prompts, token: int) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(prompts)).logits[:, -1]
    return float(logits.softmax(-1)[:, token].mean())


def test_grpo_raises_the_probability_of_the_rewarded_token(tmp_path):
    prompts = [[3 + i, 10 + i, 20 + i] for i in range(8)]
    before = _p_token(make_tiny_llama(VOCAB), prompts, 7)
    model, _ = _grpo_run(tmp_path, "g", steps=8)
    after = _p_token(model, prompts, 7)
    assert after > 2 * before
    rows = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward", "generate_s", "grade_s", "step_s"} <= rows[0].keys()


def test_grpo_resume_samples_the_same_completions(tmp_path):
    _grpo_run(tmp_path, "full", steps=4)

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    _grpo_run(tmp_path, "cut", steps=4, on_step=stop_at_2)
    _grpo_run(tmp_path, "cut", steps=4, resume=True)
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    cut = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in cut] == [r["reward"] for r in full]
    assert [r["train_loss"] for r in cut] == pytest.approx([r["train_loss"] for r in full], abs=1e-6)
