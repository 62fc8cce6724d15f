"""Pooled hidden states of a frozen LLM, cached on disk, and a pickle-free scikit-learn classifier on them.

    feats = extract_features(model, tokenizer, texts, layer=-1, pooling="mean", batch_size=16, max_length=512)
    clf = fit_classifier(feats.numpy(), labels, method_cfg, seed=0)   # -> LinearStack
    probs = clf.predict_proba(feats.numpy())

Features are cached under ``$TUNESMITH_HOME/cache/features/<key>.safetensors``; the key hashes the texts,
the model (name plus its weight files' sizes and mtimes), layer, pooling and max length. Extraction is the
whole cost of the method (one forward per text); the classifier then fits in seconds.

The fitted classifier is stored as plain arrays (``classifier.safetensors`` + ``classifier.json``): both
LogisticRegression and MLPClassifier are a stack of affine layers (ReLU between) and a softmax, so prediction
needs numpy only and nothing on disk is a pickle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch
from tqdm.auto import tqdm

from tunesmith.infer.batching import collate
from tunesmith.io import write_bytes_atomic, write_json_atomic
from tunesmith.models.loading import resolve_model_path, tunesmith_home

CACHE_VERSION = 1


def model_fingerprint(name: str) -> str:
    """Name plus the sizes and mtimes of its weight files: a retrained model at the same path is a miss."""
    source = resolve_model_path(name)
    parts = [str(name)]
    if isinstance(source, Path) and source.is_dir():
        for file in sorted(source.glob("*.safetensors")):
            stat = file.stat()
            parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def cache_key(
    texts: list[str], model_name: str, layer: int, pooling: str, max_length: int, suffix: str = ""
) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    payload = [CACHE_VERSION, digest.hexdigest(), model_fingerprint(model_name), layer, pooling, max_length]
    if suffix:  # only then, so the keys of features cached before data.suffix existed still hit
        payload.append(suffix)
    return hashlib.sha256(json.dumps(payload).encode("utf-8")).hexdigest()[:32]


def _cache_path(key: str) -> Path:
    return tunesmith_home() / "cache" / "features" / f"{key}.safetensors"


@contextmanager
def _only_first_blocks(decoder: Any, layer: int) -> Iterator[None]:
    """Run only blocks 1..layer+1: block ``layer``'s states do not depend on later blocks, so a middle
    layer costs (layer + 1) / N of a full forward."""
    blocks = getattr(decoder, "layers", None)
    if layer <= 0 or blocks is None or layer + 1 >= len(blocks):
        yield
        return
    # One block more than needed: transformers puts the final norm into the last hidden state it returns.
    decoder.layers = torch.nn.ModuleList(list(blocks)[: layer + 1])
    try:
        yield
    finally:
        decoder.layers = blocks


@torch.no_grad()
def extract_features(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    layer: int,
    pooling: str,
    batch_size: int,
    max_length: int,
    suffix: str = "",
) -> torch.Tensor:
    """(n_texts, hidden) pooled states; layer -1 is the decoder output after the final norm.

    ``suffix`` (``data.suffix``) follows every text; a text over ``max_length`` is cut, never the suffix, so
    ``pooling: last`` always reads the suffix's last token (as a classification head does). Texts are sorted
    by length so batches carry little padding (on CPU, padding is wasted compute).
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    tail = list(tokenizer(suffix, add_special_tokens=False)["input_ids"]) if suffix else []
    room = max(1, max_length - len(tail))
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=room)["input_ids"]
    ids = [row + tail or [tokenizer.eos_token_id] for row in ids]  # an empty text still gets one feature row
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.zeros(len(ids), model.config.hidden_size)
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc="features", unit="batch", leave=False):
        idx = order[start : start + batch_size]
        batch = {
            k: v.to(device) for k, v in collate([ids[i] for i in idx], None, tokenizer.pad_token_id).items()
        }
        with _only_first_blocks(decoder, layer):
            result = decoder(**batch, output_hidden_states=layer != -1, use_cache=False)
        hidden = result.last_hidden_state if layer == -1 else result.hidden_states[layer]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1)
        else:  # right padding: the last real token sits at length - 1
            last = batch["attention_mask"].sum(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=device), last]
        out[idx] = pooled.float().cpu()
    return out


