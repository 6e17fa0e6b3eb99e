"""Planning a run under the sites' privacy policies (data scientist side).

Each site publishes its policy and what its ledger has spent. A run that may spend
``epsilon`` per site and makes ``releases`` noisy gradient steps at every site gets the
noise multiplier that spends exactly that (``dp-accounting``, the same functions the sites
charge with); it is refused up front when a site has less left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fl_syft.common.accounting import epsilon as epsilon_of
from fl_syft.common.accounting import expand, noise_for
from fl_syft.common.errors import ConfigError
from fl_syft.common.policy import PrivacyPolicy
from fl_syft.common.protocol import ML_EXPERIMENT_DP, SiteStatus


@dataclass(frozen=True)
class SiteBudget:
    """One site's published privacy status."""

    site: str
    policy: PrivacyPolicy
    spent: float = 0.0
    rows: int | None = None  # the site's published noisy row count (under DP)
    released: tuple[float, ...] = ()  # the noise multipliers of everything it released so far

    @classmethod
    def from_status(cls, status: dict) -> SiteBudget:
        """From what a site publishes (``common.protocol.SiteStatus``)."""
        published = SiteStatus.from_dict(status)
        released = tuple(expand(published.noise_multipliers))
        return cls(published.site, PrivacyPolicy.from_dict(published.policy), float(published.epsilon_spent or 0.0),
                   published.rows, released)

    @property
    def remaining(self) -> float:
        return max(0.0, self.policy.epsilon - self.spent)


@dataclass(frozen=True)
class PrivacyPlan:
    """What a private run will do at every site: ``releases`` noisy steps with ``noise_multiplier``,
    spending ``epsilon`` (at the strictest site's ``delta``) on its own."""

    budgets: tuple[SiteBudget, ...]
    epsilon: float
    delta: float
    noise_multiplier: float
    releases: int

    @property
    def clip(self) -> float:
        return self.budgets[0].policy.clip

    def total_after(self, budget: SiteBudget) -> float:
        """The site's epsilon once this run is done (its earlier releases composed with the run's)."""
        return epsilon_of([*budget.released, *[self.noise_multiplier] * self.releases], budget.policy.delta)

    def to_dict(self) -> dict:
        return {"epsilon_per_site": self.epsilon, "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                "noisy_steps_per_site": self.releases,
                "sites": {b.site: {"policy": b.policy.to_dict(), "spent_before": b.spent, "rows": b.rows,
                                   "released": {repr(s): b.released.count(s) for s in set(b.released)}}
                          for b in self.budgets}}


def spendable(statuses: list[dict], epsilon: float | None = None) -> float:
    """What a run asking for ``epsilon`` (None: what is left) may spend per site, to size the run by:
    ``epsilon``, else the least any DP site has left (its total minus its spent; composition is
    not a sum, so the noise is planned exactly by :func:`plan`)."""
    if epsilon is not None:
        return epsilon
    left = [b.remaining for b in map(SiteBudget.from_status, statuses) if b.policy.dp]
    return max(min(left, default=0.0), 1e-6)


def plan(statuses: list[dict], releases: int, epsilon: float | None = None, *,
         pooled: bool = False) -> PrivacyPlan | None:
    """The plan for a run of ``releases`` noisy steps per site; None if no site enforces DP.

    ``epsilon``: what this run may spend per site (default: what the site with the least left has
    left); ``pooled``: one noisy release sums every site's rows (secure aggregation), else one
    site's. Raises ConfigError, naming the site, what it spent, what it has left and what to do,
    when the sites disagree (some without DP), have less than that, or when the noise the plan
    needs is outside the sites' bounds or too large for any step to carry signal (:func:`check_signal`)."""
    budgets = [SiteBudget.from_status(s) for s in statuses]
    private = [b for b in budgets if b.policy.dp]
    if not private:
        if epsilon is not None:
            raise ConfigError(f"{{epsilon}} {epsilon:g}: no site enforces differential privacy (their owners "
                              "started them with --no-dp): drop {epsilon}")
        return None
    if len(private) < len(budgets):
        plain = ", ".join(b.site for b in budgets if not b.policy.dp)
        raise ConfigError(f"{plain} enforce no differential privacy and {', '.join(b.site for b in private)} do: "
                          "a run needs all sites alike")
    if len({b.policy.clip for b in budgets}) > 1:
        raise ConfigError("the sites clip gradients to different norms: "
                          + ", ".join(f"{b.site} {b.policy.clip:g}" for b in budgets))
    delta = min(b.policy.delta for b in budgets)
    if epsilon is not None and not epsilon > 0:
        raise ConfigError(f"{{epsilon}} must be > 0, got {epsilon:g}")
    # What spending all that is left would take: the noise of the site with the least left.
    least = max(budgets, key=lambda b: _noise_or_inf(b.policy.epsilon, b.policy.delta, releases, b.released))
    left_sigma = _noise_or_inf(least.policy.epsilon, least.policy.delta, releases, least.released)
    rows = signal_rows(budgets, pooled)
    if epsilon is None:
        if math.isinf(left_sigma):
            raise NoSignal(f"{_spent(least)}: no private run is possible there; {OWNER_FIX}")
        check_signal(left_sigma, rows, releases, f"{_spent(least)}: spending what is left over", pooled=pooled)
        sigma = left_sigma
    else:
        sigma = noise_for(epsilon, delta, releases)
    sigma *= 1 + 1e-9  # a hair more noise: rounding must never take a site past its budget
    epsilon = epsilon_of([sigma] * releases, delta)
    floor = max(b.policy.min_noise for b in budgets)
    if sigma < floor:
        raise ConfigError(f"{{epsilon}} {epsilon:g} over {releases} noisy steps needs noise multiplier {sigma:.3g}, "
                          f"below the sites' floor {floor:g}: take more {{rounds}} or {{local_steps}}")
    result = PrivacyPlan(tuple(budgets), epsilon, delta, sigma, releases)
    for b in budgets:  # as the sites' ledgers will check it
        if result.total_after(b) > b.policy.epsilon * (1 + 1e-6):
            useful = rows is None or signal(left_sigma, rows, releases) >= MIN_SIGNAL
            fix = ("ask for less, or drop {epsilon} to spend what is left" if useful else
                   f"what is left is too little for a run that learns; {OWNER_FIX}")
            raise ConfigError(f"{{epsilon}} {epsilon:g}: {b.site} has {b.remaining:.3g} of its {b.policy.epsilon:g} "
                              f"left (spent {b.spent:.3g}); {fix}")
    larger = (f"ask for a larger {{epsilon}} (up to what {least.site} has left, {least.remaining:.3g}), or"
              if rows is not None and signal(left_sigma, rows, releases) >= MIN_SIGNAL else "")
    check_signal(sigma, rows, releases, f"{{epsilon}} {epsilon:.3g} over", pooled=pooled, first_fix=larger)
    return result


