"""``ml_experiment``: one warm-started local round of logistic regression on a site's shard.

Shipped to the datasites as *source* (a PySyft code request) and approved only if its
fingerprint equals the data owner's installed copy, so it is self-contained: imports
inside, no closures, no project imports (a test checks). Features are pixels/255 on every
site: averaged coefficients only mean something in one shared feature space, so there is
no per-site scaler.
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
