"""What a run spends of the sites' privacy budgets: said before it starts, replanned when it resumes.

Every noisy release is a Gaussian mechanism, and Gaussian mechanisms compose in their noise's
precision (sigma^-2 adds up), not in epsilon: two runs of epsilon 0.5 and 0.833 leave a site at
1.0, not 1.333. So this module says, per site, what was spent before, what this run spends on
its own and the total after it (``common.accounting``, the same functions the sites' ledgers
charge with). Under DP with baselines, each site alone is a second private run at every site
(``scientist.baselines``), planned with the federated one and again just before it runs. A
resumed run's remaining rounds are replanned from what the ledgers hold (``Private.replanned``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fl_syft.common.accounting import COMPOSITION, epsilon, expand
from fl_syft.common.errors import ConfigError
from fl_syft.scientist import baselines as reference
from fl_syft.scientist.algorithms import Algorithm, build, compose, mode_of
from fl_syft.scientist.algorithms.base import Wrapper
from fl_syft.scientist.algorithms.private import Private
from fl_syft.scientist.algorithms.secure import Secure
from fl_syft.scientist.privacy import NoSignal
from fl_syft.scientist.rounds import Resilience, Site

if TYPE_CHECKING:
    from fl_syft.scientist.runs import RunRequest

log = logging.getLogger("fl_syft")


def spend_per_site(plan: dict) -> dict[str, dict]:
    """{site: {"before", "this_run", "after", "budget"}}: epsilon spent before the run, spent by the
    run on its own, and the two composed (what the site's ledger will hold), from a run's plan as
    made before it ran (a replanned one's releases are the ledgers' at the replan)."""
    sigma, steps = plan["noise_multiplier"], plan["noisy_steps_per_site"]
    alone = epsilon([sigma] * steps, plan["delta"])
    return {site: {"before": info["spent_before"], "this_run": alone, "budget": info["policy"]["epsilon"],
                   "after": epsilon([*expand(info["released"]), *[sigma] * steps], info["policy"]["delta"])}
            for site, info in plan["sites"].items()}


def log_plan(plan: dict) -> None:
    """One line: what this run spends, per site before -> after, and why the two do not add."""
    sites = ", ".join(f"{site} {v['before']:.4g} -> {v['after']:.4g} of {v['budget']:.4g}"
                      for site, v in spend_per_site(plan).items())
    log.info("privacy: this run spends epsilon %.3g per site (delta %g): %d noisy steps per site, noise multiplier "
             "%.4g; spent per site before -> after: %s (%s)", plan["epsilon_per_site"], plan["delta"],
             plan["noisy_steps_per_site"], plan["noise_multiplier"], sites, COMPOSITION)
    if plan.get("lr_unscaled") is not None:
        log.info("privacy: step size %.3g (the default %g scaled to this run's noise per row; --lr sets it)",
                 plan["settings"]["lr"], plan["lr_unscaled"])


def replan(algorithm: Algorithm, sites: Sequence[Site], done: int, rounds: int) -> Algorithm:
    """``algorithm`` (a resumed run's) with its DP plan for rounds ``done + 1 .. rounds`` made from
    what the sites' ledgers hold now (itself if it runs without DP or its plan still fits)."""
    mode = mode_of(algorithm)
    if Private.key not in mode or done >= rounds:
        return algorithm
    private = algorithm
    while not isinstance(private, Private):
        private = private.inner
    data = private.replanned([site.privacy() for site in sites], done, rounds, pooled=Secure.key in mode)
    if data is mode[Private.key]:
        return algorithm
    r = data["replans"][-1]
    log.info("privacy: rounds %d..%d replanned from the sites' ledgers (%s): noise multiplier %.4g (was %.4g; spent "
             "now: %s), so each site ends where this run's plan left it", done + 1, rounds, r["why"],
             r["noise_multiplier"], r["noise_multiplier_before"],
             ", ".join(f"{s} {e:.4g}" for s, e in r["spent_at_replan"].items()))
    inner = algorithm
    while isinstance(inner, Wrapper):
        inner = inner.inner
    return compose(inner, {**mode, Private.key: data})


def plan_private_alone(request: RunRequest, mode: dict, statuses: list[dict]) -> RunRequest:
    """Under DP, each site alone at the federated run's epsilon (its DP settings, without secure
    aggregation: its own noise): planned now, on the sites' budgets as the federated run will
    leave them, so that a site without the budget for both is refused before anything runs.
    Returns the request each site alone runs with."""
    plan = mode[Private.key]
    eps = plan["epsilon_per_site"]
    # The run's own DP settings, except the one step per round that secure aggregation forces.
    kept = {k: v for k, v in request.settings.items() if k != "local_steps" or Secure.key not in mode}
    asked = dataclasses.replace(request, secure=False, rounds=None, epsilon=eps, settings=kept)
    totals = []
    for status in statuses:
        name = status["site"]
        if status["policy"].get("require_secure_aggregation"):
            raise ConfigError(f"--baselines: {name} requires secure aggregation, which a site alone cannot have: "
                              "drop --baselines")
        later = reference.after(status, plan["noise_multiplier"], plan["noisy_steps_per_site"])
        try:
            own = build(request.algorithm, asked.settings, [later], asked).data
        except ConfigError as e:  # (its placeholders kept: the CLI shows them as flags)
            fix = "drop --baselines" if isinstance(e, NoSignal) else "drop --baselines, or ask for less {epsilon}"
            raise ConfigError(f"--baselines under DP trains each site alone at epsilon {eps:.3g} too, charged to "
                              f"its budget after this run's: {e.template} ({fix})") from None
        both = reference.after(later, own["noise_multiplier"], own["noisy_steps_per_site"])["epsilon_spent"]
        totals.append(f"{name} {both:.4g} of {status['policy']['epsilon']:.4g}")
    log.info("baselines under DP: each site also trains alone at epsilon %.3g (its own noise), charged to its "
             "budget; after both runs: %s", eps, ", ".join(totals))
    return asked


def run_private_alone(scores: dict, request: RunRequest, sites: Sequence[Site], X_test: np.ndarray,
                    y_test: np.ndarray, resilience: Resilience) -> None:
    """Each site alone under DP, planned again from what the ledgers hold now (a retried call or
    another account may have spent more than the federated run planned); if any site no longer
    has the budget, none runs and the scores say why."""
    eps = request.epsilon
    try:
        replanned = {site.name: build(request.algorithm, request.settings, [site.privacy()], request) for site in sites}
    except ConfigError as e:
        scores["dropped"] = f"each site alone at epsilon {eps:.3g} no longer fits a site's budget: {e}"
        log.warning("baselines dropped: %s", scores["dropped"])
        return
    log.info("baselines: each site alone at epsilon %.3g", eps)
    scores["private_alone"] = reference.private_alone(replanned, sites, X_test, y_test, resilience)
    for name, value in scores["private_alone"].items():
        if "error" in value:
            log.warning("baseline %s alone failed: %s", name, value["error"])
        else:
            log.info("baseline %s alone: %.2f%% (epsilon %.3g)", name, 100 * value["test_accuracy"], value["epsilon"])
