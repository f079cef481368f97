"""Binary classification metrics, computed without scikit-learn."""
from __future__ import annotations

import math

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    Returns NaN when only one class is present: the AUC is undefined then.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    start = 0
    while start < len(scores):  # average ranks over runs of tied scores
        stop = start
        while stop + 1 < len(scores) and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def sensitivity_specificity(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    """True-positive and true-negative rates at `threshold` (NaN for an absent class)."""
    labels = np.asarray(labels).astype(bool).ravel()
    predicted = np.asarray(probabilities).ravel() >= threshold
    positives, negatives = labels.sum(), (~labels).sum()
    sensitivity = float((predicted & labels).sum() / positives) if positives else math.nan
    specificity = float((~predicted & ~labels).sum() / negatives) if negatives else math.nan
    return sensitivity, specificity
