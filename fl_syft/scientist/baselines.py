"""Reference points for a federated run, all scored on the same public test set.

- local-only: each site trains alone to convergence (the "before federation" number). It
  runs through the site's own approved ``ml_experiment`` (cold start, many iterations), so
  in a PySyft run the data scientist receives only that site's model, as in any round.
- centralized: one model on the union of the shards: the ceiling. Only where pooling is
  legitimate, i.e. in ``simulate`` and the benchmark: a real deployment cannot pool data.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fl_syft.scientist.aggregate import validate_result
from fl_syft.scientist.evaluate import score
from fl_syft.scientist.rounds import Resilience, Site, call_sites
from fl_syft.vetted.local_training import ml_experiment

CONVERGE_ITERS = 1000  # lbfgs stops earlier at its tolerance; this is only a cap
FUNCTIONS = (ml_experiment,)  # what the sites must approve for local-only baselines
DEFAULT_HOLDOUT = 0.05  # ml_experiment's default


def local_only(sites: Sequence[Site], X_test: np.ndarray, y_test: np.ndarray, *, C: float = 1.0,
               holdout: float = DEFAULT_HOLDOUT, seed: int = 0,
               resilience: Resilience = Resilience()) -> dict[str, dict]:
    """{site: {"test_accuracy", "n_samples", "class_counts"}} of each site's own converged model.

    ``C``, ``holdout`` and ``seed`` as in the federated run, so the site scores on the same split."""
    # A site alone trains plain logistic regression, its own label prior included.
    config = {"local_iters": CONVERGE_ITERS, "C": float(C), "holdout": float(holdout), "seed": int(seed),
              "logit_adjust": False}
    with ThreadPoolExecutor(max_workers=len(sites)) as pool:
        calls, _ = call_sites(pool, sites, ml_experiment.__name__, {}, config, resilience, 0, validate_result)
    return {name: {"test_accuracy": score(result, X_test, y_test)["accuracy"],
                   "n_samples": int(result["n_samples"]),
                   "class_counts": np.asarray(result["class_counts"]).tolist()}
            for name, (result, _) in calls.items()}


def centralized(shards: Sequence[np.ndarray], C: float, X_test: np.ndarray, y_test: np.ndarray) -> dict:
    """The pooled model: ``LogisticRegression(C)`` to convergence on all shards' rows.

    Returns {"test_accuracy", "params", "n_iter"}.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    pooled = np.concatenate(shards)
    clf = LogisticRegression(C=C, max_iter=CONVERGE_ITERS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a ceiling that did not converge is no ceiling
        clf.fit(pooled[:, :-1] / 255.0, pooled[:, -1].astype(np.int64))
    classes = clf.classes_.astype(int)
    coef, intercept = np.zeros((10, pooled.shape[1] - 1)), np.full(10, -1e9)
    coef[classes], intercept[classes] = clf.coef_, clf.intercept_  # absent classes never predicted
    params = {"coef": coef, "intercept": intercept}
    return {"test_accuracy": score(params, X_test, y_test)["accuracy"], "params": params,
            "n_iter": int(np.max(clf.n_iter_))}
