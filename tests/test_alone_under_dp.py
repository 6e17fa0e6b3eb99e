"""Before and after federation under DP: each site alone at the same epsilon, charged honestly."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from conftest import synthetic_shard

from fl_syft.cli import _demo_budget, build_parser
from fl_syft.common.accounting import composed, epsilon
from fl_syft.common.errors import ConfigError
from fl_syft.owner.policy import owner_policy
from fl_syft.scientist.rounds import Resilience
from fl_syft.scientist.runs import RunRequest, run
from fl_syft.simulate import local_sites


def _sites(tmp_path, budget: float):
    shards = [synthetic_shard(2000, seed=s) for s in (1, 2)]
    return local_sites(shards, owner_policy(epsilon=budget, min_rows=50), ledgers=tmp_path / "ledgers")


def _test_set():
    test = synthetic_shard(500, seed=9)
    return test[:, :-1], test[:, -1].astype(np.int64)


def test_each_site_alone_runs_at_the_runs_epsilon_and_both_spends_are_charged(tmp_path):
    delta = 1e-5
    budget = composed([1.0, 1.0], delta, [100.0]) * (1 + 1e-6)  # what the demo gives its sites
    sites = _sites(tmp_path, budget)
    X, y = _test_set()
    # The run's --min-sites 2 cannot apply to a site alone (it did, and failed every one after charging it).
    request = RunRequest(epsilon=1.0, rounds=5, secure=True, baselines=True, features="pixels",
                         resilience=Resilience(min_sites=2))
    outcome = run(sites, request, X, y)
    alone = outcome.scores["private_alone"]
    assert set(alone) == {"site-1", "site-2"} and "dropped" not in outcome.scores
    assert all(v["epsilon"] == pytest.approx(1.0, rel=1e-6) and 0 <= v["test_accuracy"] <= 1 for v in alone.values())
    assert all(v["settings"]["local_steps"] == 10 and v["noisy_steps"] == 120 for v in alone.values())
    for site in sites:
        ledger = site.guard.ledger
        # The ledger holds the row count, the federated run and the site alone: composed, not summed.
        assert ledger.spent == pytest.approx(epsilon([float(s) for s, n in ledger.releases().items()
                                                      for _ in range(n)], delta), rel=1e-9)
        assert 1.0 < ledger.spent <= budget < 2.0
        assert sum(ledger.releases().values()) == 1 + outcome.config["privacy"]["noisy_steps_per_site"] \
            + alone[site.name]["noisy_steps"]


def test_a_site_without_the_budget_for_both_is_refused_before_anything_is_charged(tmp_path):
    sites = _sites(tmp_path, 1.2)
    before = [site.guard.ledger.spent for site in sites]  # the published row count only
    X, y = _test_set()
    with pytest.raises(ConfigError, match=r"--baselines under DP trains each site alone at epsilon 1 too"):
        run(sites, RunRequest(epsilon=1.0, rounds=5, secure=True, baselines=True, features="pixels"), X, y)
    assert [site.guard.ledger.spent for site in sites] == before


def test_the_demo_gives_each_site_the_budget_for_both_runs_unless_the_owner_set_one():
    parser = build_parser()
    args = _demo_budget(parser.parse_args(["demo"]))
    assert args.epsilon == 1.0 and args.dp_epsilon == pytest.approx(composed([1.0, 1.0], 1e-5, [100.0]), rel=2e-4)
    # Enough for both at any site's delta (the default delta, or 1/(2 rows) if smaller, composes to less).
    assert args.dp_epsilon >= max(composed([1.0, 1.0], d, [100.0]) for d in (1e-5, 1e-6, 1e-7))
    assert 1.4 < args.dp_epsilon < 1.6  # two runs at 1 compose to less than 2
    kept = _demo_budget(parser.parse_args(["demo", "--dp-epsilon", "3"]))
    assert kept.dp_epsilon == 3.0 and kept.epsilon is None
    assert isinstance(_demo_budget(parser.parse_args(["demo", "--no-baselines"])), argparse.Namespace)
    assert _demo_budget(parser.parse_args(["demo", "--no-baselines"])).dp_epsilon is None
