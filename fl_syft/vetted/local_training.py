"""``ml_experiment``: one warm-started local round of logistic regression on a site's shard.

Shipped to the datasites as *source* (a PySyft code request) and approved only if its
fingerprint equals the data owner's installed copy, so it is self-contained: imports
inside, no closures, no project imports (a test checks). It runs on the features the site
computed once from its rows with a fixed, public feature map (``fl_syft.common.features``),
the same on every site: averaged coefficients only mean something in one shared feature
space, so there is no per-site scaler.
"""


def ml_experiment(data, global_params: dict, config: dict) -> dict:
    """One local round of warm-started multinomial logistic regression: without DP a
    scikit-learn round (``lbfgs_round``), under the site's DP noisy gradient steps (``dp_steps``).

    One function, not two: sites approve it by fingerprint, so each vetted function is one
    request and one approval per site and run.
    data: {"X": (n, width) float32 features of the site's rows (the map ``config["features"]``
        names), "y": (n,) int64 labels 0..9}.
    global_params: {} for a cold start, else {"coef": (10, width), "intercept": (10,)} float64
        (under differential privacy also "velocity_coef" (10, width), "velocity_intercept" (10,):
        the momentum carried from round to round).
    config: complete (the site's guard checks it against ``fl_syft.common.protocol``'s
        ``ML_EXPERIMENT`` / ``ML_EXPERIMENT_DP``, where the keys' meanings, defaults and ranges
        are, and fills in the defaults). Always "features" (the map ``data`` is on). Without DP:
        "local_iters" (lbfgs iterations), "C"
        (inverse L2 strength), "holdout" (fraction of rows held out to score the received
        model), "seed" (of the holdout split), "logit_adjust" (train with this site's label
        prior in the intercepts, return the model with it removed, i.e. for equal class
        priors). Under DP: "local_steps", "lr" (step size), "momentum", "l2" (L2 strength per
        row), "frequencies" (on pixels only: k, each step moves the coefficients only within the
        k x k lowest spatial frequencies (2-D DCT) of the 28 x 28 image; 28 = every pixel),
        "noise_multiplier" (noise std per step / clipping norm), and "privacy", set by the data
        owner's site (never by the caller): {"clip": L2 norm each row's gradient is clipped to,
        "rows": the site's published noisy row count}.
    Returns only aggregates. Without DP: "coef" (10, width) and "intercept" (10,) float64 (rows
    of classes this site lacks are the received ones), "n_samples" (rows trained on),
    "class_counts" (10,), "train_accuracy" (new local model, training rows),
    "holdout_accuracy" (new local model, held-out rows), "global_accuracy" (received model,
    held-out rows; None on a cold start), "seconds" (compute time). Under DP: "coef",
    "intercept", "velocity_coef", "velocity_intercept" (functions of the noisy gradients
    only) and "n_samples" (the published noisy count): every step projects the sum of the
    rows' clipped gradients onto the k x k frequencies (on pixels; on other features the whole
    gradient) and adds Gaussian noise of std noise_multiplier * clip to each of its coordinates
    there, drawn from the operating system's entropy; nothing else about the rows is returned.
    """
    import time
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    features, labels = data["X"], data["y"]
    n_classes, n_features = 10, features.shape[1]

    def dp_steps() -> dict:
        """``local_steps`` noisy, clipped, momentum gradient steps (record-level DP)."""
        clip, rows = float(config["privacy"]["clip"]), float(config["privacy"]["rows"])
        sigma = float(config["noise_multiplier"])
        rng = np.random.default_rng()  # fresh OS entropy: noise no caller can choose, predict or replay
        # On pixels: orthonormal 2-D DCT-II rows of the k x k lowest frequencies, (k*k, 784).
        # Projecting the clipped sum (a contraction: sensitivity still clip) and noising only its
        # k*k coordinates puts k*k/784 of the noise into the model: digits are smooth, so little
        # signal is lost. Other feature maps are no image (scattering: 81 channels of 7 x 7 local
        # averages, already low-pass): every coordinate is kept and noised.
        if "frequencies" in config:
            side, k = int(np.sqrt(n_features)), int(config["frequencies"])
            grid = np.arange(side)
            dct = np.sqrt(2.0 / side) * np.cos(np.pi * (grid[None, :] + 0.5) * grid[:, None] / side)
            dct[0] /= np.sqrt(2.0)
            basis = np.kron(dct[:k], dct[:k])
        else:
            basis = None
        params = {key: np.array(global_params.get(key, np.zeros(shape)), dtype=np.float64)
                  for key, shape in (("coef", (n_classes, n_features)), ("intercept", (n_classes,)),
                                     ("velocity_coef", (n_classes, n_features)), ("velocity_intercept", (n_classes,)))}
        W, b, vW, vb = params["coef"], params["intercept"], params["velocity_coef"], params["velocity_intercept"]
        for _ in range(config["local_steps"]):
            # The sum of the rows' clipped gradients, 512 rows at a time (a block is used while in cache).
            Wt, b32 = W.T.astype(np.float32), b.astype(np.float32)
            gW, gb = np.zeros((n_classes, n_features)), np.zeros(n_classes)
            for start in range(0, len(labels), 512):
                X = features[start:start + 512]
                # Total for every model the site admits (finite, |entry| <= its model_bound): every
                # feature is bounded (pixels in [0, 1]; a group-normalised scattering coefficient
                # within +-sqrt(147)), so a logit is within +-(width + 1) * 13 * bound, far from
                # float32's limits; the floor at -60 keeps every
                # probability, product and square out of subnormal numbers (a slow path whose time
                # would depend on the rows); a row whose gradient is still not finite contributes
                # zero (clipping fails closed).
                z = X @ Wt + b32
                z -= z.max(axis=1, keepdims=True)
                np.maximum(z, np.float32(-60.0), out=z)
                P = np.exp(z)
                P /= P.sum(axis=1, keepdims=True)
                P[np.arange(len(P)), labels[start:start + 512]] -= 1.0  # row i's gradient: P[i] (outer) [x_i, 1]
                # In float64: squares of probabilities down to e^-60 stay normal numbers there.
                norms = np.linalg.norm(P.astype(np.float64), axis=1) * np.sqrt(np.einsum("ij,ij->i", X, X) + 1.0)
                finite = np.isfinite(norms)
                P *= np.where(finite, np.minimum(1.0, clip / np.maximum(np.where(finite, norms, 1.0), 1e-12)),
                              0.0).astype(np.float32)[:, None]
                P[~finite] = 0.0
                gW += P.T @ X
                gb += P.sum(axis=0, dtype=np.float64)
            if basis is None:
                gW += rng.normal(0.0, sigma * clip, gW.shape)
            else:
                gW = (gW @ basis.T + rng.normal(0.0, sigma * clip, (n_classes, len(basis)))) @ basis
            gb += rng.normal(0.0, sigma * clip, b.shape)
            vW = config["momentum"] * vW + gW / rows + config["l2"] * W
            vb = config["momentum"] * vb + gb / rows
            W, b = W - config["lr"] * vW, b - config["lr"] * vb
        return {"coef": W, "intercept": b, "velocity_coef": vW, "velocity_intercept": vb, "n_samples": int(rows)}

    def lbfgs_round() -> dict:
        """A warm-started scikit-learn fit on the training rows, scored on the held-out rows."""
        started = time.perf_counter()
        order = np.random.default_rng(config["seed"]).permutation(len(labels))
        n_holdout = int(len(labels) * config["holdout"])
        held, train = np.sort(order[:n_holdout]), np.sort(order[n_holdout:])
        y = labels[train]
        X_held, y_held = features[held], labels[held]
        class_counts = np.bincount(y, minlength=n_classes)
        present = np.flatnonzero(class_counts)
        # Fit on every row, the held-out ones weighted 0: scikit-learn divides by the weights'
        # sum, so it is the training rows' objective, without a copy of them (~450 MB on 30k rows
        # of scattering features). A class only among the held-out rows would be fitted too:
        # then the training rows are copied.
        if np.array_equal(np.unique(labels), present):
            X_fit, y_fit, weight = features, labels, np.ones(len(labels), features.dtype)
            weight[held] = 0.0
        else:
            X_fit, y_fit, weight = features[train], y, None

        if global_params:
            coef = np.array(global_params["coef"], dtype=np.float64)
            intercept = np.array(global_params["intercept"], dtype=np.float64)
        else:
            coef, intercept = np.zeros((n_classes, n_features)), np.zeros(n_classes)

        def accuracy(c, b, X, targets, weight=None):
            if len(targets) == 0:
                return None
            # In X's float32: a float64 product would first copy all of X to float64.
            correct = np.argmax(X @ c.T.astype(X.dtype) + b, axis=1) == targets
            return float(np.mean(correct) if weight is None else np.mean(correct[weight > 0]))

        global_accuracy = accuracy(coef, intercept, X_held, y_held) if global_params else None

        if len(present) >= 2:
            # Label skew: a site's intercepts would learn its own class frequencies, which
            # averaging then mixes into everyone's model. Train with log(local prior / uniform)
            # added to the received intercepts and subtract it again: sites exchange prior-free
            # models (logit adjustment for label shift; the weights are unaffected by a prior).
            shift = np.log(class_counts[present] * n_classes / len(y)) if config["logit_adjust"] else 0.0
            intercept[present] += shift
            # scikit-learn fits only the classes present in y; binary problems have one row.
            binary, lo, hi = len(present) == 2, present[0], present[-1]
            clf = LogisticRegression(C=config["C"], max_iter=config["local_iters"], warm_start=True)
            if global_params:
                if binary:
                    clf.coef_ = (coef[hi] - coef[lo])[None, :]
                    clf.intercept_ = np.array([intercept[hi] - intercept[lo]])
                else:
                    clf.coef_, clf.intercept_ = coef[present].copy(), intercept[present].copy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(X_fit, y_fit, sample_weight=weight)
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
            "train_accuracy": accuracy(coef, intercept, X_fit, y_fit, weight),
            "holdout_accuracy": accuracy(coef, intercept, X_held, y_held),
            "global_accuracy": global_accuracy,
            "seconds": time.perf_counter() - started,
        }

    return dp_steps() if "privacy" in config else lbfgs_round()
