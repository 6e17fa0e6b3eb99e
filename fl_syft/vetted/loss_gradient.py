"""``lr_loss_grad``: the cross-entropy of a site's shard at a given model, and its gradient, summed.

Shipped as source and approved by fingerprint, like every vetted function: self-contained,
imports inside, no project imports.
"""


def lr_loss_grad(data, global_params: dict, config: dict) -> dict:
    """Multinomial cross-entropy of this shard at the given model, summed, and its gradient.

    The data scientist adds the sites' sums (plus the L2 term) to get the exact
    centralized objective and gradient, and runs L-BFGS on them: logistic regression is
    convex, so this reaches the centralized optimum whatever the label skew.
    data: (n, 785) uint8 shard as for ``ml_experiment``; every row is used.
    global_params: {"coef": (10, 784), "intercept": (10,)} float64.
    config: {} (no settings, ``fl_syft.common.protocol.LR_LOSS_GRAD``: the site's guard refuses
        any key; present so every vetted function has the same inputs).
    Returns only sums: "loss" (nats, summed over rows), "grad_coef" (10, 784), "grad_intercept"
    (10,), "n_samples", "seconds" (compute time).
    """
    import time

    import numpy as np

    started = time.perf_counter()
    n_features = data.shape[1] - 1
    coef = np.asarray(global_params["coef"], dtype=np.float64)
    intercept = np.asarray(global_params["intercept"], dtype=np.float64)
    X = data[:, :n_features] / 255.0
    y = data[:, n_features].astype(np.int64)
    z = X @ coef.T + intercept
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    rows = np.arange(len(y))
    residual = np.exp(z - log_norm[:, None])  # softmax probabilities ...
    residual[rows, y] -= 1.0  # ... minus one-hot labels
    return {
        "loss": float(np.sum(log_norm - z[rows, y])),
        "grad_coef": residual.T @ X,
        "grad_intercept": residual.sum(axis=0),
        "n_samples": int(len(y)),
        "seconds": time.perf_counter() - started,
    }
