"""Exact federated logistic regression: L-BFGS driven by the sites' summed gradients.

Each objective evaluation is one round: every site returns the cross-entropy of its shard
at the current global model and its gradient (``lr_loss_grad``); their sums plus the L2
term are exactly the centralized objective, so the optimum is the centralized one whatever
the label skew. The objective is scaled like scikit-learn's (mean loss + ||W||^2/(2 C N)),
with the same stopping rule (projected gradient <= 1e-4), so it stops where
``LogisticRegression(C=C)`` would on the pooled data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
from scipy.optimize import minimize
from tqdm import tqdm

from fl_syft.fedavg import N_CLASSES, N_FEATURES, sum_gradients, validate_gradient
from fl_syft.training import Resilience, Site, TrainConfig, call_sites, format_round, log, round_record

GTOL = 1e-4  # scikit-learn's default tol for lbfgs


def unpack(theta: np.ndarray) -> dict:
    """Flat (10*784 + 10,) vector -> {"coef": (10, 784), "intercept": (10,)}."""
    return {"coef": theta[: N_CLASSES * N_FEATURES].reshape(N_CLASSES, N_FEATURES),
            "intercept": theta[N_CLASSES * N_FEATURES:]}


def train_lbfgs(
    sites: Sequence[Site],
    cfg: TrainConfig,
    X_test: np.ndarray,
    y_test: np.ndarray,
    on_round: Callable[[dict, list[dict]], None] | None = None,
    resilience: Resilience = Resilience(),
) -> tuple[dict, list[dict]]:
    """At most ``cfg.rounds`` rounds (objective evaluations; one more if the optimizer's
    answer is not the last point it evaluated); return (params, history).

    Every site must answer every round (a missing site would change the objective), so
    ``resilience.min_sites`` is ignored; retries still apply.
    """
    res = replace(resilience, min_sites=None)
    history: list[dict] = []
    evaluated: list[np.ndarray] = []

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        rnd = len(history) + 1
        params = unpack(theta)
        started = time.perf_counter()
        calls, _ = call_sites(pool, sites, "loss_grad", params, {}, res, rnd, validate_gradient)
        total = sum_gradients({name: result for name, (result, _) in calls.items()})
        n = total["n_samples"]
        W = params["coef"]
        value = (total["loss"] + 0.5 * np.sum(W * W) / cfg.C) / n
        grad = np.concatenate([(total["grad_coef"] + W / cfg.C).ravel(), total["grad_intercept"]]) / n
        record = round_record(rnd, params, calls, {}, started, X_test, y_test)
        record.update(objective=float(value), grad_max=float(np.abs(grad).max()))
        history.append(record)
        evaluated.append(theta.copy())
        bar.update()
        tqdm.write(format_round(record) + f"  objective {value:.6f}")
        if on_round:
            on_round(params, history)
        return value, grad

    theta0 = np.zeros(N_CLASSES * N_FEATURES + N_CLASSES)
    with ThreadPoolExecutor(max_workers=len(sites)) as pool, \
            tqdm(total=cfg.rounds, desc="rounds", unit="round", leave=False) as bar:
        result = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                          options={"maxiter": cfg.rounds, "maxfun": cfg.rounds, "gtol": GTOL,
                                   "ftol": 64 * np.finfo(float).eps, "maxls": 50})
        if not np.array_equal(result.x, evaluated[-1]):
            objective(result.x)  # one more (counted) round, so the last record is the returned model
    log.info("lbfgs %s after %d rounds: %s", "converged" if result.success else "stopped", len(history),
             result.message)
    return unpack(result.x), history
