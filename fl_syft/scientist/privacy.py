"""Planning a run under the sites' privacy policies (data scientist side).

Each site publishes its policy and what its ledger has spent. A run that may spend
``epsilon`` per site and makes ``releases`` noisy gradient steps at every site gets the
noise multiplier that spends exactly that (``dp-accounting``, the same functions the sites
charge with); it is refused up front when a site has less left.
"""

from __future__ import annotations

from dataclasses import dataclass

from fl_syft.common.accounting import epsilon as epsilon_of
from fl_syft.common.accounting import noise_for
from fl_syft.common.errors import ConfigError
from fl_syft.common.policy import PrivacyPolicy
from fl_syft.common.protocol import SiteStatus


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
        released = tuple(float(s) for s, n in published.noise_multipliers.items() for _ in range(n))
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


def plan(statuses: list[dict], releases: int, epsilon: float | None = None) -> PrivacyPlan | None:
    """The plan for a run of ``releases`` noisy steps per site; None if no site enforces DP.

    ``epsilon``: what this run may spend per site (default: what the site with the least left has
    left). Raises ConfigError when the sites disagree (some without DP) or have less than that."""
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
    if epsilon is None:  # spend exactly what the site with the least left has left
        try:
            sigma = max(noise_for(b.policy.epsilon, b.policy.delta, releases, b.released) for b in budgets)
        except ValueError:
            spent = min(budgets, key=lambda b: b.remaining)
            raise ConfigError(f"{spent.site} has spent its privacy budget ({spent.spent:.3g} of "
                              f"{spent.policy.epsilon:g}): no private run is possible there") from None
    elif not epsilon > 0:
        raise ConfigError(f"{{epsilon}} must be > 0, got {epsilon:g}")
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
            raise ConfigError(f"{{epsilon}} {epsilon:g}: {b.site} has {b.remaining:.3g} of its {b.policy.epsilon:g} "
                              f"left (spent {b.spent:.3g}); ask for less, or drop {{epsilon}} to spend what is left")
    return result
