"""Privacy accounting with Google's ``dp-accounting`` (the data owner's ledger and the scientist's
planner use the same functions, so both see the same epsilon).

Every private release in fl-syft is a Gaussian mechanism on the whole shard (no
subsampling): a sum of per-row contributions of L2 norm at most ``sensitivity`` plus
N(0, (noise_multiplier * sensitivity)^2) on each coordinate, described by its noise
multiplier alone. The unit protected is one row, under add/remove-one-row neighbouring.

A composition of Gaussian mechanisms is exactly one Gaussian mechanism with noise
multiplier (sum sigma_i^-2)^-1/2 (Dong, Roth & Su 2019, Gaussian differential privacy), and
``dp-accounting``'s ``GaussianPrivacyLoss`` gives a Gaussian mechanism's (epsilon, delta)
exactly (the analytic Gaussian of Balle & Wang 2018) in about a millisecond, however many
releases were composed. (The library's PLD accountant agrees to its discretisation, but
costs seconds and gigabytes at small noise; a test checks the two against each other.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

MAX_EPSILON = 1e4  # beyond any meaningful budget: the search interval for epsilon
COMPOSITION = ("spends compose by their noise (each release's sigma^-2 adds up), not as a sum of epsilons, so the "
               "total after a run is less than spent-before plus this run's epsilon")


def expand(counts: dict[str, int]) -> list[float]:
    """The noise multipliers of releases counted as a site publishes them ({repr(multiplier): count})."""
    return [float(s) for s, n in counts.items() for _ in range(n)]


def combined_noise(noise_multipliers: Iterable[float]) -> float:
    """The noise multiplier of one Gaussian mechanism equivalent to all of these composed
    (``inf`` for none: nothing released)."""
    precision = sum(1.0 / (s * s) for s in noise_multipliers)
    return math.inf if precision == 0 else 1.0 / math.sqrt(precision)


def epsilon(noise_multipliers: Iterable[float], delta: float) -> float:
    """Epsilon at ``delta`` of releasing all these Gaussian mechanisms together (0 for none)."""
    return _gaussian_epsilon(combined_noise(noise_multipliers), delta)


@functools.lru_cache(maxsize=256)  # sites with the same releases ask the same, every round (~13 ms each)
def _gaussian_epsilon(sigma: float, delta: float) -> float:
    from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss
    from scipy.optimize import brentq

    if math.isinf(sigma):
        return 0.0
    loss = GaussianPrivacyLoss(sigma, sensitivity=1.0)
    if loss.get_delta_for_epsilon(0.0) <= delta:
        return 0.0
    return float(brentq(lambda e: loss.get_delta_for_epsilon(e) - delta, 0.0, MAX_EPSILON, xtol=1e-9))


def noise_for(target_epsilon: float, delta: float, releases: int, already: Iterable[float] = ()) -> float:
    """The noise multiplier ``releases`` more Gaussian mechanisms need so that, composed with the
    ``already`` released ones, all of them spend exactly ``target_epsilon`` at ``delta``.

    Raises ValueError if the ``already`` released ones alone spend that much."""
    from dp_accounting.pld.common import DifferentialPrivacyParameters
    from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss

    whole = GaussianPrivacyLoss.from_privacy_guarantee(DifferentialPrivacyParameters(target_epsilon, delta))
    left = 1.0 / whole.standard_deviation ** 2 - sum(1.0 / (s * s) for s in already)
    if left <= 0:
        raise ValueError(f"epsilon {target_epsilon:g} at delta {delta:g} is already spent")
    return math.sqrt(releases / left)


def epsilon_of_event(event, delta: float, accountant: str = "rdp") -> float:
    """Epsilon of any ``dp_accounting`` event (e.g. Poisson-subsampled), with its RDP or PLD accountant."""
    import dp_accounting as dpa

    acc = dpa.rdp.RdpAccountant() if accountant == "rdp" else dpa.pld.PLDAccountant()
    return float(acc.compose(event).get_epsilon(delta))


def composed(epsilons: Iterable[float], delta: float, noise_multipliers: Iterable[float] = ()) -> float:
    """Epsilon at ``delta`` of runs that each spend one of ``epsilons`` on their own (at ``delta``),
    composed with these other releases: the budget that holds them all. Less than their sum
    (Gaussian mechanisms compose in their noise's precision, not in epsilon)."""
    return epsilon([*(noise_for(e, delta, 1) for e in epsilons), *noise_multipliers], delta)
