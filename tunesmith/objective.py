"""What a run optimises (``objective:`` in a config) and the graders reinforcement learning scores with.

    objective: {name: sft}                                  # default: next-token loss on the answers
    objective: {name: reward}                               # a scalar reward model on preference pairs
    objective: {name: dpo, loss: sigmoid, beta: 0.1}        # direct preference optimisation and its variants
    objective: {name: grpo, grader: {type: string_check, reference: "{{item.answer}}"}}

Graders use the OpenAI grader vocabulary (``string_check``, ``text_similarity``, ``python``, ``score_model``,
``multi``) so a rubric written for that API carries over; templates read ``{{sample.output_text}}`` (the
completion) and ``{{item.<field>}}`` (a field of the data row).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tunesmith.schema import Strict

SAMPLE_TEXT = "{{sample.output_text}}"


class StringCheckGrader(Strict):
    type: Literal["string_check"] = "string_check"
    name: str = "string_check"
    input: str = SAMPLE_TEXT
    """Template of the text checked (default: the completion)."""
    reference: str
    """Template of the expected text, e.g. ``{{item.answer}}``."""
    operation: Literal["eq", "ne", "like", "ilike"] = "eq"
    """eq / ne: exact (in)equality; like: reference contained in input; ilike: the same ignoring case."""


SIMILARITY_METRICS = (
    "fuzzy_match",
    "bleu",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)


class TextSimilarityGrader(Strict):
    type: Literal["text_similarity"] = "text_similarity"
    name: str = "text_similarity"
    input: str = SAMPLE_TEXT
    reference: str
    evaluation_metric: Literal[
        "fuzzy_match", "bleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"
    ] = "fuzzy_match"
    """Similarity in [0, 1] between input and reference."""
    pass_threshold: float | None = Field(None, ge=0.0, le=1.0)
    """When set the score is 1 at or above it and 0 below (pass/fail); else the similarity itself."""


class PythonGrader(Strict):
    type: Literal["python"] = "python"
    name: str = "python"
    source: str
    """Python source defining ``def grade(sample: dict, item: dict) -> float``; run in a separate process
    with no network and at most ``memory_mb`` of memory, killed after ``timeout_s``; an exception or timeout
    scores 0 with the reason logged."""
    timeout_s: float = Field(5.0, gt=0)
    """Deadline per sample, in seconds: a sample past it scores 0; the rest of the batch is still graded."""
    memory_mb: int = Field(2048, ge=64)
    """Address-space limit of the grader process (POSIX ``RLIMIT_AS``): past it an allocation raises
    ``MemoryError``, which scores that sample 0, instead of the grader eating the training run's memory."""


class ScoreModelGrader(Strict):
    type: Literal["score_model"] = "score_model"
    name: str = "score_model"
    model: str
    """Run directory of a tunesmith reward model (``objective: reward``)."""
    range: tuple[float, float] | None = None
    """Map the reward's sigmoid into this range; None: the raw reward."""


class MultiGrader(Strict):
    type: Literal["multi"] = "multi"
    name: str = "multi"
    graders: dict[str, Grader]
    """Named graders; their scores are the variables of ``calculate_output``."""
    calculate_output: str
    """Arithmetic over the graders' names, e.g. ``0.7 * correct + 0.3 * similar`` (+ - * / ( ) numbers,
    min, max, abs)."""


Grader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | MultiGrader,
    Field(discriminator="type"),
]
MultiGrader.model_rebuild()


class SFTObjective(Strict):
    name: Literal["sft"] = "sft"
    """Supervised: next-token loss on the answers (or every token of text rows)."""


class RewardObjective(Strict):
    name: Literal["reward"] = "reward"
    """A scalar reward model trained on preference pairs with the Bradley-Terry loss."""
    center_rewards: float | None = Field(None, ge=0)
    """Coefficient of the penalty (r_chosen + r_rejected)^2 keeping rewards centred on 0 (0.01 is usual)."""


class DPOObjective(Strict):
    name: Literal["dpo"] = "dpo"
    """Direct preference optimisation: preference pairs (kto: unpaired good/bad completions)."""
    loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo", "kto"] = "sigmoid"
    """sigmoid (DPO), ipo, hinge (SLiC), kto: against a reference whose log-probs are computed once before
    training; simpo and orpo are reference-free."""
    beta: float = Field(0.1, gt=0)
    """Strength of the preference term (for orpo: the weight of the odds-ratio term, lambda)."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """sigmoid only: the assumed share of flipped labels (conservative DPO)."""
    simpo_gamma: float = 0.5
    """simpo only: the target margin gamma, subtracted from beta x the per-token log-prob difference."""
    desirable_weight: float = Field(1.0, gt=0)
    """kto only: weight of the desirable examples' term."""
    undesirable_weight: float = Field(1.0, gt=0)
    """kto only: weight of the undesirable examples' term."""
    pair_backward: Literal["split", "joint"] = "split"
    """Pair losses: how a step's chosen and rejected rows are backpropagated. split: the chosen rows with
    gradients, then the rejected rows, each scaled by its share of the loss (from one no-grad pass over the
    rejected rows), so only one half's activations are held at a time: about SFT's memory on the chosen
    answers, for ~1/6 more compute. joint: both halves in one forward and backward, ~15 % faster, twice
    the activation memory."""


class GRPOObjective(Strict):
    name: Literal["grpo"] = "grpo"
    """Reinforcement learning from a grader: sample completions per prompt, score, push the better."""
    grader: Grader
    """Scores each completion (string_check, text_similarity, python, score_model, multi; see the module)."""
    advantage: Literal["grpo", "rloo"] = "grpo"
    """grpo: reward minus the group mean (divided by the group std with scale_rewards); rloo: reward minus
    the mean of the group's other samples."""
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = "dapo"
    """How token terms are averaged: grpo per sequence then over sequences; dr_grpo over a constant
    (max_new_tokens x samples); dapo over all tokens of the batch."""
    num_generations: int = Field(4, ge=2)
    """Samples per prompt (the group)."""
    max_new_tokens: int = Field(48, ge=1)
    """Length cap of each sampled completion."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the completions (1.0: the policy's own distribution)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling share (1.0: off)."""
    epsilon: float = Field(0.2, gt=0)
    """Clip range of the probability ratio (lower side; upper side epsilon_high or epsilon)."""
    epsilon_high: float | None = Field(None, gt=0)
    """Upper clip range (DAPO's clip-higher, e.g. 0.28); None: epsilon."""
    beta: float = Field(0.0, ge=0)
    """KL penalty to the start model; 0 needs no reference (no second forward, no memory)."""
    scale_rewards: bool = True
    """grpo advantage only: divide by the group's reward std (Dr. GRPO sets this false)."""


ObjectiveConfig = Annotated[
    SFTObjective | RewardObjective | DPOObjective | GRPOObjective, Field(discriminator="name")
]
OBJECTIVE_VARIANTS = (SFTObjective, RewardObjective, DPOObjective, GRPOObjective)
