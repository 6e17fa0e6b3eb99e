"""Score a global model (coef/intercept) on a labelled test set's features (data scientist side)."""

from __future__ import annotations

import numpy as np

from fl_syft.common.data import cache_dir
from fl_syft.common.features import FeatureMap, cached


def features_of_test_set(fmap: FeatureMap, X: np.ndarray) -> np.ndarray:
    """(n, width) features of the public test set's (n, 784) uint8 images, kept in the data's cache."""
    return cached(fmap, X, cache_dir() / "features", "the test set")


def logits(params: dict, X: np.ndarray) -> np.ndarray:
    """(n, 10) class scores for (n, width) features (``common.features``: the map the model is on)."""
    coef_t, intercept = np.asarray(params["coef"]).T, np.asarray(params["intercept"])
    # 1,000 rows at a time: a float copy of the whole set would make this memory-bound (~5x slower).
    return np.concatenate([X[start:start + 1000].astype(np.float64) @ coef_t + intercept
                           for start in range(0, max(len(X), 1), 1000)])


def score(params: dict, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """{"accuracy": fraction correct, "loss": mean cross-entropy in nats}."""
    z = logits(params, X)
    z -= z.max(axis=1, keepdims=True)
    log_proba = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return {"accuracy": float(np.mean(z.argmax(axis=1) == y)),
            "loss": float(-log_proba[np.arange(len(y)), y].mean())}


def confusion_matrix(params: dict, X: np.ndarray, y: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """(true, predicted) counts, shape (n_classes, n_classes)."""
    pred = logits(params, X).argmax(axis=1)
    return np.bincount(y * n_classes + pred, minlength=n_classes ** 2).reshape(n_classes, n_classes)