def cached_features(
    model_loader: Any,
    tokenizer: Any,
    texts: list[str],
    model_name: str,
    method_cfg: Any,
    max_length: int,
    suffix: str = "",
) -> tuple[torch.Tensor, str]:
    """Features from the cache, or extracted (``model_loader()`` called only then) and cached.

    Returns (features, "hit" | "miss").
    """
    path = _cache_path(cache_key(texts, model_name, method_cfg.layer, method_cfg.pooling, max_length, suffix))
    if path.exists():
        return safetensors.torch.load_file(str(path))["features"], "hit"
    feats = extract_features(
        model_loader(),
        tokenizer,
        texts,
        method_cfg.layer,
        method_cfg.pooling,
        method_cfg.batch_size,
        max_length,
        suffix,
    )
    write_bytes_atomic(path, safetensors.torch.save({"features": feats.contiguous()}))
    return feats, "miss"


@dataclass
class LinearStack:
    """Affine layers with ReLU between them and a softmax on top; columns = ``classes`` (label ids)."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    mean: np.ndarray
    scale: np.ndarray
    classes: list[int]
    kind: str

    def predict_proba(self, features: np.ndarray, n_labels: int) -> np.ndarray:
        """(n, n_labels) probabilities; labels never seen in training get probability 0."""
        hidden = (features - self.mean) / self.scale
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            hidden = hidden @ weight + bias
            if i < len(self.weights) - 1:
                hidden = np.maximum(hidden, 0.0)
        hidden = hidden - hidden.max(axis=1, keepdims=True)
        probs = np.exp(hidden)
        probs /= probs.sum(axis=1, keepdims=True)
        full = np.zeros((features.shape[0], n_labels), dtype=probs.dtype)
        full[:, self.classes] = probs
        return full

    def save(self, folder: Path) -> None:
        tensors = {"mean": self.mean, "scale": self.scale}
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            tensors[f"layer{i}.weight"], tensors[f"layer{i}.bias"] = weight, bias
        tensors = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}
        write_bytes_atomic(folder / "classifier.safetensors", safetensors.numpy.save(tensors))
        meta = {"kind": self.kind, "classes": self.classes, "n_layers": len(self.weights)}
        write_json_atomic(folder / "classifier.json", meta)

    @classmethod
    def load(cls, folder: Path) -> LinearStack:
        meta = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
        t = safetensors.numpy.load_file(str(folder / "classifier.safetensors"))
        n = meta["n_layers"]
        return cls(
            weights=[t[f"layer{i}.weight"] for i in range(n)],
            biases=[t[f"layer{i}.bias"] for i in range(n)],
            mean=t["mean"],
            scale=t["scale"],
            classes=meta["classes"],
            kind=meta["kind"],
        )

    def n_parameters(self) -> int:
        return int(sum(w.size + b.size for w, b in zip(self.weights, self.biases, strict=True)))


def _two_class(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A binary model's one logit z as logits [0, z]: softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]."""
    return np.hstack([np.zeros_like(weight), weight]), np.concatenate([np.zeros_like(bias), bias])


def fit_classifier(
    features: np.ndarray, labels: np.ndarray, method_cfg: Any, seed: int
) -> tuple[LinearStack, Any]:
    """Fit the configured scikit-learn classifier; returns (pickle-free stack, the sklearn estimator)."""
    # deferred: scikit-learn (~1 s to import) loads only when a classifier is fitted
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier  # deferred: sklearn's MLP only when asked for

    features = features.astype(np.float64)
    mean, scale = np.zeros(features.shape[1]), np.ones(features.shape[1])
    if method_cfg.standardize:
        mean, scale = features.mean(axis=0), features.std(axis=0)
        scale[scale == 0] = 1.0
    x = (features - mean) / scale
    if method_cfg.classifier == "mlp":
        est = MLPClassifier(
            hidden_layer_sizes=tuple(method_cfg.hidden_sizes), max_iter=method_cfg.max_iter, random_state=seed
        ).fit(x, labels)
        weights, biases = [w.copy() for w in est.coefs_], [b.copy() for b in est.intercepts_]
    else:
        est = LogisticRegression(C=method_cfg.C, max_iter=method_cfg.max_iter, random_state=seed).fit(
            x, labels
        )
        weights, biases = [est.coef_.T.copy()], [est.intercept_.copy()]
    if len(est.classes_) == 2:
        weights[-1], biases[-1] = _two_class(weights[-1], biases[-1])
    stack = LinearStack(weights, biases, mean, scale, [int(c) for c in est.classes_], method_cfg.classifier)
    return stack, est
