"""The secure-aggregation wrapper: the scientist learns only the sum of the surviving sites' answers.

It changes how a round's answers are collected and nothing else: the sums the inner algorithm
asks for (``summed``) are formed from masked answers (``scientist.secagg.SecureSum``) and
handed to the inner ``aggregate`` as they are. It is the outermost wrapper (see ``WRAPPERS``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fl_syft.common.errors import ConfigError
from fl_syft.scientist.algorithms.base import Collected, NoSettings, RoundAlgorithm, Wrapper
from fl_syft.scientist.rounds import Resilience, Site
from fl_syft.scientist.secagg import SecureSum

log = logging.getLogger("fl_syft")


class Secure(Wrapper):
    key, suffix = "secure_aggregation", ", secure aggregation"
    settings_type = NoSettings

    def __init__(self, inner: RoundAlgorithm, data: dict, settings: Any = None):
        super().__init__(inner, data, settings)
        self.threshold = int(data["threshold"])
        self._session: SecureSum | None = None

    @classmethod
    def plan(cls, inner: RoundAlgorithm, statuses: list[dict], asked: Any, mode: dict) -> dict | None:
        required = [s["site"] for s in statuses if s["policy"].get("require_secure_aggregation")]
        if not (asked.secure or required):
            return None
        why = (f"{', '.join(required)} {'require' if len(required) > 1 else 'requires'} it (its owner's "
               "--require-secure-aggregation)") if required else ""
        if not cls.wraps(type(inner)):
            raise ConfigError(f"{inner.name} has no secure-aggregation form (fedavg has): " + (
                f"{why}: use --algorithm fedavg" if required and not asked.secure
                else "drop {secure_aggregation} or use --algorithm fedavg"))
        if required and not asked.secure:
            log.info("secure aggregation although not asked for: %s", why)
        return {"threshold": _threshold(statuses)}

    def collect(self, pool: ThreadPoolExecutor, sites: list[Site], sent: dict, config: dict, rnd: int,
                resilience: Resilience) -> Collected:
        if self._session is None or self._session.sites.keys() != {s.name for s in sites}:
            self._session = SecureSum(sites, self.threshold, pool, resilience)
        self._session.pool = pool  # each run has its own pool; the session and its keys carry on
        started = time.perf_counter()
        summed = self.summed
        secure = self._session.round(rnd, self.function, sent, config, list(summed.fields), summed.weight)
        wall = time.perf_counter() - started
        # No site's answer is seen, nor its own time: the sites are timed together (the round's record).
        return Collected(summed.unpack(secure.total), {name: ({}, None) for name in secure.survivors}, secure.dropped,
                         {"secure_aggregation": {"survivors": secure.survivors, "threshold": self.threshold,
                                                 "seconds": {**secure.seconds, "round": wall}}})

    def describe(self) -> list[tuple[str, str]]:
        return [*super().describe(), ("secure aggregation", f"threshold {self.threshold}: the scientist sees only "
                                                            "sums of at least that many sites")]


def _threshold(statuses: list[dict]) -> int:
    """The sites' common secure-aggregation threshold; ConfigError unless they all list each other."""
    names = {s["site"] for s in statuses}
    missing = [s["site"] for s in statuses if not names <= set(s["policy"].get("peers") or {})]
    if missing:
        raise ConfigError(f"{', '.join(missing)} do not list every site of this run as a secure-aggregation peer "
                          "(their owners set the peers): run without {secure_aggregation} or ask them")
    thresholds = {s["policy"]["threshold"] for s in statuses}
    if len(thresholds) != 1:
        raise ConfigError(f"the sites' secure-aggregation thresholds differ: {sorted(thresholds)}")
    return thresholds.pop()
