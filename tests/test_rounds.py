"""Calling sites in a round: retries, dropouts, invalid results (pure: sites are fakes)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from fl_syft.scientist.aggregate import SiteResultError
from fl_syft.scientist.rounds import Resilience, SitesFailed, call_sites

NO_WAIT = Resilience(retries=2, backoff=0.0)


class FakeSite:
    """Fails ``failures`` times, then answers ``result``; counts calls."""

    def __init__(self, name: str, failures: int = 0, result: dict | None = None):
        self.name, self.failures, self.result, self.calls = name, failures, result or {"ok": name}, 0

    def call(self, function: str, global_params: dict, config: dict) -> dict:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"{self.name} is down")
        return self.result


def accept(site: str, result: object) -> None:
    pass


def run(sites, res=NO_WAIT, validate=accept):
    with ThreadPoolExecutor(len(sites)) as pool:
        return call_sites(pool, sites, "fn", {}, {}, res, 3, validate)


def test_a_site_that_fails_then_succeeds_is_retried():
    flaky = FakeSite("a", failures=2)
    calls, dropped = run([flaky, FakeSite("b")])
    assert flaky.calls == 3 and set(calls) == {"a", "b"} and dropped == {}
    assert calls["a"][0] == {"ok": "a"}


def test_retries_run_out_and_the_round_fails_naming_the_site():
    dead = FakeSite("a", failures=99)
    with pytest.raises(SitesFailed, match=r"round 3: a is down \(1 of 2 sites answered, 2 needed\)"):
        run([dead, FakeSite("b")])
    assert dead.calls == 3


def test_min_sites_drops_a_dead_site_and_says_why():
    calls, dropped = run([FakeSite("a", failures=99), FakeSite("b")], Resilience(retries=0, min_sites=1))
    assert set(calls) == {"b"} and dropped == {"a": "a is down"}


def test_an_invalid_result_is_never_retried_or_dropped():
    def refuse(site: str, result: object) -> None:
        if site == "a":
            raise SiteResultError(site, "coef contains NaN")

    site = FakeSite("a")
    with pytest.raises(SiteResultError, match="site 'a' returned an invalid result: coef contains NaN"):
        run([site, FakeSite("b")], Resilience(retries=2, backoff=0.0, min_sites=1), refuse)
    assert site.calls == 1
