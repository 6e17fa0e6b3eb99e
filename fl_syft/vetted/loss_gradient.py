"""``lr_loss_grad``: the cross-entropy of a site's shard at a given model, and its gradient, summed.

Shipped as source and approved by fingerprint, like every vetted function: self-contained,
imports inside, no project imports.
"""


def lr_loss_grad(data, global_params: dict, config: dict) -> dict:
    """Multinomial cross-entropy of this shard at the given model, summed, and its gradient.

    The data scientist adds the sites' sums (plus the L2 term) to get the exact
    centralized objective and gradient, and runs L-BFGS on them: logistic regression is
    convex, so this reaches the centralized optimum whatever the label skew.
    data: {"X": (n, width) float32 features, "y": (n,) int64 labels} as for ``ml_experiment``;
        every row is used.
    global_params: {"coef": (10, width), "intercept": (10,)} float64.
    config: {"features": the map ``data`` is on} (``fl_syft.common.protocol.LR_LOSS_GRAD``; the
        site's guard refuses any other key).
    Returns only sums: "loss" (nats, summed over rows), "grad_coef" (10, width), "grad_intercept"
    (10,), "n_samples", "seconds" (compute time).
    """
    import time

    import numpy as np

    started = time.perf_counter()
    coef = np.asarray(global_params["coef"], dtype=np.float64)
    intercept = np.asarray(global_params["intercept"], dtype=np.float64)
    X, y = data["X"], data["y"]
    loss, grad_coef, grad_intercept = 0.0, np.zeros_like(coef), np.zeros_like(intercept)
    for start in range(0, len(y), 4096):  # in float64 (L-BFGS needs exact gradients), a block at a time
        block, labels = X[start:start + 4096].astype(np.float64), y[start:start + 4096]
        z = block @ coef.T + intercept
        z -= z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1))
        rows = np.arange(len(labels))
        residual = np.exp(z - log_norm[:, None])  # softmax probabilities ...
        residual[rows, labels] -= 1.0  # ... minus one-hot labels
        loss += float(np.sum(log_norm - z[rows, labels]))
        grad_coef += residual.T @ block
        grad_intercept += residual.sum(axis=0)
    return {
        "loss": loss,
        "grad_coef": grad_coef,
        "grad_intercept": grad_intercept,
        "n_samples": int(len(y)),
        "seconds": time.perf_counter() - started,
    }
