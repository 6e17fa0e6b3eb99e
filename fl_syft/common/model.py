"""The model both sides exchange: multinomial logistic regression on pixels/255.

``params`` is ``{"coef": (10, 784), "intercept": (10,)}`` float64; class k's score for an
image x (784 pixels, 0..255) is ``coef[k] @ (x / 255) + intercept[k]``.
"""

from __future__ import annotations

import numpy as np

N_CLASSES, N_FEATURES = 10, 784


def zeros() -> dict[str, np.ndarray]:
    """The all-zero model (uniform predictions)."""
    return {"coef": np.zeros((N_CLASSES, N_FEATURES)), "intercept": np.zeros(N_CLASSES)}


def flatten(params: dict) -> np.ndarray:
    """(10*784 + 10,) vector: coef row by row, then intercept."""
    return np.concatenate([np.asarray(params["coef"], np.float64).ravel(),
                           np.asarray(params["intercept"], np.float64)])


def unflatten(theta: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten`."""
    return {"coef": theta[: N_CLASSES * N_FEATURES].reshape(N_CLASSES, N_FEATURES),
            "intercept": theta[N_CLASSES * N_FEATURES:]}
