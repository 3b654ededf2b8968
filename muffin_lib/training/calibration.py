"""Calibration: when a model says "90 % muffin", is it right 90 % of the time? Temperature scaling (Guo et
al., 2017: one scalar divides the logits, fitted on validation predictions; it never changes the winning
class) and the expected calibration error over equal-width confidence bins."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from muffin_lib.errors import MuffinError

_FLOOR = 1e-12  # probabilities are clipped here before the log


def _log_probabilities(probabilities) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or not np.all(np.isfinite(p)):
        raise MuffinError(f"probabilities must be a finite N x classes array, got shape {p.shape}")
    return np.log(np.clip(p, _FLOOR, 1.0))


def fit_temperature(probabilities, labels) -> float:
    """The temperature that minimises the cross-entropy of ``probabilities`` (N x classes) on ``labels``."""
    log_p = torch.from_numpy(_log_probabilities(probabilities))
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if len(y) != len(log_p) or len(y) == 0:
        raise MuffinError(f"need one label per prediction, got {len(y)} labels for {len(log_p)} predictions")
    # Softmax is shift-invariant, so log-probabilities stand in for the logits.
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(log_p / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """``probabilities`` recomputed from logits divided by ``temperature`` (1: unchanged)."""
    if not temperature > 0:
        raise MuffinError(f"temperature must be positive, got {temperature}")
    z = _log_probabilities(probabilities) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability(probabilities, labels, n_bins: int = 10) -> dict:
    """Per confidence bin: mean confidence, accuracy and count; and the ECE (share-weighted |gap|)."""
    p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = which == b
        count = int(inside.sum())
        if count == 0:
            continue
        mean_confidence, accuracy = float(confidence[inside].mean()), float(correct[inside].mean())
        ece += count / len(y) * abs(mean_confidence - accuracy)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "confidence": mean_confidence,
                     "accuracy": accuracy, "count": count})
    return {"ece": ece, "bins": bins, "n": int(len(y)), "accuracy": float(correct.mean())}
