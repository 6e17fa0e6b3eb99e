"""The vetted functions a datasite runs on its private shard.

Each is shipped to the datasites as *source* (a PySyft code request) and approved only
if its fingerprint equals the data owner's installed copy, so each must be
self-contained: imports inside, no closures, no project imports. Shared by both sides:
the data scientist submits them, the data owner's approver compares against them, and
``simulate`` calls them directly.

Features are pixels/255 on every site: averaged coefficients only mean something in one
shared feature space, so there is no per-site scaler.
"""


def ml_experiment(data, global_params: dict, config: dict) -> dict:
    """One local round of warm-started multinomial logistic regression.

    data: (n, 785) uint8 shard, 784 pixels (0..255) then the label (0..9).
    global_params: {} for a cold start, else {"coef": (10, 784), "intercept": (10,)} float64.
    config: "local_iters" (lbfgs iterations, default 20), "C" (inverse L2 strength, 1.0),
        "holdout" (fraction of rows held out to score the received model, 0.05), "seed" (0),
        "logit_adjust" (True: train with this site's label prior in the intercepts, return
        the model with it removed, i.e. for equal class priors).
    Returns only aggregates: "coef" (10, 784) and "intercept" (10,) float64 (rows of classes
    this site lacks are the received ones), "n_samples" (rows trained on), "class_counts"
    (10,), "train_accuracy" (new local model, training rows), "holdout_accuracy" (new local
    model, held-out rows), "global_accuracy" (received model, held-out rows; None on a
    cold start), "seconds" (compute time).
    """
    import time
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    defaults = {"local_iters": 20, "C": 1.0, "holdout": 0.05, "seed": 0, "logit_adjust": True}
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; allowed: {sorted(defaults)}")
    cfg = {**defaults, **config}
    n_classes, n_features = 10, data.shape[1] - 1

    labels = data[:, n_features].astype(np.int64)
    order = np.random.default_rng(cfg["seed"]).permutation(len(labels))
    n_holdout = int(len(labels) * cfg["holdout"])
    held, train = np.sort(order[:n_holdout]), np.sort(order[n_holdout:])
    # Select rows while still uint8, then scale: no full-size float copy to index again.
    X, y = data[train, :n_features] / 255.0, labels[train]
    X_held, y_held = data[held, :n_features] / 255.0, labels[held]
    class_counts = np.bincount(y, minlength=n_classes)
    present = np.flatnonzero(class_counts)

    if global_params:
        coef = np.array(global_params["coef"], dtype=np.float64)
        intercept = np.array(global_params["intercept"], dtype=np.float64)
    else:
        coef, intercept = np.zeros((n_classes, n_features)), np.zeros(n_classes)

    def accuracy(c, b, features, targets):
        if len(targets) == 0:
            return None
        return float(np.mean(np.argmax(features @ c.T + b, axis=1) == targets))

    global_accuracy = accuracy(coef, intercept, X_held, y_held) if global_params else None

    if len(present) >= 2:
        # Label skew: a site's intercepts would learn its own class frequencies, which
        # averaging then mixes into everyone's model. Train with log(local prior / uniform)
        # added to the received intercepts and subtract it again: sites exchange prior-free
        # models (logit adjustment for label shift; the weights are unaffected by a prior).
        shift = np.log(class_counts[present] * n_classes / len(y)) if cfg["logit_adjust"] else 0.0
        intercept[present] += shift
        # scikit-learn fits only the classes present in y; binary problems have one row.
        binary, lo, hi = len(present) == 2, present[0], present[-1]
        clf = LogisticRegression(C=cfg["C"], max_iter=cfg["local_iters"], warm_start=True)
        if global_params:
            if binary:
                clf.coef_ = (coef[hi] - coef[lo])[None, :]
                clf.intercept_ = np.array([intercept[hi] - intercept[lo]])
            else:
                clf.coef_, clf.intercept_ = coef[present].copy(), intercept[present].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X, y)
        if binary:
            # Keep the pair's mean and set their difference to the binary weights.
            mean_c, mean_b = coef[present].mean(axis=0), intercept[present].mean()
            coef[lo], coef[hi] = mean_c - clf.coef_[0] / 2, mean_c + clf.coef_[0] / 2
            intercept[lo], intercept[hi] = mean_b - clf.intercept_[0] / 2, mean_b + clf.intercept_[0] / 2
        else:
            coef[present], intercept[present] = clf.coef_, clf.intercept_
        intercept[present] -= shift

    return {
        "coef": coef,
        "intercept": intercept,
        "n_samples": int(len(y)),
        "class_counts": class_counts,
        "train_accuracy": accuracy(coef, intercept, X, y),
        "holdout_accuracy": accuracy(coef, intercept, X_held, y_held),
        "global_accuracy": global_accuracy,
        "seconds": time.perf_counter() - started,
    }


def lr_loss_grad(data, global_params: dict, config: dict) -> dict:
    """Multinomial cross-entropy of this shard at the given model, summed, and its gradient.

    The data scientist adds the sites' sums (plus the L2 term) to get the exact
    centralized objective and gradient, and runs L-BFGS on them: logistic regression is
    convex, so this reaches the centralized optimum whatever the label skew.
    data: (n, 785) uint8 shard as for ``ml_experiment``; every row is used.
    global_params: {"coef": (10, 784), "intercept": (10,)} float64.
    config: {} (no settings; present so every vetted function has the same inputs).
    Returns only sums: "loss" (nats, summed over rows), "grad_coef" (10, 784), "grad_intercept"
    (10,), "n_samples", "seconds" (compute time).
    """
    import time

    import numpy as np

    started = time.perf_counter()
    if config:
        raise ValueError(f"unknown config keys {sorted(config)}; lr_loss_grad takes none")
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


def fingerprint(source: str) -> str:
    """SHA-256 identifying the one function defined in ``source``, decorators stripped.

    Hashes the AST, so formatting and comments do not matter and everything else
    (docstring included) does. Raises ValueError unless ``source`` is exactly one function.
    Used by the data owner to recognise a vetted function and by the data scientist to
    find their own request for it.
    """
    import ast
    import hashlib
    import textwrap

    tree = ast.parse(textwrap.dedent(source))
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        raise ValueError("code must be exactly one function definition")
    tree.body[0].decorator_list = []
    return hashlib.sha256(ast.dump(tree.body[0], include_attributes=False).encode()).hexdigest()