# Noise multipliers the sites' schema admits (``common.protocol``): above it a call is refused.
MAX_NOISE = ML_EXPERIMENT_DP["noise_multiplier"].high
OWNER_FIX = "its owner may raise the budget (restart the site with --keep --dp-epsilon E: a new decision of theirs)"
# The least signal a run needs: rows per unit of the whole run's noise (its steps' noise composed,
# sigma / sqrt(steps)). Measured (in-process, 2 x 3000 rows, secure aggregation, the default
# settings, one run each): pixels at 10 and 30: 12% and 14% (chance is 10%), at 104: 51%, at 195:
# 63%, at 850: 82%; scattering at 195: 78%, at 370: 89%, at 600: 93%. Below 50 a run ends near chance.
MIN_SIGNAL = 50.0


def signal_rows(budgets: list[SiteBudget], pooled: bool) -> float | None:
    """The rows whose gradients one step of the run averages (their published noisy counts):
    every site's with secure aggregation (``pooled``: one noise on the sum); else each site adds
    its own noise and the average carries k sites' noise: rows / sqrt(k). None when a site
    publishes no count."""
    rows = [b.rows for b in budgets]
    if any(r is None for r in rows):
        return None
    return float(sum(rows) if pooled else sum(rows) / math.sqrt(len(rows)))


def signal(sigma: float, rows: float, releases: int) -> float:
    """Rows per unit of the whole run's noise: its ``releases`` steps at ``sigma`` compose to one
    Gaussian mechanism of multiplier sigma / sqrt(releases) (``common.accounting``), which more
    steps do not change for a given budget (the noise per step grows as their square root)."""
    return rows * math.sqrt(releases) / sigma


def check_signal(sigma: float, rows: float | None, releases: int, what: str, *, pooled: bool,
                 done: int = 0, first_fix: str = "") -> None:
    """Refuse a plan that could not learn: its signal (:func:`signal`) below ``MIN_SIGNAL``, where
    runs end near chance (a spent budget's leftover gave 13% after 12 rounds, its test loss rising
    to 1e5); and noise above what the sites' bounds admit. ``what`` starts the message; ``done``:
    the rounds a resumed run has completed (they stay saved); ``first_fix`` goes before the owner's."""
    kept = "nothing was trained or charged" if not done else f"rounds 1..{done} stay saved"
    if sigma > MAX_NOISE:
        raise NoSignal(f"{what} {releases} noisy steps needs noise multiplier {sigma:.3g}, above the "
                       f"{MAX_NOISE:g} the sites admit ({kept}); {OWNER_FIX}")
    if rows is None or signal(sigma, rows, releases) >= MIN_SIGNAL:
        return
    pool = "" if pooled else "; or pool the sites' rows with {secure_aggregation} (one noise on their sum)"
    raise NoSignal(f"{what} {releases} noisy steps needs noise multiplier {sigma:.3g}: all its steps together carry "
                   f"the noise of one release at {sigma / math.sqrt(releases):.3g}, and the {rows:.0f} rows a step "
                   f"averages are {signal(sigma, rows, releases):.3g} times that, under the {MIN_SIGNAL:g} a run "
                   f"needs to learn anything (below it runs end near chance; fewer rounds do not help: each step "
                   f"gets less noise, the run the same) ({kept}); {first_fix + ' ' if first_fix else ''}{OWNER_FIX}"
                   f"{pool}")


class NoSignal(ConfigError):
    """A run refused because it could not learn (no setting of it but more budget or more rows helps)."""


def _noise_or_inf(total: float, delta: float, releases: int, released: tuple[float, ...]) -> float:
    """:func:`noise_for`, or infinity where ``released`` already spent ``total``."""
    try:
        return noise_for(total, delta, releases, released)
    except ValueError:  # already spent
        return math.inf


def _spent(b: SiteBudget) -> str:
    """How a refusal names a site's spend."""
    return (f"{b.site} has spent epsilon {b.spent:.4g} of its {b.policy.epsilon:g} "
            f"({b.remaining:.3g} left)")
