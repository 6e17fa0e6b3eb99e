"""Reference points for a federated run, all scored on the same public test set.

- local-only: each site trains alone to convergence (the "before federation" number). It
  runs through the site's own approved ``ml_experiment`` (cold start, many iterations), so
  in a PySyft run the data scientist receives only that site's model, as in any round.
The centralized ceiling (one model on the pooled shards) is computable only where pooling is
legitimate, so it lives with the simulation (``fl_syft.simulate.centralized``), not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fl_syft.common.protocol import ML_EXPERIMENT
from fl_syft.scientist.aggregate import validate_result
from fl_syft.scientist.evaluate import score
from fl_syft.scientist.rounds import Resilience, Site, call_sites
from fl_syft.vetted.local_training import ml_experiment

CONVERGE_ITERS = 1000  # lbfgs stops earlier at its tolerance; this is only a cap
FUNCTIONS = (ml_experiment,)  # what the sites must approve for local-only baselines
DEFAULT_HOLDOUT = ML_EXPERIMENT["holdout"].default


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
