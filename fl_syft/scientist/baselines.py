"""Reference points for a federated run, all scored on the same public test set.

- local-only: each site trains alone to convergence (the "before federation" number). It
  runs through the site's own approved ``ml_experiment`` (cold start, many iterations), so
  in a PySyft run the data scientist receives only that site's model, as in any round.
- private alone (under the sites' DP): each site alone at the federated run's epsilon, with
  the run's DP settings (without secure aggregation: its own noise, the default steps per
  round), on only its own rows. It is a second private run at every site, charged to its
  budget like any: ``scientist.runs`` plans it before the federated run starts (a site without
  the budget for both is refused before anything runs) and again from the ledgers just before
  it runs.
The centralized ceiling (one model on the pooled shards) is computable only where pooling is
legitimate, so it lives with the simulation (``fl_syft.simulate.centralized``), not here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from fl_syft.common.errors import FlSyftError
from fl_syft.common.features import FeatureMap
from fl_syft.common.protocol import ML_EXPERIMENT
from fl_syft.scientist.aggregate import validate_result
from fl_syft.scientist.algorithms import Algorithm, mode_of
from fl_syft.scientist.algorithms.private import Private
from fl_syft.scientist.evaluate import score
from fl_syft.scientist.rounds import Resilience, Site, call_sites
from fl_syft.vetted.local_training import ml_experiment

CONVERGE_ITERS = 1000  # lbfgs stops earlier at its tolerance; this is only a cap
FUNCTIONS = (ml_experiment,)  # what the sites must approve for local-only baselines
DEFAULT_HOLDOUT = ML_EXPERIMENT["holdout"].default


def local_only(sites: Sequence[Site], X_test: np.ndarray, y_test: np.ndarray, *, features: FeatureMap,
               C: float = 1.0, holdout: float = DEFAULT_HOLDOUT, seed: int = 0,
               resilience: Resilience = Resilience()) -> dict[str, dict]:
    """{site: {"test_accuracy", "n_samples", "class_counts", "seconds" (the call's wall time)}} of
    each site's own converged model.

    ``features``, ``C``, ``holdout`` and ``seed`` as in the federated run, so the site scores on
    the same split (``X_test``: the test set's features)."""
    # A site alone trains plain logistic regression, its own label prior included.
    config = {"features": features.name, "local_iters": CONVERGE_ITERS, "C": float(C), "holdout": float(holdout),
              "seed": int(seed), "logit_adjust": False}

    def answered(site: str, result: object) -> None:
        validate_result(site, result, features.width)
        bar.update()  # one call to convergence can take a minute: show each site as it answers

    with ThreadPoolExecutor(max_workers=len(sites)) as pool, \
            tqdm(total=len(sites), desc="baselines: each site alone", unit="site", leave=False) as bar:
        calls, _ = call_sites(pool, sites, ml_experiment.__name__, {}, config, resilience, 0, answered)
    return {name: {"test_accuracy": score(result, X_test, y_test)["accuracy"],
                   "n_samples": int(result["n_samples"]),
                   "class_counts": np.asarray(result["class_counts"]).tolist(), "seconds": seconds}
            for name, (result, seconds) in calls.items()}


def after(status: dict, noise_multiplier: float, releases: int) -> dict:
    """A site's published ``status`` as it will read once it has released ``releases`` more noisy
    steps at ``noise_multiplier`` (to plan a second run before the first has run)."""
    from fl_syft.common.accounting import epsilon, expand

    released = dict(status["noise_multipliers"])
    released[repr(noise_multiplier)] = released.get(repr(noise_multiplier), 0) + releases
    spent = epsilon(expand(released), status["policy"]["delta"])
    return {**status, "noise_multipliers": released, "epsilon_spent": spent,
            "epsilon_remaining": max(0.0, status["policy"]["epsilon"] - spent)}


def private_alone(algorithms: dict[str, Algorithm], sites: Sequence[Site], X_test: np.ndarray, y_test: np.ndarray,
                  resilience: Resilience = Resilience()) -> dict[str, dict]:
    """{site: {"test_accuracy", "epsilon", "noise_multiplier", "noisy_steps", "rounds", "settings",
    "n_samples" (its published noisy row count), "seconds" (its whole run's wall time)} or
    {"error": why, "epsilon", "seconds"}}: each site's planned private run alone (``algorithms``:
    site -> its algorithm, planned for it alone), all sites at once; a site whose run fails is
    reported as such and the others go on."""
    by_name = {site.name: site for site in sites}
    alone_rule = dataclasses.replace(resilience, min_sites=None)  # one site: the run's --min-sites cannot apply
    rounds = {name: algorithm.rounds_for(None) for name, algorithm in algorithms.items()}

    def alone(name: str) -> dict:
        algorithm = algorithms[name]
        plan = mode_of(algorithm)[Private.key]
        started = time.perf_counter()
        try:
            state = algorithm.run([by_name[name]], X_test, y_test, rounds=rounds[name], resilience=alone_rule,
                                  echo=False, on_round=lambda params, history: bar.update())
        except FlSyftError as e:
            return {"error": str(e), "epsilon": plan["epsilon_per_site"], "seconds": time.perf_counter() - started}
        return {"test_accuracy": score(state.params, X_test, y_test)["accuracy"], "epsilon": plan["epsilon_per_site"],
                "noise_multiplier": plan["noise_multiplier"], "noisy_steps": plan["noisy_steps_per_site"],
                "rounds": rounds[name], "settings": plan["settings"], "n_samples": plan["sites"][name]["rows"],
                "seconds": time.perf_counter() - started}

    # One bar for every site's rounds (each site's own round loop runs without one: echo=False).
    with ThreadPoolExecutor(max_workers=len(algorithms)) as pool, \
            tqdm(total=sum(rounds.values()), desc="baselines: each site alone", unit="round", leave=False) as bar:
        return dict(zip(algorithms, pool.map(alone, algorithms), strict=True))
