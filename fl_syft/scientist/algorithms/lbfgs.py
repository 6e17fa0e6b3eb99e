"""Exact federated logistic regression: L-BFGS driven by the sites' summed gradients.

Each objective evaluation is one round: every site returns the cross-entropy of its shard
at the current global model and its gradient (``lr_loss_grad``); their sums plus the L2
term are exactly the centralized objective, so the optimum is the centralized one whatever
the label skew. The objective is scaled like scikit-learn's (mean loss + ||W||^2/(2 C N)),
with the same stopping rule (projected gradient <= 1e-4), so it stops where
``LogisticRegression(C=C)`` would on the pooled data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from tqdm import tqdm

from fl_syft.common import model
from fl_syft.common.errors import ConfigError
from fl_syft.scientist.aggregate import sum_gradients, validate_gradient
from fl_syft.scientist.algorithms.base import Algorithm, OnRound, State, setting
from fl_syft.scientist.rounds import Resilience, Site, call_sites, format_round, round_record
from fl_syft.vetted.loss_gradient import lr_loss_grad

log = logging.getLogger("fl_syft.lbfgs")

GTOL = 1e-4  # scikit-learn's default tol for lbfgs


@dataclass(frozen=True)
class LbfgsSettings:
    C: float = setting(1.0, "inverse L2 strength")

    def check(self) -> None:
        if not self.C > 0:
            raise ConfigError(f"{{C}} must be > 0, got {self.C}")


class Lbfgs(Algorithm):
    name, title = "lbfgs", "federated L-BFGS"
    summary = "exact L-BFGS on the sites' summed gradients (the centralized optimum under any label skew)"
    functions = (lr_loss_grad,)
    settings_type = LbfgsSettings
    default_rounds = 500
    rounds_help = "at most 500; it stops earlier at convergence"
    rounds_label = "round cap"
    resumable = False  # the optimizer's memory lives in this process only
    needs_every_site = True  # a missing site would change the objective
    private_refusal = ("L-BFGS needs exact losses and gradients (its line search compares them), and the sites "
                       "refuse lr_loss_grad under DP: use --algorithm fedavg")

    def run(self, sites: Sequence[Site], X_test: np.ndarray, y_test: np.ndarray, *, rounds: int,
            state: State = State(), on_round: OnRound | None = None,
            resilience: Resilience = Resilience(), echo: bool = True) -> State:
        """At most ``rounds`` rounds (objective evaluations), from scratch (not resumable). The
        model returned is the optimizer's last accepted point (an evaluated one: a line search's
        trial points after it are rounds that ran, and are recorded, but not the answer);
        :meth:`final_round` names its round. The optimizer drives its own evaluations, so this
        is its loop, not the round runner's; each evaluation is called and recorded as a round is."""
        cfg, res = self.settings, resilience
        history: list[dict] = []
        evaluated: list[np.ndarray] = []
        accepted = [model.flatten(model.zeros(self.features.width))]

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            if len(history) == rounds:
                raise _RoundCap
            rnd = len(history) + 1
            params = model.unflatten(theta)
            started = time.perf_counter()
            calls, _ = call_sites(pool, sites, lr_loss_grad.__name__, params, {"features": self.features.name}, res,
                                  rnd, lambda site, result: validate_gradient(site, result, self.features.width))
            total = sum_gradients({name: result for name, (result, _) in calls.items()}, self.features.width)
            n = total["n_samples"]
            W = params["coef"]
            value = (total["loss"] + 0.5 * np.sum(W * W) / cfg.C) / n
            grad = np.concatenate([(total["grad_coef"] + W / cfg.C).ravel(), total["grad_intercept"]]) / n
            record = round_record(rnd, params, calls, {}, started, X_test, y_test)
            record.update(objective=float(value), grad_max=float(np.abs(grad).max()))
            history.append(record)
            evaluated.append(theta.copy())
            bar.update()
            if echo:
                tqdm.write(format_round(record) + f"  objective {value:.6f}")
            if on_round:
                on_round(params, history)
            return value, grad

        with ThreadPoolExecutor(max_workers=len(sites)) as pool, \
                tqdm(total=rounds, desc="rounds", unit="round", leave=False) as bar:
            try:
                result = minimize(objective, accepted[0], jac=True, method="L-BFGS-B",
                                  callback=lambda xk: accepted.append(np.array(xk)),
                                  options={"maxiter": rounds, "maxfun": rounds, "gtol": GTOL,
                                           "ftol": 64 * np.finfo(float).eps, "maxls": 50})
                x = result.x
                self.stopped = (f"converged (projected gradient <= {GTOL:g}, as scikit-learn's lbfgs)"
                                if result.success and result.status == 0 else f"stopped: {result.message}")
            except _RoundCap:
                x, self.stopped = accepted[-1], "round cap reached"
        self._final = 1 + max(i for i, theta in enumerate(evaluated) if np.array_equal(theta, x))
        log.info("lbfgs %s after %d rounds; the model is round %d's", self.stopped, len(history), self._final)
        return State(model.unflatten(x), history)

    def final_round(self, history: list[dict]) -> int:
        return self._final

    def stop_reason(self, history: list[dict], rounds: int) -> str:
        return self.stopped


class _RoundCap(Exception):
    """The round cap is reached inside the optimizer's line search."""
