"""Where a run starts: one :class:`~tunesmith.pipelines.base.Pipeline` shape (prepare data -> start model ->
baselines -> fit -> save -> evaluate -> summarise -> report) and the run kinds registered by name in
:mod:`tunesmith.pipelines.registry`:

  lm        the training loop on the LLM's vocabulary head (SFT, CPT, classification by label word)
  head      a sequence-classification head trained by the loop
  features  a frozen LLM's features + a scikit-learn classifier (method feature_extraction)
  staged    sequential stages and multi-task mixes (tunesmith/pipelines/multitask.py prepares the tasks)
  cv        K-fold cross-validation: one run of the config's kind per fold (tunesmith/pipelines/cv.py)

Preference and RL objectives (reward model, DPO, GRPO) plug in here as new kinds or as losses of a kind.
"""
