import math

import numpy as np

from common.metrics import roc_auc, sensitivity_specificity


def _auc_by_pairs(labels, scores):
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200) + labels, 1)  # rounding creates ties
    assert math.isclose(roc_auc(labels, scores), _auc_by_pairs(labels, scores), rel_tol=1e-12)


def test_auc_extremes_and_undefined():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_sensitivity_specificity_at_threshold():
    sensitivity, specificity = sensitivity_specificity([1, 1, 1, 0, 0], [0.9, 0.6, 0.4, 0.2, 0.7])
    assert sensitivity == 2 / 3 and specificity == 1 / 2
