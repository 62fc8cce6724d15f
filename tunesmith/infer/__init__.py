"""Inference below train, evaluate and serve: batching (:mod:`.batching`), token losses (:mod:`.loss`),
greedy generation, label log-likelihood scoring and head logits (:mod:`.generate`).

Nothing here knows about runs, configs or data files: token ids in, tensors or texts out.
"""
