"""The model both sides exchange: multinomial logistic regression on a fixed feature map.

``params`` is ``{"coef": (10, width), "intercept": (10,)}`` float64 for a feature map of ``width``
features (``common.features``); class k's score for an image with features f is
``coef[k] @ f + intercept[k]``.
"""

from __future__ import annotations

import numpy as np

N_CLASSES = 10


def zeros(width: int) -> dict[str, np.ndarray]:
    """The all-zero model on ``width`` features (uniform predictions)."""
    return {"coef": np.zeros((N_CLASSES, width)), "intercept": np.zeros(N_CLASSES)}


def flatten(params: dict) -> np.ndarray:
    """(10 * width + 10,) vector: coef row by row, then intercept."""
    return np.concatenate([np.asarray(params["coef"], np.float64).ravel(),
                           np.asarray(params["intercept"], np.float64)])


def unflatten(theta: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten`."""
    width = (len(theta) - N_CLASSES) // N_CLASSES
    return {"coef": theta[: N_CLASSES * width].reshape(N_CLASSES, width), "intercept": theta[N_CLASSES * width:]}
